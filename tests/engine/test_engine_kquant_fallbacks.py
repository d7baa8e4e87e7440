"""K-quant fallbacks: real models' widths are often not multiples of 256 (SmolLM2's 576, Qwen2.5-0.5B's
896), and llama.cpp's Q4_K_M and Q5_K_M then write those rows in 32-element types instead: Q4_K falls
back to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0. Tiny random-weight `llama` and `qwen2` models shaped like
SmolLM2 (width 192, feed-forward 512: only `ffn_down`'s rows are whole super-blocks) are quantised by
llama.cpp itself; the tests check the file really holds that mix, that every tensor dequantises as the
`gguf` package does, and that the logits agree with llama.cpp's on the same file, with the SIMD and the
portable kernels, within the bounds of the K-quant tests (test_engine_kquants.py). Measured when
written (max / mean |ours - llama.cpp|, identical with either kernel set; logits span about +-6):
llama Q4_K_M 0.25 / 0.035, Q5_K_M 0.21 / 0.037; qwen2 Q4_K_M 0.21 / 0.036, Q5_K_M 0.24 / 0.038,
against llama.cpp's own distance from its F32 logits of 1.8, 2.4, 2.1 and 1.4.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType as QType

from tests.engine.test_engine_kquants import (
    add_vocabulary,
    agreement_with_llama_cpp,
    architecture,
    conditioned_weights,
    dequantised_like_gguf,
    quantise,
)
from tests.engine.test_engine_tiny_models import TinyConfig, write_tiny_model

F32 = npt.NDArray[np.float32]

CONFIGS = {
    "llama": TinyConfig("llama", vocab=96, hidden=192, heads=3, kv_heads=1, ff=512, layers=2, context=128),
    "qwen2": TinyConfig("qwen2", vocab=96, hidden=192, heads=3, kv_heads=1, ff=512, layers=2, context=128,
                        tied=True, rope_theta=1e6),
}

# file type -> (llama.cpp's name for it, the K-quant types it writes for rows of 256, the types it falls
# back to for rows of 192, bounds on the max and the mean |ours - llama.cpp| over every logit)
FILE_TYPES: dict[str, tuple[str, set[QType], set[QType], float, float]] = {
    "Q4_K_M": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", {QType.Q4_K, QType.Q6_K}, {QType.Q5_0, QType.Q8_0}, 0.5, 0.06),
    "Q5_K_M": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", {QType.Q5_K, QType.Q6_K}, {QType.Q5_1, QType.Q8_0}, 0.5, 0.06),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The F32 file and its two llama.cpp quantisations, for one architecture."""
    cfg = CONFIGS[request.param]
    directory = tmp_path_factory.mktemp(f"kquant-fallbacks-{request.param}")
    f32 = write_tiny_model(directory / "tiny-f32.gguf", cfg, conditioned_weights(cfg), lambda w: add_vocabulary(w, cfg))
    files = {"F32": f32}
    for name, (ftype_name, *_) in FILE_TYPES.items():
        files[name] = quantise(f32, directory / f"tiny-{name}.gguf", ftype_name)
    return files


@pytest.mark.parametrize("file_type", list(FILE_TYPES))
def test_llama_cpp_falls_back_for_rows_that_are_not_super_blocks(models: dict[str, Path], file_type: str) -> None:
    """The premise: the file mixes K-quants (exactly the matrices whose rows are whole super-blocks)
    with the fallback types (every other matrix), so both kinds of kernel run below."""
    _, k_types, fallback_types, _, _ = FILE_TYPES[file_type]
    by_type: dict[QType, list[gguf.ReaderTensor]] = {}
    for tensor in gguf.GGUFReader(str(models[file_type])).tensors:
        by_type.setdefault(QType(tensor.tensor_type), []).append(tensor)
    assert set(by_type) == k_types | fallback_types | {QType.F32}, f"llama.cpp wrote {sorted(t.name for t in by_type)}"
    for qtype, tensors in by_type.items():
        for tensor in tensors:
            row = int(tensor.shape[0])
            if qtype in k_types:
                assert row % 256 == 0, f"{tensor.name}: {qtype.name} with rows of {row}"
            elif qtype in fallback_types:
                assert row % 256 != 0, f"{tensor.name}: {qtype.name} with rows of {row}"
                assert tensor.shape.size == 2, tensor.name
    assert all(tensor.name.endswith("ffn_down.weight") for t in k_types for tensor in by_type[t])


@pytest.mark.parametrize("force_scalar", [False, True], ids=["simd", "scalar"])
@pytest.mark.parametrize("file_type", list(FILE_TYPES))
def test_fallback_mix_agrees_with_llama_cpp(
    models: dict[str, Path], file_type: str, force_scalar: bool, figures: Callable[[str], None]
) -> None:
    path = models[file_type]
    cfg = CONFIGS[architecture(path)]
    _, _, _, bound, mean_bound = FILE_TYPES[file_type]
    types = {QType(t.tensor_type) for t in gguf.GGUFReader(str(path)).tensors}
    agreement = agreement_with_llama_cpp(path, models["F32"], cfg, force_scalar=force_scalar)
    engine = agreement.engine
    assert engine.info.tensor_types.keys() == {t.name for t in types}
    diff, mean, quantisation_error = agreement.max, agreement.mean, agreement.quantisation_error
    figures(f"k-quant fallbacks {cfg.architecture} {file_type} {engine.info.kernels} "
            f"({', '.join(sorted(t.name for t in types))}): |ours - llama.cpp| max {diff:.5f} (bound {bound}), "
            f"mean {mean:.5f} (bound {mean_bound}); llama.cpp {file_type} vs its F32 max {quantisation_error:.5f}")
    assert diff <= bound, f"{file_type}: max |ours - llama.cpp| {diff} > {bound}"
    assert mean <= mean_bound, f"{file_type}: mean |ours - llama.cpp| {mean} > {mean_bound}"
    assert quantisation_error > diff, "the quantised model is no further from F32 than from us"


def test_fallback_tensors_dequantise_like_gguf(models: dict[str, Path]) -> None:
    checked = dequantised_like_gguf(models[file_type] for file_type in FILE_TYPES)
    assert checked == {QType.Q4_K, QType.Q5_K, QType.Q6_K, QType.Q5_0, QType.Q5_1, QType.Q8_0}
