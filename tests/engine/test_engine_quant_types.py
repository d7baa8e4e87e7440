"""Types: a tiny random-weight `llama` model written in F32, quantised by llama.cpp itself to each
type we run (every matrix to that one type, `pure`), gives logits close to llama.cpp's on the same file.

llama.cpp rounds activations as well as weights (to Q8 for the quantised matrices, to F16 or BF16
for those types), so the bounds are per type, set a few times above the differences measured when
they were written and below the error of the quantisation itself (the positive control: the F32
model's logits are further from the quantised model's than our engine is).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType as QType

from native import Engine
from tests.engine.llama_cpp_runtime import LlamaCppModel, llama_cpp_library
from tests.engine.test_engine_tiny_models import (
    GGUF_NAMES,
    TinyConfig,
    _permute_for_llama,
    add_hyperparameters,
    random_weights,
)

F32 = npt.NDArray[np.float32]

CFG = TinyConfig("llama", vocab=96, hidden=64, heads=4, kv_heads=2, ff=96, layers=2, context=128)
PROMPT = [int(t) for t in np.random.default_rng(3).integers(0, CFG.vocab, size=45)]

# type -> (llama.cpp file type, bounds on the max and the mean |ours - llama.cpp| over every logit of
# the prompt). The logits span about +-7 (standard deviation 1.6); measured when written (max / mean):
# F16 0.017 / 0.002, BF16 0.099 / 0.010, Q8_0 0.21 / 0.028, Q4_0 0.25 / 0.028, Q4_1 0.20 / 0.031,
# Q5_0 0.16 / 0.028, Q5_1 0.23 / 0.031, against llama.cpp's own distance from its F32 logits of 0.023,
# 0.14, 0.36, 3.5, 3.8, 2.4 and 2.6.
TYPES: dict[QType, tuple[str, float, float]] = {
    QType.F16: ("LLAMA_FTYPE_MOSTLY_F16", 0.04, 0.005),
    QType.BF16: ("LLAMA_FTYPE_MOSTLY_BF16", 0.2, 0.02),
    QType.Q8_0: ("LLAMA_FTYPE_MOSTLY_Q8_0", 0.4, 0.05),
    QType.Q4_0: ("LLAMA_FTYPE_MOSTLY_Q4_0", 0.5, 0.06),
    QType.Q4_1: ("LLAMA_FTYPE_MOSTLY_Q4_1", 0.5, 0.06),
    QType.Q5_0: ("LLAMA_FTYPE_MOSTLY_Q5_0", 0.5, 0.06),
    QType.Q5_1: ("LLAMA_FTYPE_MOSTLY_Q5_1", 0.5, 0.06),
}


def write_f32_model(path: Path) -> Path:
    """The tiny model, with a minimal byte-level vocabulary so that llama.cpp agrees to load it."""
    writer = gguf.GGUFWriter(str(path), CFG.architecture)
    add_hyperparameters(writer, CFG)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([chr(0x21 + i) for i in range(CFG.vocab)])
    writer.add_token_types([int(gguf.TokenType.NORMAL)] * CFG.vocab)
    writer.add_token_merges(['! "'])
    writer.add_eos_token_id(CFG.vocab - 1)
    for name, value in random_weights(CFG, seed=21).items():
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            out = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            out = f"blk.{layer}.{GGUF_NAMES[rest]}"
            if rest == "self_attn.q_proj.weight":
                value = _permute_for_llama(value, CFG.heads)
            elif rest == "self_attn.k_proj.weight":
                value = _permute_for_llama(value, CFG.kv_heads)
        writer.add_tensor(out, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def quantise(source: Path, target: Path, ftype_name: str) -> Path:
    lib = llama_cpp_library()
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, ftype_name)
    params.nthread = 1
    params.pure = True  # every matrix to the one type: no K-quant fallbacks for the output head
    status = lib.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    assert status == 0, f"llama_model_quantize returned {status}"
    return target


def llama_cpp_logits(path: Path) -> F32:
    # llama.cpp's plain CPU buffers: on CPUs with AMX its AMX buffers can crash the process
    model = LlamaCppModel(path, n_ctx=CFG.context, extra_buffers=False)
    try:
        return model.logits(PROMPT)
    finally:
        model.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quant-types")


@pytest.fixture(scope="module")
def f32_model(model_dir: Path) -> Path:
    return write_f32_model(model_dir / "tiny-f32.gguf")


@pytest.fixture(scope="module")
def f32_logits(f32_model: Path) -> F32:
    return llama_cpp_logits(f32_model)


@pytest.fixture(scope="module")
def quantised(f32_model: Path, model_dir: Path) -> dict[QType, Path]:
    return {qtype: quantise(f32_model, model_dir / f"tiny-{qtype.name}.gguf", spec[0]) for qtype, spec in TYPES.items()}


def test_f32_model_agrees_with_llama_cpp(f32_model: Path, f32_logits: F32) -> None:
    ours = Engine(f32_model, threads=2, n_ctx=CFG.context, n_ubatch=16).logits(PROMPT)
    diff = float(np.abs(ours - f32_logits).max())
    # llama.cpp keeps its KV cache in F16 even for an F32 model: measured 0.012
    assert diff < 0.03, diff


@pytest.mark.parametrize("qtype", list(TYPES), ids=lambda t: t.name)
def test_quantised_model_agrees_with_llama_cpp(
    qtype: QType, quantised: dict[QType, Path], f32_logits: F32, figures: Callable[[str], None]
) -> None:
    path = quantised[qtype]
    types = {QType(t.tensor_type) for t in gguf.GGUFReader(str(path)).tensors}
    assert types == {qtype, QType.F32}, f"llama.cpp wrote {sorted(t.name for t in types)}"
    _, bound, mean_bound = TYPES[qtype]
    theirs = llama_cpp_logits(path)
    ours = Engine(path, threads=2, n_ctx=CFG.context, n_ubatch=16).logits(PROMPT)
    assert ours.shape == theirs.shape == (len(PROMPT), CFG.vocab)
    diff = float(np.abs(ours - theirs).max())
    mean = float(np.abs(ours - theirs).mean())
    quantisation_error = float(np.abs(theirs - f32_logits).max())
    figures(f"quant types {qtype.name}: |ours - llama.cpp| max {diff:.5f} (bound {bound}), mean {mean:.5f} "
            f"(bound {mean_bound}); llama.cpp {qtype.name} vs its F32 max {quantisation_error:.5f}")
    assert diff <= bound, f"{qtype.name}: max |ours - llama.cpp| {diff} > {bound}"
    assert mean <= mean_bound, f"{qtype.name}: mean |ours - llama.cpp| {mean} > {mean_bound}"
    assert quantisation_error > diff, "the quantised model is no further from F32 than from us"
