"""Our engine against llama.cpp on the same GGUF file, threads and prompts, measured in one run.

Prefill (one N-token prompt), single-stream decode (G tokens after it) and aggregate decode with
B sequences decoded together, each side driven through its low-level API (ours: `native._engine`;
llama.cpp: llama-cpp-python's ctypes API with batch 512 and flash attention `auto`). Every
repetition starts from an empty KV cache; single-stream runs cycle through 8 distinct prompts and
the B sequences of a batch have distinct prompts; every step computes the full-vocabulary logits
and takes the greedy argmax. Medians after one warm-up.

The anchor is sanity-checked against what llama.cpp reached on this machine class
(`engine-baseline`: 505 tok/s prefill and 156 tok/s decode at 2 threads): a run where it lands
more than 10% off is flagged, since the ratio is then measured on a disturbed machine.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from native import _engine  # after the path set-up, so the bench runs as a script
from native.engine import default_model_path
from native.tokenizer import Tokenizer

SINGLE_PROMPTS = 8  # single-stream runs cycle through 8 distinct prompts (medians over all 8)
BATCH_PROMPT = 32  # tokens of each batched sequence's own prompt, prefilled before the timed steps
ANCHOR_EXPECTED = {2: {"prefill": 505.0, "decode": 156.0}}
TEXT = (
    "Regional clouds keep data where the law says it must stay. A request from Dubai is admitted, "
    "checked against the tenant's residency policy and quota, placed on an accelerator in an allowed "
    "country, decoded by a worker there and billed per token, with a signed receipt of where it ran. "
)


@dataclass
class Side:
    prefill_tok_s: float = 0.0
    decode_tok_s: float = 0.0
    batch_tok_s: dict[int, float] = field(default_factory=dict)


def _prompt(tokenizer: Tokenizer, n: int, salt: int = 0) -> list[int]:
    ids = tokenizer.tokenize(f"[{salt}] " + TEXT * (1 + n // 40))
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def _single_runs(reps: int) -> int:
    """Single-stream runs: at least one per distinct prompt (the tiny mode asks for fewer)."""
    return reps if reps < 2 else max(reps, SINGLE_PROMPTS)


def _median(runs: int, measure: Callable[[], float]) -> float:
    measure()  # warm-up, not counted
    return statistics.median(measure() for _ in range(runs))


# --- ours -----------------------------------------------------------------------------------------

def _ours(path: str, threads: int, prompts: list[list[int]], gen: int, batches: list[int], reps: int) -> Side:
    model = _engine.Model(path, threads=threads)
    vocab = int(model.info()["n_vocab"])
    side = Side()
    last = bytes([_engine.OUTPUT_LOGITS])

    def argmax_rows(raw: bytes, rows: int) -> list[int]:
        return [int(i) for i in np.frombuffer(raw, dtype=np.float32).reshape(rows, vocab).argmax(axis=1)]

    def prefill_and_decode(rep: int) -> tuple[float, float]:
        ctx = _engine.Context(model, n_ctx=2048, n_seq_max=1, n_ubatch=512)
        prompt = prompts[rep % SINGLE_PROMPTS]
        started = time.perf_counter()
        raw, _ = ctx.decode(prompt, [0] * len(prompt), bytes(len(prompt) - 1) + last)
        prefill = len(prompt) / (time.perf_counter() - started)
        token = argmax_rows(raw, 1)[0]
        started = time.perf_counter()
        for _ in range(gen):
            raw, _ = ctx.decode([token], [0], last)
            token = argmax_rows(raw, 1)[0]
        return prefill, gen / (time.perf_counter() - started)

    pairs = [prefill_and_decode(rep) for rep in range(_single_runs(reps) + 1)][1:]
    side.prefill_tok_s = statistics.median(p for p, _ in pairs)
    side.decode_tok_s = statistics.median(d for _, d in pairs)

    for size in batches:
        def batched(size: int = size) -> float:
            ctx = _engine.Context(model, n_ctx=2048 * size, n_seq_max=size, n_ubatch=512)
            tokens: list[int] = []
            for seq in range(size):
                head = prompts[seq][:BATCH_PROMPT]
                raw, _ = ctx.decode(head, [seq] * len(head), bytes(len(head) - 1) + last)
                tokens.append(argmax_rows(raw, 1)[0])
            started = time.perf_counter()
            for _ in range(gen):
                raw, _ = ctx.decode(tokens, list(range(size)), last * size)
                tokens = argmax_rows(raw, size)
            return size * gen / (time.perf_counter() - started)

        side.batch_tok_s[size] = _median(reps, batched)
    return side


# --- llama.cpp --------------------------------------------------------------------------------------

def _llama(path: str, threads: int, prompts: list[list[int]], gen: int, batches: list[int], reps: int) -> Side:
    import logging

    import llama_cpp as lc

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's load chatter
    lc.llama_backend_init()
    model_params = lc.llama_model_default_params()
    # plain CPU buffers: llama.cpp's AMX buffers crash it on the AMX virtual machines we run on (see
    # bench/llama_server_plain.py); without AMX they are what it uses for this file anyway
    model_params.use_extra_bufts = False
    model = lc.llama_model_load_from_file(path.encode(), model_params)
    vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    side = Side()

    def context(n_seq: int) -> Any:
        params = lc.llama_context_default_params()
        params.n_ctx = 2048 * n_seq
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = n_seq
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = getattr(lc, "LLAMA_FLASH_ATTN_TYPE_AUTO", -1)
        return lc.llama_init_from_model(model, params)

    def decode(ctx: Any, batch: Any, entries: list[tuple[int, int, int, bool]]) -> None:
        batch.n_tokens = len(entries)
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(ctx: Any, index: int) -> int:
        pointer = lc.llama_get_logits_ith(ctx, index)
        row = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(vocab,))
        return int(row.argmax())

    def prefill_and_decode(rep: int) -> tuple[float, float]:
        ctx = context(1)
        batch = lc.llama_batch_init(512, 0, 1)
        prompt = prompts[rep % SINGLE_PROMPTS]
        try:
            started = time.perf_counter()
            decode(ctx, batch, [(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
            token = argmax(ctx, len(prompt) - 1)
            prefill = len(prompt) / (time.perf_counter() - started)
            started = time.perf_counter()
            for step in range(gen):
                decode(ctx, batch, [(token, len(prompt) + step, 0, True)])
                token = argmax(ctx, 0)
            return prefill, gen / (time.perf_counter() - started)
        finally:
            lc.llama_batch_free(batch)
            lc.llama_free(ctx)

    pairs = [prefill_and_decode(rep) for rep in range(_single_runs(reps) + 1)][1:]
    side.prefill_tok_s = statistics.median(p for p, _ in pairs)
    side.decode_tok_s = statistics.median(d for _, d in pairs)

    for size in batches:
        def batched(size: int = size) -> float:
            ctx = context(size)
            batch = lc.llama_batch_init(512, 0, size)
            try:
                tokens = []
                for seq in range(size):
                    head = prompts[seq][:BATCH_PROMPT]
                    decode(ctx, batch, [(t, i, seq, i == len(head) - 1) for i, t in enumerate(head)])
                    tokens.append(argmax(ctx, len(head) - 1))
                starts = [len(prompts[s][:BATCH_PROMPT]) for s in range(size)]
                started = time.perf_counter()
                for step in range(gen):
                    decode(ctx, batch, [(tokens[s], starts[s] + step, s, True) for s in range(size)])
                    tokens = [argmax(ctx, s) for s in range(size)]
                return size * gen / (time.perf_counter() - started)
            finally:
                lc.llama_batch_free(batch)
                lc.llama_free(ctx)

        side.batch_tok_s[size] = _median(reps, batched)
    lc.llama_model_free(model)
    return side


# --- report -----------------------------------------------------------------------------------------

def _kv_cache_mb(path: str, *, prompt_tokens: int, gen: int, batches: list[int]) -> float:
    """The largest KV cache our engine held in this benchmark: a sequence's cache starts at 64 positions and
    doubles as it fills (native/src/model.c, `cache_reserve`), each position holding keys and values of
    every layer and key/value head in float32."""
    info = _engine.Model(path, threads=1).info()
    per_position = int(info["n_layer"]) * 2 * int(info["n_head_kv"]) * int(info["head_dim"]) * 4

    def held(positions: int) -> int:
        cap = 64
        while cap < positions:
            cap *= 2
        return cap

    single = held(prompt_tokens + gen)
    batched = max((size * held(BATCH_PROMPT + gen) for size in batches), default=0)
    return max(single, batched) * per_position / 1e6


def _ratio(ours: float, anchor: float) -> float:
    return ours / anchor if anchor else float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="GGUF file (default: the demo model)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", dest="json_out", default=None, help="also write the results here")
    parser.add_argument("--tiny", action="store_true", help="one tiny run to prove the benchmark works")
    args = parser.parse_args(argv)
    if args.tiny:
        args.threads, args.prompt_tokens, args.gen_tokens, args.batch_sizes, args.reps = "1", 16, 4, "1,2", 1

    path = str(args.model or default_model_path())
    tokenizer = Tokenizer(path)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    prompts = [_prompt(tokenizer, args.prompt_tokens, salt) for salt in range(max(SINGLE_PROMPTS, *batches))]
    results: dict[str, Any] = {"model": Path(path).name, "prompt_tokens": args.prompt_tokens,
                               "gen_tokens": args.gen_tokens, "runs": []}
    # what the process holds before our engine loads anything: Python, numpy, the tokenizer, llama.cpp's library
    results["rss_mb_before_engine"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    for threads in (int(t) for t in args.threads.split(",")):
        print(f"engine: {threads} thread(s): ours ...", file=sys.stderr, flush=True)
        ours = _ours(path, threads, prompts, args.gen_tokens, batches, args.reps)
        # Ours runs first, so this peak is ours alone (with the tokenizer and numpy loaded).
        results.setdefault("peak_rss_mb_ours", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
        print(f"engine: {threads} thread(s): llama.cpp ...", file=sys.stderr, flush=True)
        anchor = _llama(path, threads, prompts, args.gen_tokens, batches, args.reps)
        flags = []
        expected = ANCHOR_EXPECTED.get(threads) if not args.tiny else None
        if expected:
            for key, value in (("prefill", anchor.prefill_tok_s), ("decode", anchor.decode_tok_s)):
                if abs(value / expected[key] - 1) > 0.10:
                    flags.append(f"llama.cpp {key} {value:.0f} tok/s is >10% off the expected {expected[key]:.0f}")
        results["runs"].append({"threads": threads, "ours": asdict(ours), "llama_cpp": asdict(anchor), "flags": flags})
        print(f"\nthreads={threads}  (tokens/s; ratio = ours / llama.cpp)")
        print(f"  {'measure':<26} {'ours':>9} {'llama.cpp':>10} {'ratio':>7}")
        rows = [("prefill", ours.prefill_tok_s, anchor.prefill_tok_s),
                ("decode", ours.decode_tok_s, anchor.decode_tok_s)]
        rows += [(f"aggregate decode, batch {b}", ours.batch_tok_s[b], anchor.batch_tok_s[b]) for b in batches]
        for name, mine, theirs in rows:
            print(f"  {name:<26} {mine:>9.1f} {theirs:>10.1f} {_ratio(mine, theirs):>6.2f}x")
        for flag in flags:
            print(f"  FLAG: {flag}")
    size_mb = Path(path).stat().st_size / 1e6
    kv_mb = _kv_cache_mb(path, prompt_tokens=args.prompt_tokens, gen=args.gen_tokens, batches=batches)
    own = results["peak_rss_mb_ours"] - results["rss_mb_before_engine"]
    bound = size_mb + kv_mb + 64
    results.update(engine_rss_mb=round(own, 1), kv_cache_mb=round(kv_mb, 1), rss_bound_mb=round(bound, 1))
    print(f"\npeak RSS, measured before llama.cpp loads: {results['peak_rss_mb_ours']:.0f} MB for the process, of "
          f"which {results['rss_mb_before_engine']:.0f} MB before our engine loaded (Python, numpy, the tokenizer, "
          f"llama.cpp's library): our engine {own:.0f} MB against file {size_mb:.0f} + largest KV cache {kv_mb:.0f} "
          f"+ 64 = {bound:.0f} MB ({'within' if own <= bound else 'OVER'})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
