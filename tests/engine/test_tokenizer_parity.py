"""`native.tokenizer` against llama.cpp on the real model: identical ids, pieces and end-of-generation set.

The strings are generated deterministically from fragments of many scripts, code, numbers, emoji,
whitespace runs and special-token look-alikes, and each is tokenised with special parsing off and on.
"""

# The strings hold confusable characters (full-width digits, look-alike letters) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import random
from pathlib import Path

import pytest

from native.tokenizer import Tokenizer
from tests.engine.conftest import LlamaCppVocab

N_GENERATED = 2_200
SEED = 20_261_128

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "It's", "don't", "we'll", "I'M", "they've", "she'd", "You're", "O'Reilly's",
    "Hello, world!", "Mr. Smith went to Washington.", "e-mail", "state-of-the-art", "U.S.A.",
    "pneumonoultramicroscopicsilicovolcanoconiosis", "ALL CAPS SENTENCE", "camelCaseIdentifier",
    "snake_case_identifier", "(parenthetical)", "\"quoted\"", "'single'", "...", "?!", "--", "café", "naïve",
]
CODE = [
    "def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {", "    }\n", "#include <stdio.h>",
    "x = {'a': [1, 2, 3]}", "SELECT * FROM t WHERE id = 42;", "console.log(`${a} + ${b}`);",
    "\t\tif x:\n\t\t\tpass", "fn main() -> Result<(), Box<dyn Error>> {", "a && b || !c", "x<<=2; y>>=3;",
    "<div class=\"x\">hi</div>", "https://example.com/path?q=1&r=2#frag", "C:\\Users\\me\\file.txt",
    "```python\nprint('hi')\n```", "// comment", "/* block */", "@decorator", "$HOME/bin", "0xDEADBEEF",
]
ARABIC = ["مرحبا بالعالم", "اللغة العربية جميلة", "٣٤٥ ١٢", "كتاب", "السلام عليكم ورحمة الله"]
INDONESIAN = [
    "Selamat pagi, apa kabar?", "Saya sedang belajar bahasa Indonesia.", "Terima kasih banyak!", "berjalan-jalan",
]
CHINESE = ["你好，世界！", "机器学习是人工智能的一个分支。", "中华人民共和国", "《红楼梦》"]
JAPANESE = ["こんにちは世界", "東京は日本の首都です。", "カタカナ", "ｶﾀｶﾅ半角", "日本語のテキスト"]
HINDI = ["नमस्ते दुनिया", "हिन्दी भाषा", "क्षत्रिय", "१२३"]
OTHER_SCRIPTS = [
    "Привет, мир", "Γειά σου Κόσμε", "שלום עולם", "สวัสดีชาวโลก", "안녕하세요 세계", "Xin chào thế giới",
    "Ζ̶a̷l̸g̴o̵", "e\u0301", "ﬁ ligature", "Ｆｕｌｌｗｉｄｔｈ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ǅ", "İstanbul", "straße",
]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇮🇩", "🧑🏿‍💻", "🤖", "✨🚀", "☃", "#️⃣", "👩‍❤️‍💋‍👨"]
WHITESPACE = [
    " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n\n", "   \t ", "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c", "\r",
    " \n ",
]
SPECIAL_LOOKING = [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<reponame>", "<file_sep>", "<jupyter_code>",
    "<|im_start|>system\n", "<|im_sta", "rt|>", "<s>", "</s>", "<|eot_id|>", "<|im_end|>\n<|im_start|>user",
    "<<|im_end|>>", "<|im_start|><|im_start|>", "< |im_start| >", "<empty_output>", "<gh_stars>",
]
CONTROL_CHARS = ["\x00", "\x01", "\x7f", "\u200b", "\u200d", "\ufeff", "\ufffd", "\U0010fffd"]


def _number(rng: random.Random) -> str:
    choice = rng.randrange(8)
    if choice == 0:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 80)))
    if choice == 1:
        return f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 9)}f}"
    if choice == 2:
        return f"{rng.randint(0, 10**12):,}"
    if choice == 3:
        return f"{rng.random():.3e}"
    return rng.choice(["１２３", "²³", "Ⅻ", "½", "٣", "०१२", "3rd", "v1.2.3", "10%", "$9.99", "-42", "+1"])


