"""A small, strictly bounds-checked reader of GGUF v2/v3 header metadata (never tensor data).

`native.tokenizer` needs only the key/value metadata at the front of a GGUF file, so this reads
the file sequentially and stops where the tensor infos begin. Every length and count is checked
against the bytes the file really has (and against fixed caps) before anything is allocated, so a
malformed or hostile file gives a `GGUFMetadataError` instead of a hang or a huge allocation.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Final

GGUF_MAGIC: Final = b"GGUF"
SUPPORTED_VERSIONS: Final = frozenset({2, 3})

# Caps far above any real file (SmolLM2 has 33 keys, 49152 tokens, a 400-byte template) but small
# enough that a lying header cannot make us allocate gigabytes before the bounds check fails.
MAX_KV_COUNT: Final = 65_536
MAX_STRING_BYTES: Final = 16 * 1024 * 1024
MAX_ARRAY_ITEMS: Final = 16 * 1024 * 1024
# Nested arrays: the C parser's limits (native/src/gguf.c), so that the tokenizer accepts the files
# the engine loads. The budget counts the strings and arrays inside arrays of arrays, file-wide.
MAX_ARRAY_DEPTH: Final = 8
MAX_NESTED_ELEMENTS: Final = 1 << 20
MAX_METADATA_BYTES: Final = 512 * 1024 * 1024

_CHUNK: Final = 1 << 20

# GGUF value types (gguf.h: enum gguf_type).
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)

# Fixed-size scalar types: struct format character and byte size.
_SCALARS: Final[dict[int, tuple[str, int]]] = {
    UINT8: ("B", 1),
    INT8: ("b", 1),
    UINT16: ("H", 2),
    INT16: ("h", 2),
    UINT32: ("I", 4),
    INT32: ("i", 4),
    FLOAT32: ("f", 4),
    BOOL: ("?", 1),
    UINT64: ("Q", 8),
    INT64: ("q", 8),
    FLOAT64: ("d", 8),
}

MetaValue = int | float | bool | str | list["MetaValue"]


class GGUFMetadataError(ValueError):
    """The file is not a GGUF file this reader accepts, or its metadata is malformed."""


class _Reader:
    """Sequential little-endian reads from a file, never past its real size."""

    def __init__(self, handle: BinaryIO, size: int, path: str) -> None:
        self._handle = handle
        self._size = size
        self._path = path
        self._buffer = b""
        self._buffer_pos = 0
        self.offset = 0  # absolute offset of the next unread byte
        self.nested_budget = MAX_NESTED_ELEMENTS

    @property
    def remaining(self) -> int:
        return self._size - self.offset

    def fail(self, what: str) -> GGUFMetadataError:
        return GGUFMetadataError(f"malformed GGUF metadata in {self._path!r} at byte {self.offset}: {what}")

    def read(self, n: int, what: str) -> bytes:
        if n < 0 or n > self.remaining:
            raise self.fail(f"{what} needs {n} bytes but only {self.remaining} remain (truncated or corrupt file)")
        if self.offset + n > MAX_METADATA_BYTES:
            raise self.fail(f"metadata larger than {MAX_METADATA_BYTES} bytes")
        available = len(self._buffer) - self._buffer_pos
        if available >= n:
            out = self._buffer[self._buffer_pos : self._buffer_pos + n]
            self._buffer_pos += n
        else:
            parts = [self._buffer[self._buffer_pos :]]
            missing = n - available
            # Read at least one chunk ahead so that the many small reads stay cheap.
            fresh = self._handle.read(max(missing, min(_CHUNK, self.remaining - available)))
            if len(fresh) < missing:
                raise self.fail(f"{what}: the file ended early (it changed while being read?)")
            parts.append(fresh[:missing])
            out = b"".join(parts)
            self._buffer = fresh
            self._buffer_pos = missing
        self.offset += n
        return out

    def scalar(self, value_type: int, what: str) -> int | float | bool:
        code, size = _SCALARS[value_type]
        value: int | float | bool = struct.unpack("<" + code, self.read(size, what))[0]
        return value

    def u32(self, what: str) -> int:
        return int(self.scalar(UINT32, what))

    def u64(self, what: str) -> int:
        return int(self.scalar(UINT64, what))

    def string(self, what: str) -> str:
        length = self.u64(f"{what} length")
        if length > MAX_STRING_BYTES:
            raise self.fail(f"{what} claims {length} bytes (limit {MAX_STRING_BYTES})")
        raw = self.read(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not valid UTF-8 ({exc.reason})") from None


def _read_value(reader: _Reader, value_type: int, what: str, depth: int = 0) -> MetaValue:
    if value_type in _SCALARS:
        return reader.scalar(value_type, what)
    if value_type == STRING:
        return reader.string(what)
    if value_type != ARRAY:
        raise reader.fail(f"{what} has unknown value type {value_type}")
    if depth >= MAX_ARRAY_DEPTH:
        raise reader.fail(f"{what} nests arrays deeper than {MAX_ARRAY_DEPTH}")
    item_type = reader.u32(f"{what} item type")
    count = reader.u64(f"{what} item count")
    if count > MAX_ARRAY_ITEMS:
        raise reader.fail(f"{what} claims {count} items (limit {MAX_ARRAY_ITEMS})")
    if item_type in (STRING, ARRAY) and (depth > 0 or item_type == ARRAY):
        if count > reader.nested_budget:
            raise reader.fail(f"{what}: nested arrays hold more than {MAX_NESTED_ELEMENTS} strings and arrays")
        reader.nested_budget -= count
    if item_type in _SCALARS:
        code, size = _SCALARS[item_type]
        if count * size > reader.remaining:
            raise reader.fail(f"{what} claims {count} items but only {reader.remaining} bytes remain")
        return list(struct.unpack(f"<{count}{code}", reader.read(count * size, what)))
    if item_type == STRING:
        # Each string needs at least its 8-byte length, so an absurd count fails here, not after a loop.
        if count * 8 > reader.remaining:
            raise reader.fail(f"{what} claims {count} strings but only {reader.remaining} bytes remain")
        return [reader.string(f"{what}[{i}]") for i in range(count)]
    if item_type == ARRAY:
        if count * 12 > reader.remaining:
            raise reader.fail(f"{what} claims {count} arrays but only {reader.remaining} bytes remain")
        return [_read_value(reader, ARRAY, f"{what}[{i}]", depth + 1) for i in range(count)]
    raise reader.fail(f"{what} has unknown item type {item_type}")


def read_metadata(path: str | os.PathLike[str]) -> dict[str, MetaValue]:
    """Return the GGUF file's key/value metadata; raise `GGUFMetadataError` if it is malformed."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            reader = _Reader(handle, size, name)
            magic = reader.read(4, "magic")
            if magic != GGUF_MAGIC:
                raise reader.fail(f"wrong magic {magic!r} (not a GGUF file)")
            version = reader.u32("version")
            if version not in SUPPORTED_VERSIONS:
                hint = " (a big-endian file?)" if version >= 1 << 16 else ""
                raise reader.fail(f"unsupported GGUF version {version}{hint}; supported: 2, 3")
            reader.u64("tensor count")
            kv_count = reader.u64("metadata key count")
            if kv_count > MAX_KV_COUNT:
                raise reader.fail(f"claims {kv_count} metadata keys (limit {MAX_KV_COUNT})")
            metadata: dict[str, MetaValue] = {}
            for index in range(kv_count):
                key = reader.string(f"key #{index}")
                if key in metadata:
                    raise reader.fail(f"duplicate key {key!r}")
                value_type = reader.u32(f"type of {key!r}")
                metadata[key] = _read_value(reader, value_type, repr(key))
            return metadata
    except OSError as exc:
        raise GGUFMetadataError(f"cannot read GGUF file {name!r}: {exc.strerror or exc}") from exc
