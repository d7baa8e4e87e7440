"""Exact architecture: tiny random-weight `llama` and `qwen2` models, written as F32 GGUF files, give
the same logits in our engine as in Hugging Face `transformers` built from the same weights."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt
import pytest

from native import Engine

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TinyConfig:
    architecture: str
    vocab: int = 96
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    ff: int = 96
    layers: int = 2
    rope_theta: float = 10000.0
    eps: float = 1e-6
    context: int = 128
    tied: bool = False
    rope_scaling_factor: float | None = None  # linear RoPE scaling


def random_weights(cfg: TinyConfig, seed: int) -> dict[str, F32]:
    """Hugging Face-named weights; biases only for qwen2, no output head when tied."""
    rng = np.random.default_rng(seed)
    head_dim = cfg.hidden // cfg.heads

    def mat(rows: int, cols: int, scale: float = 0.2) -> F32:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    w: dict[str, F32] = {"model.embed_tokens.weight": mat(cfg.vocab, cfg.hidden, 1.0)}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = (1.0 + 0.1 * rng.standard_normal(cfg.hidden)).astype(np.float32)
        w[p + "post_attention_layernorm.weight"] = (1.0 + 0.1 * rng.standard_normal(cfg.hidden)).astype(np.float32)
        w[p + "self_attn.q_proj.weight"] = mat(cfg.heads * head_dim, cfg.hidden)
        w[p + "self_attn.k_proj.weight"] = mat(cfg.kv_heads * head_dim, cfg.hidden)
        w[p + "self_attn.v_proj.weight"] = mat(cfg.kv_heads * head_dim, cfg.hidden)
        w[p + "self_attn.o_proj.weight"] = mat(cfg.hidden, cfg.heads * head_dim)
        w[p + "mlp.gate_proj.weight"] = mat(cfg.ff, cfg.hidden)
        w[p + "mlp.up_proj.weight"] = mat(cfg.ff, cfg.hidden)
        w[p + "mlp.down_proj.weight"] = mat(cfg.hidden, cfg.ff)
        if cfg.architecture == "qwen2":
            w[p + "self_attn.q_proj.bias"] = (0.1 * rng.standard_normal(cfg.heads * head_dim)).astype(np.float32)
            w[p + "self_attn.k_proj.bias"] = (0.1 * rng.standard_normal(cfg.kv_heads * head_dim)).astype(np.float32)
            w[p + "self_attn.v_proj.bias"] = (0.1 * rng.standard_normal(cfg.kv_heads * head_dim)).astype(np.float32)
    w["model.norm.weight"] = (1.0 + 0.1 * rng.standard_normal(cfg.hidden)).astype(np.float32)
    if not cfg.tied:
        w["lm_head.weight"] = mat(cfg.vocab, cfg.hidden)
    return w


def _permute_for_llama(weight: F32, heads: int) -> F32:
    """llama.cpp's converter reorders Q/K rows so that its rotary pairs are adjacent (2i, 2i+1)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def add_hyperparameters(writer: gguf.GGUFWriter, cfg: TinyConfig) -> None:
    """The architecture keys every tiny model file carries."""
    writer.add_block_count(cfg.layers)
    writer.add_context_length(cfg.context)
    writer.add_embedding_length(cfg.hidden)
    writer.add_feed_forward_length(cfg.ff)
    writer.add_head_count(cfg.heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_layer_norm_rms_eps(cfg.eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    if cfg.rope_scaling_factor is not None:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(cfg.rope_scaling_factor)


def write_tiny_model(
    path: Path,
    cfg: TinyConfig,
    weights: dict[str, F32],
    extra_metadata: Callable[[gguf.GGUFWriter], None] | None = None,
) -> Path:
    writer = gguf.GGUFWriter(str(path), cfg.architecture)
    add_hyperparameters(writer, cfg)
    writer.add_eos_token_id(cfg.vocab - 1)
    if extra_metadata is not None:
        extra_metadata(writer)
    for name, value in weights.items():
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            out = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            out = f"blk.{layer}.{GGUF_NAMES[rest]}"
            if cfg.architecture == "llama" and rest == "self_attn.q_proj.weight":
                value = _permute_for_llama(value, cfg.heads)
            elif cfg.architecture == "llama" and rest == "self_attn.k_proj.weight":
                value = _permute_for_llama(value, cfg.kv_heads)
        writer.add_tensor(out, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def reference_logits(cfg: TinyConfig, weights: dict[str, F32], ids: list[int]) -> F32:
    import torch
    import transformers

    common: dict[str, Any] = {
        "vocab_size": cfg.vocab,
        "hidden_size": cfg.hidden,
        "intermediate_size": cfg.ff,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "rms_norm_eps": cfg.eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.context,
        "tie_word_embeddings": cfg.tied,
    }
    if cfg.rope_scaling_factor is not None:
        common["rope_scaling"] = {"type": "linear", "factor": cfg.rope_scaling_factor}
    model: torch.nn.Module
    if cfg.architecture == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, attention_bias=False))
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    if cfg.tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(torch.tensor([ids])).logits[0]
    return np.asarray(out.numpy(), dtype=np.float32)


CONFIGS = [
    TinyConfig("llama"),
    TinyConfig("llama", tied=True, heads=8, kv_heads=2),
    TinyConfig("qwen2"),
    TinyConfig("qwen2", tied=True, rope_theta=1e6),
]


def _config_id(c: TinyConfig) -> str:
    return f"{c.architecture}-{'tied' if c.tied else 'separate'}-{c.heads}h{c.kv_heads}kv"


@pytest.mark.parametrize("cfg", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("force_scalar", [False, True], ids=["simd", "scalar"])
def test_logits_equal_transformers(tmp_path: Path, cfg: TinyConfig, force_scalar: bool) -> None:
    weights = random_weights(cfg, seed=7)
    path = write_tiny_model(tmp_path / "tiny.gguf", cfg, weights)
    ids = [int(t) for t in np.random.default_rng(3).integers(0, cfg.vocab, size=45)]
    # n_ubatch 16: the 45-token prompt runs in three chunks, the later ones attending to the earlier
    engine = Engine(path, threads=2, n_ctx=cfg.context, n_ubatch=16, force_scalar=force_scalar)
    ours = engine.logits(ids)
    ref = reference_logits(cfg, weights, ids)
    assert ours.shape == ref.shape
    diff = float(np.abs(ours - ref).max())
    assert diff < 1e-3, f"max |logit difference| {diff}"
    assert engine.info.architecture == cfg.architecture
    assert engine.info.kernels == ("scalar" if force_scalar else engine.info.kernels)


def test_incremental_decoding_matches_full_prompt(tmp_path: Path) -> None:
    cfg = TinyConfig("qwen2")
    path = write_tiny_model(tmp_path / "tiny.gguf", cfg, random_weights(cfg, seed=11))
    engine = Engine(path, threads=2, n_ctx=cfg.context)
    prompt = [5, 17, 33, 2, 90]
    result = engine.generate(prompt, max_tokens=12)
    assert result.finish_reason in {"length", "stop"}
    full = engine.logits(prompt + result.tokens)
    # each generated token is the argmax of the logits at the previous position, prompt included
    expected = [int(np.argmax(full[len(prompt) - 1 + i])) for i in range(len(result.tokens))]
    assert result.tokens == expected
