"""K-quants: tiny random-weight `llama` and `qwen2` models written in F32 and quantised by llama.cpp
itself to Q4_K_M and Q5_K_M (its own mix: Q4_K or Q5_K for most matrices, Q6_K for some attn_v,
ffn_down and the output head) give logits close to llama.cpp's on the same file, with the SIMD and
the portable kernels; the K-quant tensors llama.cpp wrote dequantise exactly as the `gguf` package does.

K-quants need rows that are whole super-blocks of 256, or llama.cpp falls back to other types, so
every row length here (hidden size, feed-forward size, heads x head size) is a multiple of 256, and
the tests check the file really holds the K-quant types. llama.cpp quantises the activations of a
K-quant product to Q8_K (one scale per 256 values); we keep our 32-value Q8 blocks, so the bounds
are set a few times above the differences measured when they were written and below the error of
the quantisation itself (the positive control: the F32 model's logits are further from the quantised
model's than our engine is).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType as QType
from gguf import quants

from native import Engine
from tests.engine.llama_cpp_runtime import LlamaCppModel, llama_cpp_library
from tests.engine.test_engine_tiny_models import TinyConfig, random_weights, write_tiny_model

F32 = npt.NDArray[np.float32]

CONFIGS = {
    "llama": TinyConfig("llama", vocab=96, hidden=256, heads=4, kv_heads=2, ff=512, layers=2, context=128),
    "qwen2": TinyConfig("qwen2", vocab=96, hidden=256, heads=4, kv_heads=2, ff=512, layers=2, context=128,
                        tied=True, rope_theta=1e6),
}
PROMPT = [int(t) for t in np.random.default_rng(3).integers(0, 96, size=45)]

# file type -> (llama.cpp's name for it, the K-quant types it must hold, bounds on the max and the mean
# |ours - llama.cpp| over every logit of the prompt). Measured when written (max / mean): see FIGURES.
FILE_TYPES: dict[str, tuple[str, set[QType], float, float]] = {
    "Q4_K_M": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", {QType.Q4_K, QType.Q6_K}, 0.5, 0.06),
    "Q5_K_M": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", {QType.Q5_K, QType.Q6_K}, 0.5, 0.06),
}


def add_vocabulary(writer: gguf.GGUFWriter, cfg: TinyConfig) -> None:
    """A minimal byte-level vocabulary, so that llama.cpp agrees to load the file."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([chr(0x21 + i) for i in range(cfg.vocab)])
    writer.add_token_types([int(gguf.TokenType.NORMAL)] * cfg.vocab)
    writer.add_token_merges(['! "'])


def conditioned_weights(cfg: TinyConfig) -> dict[str, F32]:
    """The tiny models' random weights, with every matrix but the embeddings scaled by sqrt(64 / its
    row length): at the tiny models' width of 64 each layer keeps the activations' size, while at 256
    unscaled matrices would double it per layer and make the logits chaotic (a rounding at the input
    changing them by whole units), which no comparison of roundings could use. Tied embeddings are
    also the output head, so they get the untied head's size (standard deviation 0.2 * sqrt(64 / 256))."""
    weights = random_weights(cfg, seed=21)
    for name, value in weights.items():
        if name == "model.embed_tokens.weight" and cfg.tied:
            weights[name] = (value * np.float32(0.2 * np.sqrt(64.0 / cfg.hidden))).astype(np.float32)
        elif value.ndim == 2 and name != "model.embed_tokens.weight":
            weights[name] = (value * np.float32(np.sqrt(64.0 / value.shape[1]))).astype(np.float32)
    return weights


def quantise(source: Path, target: Path, ftype_name: str) -> Path:
    lib = llama_cpp_library()
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, ftype_name)
    params.nthread = 1
    status = lib.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    assert status == 0, f"llama_model_quantize returned {status}"
    return target


def llama_cpp_logits(path: Path, cfg: TinyConfig) -> F32:
    # llama.cpp's plain CPU kernels (vec_dot against Q8_K): on CPUs with AMX, this build's AMX matmul,
    # which takes rows of 256 and more, crashes the process
    model = LlamaCppModel(path, n_ctx=cfg.context, extra_buffers=False)
    try:
        return model.logits(PROMPT)
    finally:
        model.close()


