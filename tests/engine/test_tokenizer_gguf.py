"""`native.tokenizer` reads GGUF metadata strictly: malformed files give a clear `TokenizerError`.

Each hostile file is small; the checks prove that lying counts and lengths fail before anything big
is allocated (traced with tracemalloc), next to positive controls that load well-formed tiny files.
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers

from native._gguf_meta import read_metadata
from native.tokenizer import Tokenizer, TokenizerError

STRING, ARRAY, UINT32, INT32, BOOL, UINT8 = 8, 9, 4, 5, 7, 0
BYTE_ALPHABET = sorted(pre_tokenizers.ByteLevel.alphabet())
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _str(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, value_type: int, payload: bytes) -> bytes:
    return _str(key) + struct.pack("<I", value_type) + payload


def kv_string(key: str, value: str) -> bytes:
    return _kv(key, STRING, _str(value))


def kv_u32(key: str, value: int) -> bytes:
    return _kv(key, UINT32, struct.pack("<I", value))


def kv_bool(key: str, value: bool) -> bytes:
    return _kv(key, BOOL, struct.pack("<?", value))


def kv_strings(key: str, values: list[str]) -> bytes:
    return _kv(key, ARRAY, struct.pack("<IQ", STRING, len(values)) + b"".join(_str(v) for v in values))


def kv_i32s(key: str, values: list[int]) -> bytes:
    return _kv(key, ARRAY, struct.pack("<IQ", INT32, len(values)) + struct.pack(f"<{len(values)}i", *values))


def gguf(*kvs: bytes, version: int = 3, kv_count: int | None = None, tail: bytes = b"") -> bytes:
    count = len(kvs) if kv_count is None else kv_count
    return b"GGUF" + struct.pack("<IQQ", version, 0, count) + b"".join(kvs) + tail


def tiny_vocab_kvs(*, pre: str = "gpt2", model: str = "gpt2", types: list[int] | None = None) -> list[bytes]:
    """A byte-level BPE over the 256 byte symbols, a few merges and three control tokens."""
    merged = ["Ġt", "he", "Ġthe", "ll", "llo", "Ġw"]
    tokens = [*CONTROL, *BYTE_ALPHABET, *merged]
    token_types = types if types is not None else [3] * len(CONTROL) + [1] * (len(tokens) - len(CONTROL))
    return [
        kv_string("general.architecture", "llama"),
        kv_string("tokenizer.ggml.model", model),
        kv_string("tokenizer.ggml.pre", pre),
        kv_strings("tokenizer.ggml.tokens", tokens),
        kv_i32s("tokenizer.ggml.token_type", token_types),
        kv_strings("tokenizer.ggml.merges", ["Ġ t", "h e", "Ġt he", "l l", "ll o", "Ġ w"]),
        kv_u32("tokenizer.ggml.bos_token_id", 1),
        kv_u32("tokenizer.ggml.eos_token_id", 2),
        kv_bool("tokenizer.ggml.add_bos_token", False),
        kv_string(
            "tokenizer.chat_template", "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
        ),
    ]


def write(tmp_path: Path, data: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def load_error(path: Path) -> str:
    tracemalloc.start()
    try:
        with pytest.raises(TokenizerError) as info:
            Tokenizer(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024, f"refusing {path.name} allocated {peak} bytes"
    return str(info.value)


@pytest.mark.parametrize("pre", ["smollm", "gpt2", "qwen2", "llama-bpe", "llama3", "default"])
def test_a_well_formed_tiny_file_loads_for_every_supported_pre_tokenizer(tmp_path: Path, pre: str) -> None:
    path = write(tmp_path, gguf(*tiny_vocab_kvs(pre=pre)))
    tokenizer = Tokenizer(path)
    assert tokenizer.vocab_size == 3 + 256 + 6
    assert tokenizer.pre_tokenizer == pre
    ids = tokenizer.tokenize(" the hello", parse_special=False)
    assert ids[0] == 3 + 256 + 2  # "Ġthe", built by two merges
    assert tokenizer.detokenize(ids) == " the hello"
    assert tokenizer.tokenize("<|im_start|>x", parse_special=True)[0] == 1
    assert 1 not in tokenizer.tokenize("<|im_start|>x", parse_special=False)
    assert tokenizer.eos_ids == {0, 2}  # EOS plus <|endoftext|>, as llama.cpp does
    assert tokenizer.apply_chat_template([{"role": "user", "content": "<|im_end|>"}])[0] == 1


def test_read_metadata_reads_every_value_type(tmp_path: Path) -> None:
    scalars = [(0, "B", 200), (1, "b", -5), (2, "H", 60_000), (3, "h", -300), (4, "I", 4_000_000_000), (5, "i", -7),
               (6, "f", 0.5), (7, "?", True), (10, "Q", 2**63), (11, "q", -(2**62)), (12, "d", 1.25)]
    kvs = [_kv(f"k{t}", t, struct.pack("<" + code, value)) for t, code, value in scalars]
    nested = struct.pack("<IQ", ARRAY, 2) + struct.pack("<IQ", UINT8, 2) + b"\x01\x02"
    nested += struct.pack("<IQ", STRING, 1) + _str("z")
    kvs.append(_kv("nested", ARRAY, nested))
    kvs.append(kv_strings("strings", ["a", "", "ü"]))
    for version in (2, 3):
        metadata = read_metadata(write(tmp_path, gguf(*kvs, version=version)))
        assert [metadata[f"k{t}"] for t, _, _ in scalars] == [value for _, _, value in scalars]
        assert metadata["nested"] == [[1, 2], ["z"]]
        assert metadata["strings"] == ["a", "", "ü"]


def test_the_real_file_parses_like_the_gguf_package(model_path: Path) -> None:
    import gguf as gguf_package

    ours = read_metadata(model_path)
    reader = gguf_package.GGUFReader(model_path)
    theirs = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    assert ours == theirs


def test_wrong_magic(tmp_path: Path) -> None:
    assert "wrong magic" in load_error(write(tmp_path, b"GGML" + gguf(*tiny_vocab_kvs())[4:]))


@pytest.mark.parametrize("version", [0, 1, 4, 0x03000000])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    assert "unsupported GGUF version" in load_error(write(tmp_path, gguf(*tiny_vocab_kvs(), version=version)))


def test_truncated_files(tmp_path: Path, model_path: Path) -> None:
    with model_path.open("rb") as handle:
        head = handle.read(3_000_000)
    metadata_end = len(gguf(*tiny_vocab_kvs()))
    cuts = [0, 3, 4, 7, 15, 23, 24, 30, 1_000, 123_457, 800_000, 1_500_000]
    tiny = gguf(*tiny_vocab_kvs())
    for cut in cuts:
        message = load_error(write(tmp_path, head[:cut], f"real-{cut}.gguf"))
        assert "truncated" in message or "remain" in message, message
    for cut in range(0, metadata_end, 97):
        message = load_error(write(tmp_path, tiny[:cut], f"tiny-{cut}.gguf"))
        assert "truncated" in message or "remain" in message, message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (gguf(kv_count=2**63), "metadata keys"),
        (gguf(kv_count=60_000), "truncated"),
        (gguf(_str("k")[:8], kv_count=1), "truncated"),
        (gguf(struct.pack("<Q", 2**62) + b"k", kv_count=1), "claims"),
        (gguf(struct.pack("<Q", 10_000) + b"k", kv_count=1), "truncated"),
        (gguf(_kv("a", ARRAY, struct.pack("<IQ", STRING, 2**40)), kv_count=1), "claims"),
        (gguf(_kv("a", ARRAY, struct.pack("<IQ", STRING, 1_000_000)), kv_count=1), "remain"),
        (gguf(_kv("a", ARRAY, struct.pack("<IQ", INT32, 1_000_000))), "remain"),
        (gguf(_kv("a", ARRAY, struct.pack("<IQ", ARRAY, 1_000_000))), "remain"),
        (gguf(_kv("a", ARRAY, struct.pack("<IQ", STRING, 1) + struct.pack("<Q", 2**63))), "claims"),
        (gguf(_kv("a", ARRAY, struct.pack("<IQ", 99, 1) + b"\0" * 16)), "unknown item type"),
        (gguf(_kv("a", ARRAY, struct.pack("<IQ", ARRAY, 1) * 8 + struct.pack("<IQ", UINT8, 0))), "deeper"),
        (gguf(_kv("a", 13, b"\0" * 8)), "unknown value type"),
        (gguf(_str(b"\xff\xfe") + struct.pack("<I", BOOL) + b"\1"), "UTF-8"),
        (gguf(kv_bool("a", True), kv_bool("a", False)), "duplicate key"),
    ],
    ids=["absurd-kv-count", "kv-count-past-end", "short-key-length", "huge-key-length", "key-past-end",
         "absurd-array-count", "strings-past-end", "ints-past-end", "arrays-past-end", "huge-string-in-array",
         "unknown-item-type", "nesting-too-deep", "unknown-value-type", "invalid-utf8-key", "duplicate-key"],
)
def test_malformed_metadata_is_refused_without_big_allocations(tmp_path: Path, data: bytes, expected: str) -> None:
    message = load_error(write(tmp_path, data))
    assert expected in message
    assert "malformed GGUF metadata" in message


@pytest.mark.parametrize(
    ("kvs", "expected"),
    [
        ([kv_string("general.architecture", "llama")], "no tokenizer metadata"),
        (tiny_vocab_kvs(model="llama"), "tokenizer model 'llama' is not supported"),
        (tiny_vocab_kvs(model="bert"), "is not supported"),
        (tiny_vocab_kvs(pre="no-such-pre"), "pre-tokenizer 'no-such-pre' is not supported"),
        (tiny_vocab_kvs(types=[1, 1]), "token_type"),
        ([*tiny_vocab_kvs()[:6], kv_u32("tokenizer.ggml.bos_token_id", 10**6)], "outside the vocabulary"),
        ([kv_string("tokenizer.ggml.model", "gpt2"), kv_strings("tokenizer.ggml.tokens", ["a"])], "merges"),
        ([kv_u32("tokenizer.ggml.model", 2)], "wrong type"),
    ],
    ids=["no-tokenizer", "spm-not-yet", "unknown-model", "unknown-pre", "types-length", "bos-out-of-range",
         "no-merges", "model-not-a-string"],
)
def test_unsupported_or_inconsistent_tokenizers_are_refused(tmp_path: Path, kvs: list[bytes], expected: str) -> None:
    assert expected in load_error(write(tmp_path, gguf(*kvs)))


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="cannot open"):
        Tokenizer(tmp_path / "absent.gguf")
    with pytest.raises(TokenizerError, match="cannot read"):
        Tokenizer(tmp_path)
