"""Embeddings: `Engine.embed` (mean of the final-norm hidden states, L2-normalised) points the same
way as llama.cpp's mean-pooled embeddings of the same text (cosine at least 0.999), and behaves like an
embedding: paraphrases are closer than unrelated texts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from native import Engine
from tests.engine.conftest import LlamaCppVocab
from tests.engine.llama_cpp_runtime import LlamaCppModel

F64 = npt.NDArray[np.float64]

TEXTS = [
    "The cat sat quietly on the warm windowsill.",
    "A cat was resting calmly on the sunny window ledge.",
    "Quarterly revenue rose 12% while operating costs fell.",
    "def add(a, b):\n    return a + b\n",
    "SELECT name, COUNT(*) FROM orders GROUP BY name ORDER BY 2 DESC;",
    "ما هي عاصمة مصر؟ القاهرة مدينة كبيرة.",
    "Saya ingin memesan dua cangkir kopi susu, tolong.",
    "长城是中国古代的军事防御工程。",
    "3.14159 2.71828 1.41421 1.73205 42 1000000",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "  leading and trailing whitespace\t\n",
    "Hi",
    "🙂🚀 emoji and ümlauts: naïve café",
    (
        "The history of computing is a story of abstraction. Early machines were programmed by rewiring "
        "panels and setting switches, and every new problem meant physical work. Stored-program computers "
        "changed that: instructions became data, and data could be written, copied and modified."
    ),
]
MIN_COSINE = 0.999


@pytest.fixture(scope="module")
def llama_embedder(model_path: Path) -> Iterator[LlamaCppModel]:
    embedder = LlamaCppModel(model_path, n_ctx=512, embeddings=True)
    yield embedder
    embedder.close()


def llama_cpp_embed(embedder: LlamaCppModel, vocab: LlamaCppVocab, text: str) -> F64:
    """llama.cpp's mean-pooled embedding, L2-normalised as llama-cpp-python's `Llama.embed(text,
    normalize=True)` does it (each vector divided by its Euclidean norm), of llama.cpp's own tokens."""
    vector = embedder.embedding(vocab.tokenize(text)).astype(np.float64)
    return np.asarray(vector / np.linalg.norm(vector), dtype=np.float64)


@pytest.fixture(scope="module")
def engine(model_path: Path) -> Engine:
    return Engine(model_path, threads=2, n_ctx=512)


@pytest.fixture(scope="module")
def pairs(engine: Engine, llama_embedder: LlamaCppModel, llama_reference: LlamaCppVocab) -> list[tuple[F64, F64]]:
    return [
        (np.asarray(engine.embed(t), dtype=np.float64), llama_cpp_embed(llama_embedder, llama_reference, t))
        for t in TEXTS
    ]


def cosine(a: F64, b: F64) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_same_tokens_as_llama_cpp(engine: Engine, llama_reference: LlamaCppVocab) -> None:
    for text in TEXTS:
        assert engine.tokenize(text) == llama_reference.tokenize(text), text


def test_embeddings_match_llama_cpp(pairs: list[tuple[F64, F64]], figures: Callable[[str], None]) -> None:
    cosines = [cosine(ours, theirs) for ours, theirs in pairs]
    figures(f"embeddings vs llama.cpp: min cosine {min(cosines):.6f}, mean {np.mean(cosines):.6f}, {len(TEXTS)} texts")
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape == (576,)
        assert abs(np.linalg.norm(ours) - 1.0) < 1e-6
        assert abs(np.linalg.norm(theirs) - 1.0) < 1e-6
    worst = int(np.argmin(cosines))
    assert min(cosines) >= MIN_COSINE, f"cosine {cosines[worst]:.6f} on {TEXTS[worst]!r}; all {cosines}"


def test_cosine_check_rejects_another_texts_embedding(pairs: list[tuple[F64, F64]]) -> None:
    """Positive control: pairing our embedding of one text with llama.cpp's of another fails the bound,
    even for the closest pair of different texts (the two cat sentences)."""
    for i, (ours, _) in enumerate(pairs):
        for j, (_, theirs) in enumerate(pairs):
            if i != j:
                assert cosine(ours, theirs) < MIN_COSINE, (TEXTS[i], TEXTS[j])


def test_paraphrases_are_closer_than_unrelated_texts(engine: Engine) -> None:
    def embed(text: str) -> F64:
        return np.asarray(engine.embed(text), dtype=np.float64)

    cat, cat_paraphrase = embed(TEXTS[0]), embed(TEXTS[1])
    finance, sql = embed(TEXTS[2]), embed(TEXTS[4])
    assert cosine(cat, cat_paraphrase) > cosine(cat, finance)
    assert cosine(cat, cat_paraphrase) > cosine(cat, sql)
    assert cosine(cat, cat) == pytest.approx(1.0)