@pytest.fixture(scope="module", params=list(CONFIGS))
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The F32 file and its two llama.cpp quantisations, for one architecture."""
    cfg = CONFIGS[request.param]
    directory = tmp_path_factory.mktemp(f"kquants-{request.param}")
    f32 = write_tiny_model(directory / "tiny-f32.gguf", cfg, conditioned_weights(cfg), lambda w: add_vocabulary(w, cfg))
    files = {"F32": f32}
    for name, (ftype_name, _, _, _) in FILE_TYPES.items():
        files[name] = quantise(f32, directory / f"tiny-{name}.gguf", ftype_name)
    return files


def architecture(path: Path) -> str:
    field = gguf.GGUFReader(str(path)).fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


@pytest.mark.parametrize("force_scalar", [False, True], ids=["simd", "scalar"])
@pytest.mark.parametrize("file_type", list(FILE_TYPES))
def test_k_quant_model_agrees_with_llama_cpp(
    models: dict[str, Path], file_type: str, force_scalar: bool, figures: Callable[[str], None]
) -> None:
    path = models[file_type]
    cfg = CONFIGS[architecture(path)]
    _, k_types, bound, mean_bound = FILE_TYPES[file_type]
    types = {QType(t.tensor_type) for t in gguf.GGUFReader(str(path)).tensors}
    assert types == k_types | {QType.F32}, f"llama.cpp wrote {sorted(t.name for t in types)}"
    agreement = agreement_with_llama_cpp(path, models["F32"], cfg, force_scalar=force_scalar)
    engine, theirs = agreement.engine, agreement.theirs
    assert engine.info.tensor_types.keys() == {t.name for t in types}
    diff, mean, quantisation_error = agreement.max, agreement.mean, agreement.quantisation_error
    figures(f"k-quants {cfg.architecture} {file_type} {engine.info.kernels}: |ours - llama.cpp| max {diff:.5f} "
            f"(bound {bound}), mean {mean:.5f} (bound {mean_bound}); logits span {float(np.abs(theirs).max()):.2f}; "
            f"llama.cpp {file_type} vs its F32 max {quantisation_error:.5f}")
    assert diff <= bound, f"{file_type}: max |ours - llama.cpp| {diff} > {bound}"
    assert mean <= mean_bound, f"{file_type}: mean |ours - llama.cpp| {mean} > {mean_bound}"
    assert quantisation_error > diff, "the quantised model is no further from F32 than from us"


def test_llama_cpp_k_quant_tensors_dequantise_like_gguf(models: dict[str, Path]) -> None:
    checked = dequantised_like_gguf(models[file_type] for file_type in FILE_TYPES)
    assert checked == {QType.Q4_K, QType.Q5_K, QType.Q6_K}


@dataclass
class Agreement:
    """Our logits of PROMPT against llama.cpp's on the same quantised file."""

    engine: Engine
    theirs: F32
    max: float
    mean: float
    quantisation_error: float
    """llama.cpp on the quantised file against llama.cpp on the F32 one (largest |difference|)."""


def agreement_with_llama_cpp(path: Path, f32_path: Path, cfg: TinyConfig, *, force_scalar: bool) -> Agreement:
    theirs = llama_cpp_logits(path, cfg)
    engine = Engine(path, threads=2, n_ctx=cfg.context, n_ubatch=16, force_scalar=force_scalar)
    assert engine.info.kernels != "scalar" or force_scalar
    ours = engine.logits(PROMPT)
    assert ours.shape == theirs.shape == (len(PROMPT), cfg.vocab)
    return Agreement(
        engine=engine,
        theirs=theirs,
        max=float(np.abs(ours - theirs).max()),
        mean=float(np.abs(ours - theirs).mean()),
        quantisation_error=float(np.abs(theirs - llama_cpp_logits(f32_path, cfg)).max()),
    )


def dequantised_like_gguf(paths: Iterable[Path]) -> set[QType]:
    """Every quantised tensor of the files dequantises bit-identically to the gguf package; returns the
    types seen."""
    checked: set[QType] = set()
    for path in paths:
        for tensor in gguf.GGUFReader(str(path)).tensors:
            qtype = QType(tensor.tensor_type)
            if qtype == QType.F32:
                continue
            raw = np.asarray(tensor.data).view(np.uint8).reshape(-1)
            n = int(tensor.n_elements)
            got = np.frombuffer(_engine_dequantize(qtype, raw, n), dtype=np.float32)
            want = np.asarray(quants.dequantize(raw, qtype), dtype=np.float32).reshape(n)
            assert np.array_equal(got, want), f"{tensor.name} ({qtype.name}) differs from gguf's dequantisation"
            checked.add(qtype)
    return checked


def _engine_dequantize(qtype: QType, raw: npt.NDArray[np.uint8], n: int) -> bytes:
    from native import _engine

    return bytes(_engine.dequantize(int(qtype), raw.tobytes(), n))
