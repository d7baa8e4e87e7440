"""Atheris fuzz target of `native.tokenizer`: text through a real vocabulary, and whole GGUF files
through the metadata reader and the vocabulary builder.

The first byte picks the mode. Text mode tokenises the rest (decoded as UTF-8 text) with the demo
model's vocabulary (SmolLM2, `smollm` pre-tokenizer; `MODEL_PATH` overrides it): every id is in the
vocabulary and the tokens' bytes are the text's (less the bytes the vocabulary has no token for), with
special parsing off and on; with FUZZ_TOKENIZER_REFERENCE=llama.cpp the ids must also equal llama.cpp's
(slower; it found the missing-byte difference `Tokenizer` now handles). File mode writes the rest to a
file and builds a tokenizer from it: a malformed file may only raise `TokenizerError`, and a file that
builds must tokenise. Any other exception, or a broken property, is a crash that libFuzzer keeps.

Run by `make fuzz` (native/Makefile), or: python native/fuzz/fuzz_tokenizer.py CORPUS_DIR [libFuzzer flags].
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from native import _gguf_meta, tokenizer
    from native.tokenizer import Tokenizer, TokenizerError

from tests.engine.conftest import MODEL_INSTALL_HINT, LlamaCppVocab, find_model_path

TEXT_MODE, FILE_MODE = 0, 1


def _model_path() -> Path:
    path = find_model_path()
    if path is None or not path.is_file():
        raise SystemExit(f"fuzz_tokenizer: the demo model is missing: {MODEL_INSTALL_HINT}")
    return path


VOCAB = Tokenizer(_model_path())
SCRATCH = Path(tempfile.mkdtemp(prefix="fuzz-tokenizer-")) / "input.gguf"
atexit.register(shutil.rmtree, SCRATCH.parent, ignore_errors=True)


# Bytes whose byte-level character is no token of the vocabulary (SmolLM2 lacks six control bytes):
# BPE drops them, as llama.cpp does, so the round trip gives the text without them.
_PIECES = frozenset(VOCAB._vocab.plain_pieces)
UNENCODABLE = frozenset(b for b in range(256) if bytes([b]) not in _PIECES)
REFERENCE = LlamaCppVocab(_model_path()) if os.environ.get("FUZZ_TOKENIZER_REFERENCE") == "llama.cpp" else None


def check_text(text: str) -> None:
    encodable = bytes(b for b in text.encode("utf-8") if b not in UNENCODABLE)
    for parse_special in (False, True):
        ids = VOCAB.tokenize(text, parse_special=parse_special)
        if not all(0 <= i < VOCAB.vocab_size for i in ids):
            raise AssertionError(f"an id outside the vocabulary for {text!r}")
        back = b"".join(VOCAB.token_bytes(i, render_special=parse_special) for i in ids)
        if back != encodable:
            raise AssertionError(f"round trip changed the text (parse_special={parse_special}): {text!r} -> {back!r}")
        if REFERENCE is not None and ids != REFERENCE.tokenize(text, parse_special=parse_special):
            raise AssertionError(f"ids differ from llama.cpp's (parse_special={parse_special}) for {text!r}")


def check_file(data: bytes) -> None:
    SCRATCH.write_bytes(data)
    try:
        # The vocabulary class itself: Tokenizer() would cache every input file for the process.
        vocabulary = tokenizer._Vocabulary(str(SCRATCH))
    except TokenizerError:
        return
    except _gguf_meta.GGUFMetadataError as exc:
        raise AssertionError("a metadata error escaped as itself, not as TokenizerError") from exc
    pieces = vocabulary.partition("hello <|im_start|> world", parse_special=True)
    ids = vocabulary.encode_pieces(pieces)
    if not all(0 <= i < len(vocabulary.tokens) for i in ids):
        raise AssertionError("an id outside the fuzzed vocabulary")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] % 2 == TEXT_MODE:
        check_text(data[1:].decode("utf-8", errors="replace"))
    else:
        check_file(data[1:])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
