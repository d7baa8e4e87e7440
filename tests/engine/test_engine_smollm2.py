"""The real model (SmolLM2-135M-Instruct Q4_1): greedy generation is coherent and deterministic and
matches llama.cpp's 128 greedy tokens on the baseline's bench prompt; the portable scalar kernels
agree with the SIMD ones; batched sequences that join and leave give the same tokens as alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from native import Engine

BENCH_TEXT = (
    "The history of computing is a story of abstraction. Early machines were programmed "
    "by rewiring panels and setting switches, and every new problem meant physical work. "
    "Stored-program computers changed that: instructions became data, and data could be "
    "written, copied and modified like any other number. Assemblers turned mnemonics into "
    "machine code, compilers turned formulas into assemblers' input, and operating systems "
    "hid the details of disks, terminals and memory behind files, processes and virtual "
    "addresses. Each layer let people think about a smaller set of ideas while the layers "
    "below handled the rest. Today a short script can fetch data from across the world, "
    "train a statistical model and draw a chart, and the person who wrote it may never "
    "know how many billions of transistors switched to make it happen. "
)

# llama.cpp's (and HF fp32's) greedy continuation of the 256-token bench prompt
# (shared/research/engine-baseline.md, section 5).
LLAMA_CPP_BENCH_GREEDY = [
    563, 253, 3764, 932, 282, 2821, 979, 260, 5466, 2441, 15170, 260, 1532, 30, 4104, 253, 1890, 6048, 416, 22957,
    940, 429, 1699, 260, 905, 28, 4445, 253, 9598, 1743, 284, 2634, 253, 6473, 28, 284, 260, 1055, 617, 4150, 357,
    654, 2093, 699, 638, 800, 14897, 282, 18275, 20788, 288, 919, 357, 4317, 30, 198, 198, 504, 1977, 282, 7867,
    314, 253, 1977, 282, 27156, 30, 7049, 6120, 592, 22916, 411, 47487, 3166, 9214, 284, 4054, 17817, 28, 284,
    897, 725, 1732, 4972, 2099, 746, 30, 625, 1851, 29, 18041, 5530, 4247, 338, 42, 6388, 2163, 940, 28, 284, 940,
    856, 325, 2855, 28, 19309, 284, 8104, 702, 750, 550, 1230, 30, 43584, 6130, 4642, 41733, 15768, 618, 3746,
    2909, 28, 503, 33972, 4642, 18306, 618, 6232,
]

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that returns the factorial of n.",
    "Explain in two sentences why the sky is blue.",
    "Translate 'good morning' into Indonesian.",
    "List three prime numbers.",
    "ما هي عاصمة مصر؟",
    "用一句话介绍长城。",
    "What is 12 times 7?",
]


@pytest.fixture(scope="module")
def engine(model_path: Path) -> Engine:
    return Engine(model_path, threads=2, n_ctx=1024)


def bench_prompt(engine: Engine) -> list[int]:
    ids: list[int] = []
    while len(ids) < 256:
        ids += engine.tokenize(BENCH_TEXT)
    return ids[:256]


def test_info(engine: Engine) -> None:
    assert engine.info.architecture == "llama"
    assert engine.info.layers == 30
    assert engine.info.vocabulary == 49152
    assert engine.info.context_length == 8192
    assert engine.info.tensor_types == {"Q4_1": 210, "Q8_0": 1, "F32": 61}


def test_greedy_bench_prompt_matches_llama_cpp(engine: Engine) -> None:
    result = engine.generate(bench_prompt(engine), max_tokens=128)
    assert result.tokens == LLAMA_CPP_BENCH_GREEDY
    assert result.finish_reason == "length"


def test_chat_answer_is_coherent_and_deterministic(engine: Engine) -> None:
    ids = engine.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    first = engine.generate(ids, max_tokens=48)
    second = engine.generate(ids, max_tokens=48)
    assert first == second
    penalised = engine.generate(ids, max_tokens=48, repeat_penalty=1.3)
    assert "Paris" in first.text or "Paris" in penalised.text


def test_stop_sequences_and_streaming(engine: Engine) -> None:
    ids = bench_prompt(engine)
    full = engine.generate(ids, max_tokens=40)
    stop = full.text[10:16]
    pieces: list[str] = []
    result = engine.generate(ids, max_tokens=40, stop=[stop], on_token=lambda _t, s: pieces.append(s))
    assert result.finish_reason == "stop"
    assert result.text == full.text[: full.text.index(stop)]
    assert "".join(pieces) == result.text


def test_scalar_kernels_agree_with_simd(model_path: Path, engine: Engine) -> None:
    scalar = Engine(model_path, threads=2, n_ctx=512, force_scalar=True)
    assert scalar.info.kernels == "scalar"
    ids = engine.apply_chat_template([{"role": "user", "content": PROMPTS[1]}])
    a = engine.generate(ids, max_tokens=24)
    b = scalar.generate(ids, max_tokens=24)
    assert a.tokens == b.tokens
    diff = np.abs(engine.logits(ids + a.tokens) - scalar.logits(ids + a.tokens)).max()
    assert diff < 1e-3, diff


def test_batch_equals_alone_with_joins_and_leaves(engine: Engine) -> None:
    prompts = [engine.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]
    alone = [engine.generate(p, max_tokens=16).tokens for p in prompts]
    session = engine.batch(max_sequences=4)
    results: dict[int, list[int]] = {}
    waiting = list(enumerate(prompts))
    running: dict[int, int] = {}
    steps = 0
    while waiting or running:
        # join: at most one new sequence per step while a slot is free, so joins happen mid-generation
        if waiting and len(running) < 4:
            index, prompt = waiting.pop(0)
            running[session.add(prompt, max_tokens=16)] = index
        session.step()
        steps += 1
        for seq_id in [s for s in running if session.finished(s)]:
            results[running.pop(seq_id)] = session.remove(seq_id).tokens
    assert steps > 16
    assert [results[i] for i in range(len(prompts))] == alone
    # the chat template's shared system prompt is kept in freed slots, not computed again
    assert session.reused_tokens > 0


def test_a_freed_slot_keeps_its_prefix_and_gives_the_same_tokens(engine: Engine) -> None:
    first = engine.apply_chat_template([{"role": "user", "content": PROMPTS[0]}])
    alone = engine.generate(first, max_tokens=12)
    session = engine.batch(max_sequences=2)

    def run(prompt: list[int]) -> list[int]:
        seq = session.add(prompt, max_tokens=12)
        while not session.finished(seq):
            session.step()
        return session.remove(seq).tokens

    assert run(first) == alone.tokens
    assert session.reused_tokens == 0
    # the same prompt again: all but its last token come from the slot
    assert run(first) == alone.tokens
    assert session.reused_tokens == len(first) - 1
    # the conversation's next turn starts with the first turn and its answer
    turns = [
        {"role": "user", "content": PROMPTS[0]},
        {"role": "assistant", "content": alone.text},
        {"role": "user", "content": PROMPTS[1]},
    ]
    second = engine.apply_chat_template(turns)
    before = session.reused_tokens
    assert run(second) == engine.generate(second, max_tokens=12).tokens
    assert session.reused_tokens - before >= len(first)
    # a prompt that shares nothing reuses nothing
    other = engine.tokenize("Zebras", add_special=False)
    before = session.reused_tokens
    assert run(other) == engine.generate(other, max_tokens=12).tokens
    assert session.reused_tokens == before
