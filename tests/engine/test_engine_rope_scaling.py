"""RoPE scaling: `linear` (positions divided by the factor) agrees with `transformers`' linear
scaling; `none` is a no-op; every other type is refused at load, by name, rather than run wrongly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import gguf
import numpy as np
import pytest

from native import Engine, EngineError
from tests.engine.test_engine_tiny_models import TinyConfig, random_weights, reference_logits, write_tiny_model

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

CFG = TinyConfig("llama", rope_scaling_factor=2.0)
# Long enough that the rotation angles at the far end differ clearly between factors 1 and 2.
IDS = [int(t) for t in np.random.default_rng(5).integers(0, CFG.vocab, size=60)]


@pytest.mark.parametrize("force_scalar", [False, True], ids=["simd", "scalar"])
def test_linear_scaling_equals_transformers(tmp_path: Path, force_scalar: bool) -> None:
    weights = random_weights(CFG, seed=13)
    path = write_tiny_model(tmp_path / "linear.gguf", CFG, weights)
    engine = Engine(path, threads=2, n_ctx=CFG.context, n_ubatch=16, force_scalar=force_scalar)
    assert engine.info.rope_freq_scale == 0.5
    ours = engine.logits(IDS)
    diff = float(np.abs(ours - reference_logits(CFG, weights, IDS)).max())
    assert diff < 1e-3, f"max |logit difference| {diff}"
    # The positive control: the unscaled reference is far from our scaled logits, so the
    # agreement above is the scaling's, not a coincidence of a weak test.
    unscaled = reference_logits(replace(CFG, rope_scaling_factor=None), weights, IDS)
    assert float(np.abs(ours - unscaled).max()) > 1e-2


def test_none_ignores_the_factor(tmp_path: Path) -> None:
    plain_cfg = replace(CFG, rope_scaling_factor=None)
    weights = random_weights(plain_cfg, seed=13)

    def none_with_factor(writer: gguf.GGUFWriter) -> None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.NONE)
        writer.add_rope_scaling_factor(4.0)

    plain_path = write_tiny_model(tmp_path / "plain.gguf", plain_cfg, weights)
    none_path = write_tiny_model(tmp_path / "none.gguf", plain_cfg, weights, none_with_factor)
    plain = Engine(plain_path, threads=1, n_ctx=CFG.context)
    none = Engine(none_path, threads=1, n_ctx=CFG.context)
    assert none.info.rope_freq_scale == 1.0
    assert np.array_equal(plain.logits(IDS), none.logits(IDS))


@pytest.mark.parametrize("scaling_type", ["yarn", "longrope", "dynamic"])
def test_unsupported_scaling_type_is_refused_by_name(tmp_path: Path, scaling_type: str) -> None:
    plain_cfg = replace(CFG, rope_scaling_factor=None)

    def scaled(writer: gguf.GGUFWriter) -> None:
        writer.add_string(gguf.Keys.Rope.SCALING_TYPE.format(arch=CFG.architecture), scaling_type)
        writer.add_rope_scaling_factor(4.0)
        writer.add_rope_scaling_orig_ctx_len(CFG.context)

    path = write_tiny_model(tmp_path / "scaled.gguf", plain_cfg, random_weights(plain_cfg, seed=1), scaled)
    with pytest.raises(EngineError) as info:
        Engine(path, threads=1)
    assert info.value.code == "unsupported"
    assert f"RoPE scaling type '{scaling_type}'" in str(info.value)
