"""Types: our dequantisation of every supported tensor type equals the `gguf` package's reference
(`gguf.quants.dequantize`) on seeded random data, on random raw blocks and on the real model's tensors.

Bounds per type: F32, F16, BF16, Q8_0, Q4_0 and Q5_0 are one rounding of an exact product (or a plain
widening), so they must be bit-identical. Q4_1 computes `nibble * d + m`; a fused multiply-add rounds
once where numpy rounds twice, so it may differ by 1 ulp of the result, and by nothing more. Q5_1
rounds the product and the sum separately, as numpy does, so it must be bit-identical. The
K-quants (Q4_K, Q5_K, Q6_K) round `d * scale`, `dmin * min`, the product with the quant and the
difference separately, as numpy does, so they must be bit-identical too. The `gguf` package cannot
quantise to K-quants, so their inputs are random raw super-blocks (finite fp16 scales) and the blocks
llama.cpp writes.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType as QType
from gguf import quants

from native import _engine

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

# type -> the largest difference allowed, in units in the last place of the reference value
ULP_BOUND: dict[QType, int] = {
    QType.F32: 0,
    QType.F16: 0,
    QType.BF16: 0,
    QType.Q8_0: 0,
    QType.Q4_0: 0,
    QType.Q4_1: 1,
    QType.Q5_0: 0,
    QType.Q5_1: 0,
    QType.Q4_K: 0,
    QType.Q5_K: 0,
    QType.Q6_K: 0,
}
K_QUANTS = [QType.Q4_K, QType.Q5_K, QType.Q6_K]
# Byte offsets of the fp16 scales in each K-quant super-block: d and dmin lead Q4_K and Q5_K, d ends Q6_K.
K_SCALE_OFFSETS: dict[QType, tuple[int, ...]] = {QType.Q4_K: (0, 2), QType.Q5_K: (0, 2), QType.Q6_K: (208,)}
QUANTISED = [QType.F16, QType.BF16, QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1]
# The 32-element types whose block leads with an fp16 scale and, for the `_1` types, an fp16 min.
WITH_MIN = {QType.Q4_1, QType.Q5_1}


def ours(qtype: QType, raw: U8, n: int) -> F32:
    out = _engine.dequantize(int(qtype), np.ascontiguousarray(raw).tobytes(), n)
    return np.frombuffer(out, dtype=np.float32)


def reference(qtype: QType, raw: U8, n: int) -> F32:
    if qtype == QType.F32:
        return np.frombuffer(np.ascontiguousarray(raw).tobytes(), dtype=np.float32)
    return np.asarray(quants.dequantize(raw.reshape(-1).view(np.uint8), qtype), dtype=np.float32).reshape(n)


def ulp_distance(a: F32, b: F32) -> npt.NDArray[np.int64]:
    """Distance in representable float32 values (sign-magnitude bits mapped to a monotonic integer line)."""

    def line(x: F32) -> npt.NDArray[np.int64]:
        bits = x.view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    return np.asarray(np.abs(line(a) - line(b)), dtype=np.int64)


def assert_matches(qtype: QType, raw: U8, n: int) -> None:
    got, want = ours(qtype, raw, n), reference(qtype, raw, n)
    assert got.shape == want.shape == (n,)
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_got, nan_want), f"{qtype.name}: NaN positions differ"
    finite = ~nan_want
    distance = ulp_distance(got[finite], want[finite])
    worst = int(distance.max()) if distance.size else 0
    where = int(np.argmax(distance)) if distance.size else 0
    assert worst <= ULP_BOUND[qtype], (
        f"{qtype.name}: {worst} ulp apart at element {where}: ours {got[finite][where]!r}, "
        f"gguf {want[finite][where]!r} (bound {ULP_BOUND[qtype]} ulp)"
    )


def random_values(seed: int, n: int) -> F32:
    """Normal values at several scales, with exact zeros, a constant block and large magnitudes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * np.exp(rng.uniform(-12.0, 4.0, size=n // 32).repeat(32))
    x[:32] = 0.0
    x[32:64] = 1.5
    x[64:96] = rng.standard_normal(32) * 3000.0
    return x.astype(np.float32)


@pytest.mark.parametrize("qtype", QUANTISED, ids=lambda t: t.name)
def test_quantised_random_values_dequantise_like_gguf(qtype: QType) -> None:
    n = 32 * 4096
    values = random_values(seed=int(qtype), n=n).reshape(-1, 1024)
    raw = np.asarray(quants.quantize(values, qtype)).view(np.uint8)
    assert_matches(qtype, raw, n)


@pytest.mark.parametrize("qtype", [QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1], ids=lambda t: t.name)
def test_random_raw_blocks_dequantise_like_gguf(qtype: QType) -> None:
    """Arbitrary bytes, with every fp16 scale (and min) forced finite: subnormal, negative and huge
    scales included, which the quantiser never produces."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = 8192
    rng = np.random.default_rng(100 + int(qtype))
    raw = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
    halves = 2 if qtype in WITH_MIN else 1
    header = raw[:, : 2 * halves].copy().view(np.uint16)
    exponent_all_ones = (header & 0x7C00) == 0x7C00
    header[exponent_all_ones] &= 0xBFFF  # exponent 31 (inf/nan) becomes 15: finite
    header[:16] = np.arange(16, dtype=np.uint16)[:, None]  # subnormal scales, zero included
    raw[:, : 2 * halves] = header.view(np.uint8)
    assert np.isfinite(header.view(np.float16).astype(np.float32)).all()
    assert_matches(qtype, raw, blocks * block_elems)


@pytest.mark.parametrize("qtype", [QType.Q5_0, QType.Q5_1], ids=lambda t: t.name)
def test_q5_comparison_detects_one_changed_fifth_bit(qtype: QType) -> None:
    """Positive control: flipping one fifth bit (bit 19 of block 20's qh word) changes exactly that
    element of ours, by 16 times the block's scale, and the comparison with gguf still holds."""
    values = random_values(seed=11, n=32 * 64).reshape(-1, 256)
    raw = np.asarray(quants.quantize(values, qtype)).view(np.uint8).reshape(64, -1)
    changed = raw.copy()
    qh_offset = 4 if qtype in WITH_MIN else 2
    changed[20, qh_offset + 2] ^= 0x08
    before, after = ours(qtype, raw, 32 * 64), ours(qtype, changed, 32 * 64)
    assert np.flatnonzero(before != after).tolist() == [20 * 32 + 19]
    scale = float(raw[20, :2].copy().view(np.float16)[0])
    assert abs(float(after[20 * 32 + 19] - before[20 * 32 + 19])) == pytest.approx(16 * abs(scale))
    assert_matches(qtype, changed, 32 * 64)


def random_k_blocks(qtype: QType, blocks: int, seed: int) -> U8:
    """Arbitrary super-blocks whose fp16 scales are finite: the first 16 blocks' d (and dmin) run
    through subnormal values and zero, the rest are random with exponent 31 (inf/nan) made 15."""
    block_bytes = gguf.GGML_QUANT_SIZES[qtype][1]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(blocks, block_bytes), dtype=np.uint8)
    for offset in K_SCALE_OFFSETS[qtype]:
        half = raw[:, offset : offset + 2].copy().view(np.uint16)
        half[(half & 0x7C00) == 0x7C00] &= 0xBFFF
        half[:16] = np.arange(16, dtype=np.uint16)[:, None] * (offset + 1)
        assert np.isfinite(half.view(np.float16)).all()
        raw[:, offset : offset + 2] = half.view(np.uint8)
    return raw


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
def test_random_k_quant_blocks_dequantise_like_gguf(qtype: QType) -> None:
    blocks = 4096
    assert_matches(qtype, random_k_blocks(qtype, blocks, seed=200 + int(qtype)), blocks * 256)


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: t.name)
def test_k_quant_comparison_detects_one_changed_bit(qtype: QType) -> None:
    """Positive control: one bit of one 6-bit scale (Q4_K, Q5_K) or of a 5th/6th quant bit changes our
    output, only in that super-block, and the comparison with gguf still holds for the changed bytes."""
    raw = random_k_blocks(qtype, 32, seed=7)
    changed = raw.copy()
    # Q4_K/Q5_K: byte 4 + 8 holds sub-block 4's low scale bits; Q6_K: byte 128 holds quant high bits.
    byte = 12 if qtype != QType.Q6_K else 128
    changed[20, byte] ^= 0x01
    before, after = ours(qtype, raw, 32 * 256), ours(qtype, changed, 32 * 256)
    differs = np.flatnonzero(before != after)
    assert differs.size > 0
    assert differs.min() >= 20 * 256
    assert differs.max() < 21 * 256
    assert_matches(qtype, changed, 32 * 256)


def test_every_f16_and_bf16_bit_pattern() -> None:
    patterns = np.arange(65536, dtype=np.uint16).view(np.uint8)
    assert_matches(QType.F16, patterns, 65536)
    assert_matches(QType.BF16, patterns, 65536)


def test_comparison_detects_a_one_ulp_and_a_one_byte_change() -> None:
    """Positive controls: the comparison above rejects a 1-ulp error on a bit-exact type, and a
    changed scale byte changes our output."""
    values = random_values(seed=5, n=32 * 64).reshape(-1, 256)
    raw = np.asarray(quants.quantize(values, QType.Q8_0)).view(np.uint8).reshape(-1)
    want = reference(QType.Q8_0, raw, values.size)
    nudged = np.nextafter(want, np.float32(np.inf)).astype(np.float32)
    assert int(ulp_distance(nudged, want).max()) == 1
    changed = raw.copy()
    changed[34 * 40] ^= 0x01  # the low byte of block 40's scale
    got = ours(QType.Q8_0, changed, values.size)
    assert not np.array_equal(got, want)
    assert np.array_equal(got[: 32 * 40], want[: 32 * 40])


def test_real_model_tensors_dequantise_like_gguf(model_path: Path) -> None:
    reader = gguf.GGUFReader(str(model_path))
    by_type: dict[QType, list[gguf.ReaderTensor]] = {}
    for tensor in reader.tensors:
        by_type.setdefault(QType(tensor.tensor_type), []).append(tensor)
    assert set(by_type) == {QType.F32, QType.Q8_0, QType.Q4_1}
    checked = 0
    for qtype, tensors in by_type.items():
        # a few of each type: the first, one in the middle and the last in the file
        for tensor in {id(t): t for t in (tensors[0], tensors[len(tensors) // 2], tensors[-1])}.values():
            raw = np.asarray(tensor.data).view(np.uint8).reshape(-1)
            n = int(tensor.n_elements)
            if qtype == QType.Q8_0:
                # token_embd (28 M values): every 97th row of 576 values is plenty
                row_bytes = 576 // 32 * 34
                rows = raw.reshape(-1, row_bytes)[::97]
                raw, n = rows.reshape(-1), rows.shape[0] * 576
            assert_matches(qtype, raw, n)
            checked += 1
    assert checked >= 7
