"""Nested arrays in GGUF metadata: the C parser reads them (as `Engine.metadata()` lists) exactly
as the pure-Python reader does, and refuses hostile ones (too deep, too many, counts that cannot
fit, truncations) with a clear `EngineError`. The small hostile files are also kept in
`native/fuzz/corpus/` for the fuzz target, next to a valid metadata-only seed."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import pytest

from native import Engine, EngineError
from native._gguf_meta import GGUFMetadataError, read_metadata
from tests.engine.test_engine_tiny_models import TinyConfig, random_weights, write_tiny_model

CORPUS = Path(__file__).resolve().parents[2] / "native" / "fuzz" / "corpus"
CFG = TinyConfig("llama", vocab=64, hidden=32, heads=2, kv_heads=1, ff=64, context=32)
UINT8, INT8, INT32, STRING, ARRAY = 0, 1, 5, 8, 9

NESTED: dict[str, list[object]] = {
    "test.strings": [["ab", "cde"], ["", "ü"], ["f"]],
    "test.ints": [[1, -2, 3], [4], [-5, 6]],
    "test.arrays_of_arrays": [[[1.5, 2.5], [3.5]], [[4.5]]],
}


def _str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _array_kv(key: str, body: bytes) -> bytes:
    return _str(key) + struct.pack("<I", ARRAY) + body


def _metadata_only(*kvs: bytes) -> bytes:
    """A GGUF v3 file with these metadata entries and no tensors."""
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs) + 1)
    architecture = _str("general.architecture") + struct.pack("<I", STRING) + _str("llama")
    return head + architecture + b"".join(kvs)


def _deep(depth: int) -> bytes:
    """`depth` arrays, each holding the next, around one uint8."""
    return struct.pack("<IQ", ARRAY, 1) * (depth - 1) + struct.pack("<IQ", UINT8, 1) + b"\x07"


def _nested_seed() -> bytes:
    strings = struct.pack("<IQ", ARRAY, 2) + struct.pack("<IQ", STRING, 2) + _str("ab") + _str("cde")
    strings += struct.pack("<IQ", STRING, 0)
    ints = struct.pack("<IQ", ARRAY, 2) + struct.pack("<IQ", INT32, 2) + struct.pack("<2i", 1, -2)
    ints += struct.pack("<IQ", INT32, 1) + struct.pack("<i", 3)
    return _metadata_only(_array_kv("strings", strings), _array_kv("ints", ints), _array_kv("deep", _deep(8)))


def _with_nested(writer: gguf.GGUFWriter) -> None:
    for key, value in NESTED.items():
        writer.add_array(key, value)


def test_the_gguf_writer_nests_arrays_as_the_format_says(tmp_path: Path) -> None:
    """The writer is our reference for the encoding; check it against hand-packed bytes once."""
    path = tmp_path / "writer.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("test.ints", [[1], [2, 3]])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    expected = struct.pack("<IQ", ARRAY, 2) + struct.pack("<IQi", INT32, 1, 1) + struct.pack("<IQ2i", INT32, 2, 2, 3)
    assert _array_kv("test.ints", expected) in path.read_bytes()


def test_engine_reads_nested_arrays_as_nested_lists(tmp_path: Path) -> None:
    path = write_tiny_model(tmp_path / "nested.gguf", CFG, random_weights(CFG, seed=1), _with_nested)
    engine = Engine(path, threads=1, n_ctx=CFG.context)
    metadata = engine.metadata()
    for key, value in NESTED.items():
        assert metadata[key] == value
    # the C parser and the tokenizer's pure-Python reader agree on the whole file
    assert metadata == read_metadata(path)
    assert engine.logits([1, 2, 3]).shape == (3, CFG.vocab)


def test_the_nested_seed_parses_at_the_depth_limit(tmp_path: Path) -> None:
    """The positive control of the refusals below: eight levels are allowed."""
    data = _nested_seed()
    (CORPUS / "seed_nested_arrays.gguf").write_bytes(data)
    path = tmp_path / "seed.gguf"
    path.write_bytes(data)
    metadata = read_metadata(path)
    assert metadata["strings"] == [["ab", "cde"], []]
    assert metadata["ints"] == [[1, -2], [3]]
    assert metadata["deep"] == [[[[[[[[7]]]]]]]]
    # no tensors: the engine gets past the whole of the metadata and stops at the missing hyperparameters
    with pytest.raises(EngineError, match="block_count") as info:
        Engine(path, threads=1)
    assert info.value.code == "format"


HOSTILE: dict[str, tuple[bytes, str, str]] = {
    "nested_too_deep": (_metadata_only(_array_kv("deep", _deep(9))), "unsupported", "nested 9 deep (the limit is 8)"),
    "nested_count_cannot_fit": (
        _metadata_only(_array_kv("huge", struct.pack("<IQ", ARRAY, 2**40) + struct.pack("<IQ", UINT8, 0))),
        "format",
        "array of 1099511627776 arrays runs past the end",
    ),
    "nested_strings_cannot_fit": (
        _metadata_only(_array_kv("huge", struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", STRING, 2**61))),
        "format",
        "array of 2305843009213693952 strings runs past the end",
    ),
    "nested_truncated": (_nested_seed()[:-20], "format", "runs past the end"),
    "nested_unknown_element_type": (
        _metadata_only(_array_kv("odd", struct.pack("<IQ", ARRAY, 1) + struct.pack("<IQ", 13, 1) + b"\0" * 8)),
        "format",
        "unknown array element type 13",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_nested_arrays_are_clear_errors(tmp_path: Path, name: str) -> None:
    data, code, message = HOSTILE[name]
    (CORPUS / f"{name}.gguf").write_bytes(data)
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(data)
    with pytest.raises(EngineError) as info:
        Engine(path, threads=1)
    assert info.value.code == code, str(info.value)
    assert message in str(info.value)
    with pytest.raises(GGUFMetadataError):
        read_metadata(path)


def test_the_nested_element_budget_is_per_file(tmp_path: Path) -> None:
    """2^20 nested strings and arrays in all: 600,000 empty arrays under one key load, under two
    keys they do not. (At 12 bytes an array, these files are too large for the fuzz corpus.)"""
    many = struct.pack("<IQ", ARRAY, 600_000) + struct.pack("<IQ", INT8, 0) * 600_000
    one, two = tmp_path / "one.gguf", tmp_path / "two.gguf"
    one.write_bytes(_metadata_only(_array_kv("many0", many)))
    two.write_bytes(_metadata_only(_array_kv("many0", many), _array_kv("many1", many)))
    with pytest.raises(EngineError, match="block_count"):
        Engine(one, threads=1)
    arrays = read_metadata(one)["many0"]
    assert isinstance(arrays, list)
    assert len(arrays) == 600_000
    with pytest.raises(EngineError) as info:
        Engine(two, threads=1)
    assert info.value.code == "unsupported"
    assert "'many1': nested arrays hold more than 1048576 strings and arrays" in str(info.value)
    with pytest.raises(GGUFMetadataError, match="nested arrays hold more than 1048576"):
        read_metadata(two)
