"""llama.cpp as a numeric reference: a GGUF loaded through llama-cpp-python's low-level API (as the
engine baseline's harness drives it: one batch for the whole prompt, flash attention `auto`, F16 KV
cache), giving logits at every position, greedy continuations and mean-pooled embeddings.

The low-level API rather than the high-level `Llama` object, which leaves /dev/null handles open when
it silences llama.cpp. One compute thread by default: llama.cpp's OpenMP workers spin while they wait,
and on a loaded two-core machine two of them can run many times slower than one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


def llama_cpp_library() -> Any:
    """llama-cpp-python, initialised once, with llama.cpp's own logging silenced."""
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    llama_cpp.llama_log_set(_SILENT, None)
    llama_cpp.llama_backend_init()
    return llama_cpp


def _silent(_level: int, _text: bytes, _user_data: object) -> None:
    return None


def _make_silent() -> Any:
    import llama_cpp

    return llama_cpp.llama_log_callback(_silent)


_SILENT: Any = _make_silent()


class LlamaCppModel:
    """One model file and one context. `embeddings=True` makes a mean-pooling embedding context."""

    def __init__(
        self, path: Path, *, n_ctx: int = 1024, threads: int = 1, embeddings: bool = False, extra_buffers: bool = False
    ) -> None:
        lib = llama_cpp_library()
        self._lib = lib
        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = 0
        # False (the default) keeps the weights in llama.cpp's plain CPU buffers: no repacking, and none
        # of the AMX buffers its matmul uses on CPUs with AMX, which crash it on the AMX virtual
        # machines we run on (a segmentation fault on the first prompt). Without AMX the plain buffers
        # are what llama.cpp uses for our files anyway.
        model_params.use_extra_bufts = extra_buffers
        self._model = lib.llama_model_load_from_file(str(path).encode(), model_params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model)))
        self.n_embd = int(lib.llama_model_n_embd(self._model))
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        params.n_ubatch = min(n_ctx, 512)
        params.n_seq_max = 1
        params.n_threads = threads
        params.n_threads_batch = threads
        if embeddings:
            params.embeddings = True
            params.pooling_type = lib.LLAMA_POOLING_TYPE_MEAN
        self._ctx = lib.llama_init_from_model(self._model, params)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise RuntimeError("llama.cpp could not create a context")
        self._memory = lib.llama_get_memory(self._ctx)
        self._capacity = n_ctx
        self._batch = lib.llama_batch_init(n_ctx, 0, 1)

    def close(self) -> None:
        self._lib.llama_batch_free(self._batch)
        self._lib.llama_free(self._ctx)
        self._lib.llama_model_free(self._model)

    def _decode(self, tokens: Sequence[int], start: int, outputs: Sequence[bool]) -> None:
        if start + len(tokens) > self._capacity:
            raise ValueError(f"{start + len(tokens)} tokens exceed the reference context of {self._capacity}")
        batch = self._batch
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i] = int(token)
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1 if outputs[i] else 0
        status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")

    def _row(self, index: int) -> F32:
        pointer = self._lib.llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float32)

    def logits(self, ids: Sequence[int]) -> F32:
        """Logits at every position of `ids` (one batch, fresh cache), shape [len(ids), vocabulary]."""
        self._lib.llama_memory_clear(self._memory, True)
        self._decode(ids, 0, [True] * len(ids))
        return np.stack([self._row(i) for i in range(len(ids))])

    def greedy(self, prompt: Sequence[int], max_tokens: int, stop: frozenset[int] = frozenset()) -> list[int]:
        """llama.cpp's greedy continuation: the prompt in one batch, then one token per step; a token in
        `stop` ends it (and is kept)."""
        self._lib.llama_memory_clear(self._memory, True)
        self._decode(prompt, 0, [False] * (len(prompt) - 1) + [True])
        out: list[int] = []
        token = int(np.argmax(self._row(-1)))
        while True:
            out.append(token)
            if token in stop or len(out) >= max_tokens:
                return out
            self._decode([token], len(prompt) + len(out) - 1, [True])
            token = int(np.argmax(self._row(-1)))

    def embedding(self, ids: Sequence[int]) -> F32:
        """The mean-pooled embedding of `ids` (an `embeddings=True` context), not normalised."""
        self._lib.llama_memory_clear(self._memory, True)
        self._decode(ids, 0, [True] * len(ids))
        pointer = self._lib.llama_get_embeddings_seq(self._ctx, 0)
        if not pointer:
            raise RuntimeError("llama.cpp returned no pooled embedding")
        return np.ctypeslib.as_array(pointer, shape=(self.n_embd,)).astype(np.float32)
