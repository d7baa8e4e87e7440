"""One engine and one batching loop per regional worker process (DESIGN section 2).

Celery's task threads hand jobs to the loop and wait; the loop thread alone touches the engine. New
sequences join the batch between steps and finished ones leave, so requests arriving at different
times are decoded together. Each token of a streamed request is appended to the request's Redis
stream in the same step (one pipeline per step; a non-streamed request's client waits for the final
event only), and a job's cancel flag is honoured at the next step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from native import Engine, EngineError
from native.engine import SamplingParams

logger = logging.getLogger("workers.engine_loop")

EmitFn = Callable[[list[tuple[str, dict[str, Any]]]], None]


@dataclass
class ChoiceState:
    index: int
    seq_id: int = -1
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    pending: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class Job:
    """A generation (n choices) or an embedding; the loop fills the result fields, then sets `done`."""

    request_id: str
    attempt: int
    prompt_ids: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    inputs_ids: list[list[int]] | None = None
    stream: bool = True  # False: no token events (the client waits for the whole answer)
    done: threading.Event = field(default_factory=threading.Event)
    cancel: threading.Event = field(default_factory=threading.Event)
    choices: list[ChoiceState] = field(default_factory=list)
    vectors: list[list[float]] = field(default_factory=list)
    error: EngineError | None = None
    first_token_at: float | None = None
    started_at: float | None = None
    max_batch_seen: int = 0

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.choices)


class EngineLoop(threading.Thread):
    def __init__(self, *, engine: Engine, max_batch: int, emit: EmitFn) -> None:
        super().__init__(name="engine-loop", daemon=True)
        self.engine = engine
        self.max_batch = max_batch
        self._emit = emit
        self._inbox: queue.Queue[Job] = queue.Queue()
        self._session = engine.batch(max_sequences=max_batch)
        self._waiting: list[Job] = []
        self._running: dict[int, tuple[Job, ChoiceState]] = {}
        self._stopping = threading.Event()
        self.peak_batch = 0

    def submit(self, job: Job) -> None:
        self._inbox.put(job)

    def stop(self) -> None:
        self._stopping.set()
        self._inbox.put(Job(request_id="", attempt=0))

    # --- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._admit_new(block=not self._running and not self._waiting)
                self._drop_cancelled()
                self._start_waiting()
                if self._running:
                    self._step()
            except Exception:  # never let the loop die: fail the jobs in flight, keep serving
                logger.exception("engine loop step failed")
                self._fail_all(EngineError("the engine failed during a step", "engine_failure"))

    def _admit_new(self, *, block: bool) -> None:
        try:
            job = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if job.request_id:
                if job.inputs_ids is not None:
                    self._embed(job)
                else:
                    self._waiting.append(job)
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _embed(self, job: Job) -> None:
        job.started_at = time.monotonic()
        try:
            job.vectors = [self.engine.embed(ids) for ids in job.inputs_ids or []]
        except EngineError as exc:
            job.error = exc
        job.done.set()

    def _free_slots(self) -> int:
        return self.max_batch - len(self._running)

    def _start_waiting(self) -> None:
        while self._waiting:
            job = self._waiting[0]
            n = int(job.params.get("n", 1))
            if n > self._free_slots():
                return
            self._waiting.pop(0)
            job.started_at = time.monotonic()
            try:
                self._add_choices(job, n)
            except EngineError as exc:
                for seq_id in [s for s, (j, _) in self._running.items() if j is job]:
                    self._session.remove(seq_id)
                    del self._running[seq_id]
                job.error = exc
                job.done.set()

    def _add_choices(self, job: Job, n: int) -> None:
        p = job.params
        seed = p.get("seed")
        top = int(p.get("top_logprobs") or 0)
        for index in range(n):
            choice = ChoiceState(index=index)
            job.choices.append(choice)
            sampling = SamplingParams(
                temperature=float(p.get("temperature", 1.0)),
                top_k=int(p.get("top_k", 0)),
                top_p=float(p.get("top_p", 1.0)),
                min_p=float(p.get("min_p", 0.0)),
                repeat_penalty=float(p.get("repetition_penalty", 1.0)),
                seed=None if seed is None else (int(seed) + index) % 2**64,
            )

            def on_token(_token: int, text: str, choice: ChoiceState = choice) -> None:
                choice.pending += text

            choice.seq_id = self._session.add(
                job.prompt_ids,
                max_tokens=int(p["max_tokens"]),
                sampling=sampling,
                stop=list(p.get("stop") or []),
                on_token=on_token,
                logprobs=top if p.get("logprobs") else None,
            )
            self._running[choice.seq_id] = (job, choice)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._waiting if j.cancel.is_set()]:
            self._waiting.remove(job)
            job.done.set()
        for seq_id, (job, choice) in list(self._running.items()):
            if job.cancel.is_set():
                result = self._session.remove(seq_id)
                choice.finish_reason = "cancelled"
                choice.text = result.text
                del self._running[seq_id]
                if not any(j is job for j, _ in self._running.values()):
                    job.done.set()

    def _step(self) -> None:
        batch = len(self._running)
        self.peak_batch = max(self.peak_batch, batch)
        events = self._session.step()
        out: list[tuple[str, dict[str, Any]]] = []
        now = time.monotonic()
        for event in events:
            job, choice = self._running[event.seq_id]
            job.max_batch_seen = max(job.max_batch_seen, batch)
            if event.token is not None:
                choice.tokens.append(event.token)
                if job.first_token_at is None:
                    job.first_token_at = now
                entry: dict[str, Any] = {
                    "type": "tok",
                    "attempt": job.attempt,
                    "choice": choice.index,
                    "text": choice.pending,
                }
                choice.pending = ""
                if event.logprob is not None:
                    lp = self._logprob_entry(event.token, event.logprob, event.top)
                    choice.logprobs.append(lp)
                    entry["logprobs"] = lp
                if job.stream:
                    out.append((job.request_id, entry))
            if event.finish_reason is not None:
                result = self._session.remove(event.seq_id)
                del self._running[event.seq_id]
                choice.finish_reason = result.finish_reason
                choice.text = result.text
                if not any(j is job for j, _ in self._running.values()):
                    job.done.set()
        if out:
            self._emit(out)

    def _logprob_entry(self, token: int, logprob: float, top: tuple[tuple[int, float], ...]) -> dict[str, Any]:
        tok = self.engine.tokenizer

        def piece(t: int) -> tuple[str, list[int]]:
            raw = tok.token_bytes(t)
            return raw.decode("utf-8", errors="replace"), list(raw)

        text, raw = piece(token)
        return {
            "token": text,
            "logprob": logprob,
            "bytes": raw,
            "top": [[*piece(t)[:1], lp, piece(t)[1]] for t, lp in top],
        }

    def _fail_all(self, error: EngineError) -> None:
        for seq_id, (job, _) in list(self._running.items()):
            try:
                self._session.remove(seq_id)
            except EngineError:
                logger.exception("could not remove a sequence after a failed step")
            job.error = error
            job.done.set()
        self._running.clear()