def _long_word(rng: random.Random) -> str:
    alphabet = rng.choice(["abcdefghijklmnopqrstuvwxyz", "абвгдежз", "αβγδεζ", "の日本語", "ab1_", "!?#*"])
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(40, 600)))


def _random_code_points(rng: random.Random) -> str:
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
              (0xE00, 0xE7F), (0x1100, 0x11FF), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
              (0x1F300, 0x1FAFF), (0x300, 0x36F), (0x2000, 0x206F)]
    low, high = rng.choice(ranges)
    return "".join(chr(rng.randint(low, high)) for _ in range(rng.randint(1, 12)))


POOLS = [ENGLISH, CODE, ARABIC, INDONESIAN, CHINESE, JAPANESE, HINDI, OTHER_SCRIPTS, EMOJI, WHITESPACE,
         SPECIAL_LOOKING, CONTROL_CHARS]


def generate_strings(count: int = N_GENERATED, seed: int = SEED) -> list[str]:
    """Deterministic varied strings: fragments from the pools above joined by random separators."""
    rng = random.Random(seed)
    fixed = ["", " ", "\n", "\r\n", "a", "  leading", "trailing  ", "\t\tindent", "1" * 200, "😀" * 30, " " * 100]
    fixed += [text for pool in POOLS for text in pool]
    out = list(fixed)
    while len(out) < count:
        parts: list[str] = []
        for _ in range(rng.randint(1, 8)):
            kind = rng.randrange(len(POOLS) + 3)
            if kind < len(POOLS):
                parts.append(rng.choice(POOLS[kind]))
            elif kind == len(POOLS):
                parts.append(_number(rng))
            elif kind == len(POOLS) + 1:
                parts.append(_long_word(rng) if rng.random() < 0.3 else _random_code_points(rng))
            else:
                parts.append(_random_code_points(rng))
            parts.append(rng.choice(["", " ", " ", "", rng.choice(WHITESPACE)]))
        out.append("".join(parts))
    return out


STRINGS = generate_strings()


@pytest.fixture(scope="module")
def tokenizer(model_path: Path) -> Tokenizer:
    return Tokenizer(model_path)


def _mismatches(tokenizer: Tokenizer, reference: LlamaCppVocab, *, parse_special: bool) -> list[str]:
    bad: list[str] = []
    for text in STRINGS:
        ours = tokenizer.tokenize(text, parse_special=parse_special)
        theirs = reference.tokenize(text, parse_special=parse_special)
        if ours != theirs:
            bad.append(f"{text!r}: ours {ours[:20]} llama.cpp {theirs[:20]}")
    return bad


def test_the_generated_strings_are_many_and_varied() -> None:
    assert len(STRINGS) >= 2_000
    assert len(set(STRINGS)) >= 1_900
    joined = "".join(STRINGS)
    for needle in ["<|im_start|>", "\r\n", "\t", "👨‍👩‍👧‍👦", "مرحبا", "你好", "こんにちは", "नमस्ते", "Selamat", "def "]:
        assert needle in joined


@pytest.mark.parametrize("parse_special", [False, True])
def test_ids_equal_llama_cpp(tokenizer: Tokenizer, llama_reference: LlamaCppVocab, parse_special: bool) -> None:
    bad = _mismatches(tokenizer, llama_reference, parse_special=parse_special)
    assert not bad, f"{len(bad)} of {len(STRINGS)} strings differ from llama.cpp:\n" + "\n".join(bad[:20])


def test_special_parsing_changes_ids_only_where_special_text_occurs(tokenizer: Tokenizer) -> None:
    text = "say <|im_start|>system\nhi<|im_end|>"
    parsed = tokenizer.tokenize(text, parse_special=True)
    plain = tokenizer.tokenize(text, parse_special=False)
    control = set(range(17))  # SmolLM2's control tokens
    assert {1, 2} <= set(parsed)
    assert not set(plain) & control
    assert tokenizer.tokenize("plain words", parse_special=True) == tokenizer.tokenize("plain words")


def test_add_special_follows_the_file(tokenizer: Tokenizer, llama_reference: LlamaCppVocab) -> None:
    # SmolLM2's GGUF says add_bos_token = false, so add_special adds nothing; llama.cpp agrees.
    assert tokenizer.add_bos is False
    for text in ["Hello", "", "<|im_start|>user"]:
        expected = llama_reference.tokenize(text, add_special=True, parse_special=True)
        assert tokenizer.tokenize(text, add_special=True, parse_special=True) == expected


