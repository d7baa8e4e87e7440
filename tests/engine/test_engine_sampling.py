"""Sampling: the seeded sampler draws from the distribution that llama.cpp's chain defines
(repetition penalty, top-k, top-p, min-p, then temperature), checked by chi-square goodness-of-fit
tests on fixed logits with 20,000 draws each; the same seed gives the same draws; the repetition
penalty changes what is picked.

The expected distributions are computed here in numpy from the definitions, independently of the C code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from native import _engine

F64 = npt.NDArray[np.float64]

DRAWS = 20_000
P_VALUE_FLOOR = 1e-4

# Twelve distinct logits (no ties, so the order and every filter are unambiguous), one negative.
LOGITS = np.array([2.0, 1.7, 1.1, 0.9, 0.6, 0.35, 0.1, -0.2, -0.5, -0.9, -1.4, -2.1], dtype=np.float32)
# the same values in a scrambled vocabulary order, so that "sorted" never comes for free
ORDER = np.array([7, 2, 11, 0, 5, 9, 3, 10, 1, 6, 8, 4])
SCRAMBLED = LOGITS[ORDER]


@dataclass(frozen=True)
class Chain:
    temperature: float
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64


def softmax(x: F64) -> F64:
    e = np.exp(x - x.max())
    return np.asarray(e / e.sum(), dtype=np.float64)


def expected_distribution(logits: npt.NDArray[np.float32], chain: Chain, history: Sequence[int]) -> F64:
    """The probability of each token under llama.cpp's order: penalties, top-k, top-p, min-p, temperature."""
    x = logits.astype(np.float64)
    window = list(history)[-chain.repeat_last_n :] if chain.repeat_last_n > 0 else []
    for token in set(window):
        x[token] = x[token] / chain.repeat_penalty if x[token] > 0 else x[token] * chain.repeat_penalty
    kept = np.ones(x.size, dtype=bool)
    if chain.top_k > 0:
        kept[np.argsort(-x)[chain.top_k :]] = False
    if chain.top_p < 1.0:
        candidates = np.flatnonzero(kept)
        candidates = candidates[np.argsort(-x[candidates])]
        cumulative = np.cumsum(softmax(x[candidates]))
        last = int(np.searchsorted(cumulative, chain.top_p))  # the first index where the sum reaches top_p
        kept[candidates[last + 1 :]] = False
    if chain.min_p > 0.0:
        candidates = np.flatnonzero(kept)
        p = softmax(x[candidates])
        kept[candidates[p < chain.min_p * p.max()]] = False
    out = np.zeros(x.size)
    out[kept] = softmax(x[kept] / chain.temperature)
    return out


def sampler(chain: Chain, seed: int, n_vocab: int = SCRAMBLED.size) -> _engine.Sampler:
    return _engine.Sampler(
        n_vocab,
        temperature=chain.temperature,
        top_k=chain.top_k,
        top_p=chain.top_p,
        min_p=chain.min_p,
        repeat_penalty=chain.repeat_penalty,
        repeat_last_n=chain.repeat_last_n,
        seed=seed,
    )


def draw_counts(chain: Chain, seed: int, logits: npt.NDArray[np.float32], history: Sequence[int]) -> F64:
    s = sampler(chain, seed, logits.size)
    raw = logits.astype(np.float32).tobytes()
    counts = np.zeros(logits.size)
    for _ in range(DRAWS):
        counts[s.sample(raw, history)] += 1
    return counts


def chi_square_upper_tail(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X ~ chi-square(dof): the regularised upper incomplete gamma Q(dof/2, statistic/2)
    (series below a + 1, Lentz's continued fraction above; Numerical Recipes 6.2)."""
    a, x = dof / 2.0, statistic / 2.0
    if x <= 0.0:
        return 1.0
    log_prefactor = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        denominator = a
        for _ in range(10_000):
            denominator += 1.0
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(log_prefactor))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(log_prefactor) * h


def chi_square(counts: F64, expected: F64) -> tuple[float, int, float]:
    """(statistic, degrees of freedom, p-value) over the tokens the expected distribution allows;
    a draw of a token it forbids is impossible under it, so the statistic is infinite and p is 0."""
    support = expected > 0
    dof = int(support.sum()) - 1
    if counts[~support].sum() > 0:
        return math.inf, dof, 0.0
    observed, predicted = counts[support], expected[support] * counts.sum()
    assert predicted.min() >= 5.0, "a cell is too small for the chi-square approximation"
    statistic = float(((observed - predicted) ** 2 / predicted).sum())
    return statistic, dof, chi_square_upper_tail(statistic, dof)


def test_chi_square_tail_matches_known_critical_values() -> None:
    # textbook 0.05 / 0.001 / 1e-4 critical values of the chi-square distribution
    for statistic, dof, tail in [(3.841459, 1, 0.05), (18.307038, 10, 0.05), (29.588298, 10, 0.001),
                                 (15.136705, 1, 1e-4), (37.366986, 11, 1e-4), (5.991465, 2, 0.05)]:
        assert chi_square_upper_tail(statistic, dof) == pytest.approx(tail, rel=1e-5)


CHAINS = {
    "temperature-0.7": Chain(temperature=0.7),
    "temperature-1.6": Chain(temperature=1.6),
    "top-k-5": Chain(temperature=1.0, top_k=5),
    "top-p-0.8": Chain(temperature=0.8, top_p=0.8),
    "top-p-0.95-hot": Chain(temperature=2.0, top_p=0.95),
    "min-p-0.15": Chain(temperature=1.2, min_p=0.15),
    "top-k-top-p-min-p": Chain(temperature=0.9, top_k=8, top_p=0.9, min_p=0.1),
    "penalty-and-filters": Chain(temperature=1.1, top_k=9, top_p=0.92, min_p=0.05, repeat_penalty=1.4),
}
# For the penalty chain: the top two logits and a negative one are recent; token 11 is outside the window.
HISTORY = [int(ORDER.tolist().index(i)) for i in (11, 0, 1, 9, 0)]


@pytest.mark.parametrize("name", list(CHAINS))
def test_draws_fit_the_chain_distribution(name: str, figures: Callable[[str], None]) -> None:
    chain = CHAINS[name]
    history = HISTORY if chain.repeat_penalty != 1.0 else []
    if chain.repeat_penalty != 1.0:
        chain = Chain(**{**chain.__dict__, "repeat_last_n": 4})
    expected = expected_distribution(SCRAMBLED, chain, history)
    counts = draw_counts(chain, seed=1234, logits=SCRAMBLED, history=history)
    statistic, dof, p_value = chi_square(counts, expected)
    figures(f"sampling {name}: chi-square {statistic:.2f} on {dof} dof, p = {p_value:.3g} ({DRAWS} draws)")
    assert p_value >= P_VALUE_FLOOR, (
        f"{name}: chi-square {statistic:.2f} on {dof} dof, p = {p_value:.3g}; "
        f"observed {counts.tolist()}, expected {(expected * DRAWS).round(1).tolist()}"
    )
    # the filters really filtered: the chains with cut-offs keep fewer than all twelve tokens
    if chain.top_k or chain.top_p < 1.0 or chain.min_p:
        assert dof + 1 < LOGITS.size


def test_chi_square_rejects_wrong_distributions() -> None:
    """Positive control: the same draws fail the test against distributions that are slightly off,
    including the chain in the wrong order (temperature before top-p)."""
    chain = CHAINS["top-p-0.8"]
    counts = draw_counts(chain, seed=1234, logits=SCRAMBLED, history=[])
    right = expected_distribution(SCRAMBLED, chain, [])
    assert chi_square(counts, right)[2] >= P_VALUE_FLOOR
    hotter = expected_distribution(SCRAMBLED, Chain(temperature=0.9, top_p=0.8), [])
    tempered_first = expected_distribution((SCRAMBLED / 0.8).astype(np.float32), Chain(temperature=1.0, top_p=0.8), [])
    assert not np.array_equal(tempered_first > 0, right > 0)
    assert chi_square(counts, hotter)[2] < P_VALUE_FLOOR
    assert chi_square(counts, tempered_first)[2] < P_VALUE_FLOOR
    plain = draw_counts(CHAINS["temperature-0.7"], seed=99, logits=SCRAMBLED, history=[])
    assert chi_square(plain, expected_distribution(SCRAMBLED, Chain(temperature=0.75), []))[2] < P_VALUE_FLOOR


def test_same_seed_same_draws_and_another_seed_differs() -> None:
    chain = CHAINS["top-k-top-p-min-p"]
    raw = SCRAMBLED.tobytes()

    def run(seed: int) -> list[int]:
        s = sampler(chain, seed)
        return [s.sample(raw, []) for _ in range(200)]

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_greedy_and_top_k_1_take_the_argmax() -> None:
    raw = SCRAMBLED.tobytes()
    best = int(np.argmax(SCRAMBLED))
    assert {sampler(Chain(temperature=0.0), seed).sample(raw, []) for seed in range(20)} == {best}
    assert {sampler(Chain(temperature=1.5, top_k=1), seed).sample(raw, []) for seed in range(20)} == {best}


def test_repetition_penalty_changes_the_pick() -> None:
    """Greedy: a recent top token loses to the runner-up once penalised (positive logits divide);
    a recent negative token falls further (negative logits multiply); outside the window, no effect."""
    logits = np.array([0.0, 3.0, 2.8, -1.0, -1.1], dtype=np.float32)
    raw = logits.tobytes()
    greedy = Chain(temperature=0.0, repeat_penalty=1.3, repeat_last_n=3)
    assert sampler(greedy, 0, 5).sample(raw, []) == 1
    assert sampler(greedy, 0, 5).sample(raw, [1]) == 2
    assert sampler(greedy, 0, 5).sample(raw, [1, 4, 4, 4]) == 1  # token 1 is outside the last 3
    assert sampler(Chain(temperature=0.0), 0, 5).sample(raw, [1]) == 1  # penalty 1.0: no effect
    # negative logits: -1.0 * 1.3 = -1.3 falls below -1.1, so after masking the top three, 4 beats 3
    masked = np.array([-9.0, -9.0, -9.0, -1.0, -1.1], dtype=np.float32).tobytes()
    assert sampler(greedy, 0, 5).sample(masked, []) == 3
    assert sampler(greedy, 0, 5).sample(masked, [3]) == 4
    # sampled: the penalised token's share falls as the definitions predict
    chain = Chain(temperature=1.0, repeat_penalty=1.5)
    counts = draw_counts(chain, seed=7, logits=logits, history=[1, 1, 1])
    expected = expected_distribution(logits, chain, [1, 1, 1])
    assert expected[1] < softmax(logits.astype(np.float64))[1]
    assert chi_square(counts, expected)[2] >= P_VALUE_FLOOR