def test_round_trip(tokenizer: Tokenizer) -> None:
    for text in STRINGS:
        assert tokenizer.detokenize(tokenizer.tokenize(text)) == text
        assert tokenizer.detokenize(tokenizer.tokenize(text, parse_special=True), render_special=True) == text


def test_every_piece_equals_llama_cpp(tokenizer: Tokenizer, llama_reference: LlamaCppVocab) -> None:
    assert tokenizer.vocab_size == llama_reference.n_tokens == 49_152
    for token in range(tokenizer.vocab_size):
        for special in (False, True):
            assert tokenizer.token_bytes(token, special) == llama_reference.token_bytes(token, special=special), token


def test_special_ids_and_end_of_generation(tokenizer: Tokenizer, llama_reference: LlamaCppVocab) -> None:
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id, tokenizer.pad_id) == (1, 2, 0, 2)
    expected = {token for token in range(tokenizer.vocab_size) if llama_reference.is_eog(token)}
    assert tokenizer.eos_ids == expected == {0, 2, 4}  # <reponame> is taken as the fill-in-the-middle repo token
    assert tokenizer.token_to_piece(2) == "<|im_end|>"
    assert tokenizer.detokenize([2]) == ""
    assert tokenizer.detokenize([2], render_special=True) == "<|im_end|>"


def test_detokenize_renders_control_tokens_only_when_asked(tokenizer: Tokenizer) -> None:
    ids = tokenizer.tokenize("<|im_start|>user\nHi<|im_end|>", parse_special=True)
    assert tokenizer.detokenize(ids) == "user\nHi"
    assert tokenizer.detokenize(ids, render_special=True) == "<|im_start|>user\nHi<|im_end|>"


def test_partial_utf8_is_replaced_not_raised(tokenizer: Tokenizer) -> None:
    ids = tokenizer.tokenize("😀")
    assert len(ids) > 1  # an emoji is several byte tokens
    assert tokenizer.detokenize(ids[:1]) == "\ufffd"
    assert b"".join(tokenizer.token_bytes(i) for i in ids).decode() == "😀"


def test_out_of_range_ids_are_refused(tokenizer: Tokenizer) -> None:
    from native.tokenizer import TokenizerError

    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tokenizer.detokenize([49_152])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tokenizer.token_to_piece(-1)
    assert tokenizer.detokenize([49_151]) == tokenizer.token_to_piece(49_151)


def test_tokenizers_for_one_file_share_the_parse(model_path: Path) -> None:
    first, second = Tokenizer(model_path), Tokenizer(str(model_path))
    assert first._vocab is second._vocab


def test_threads_share_one_parse_and_agree(model_path: Path, tokenizer: Tokenizer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sample = STRINGS[:200]
    expected = [tokenizer.tokenize(text, parse_special=True) for text in sample]

    def work(_: int) -> tuple[int, list[list[int]]]:
        local = Tokenizer(model_path)
        return id(local._vocab), [local.tokenize(text, parse_special=True) for text in sample]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(8)))
    assert {vocab_id for vocab_id, _ in results} == {id(tokenizer._vocab)}
    assert all(ids == expected for _, ids in results)


def test_bytes_without_a_token_separate_their_neighbours_as_in_llama_cpp(
    tokenizer: Tokenizer, llama_reference: LlamaCppVocab
) -> None:
    """Found by the tokenizer fuzz target: SmolLM2 has no token for six control bytes (0x04, 0x06, 0x13,
    0x14, 0x16, 0x1d) nor for the UTF-8 lead bytes 0xf1 and 0xf2. llama.cpp drops such a byte but never
    merges across it; `>` + 0x1d + `>` is two `>` tokens, not one `>>`."""
    missing = "\x04\x06\x13\x14\x16\x1d"
    texts = [f">{c}>" for c in missing] + ["  \x1d", f"the{missing}re", "ab\U00040000>>\U00080001>>"]
    for text in texts:
        assert tokenizer.tokenize(text) == llama_reference.tokenize(text), repr(text)
    # positive control: without the byte, the neighbours merge
    assert tokenizer.tokenize(">>") == llama_reference.tokenize(">>") != tokenizer.tokenize(">\x1d>")
    assert tokenizer.detokenize(tokenizer.tokenize(">\x1d>")) == ">>"
