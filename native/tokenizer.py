"""Tokenisation exactly as a GGUF file's tokenizer metadata says, without loading any weights.

`Tokenizer(path)` reads only the file's header metadata and builds a Hugging Face `tokenizers`
byte-level BPE from it (vocabulary, merges, the pre-tokenizer regexes llama.cpp uses for
`tokenizer.ggml.pre`). Special tokens are split out first, the way llama.cpp does it, so ids match
llama.cpp's. Chat templates come from the file's own Jinja template (see `native._chat`); message
content is never parsed for special tokens. Parsed files are cached per path, so the web process can
build a `Tokenizer` per request cheaply.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import tokenizers
from tokenizers import models, pre_tokenizers

from native._chat import ChatTemplateError, Segment, render_segments
from native._gguf_meta import GGUFMetadataError, MetaValue, read_metadata

__all__ = ["ChatTemplateError", "Tokenizer", "TokenizerError"]


class TokenizerError(ValueError):
    """The file's tokenizer cannot be built (malformed GGUF, unsupported model or pre-tokenizer)."""


# Token types (llama.h: enum llama_token_type).
_UNDEFINED, _NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = range(7)

_GPT2_REGEX: Final = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX: Final = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX: Final = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True, slots=True)
class _PreTokenizer:
    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos_default: bool = False


# llama.cpp's regex lists per `tokenizer.ggml.pre` (llama-vocab.cpp, llm_tokenizer_bpe); each regex
# splits the pieces the previous one produced, keeping the unmatched text as pieces too.
_PRE_TOKENIZERS: Final[dict[str, _PreTokenizer]] = {
    "smollm": _PreTokenizer((r"\p{N}", _GPT2_REGEX)),
    "starcoder": _PreTokenizer((r"\p{N}", _GPT2_REGEX)),
    "gpt2": _PreTokenizer((_GPT2_REGEX,)),
    "gpt-2": _PreTokenizer((_GPT2_REGEX,)),
    "qwen2": _PreTokenizer((_QWEN2_REGEX,)),
    "llama3": _PreTokenizer((_LLAMA3_REGEX,), ignore_merges=True, add_bos_default=True),
    "llama-v3": _PreTokenizer((_LLAMA3_REGEX,), ignore_merges=True, add_bos_default=True),
    "llama-bpe": _PreTokenizer((_LLAMA3_REGEX,), ignore_merges=True, add_bos_default=True),
    "default": _PreTokenizer(
        (r"[\p{P}\$\+<=>\^~\|]+", _GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]"),
    ),
}

# Tokens llama.cpp finds by their text when the metadata does not name them (llama-vocab.cpp): it
# forces each to a control token, and the fill-in-the-middle pad/repo/separator tokens end generation.
_DETECTED_BY_TEXT: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "eot": (
        ("tokenizer.ggml.eot_token_id",),
        ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
         "_<EOT>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "<end_of_utterance>"),
    ),
    "eom": (("tokenizer.ggml.eom_token_id",), ("<|eom_id|>",)),
    "fim_pre": (
        ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id"),
        ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>", "\u2581<PRE>",
         "<|code_prefix|>"),
    ),
    "fim_suf": (
        ("tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id"),
        ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>", "\u2581<SUF>",
         "<|code_suffix|>"),
    ),
    "fim_mid": (
        ("tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id"),
        ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>", "\u2581<MID>",
         "<|code_middle|>"),
    ),
    "fim_pad": (("tokenizer.ggml.fim_pad_token_id",), ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>")),
    "fim_rep": (
        ("tokenizer.ggml.fim_rep_token_id",),
        ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    ),
    "fim_sep": (("tokenizer.ggml.fim_sep_token_id",), ("<|file_sep|>",)),
}

# Texts llama.cpp always treats as end of generation (and forces to control tokens).
_EOG_TEXTS: Final = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>", "<|endoftext|>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
)
# gpt-oss's channel markers, which llama.cpp always renders (as user-defined tokens).
_ALWAYS_RENDERED: Final = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> raw byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


_BYTE_DECODER: Final = _byte_decoder()


def _decode_byte_level(text: str) -> bytes:
    # A character outside the byte alphabet cannot come from a byte-level vocabulary; keep its UTF-8.
    return b"".join(
        bytes((_BYTE_DECODER[ch],)) if ch in _BYTE_DECODER else ch.encode("utf-8") for ch in text
    )


def _get(meta: dict[str, MetaValue], key: str, kind: type, default: object = None) -> object:
    value = meta.get(key, default)
    if value is not default and not isinstance(value, kind):
        raise TokenizerError(f"GGUF key {key!r} has the wrong type ({type(value).__name__})")
    return value


def _token_id(meta: dict[str, MetaValue], key: str, n_tokens: int) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenizerError(f"GGUF key {key!r} must be an integer token id")
    if value == -1 or value == 0xFFFFFFFF:  # llama.cpp's "no token"
        return None
    if not 0 <= value < n_tokens:
        raise TokenizerError(f"GGUF key {key!r} = {value} is outside the vocabulary of {n_tokens} tokens")
    return value


class _Vocabulary:
    """Everything parsed from one file; immutable after construction, shared between threads."""

    def __init__(self, path: str) -> None:
        try:
            meta = read_metadata(path)
        except GGUFMetadataError as exc:
            raise TokenizerError(str(exc)) from exc
        model = _get(meta, "tokenizer.ggml.model", str)
        if model is None:
            raise TokenizerError(f"{path!r} has no tokenizer metadata (tokenizer.ggml.model)")
        if model != "gpt2":
            raise TokenizerError(f"tokenizer model {model!r} is not supported (supported: 'gpt2' byte-level BPE)")
        pre_name = str(_get(meta, "tokenizer.ggml.pre", str, "default"))
        pre = _PRE_TOKENIZERS.get(pre_name)
        if pre is None:
            raise TokenizerError(
                f"pre-tokenizer {pre_name!r} is not supported (supported: {', '.join(sorted(_PRE_TOKENIZERS))})"
            )
        self.pre_name = pre_name

        tokens = meta.get("tokenizer.ggml.tokens")
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise TokenizerError("tokenizer.ggml.tokens must be a non-empty array of strings")
        self.tokens: list[str] = [t for t in tokens if isinstance(t, str)]
        n_tokens = len(self.tokens)
        types = meta.get("tokenizer.ggml.token_type", [_NORMAL] * n_tokens)
        if not isinstance(types, list) or len(types) != n_tokens or not all(isinstance(t, int) for t in types):
            raise TokenizerError("tokenizer.ggml.token_type must be an integer array as long as the vocabulary")
        self.types: list[int] = [int(t) for t in types if isinstance(t, int)]

        raw_merges = meta.get("tokenizer.ggml.merges")
        if not isinstance(raw_merges, list) or not all(isinstance(m, str) for m in raw_merges):
            raise TokenizerError("tokenizer.ggml.merges must be an array of strings for a 'gpt2' tokenizer")
        merges = [m for m in raw_merges if isinstance(m, str)]

        # Like llama.cpp, a later duplicate of a token text wins the text -> id mapping.
        self.token_to_id: dict[str, int] = {text: index for index, text in enumerate(self.tokens)}

        self.bos_id = _token_id(meta, "tokenizer.ggml.bos_token_id", n_tokens)
        self.eos_id = _token_id(meta, "tokenizer.ggml.eos_token_id", n_tokens)
        self.unk_id = _token_id(meta, "tokenizer.ggml.unknown_token_id", n_tokens)
        self.pad_id = _token_id(meta, "tokenizer.ggml.padding_token_id", n_tokens)
        add_bos = _get(meta, "tokenizer.ggml.add_bos_token", bool, pre.add_bos_default)
        add_eos = _get(meta, "tokenizer.ggml.add_eos_token", bool, False)
        add_space_prefix = _get(meta, "tokenizer.ggml.add_space_prefix", bool, False)
        self.add_bos, self.add_eos = bool(add_bos), bool(add_eos)
        # llama.cpp ignores add_space_prefix for byte-level BPE; keep it only for reporting.
        self.add_space_prefix = bool(add_space_prefix)
        template = _get(meta, "tokenizer.chat_template", str)
        self.chat_template = template if isinstance(template, str) else None

        self.eog_ids = self._end_of_generation(meta)

        # Special tokens are split out of the text before BPE, longest first, as llama.cpp does.
        # Control (and unknown) tokens only when the caller asks for special parsing; user-defined
        # tokens always.
        specials = [i for i, t in enumerate(self.types) if t in (_CONTROL, _USER_DEFINED, _UNKNOWN)]
        specials.sort(key=lambda i: -len(self.tokens[i].encode("utf-8")))
        self.all_specials: tuple[tuple[str, int], ...] = tuple((self.tokens[i], i) for i in specials if self.tokens[i])
        self.user_specials: tuple[tuple[str, int], ...] = tuple(
            (text, i) for text, i in self.all_specials if self.types[i] == _USER_DEFINED
        )

        # Per-token bytes for detokenisation: normal tokens byte-decoded, user-defined as written,
        # control/unknown only when rendering specials, anything else (unused, byte) as nothing.
        plain: list[bytes] = []
        special: list[bytes] = []
        for text, kind in zip(self.tokens, self.types, strict=True):
            if kind == _NORMAL:
                piece = _decode_byte_level(text)
                plain.append(piece)
                special.append(piece)
            elif kind == _USER_DEFINED:
                plain.append(text.encode("utf-8"))
                special.append(text.encode("utf-8"))
            elif kind in (_CONTROL, _UNKNOWN):
                plain.append(b"")
                special.append(text.encode("utf-8"))
            else:
                plain.append(b"")
                special.append(b"")
        self.plain_pieces, self.special_pieces = plain, special

        self.bpe = self._build_bpe(pre, merges)

    def _end_of_generation(self, meta: dict[str, MetaValue]) -> frozenset[int]:
        """llama.cpp's end-of-generation set; also retypes the tokens it retypes, as it does."""
        n_tokens = len(self.tokens)
        found: dict[str, int] = {}
        for category, (keys, texts) in _DETECTED_BY_TEXT.items():
            named = [_token_id(meta, key, n_tokens) for key in keys if key in meta]
            if named and named[0] is not None:
                found[category] = named[0]
                continue
            # llama.cpp takes whichever match its hash map yields first; the lowest id is our choice.
            matches = sorted(self.token_to_id[text] for text in texts if text in self.token_to_id)
            if matches:
                found[category] = matches[0]
                self.types[matches[0]] = _CONTROL
        eog = {found[c] for c in ("fim_pad", "fim_rep", "fim_sep") if c in found}
        for text in _EOG_TEXTS:
            if text in self.token_to_id:
                eog.add(self.token_to_id[text])
                self.types[self.token_to_id[text]] = _CONTROL
        for text in _ALWAYS_RENDERED:
            if text in self.token_to_id:
                self.types[self.token_to_id[text]] = _USER_DEFINED
        eog.update(found[c] for c in ("eot", "eom") if c in found)
        if self.eos_id is not None:
            eog.add(self.eos_id)
        # o200k_harmony: with <|return|> and <|call|> present, <|end|> only ends a message.
        by_text = {self.tokens[token]: token for token in eog}
        if {"<|return|>", "<|call|>", "<|end|>"} <= by_text.keys():
            eog.discard(by_text["<|end|>"])
            self.types[by_text["<|end|>"]] = _USER_DEFINED
        return frozenset(eog)

    def _build_bpe(self, pre: _PreTokenizer, merges: Sequence[str]) -> tokenizers.Tokenizer:
        pairs: list[tuple[str, str]] = []
        for merge in merges:
            # llama.cpp splits at the first space after the first character.
            cut = merge.find(" ", 1)
            if cut < 0:
                raise TokenizerError(f"malformed merge {merge!r} in tokenizer.ggml.merges")
            left, right = merge[:cut], merge[cut + 1 :]
            # A merge whose parts or result are not tokens can never yield a token; the Hugging
            # Face BPE refuses such merges, and llama.cpp falls back to bytes for them anyway.
            if left in self.token_to_id and right in self.token_to_id and left + right in self.token_to_id:
                pairs.append((left, right))
        try:
            bpe = models.BPE(
                vocab=self.token_to_id,
                merges=pairs,
                fuse_unk=False,
                byte_fallback=False,
                ignore_merges=pre.ignore_merges,
            )
        except Exception as exc:  # tokenizers raises plain Exception for a bad vocabulary
            raise TokenizerError(f"cannot build the BPE model: {exc}") from exc
        tokenizer = tokenizers.Tokenizer(bpe)
        steps: list[pre_tokenizers.PreTokenizer] = [
            pre_tokenizers.Split(tokenizers.Regex(regex), behavior="isolated") for regex in pre.regexes
        ]
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
        # A byte with no token of its own (SmolLM2 lacks six control characters) stays a symbol that
        # never merges in llama.cpp's BPE and is dropped at the end, so it keeps its neighbours apart;
        # the Hugging Face BPE would drop it first and merge across it. Removing it as a split does
        # what llama.cpp does.
        missing = [char for char in _BYTE_DECODER if char not in self.token_to_id]
        if missing:
            pattern = "[" + "".join(f"\\x{{{ord(char):x}}}" for char in missing) + "]"
            steps.append(pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="removed"))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
        return tokenizer

    def partition(self, text: str, *, parse_special: bool) -> list[str | int]:
        """Split text at special tokens (llama.cpp's tokenizer_st_partition): text runs and ids."""
        pieces: list[str | int] = [text]
        for special, token in self.all_specials if parse_special else self.user_specials:
            if special not in text:
                continue
            split: list[str | int] = []
            for piece in pieces:
                if isinstance(piece, int) or special not in piece:
                    split.append(piece)
                    continue
                for index, part in enumerate(piece.split(special)):
                    if index:
                        split.append(token)
                    if part:
                        split.append(part)
            pieces = split
        return pieces

    def encode_pieces(self, pieces: Iterable[str | int]) -> list[int]:
        """Token ids for partitioned pieces; adjacent text runs are joined before BPE."""
        runs: list[str | int] = []
        for piece in pieces:
            if piece == "":
                continue
            last = runs[-1] if runs else None
            if isinstance(piece, str) and isinstance(last, str):
                runs[-1] = last + piece
            else:
                runs.append(piece)
        texts = [run for run in runs if isinstance(run, str)]
        encoded = iter(self.bpe.encode_batch(texts, add_special_tokens=False)) if texts else iter(())
        ids: list[int] = []
        for run in runs:
            if isinstance(run, int):
                ids.append(run)
            else:
                ids.extend(next(encoded).ids)
        return ids


_CACHE: dict[tuple[str, int, int], _Vocabulary] = {}
_CACHE_LOCK = threading.Lock()


def _load(path: str | os.PathLike[str]) -> _Vocabulary:
    name = os.path.realpath(os.fspath(path))
    try:
        stat = os.stat(name)
    except OSError as exc:
        raise TokenizerError(f"cannot open tokenizer file {os.fspath(path)!r}: {exc.strerror or exc}") from exc
    key = (name, stat.st_mtime_ns, stat.st_size)
    # One lock for all files: parsing happens once per file per process, and holding the lock while
    # parsing keeps two threads from parsing the same file at once.
    with _CACHE_LOCK:
        vocabulary = _CACHE.get(key)
        if vocabulary is None:
            vocabulary = _Vocabulary(name)
            _CACHE[key] = vocabulary
        return vocabulary


class Tokenizer:
    """The tokenizer of one GGUF file; cheap to construct again for a file already parsed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._vocab = _load(path)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab.tokens)

    @property
    def bos_id(self) -> int | None:
        return self._vocab.bos_id

    @property
    def eos_id(self) -> int | None:
        return self._vocab.eos_id

    @property
    def unk_id(self) -> int | None:
        return self._vocab.unk_id

    @property
    def pad_id(self) -> int | None:
        return self._vocab.pad_id

    @property
    def eos_ids(self) -> frozenset[int]:
        """Every token that ends generation (EOS plus e.g. `<|im_end|>`, `<|endoftext|>`)."""
        return self._vocab.eog_ids

    @property
    def add_bos(self) -> bool:
        return self._vocab.add_bos

    @property
    def add_eos(self) -> bool:
        return self._vocab.add_eos

    @property
    def pre_tokenizer(self) -> str:
        return self._vocab.pre_name

    @property
    def chat_template(self) -> str | None:
        return self._vocab.chat_template

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = False) -> list[int]:
        """Token ids for text; `add_special` adds BOS/EOS as the file says, `parse_special` reads control tokens."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        vocab = self._vocab
        ids = vocab.encode_pieces(vocab.partition(text, parse_special=parse_special))
        if add_special and vocab.add_bos and vocab.bos_id is not None:
            ids.insert(0, vocab.bos_id)
        if add_special and vocab.add_eos and vocab.eos_id is not None:
            ids.append(vocab.eos_id)
        return ids

    def token_bytes(self, token: int, render_special: bool = False) -> bytes:
        """The raw bytes of one token (may be part of a UTF-8 character; stream decoders need this)."""
        if not 0 <= token < len(self._vocab.tokens):
            raise TokenizerError(f"token id {token} is outside the vocabulary of {self.vocab_size} tokens")
        pieces = self._vocab.special_pieces if render_special else self._vocab.plain_pieces
        return pieces[token]

    def token_to_piece(self, token: int, render_special: bool = True) -> str:
        """One token as text (control tokens as their text); a partial UTF-8 character becomes U+FFFD."""
        return self.token_bytes(token, render_special).decode("utf-8", errors="replace")

    def detokenize(self, ids: Iterable[int], render_special: bool = False) -> str:
        """Text for token ids; control tokens are left out unless `render_special`."""
        pieces = self._vocab.special_pieces if render_special else self._vocab.plain_pieces
        n_tokens = len(pieces)
        out: list[bytes] = []
        for token in ids:
            if not 0 <= token < n_tokens:
                raise TokenizerError(f"token id {token} is outside the vocabulary of {n_tokens} tokens")
            out.append(pieces[token])
        return b"".join(out).decode("utf-8", errors="replace")

    def render_chat_segments(self, messages: object, add_generation_prompt: bool = True) -> list[Segment]:
        """The rendered chat template as template and content segments (for inspection and tests)."""
        vocab = self._vocab
        if vocab.chat_template is None:
            raise ChatTemplateError("the model file has no chat template (tokenizer.chat_template)")
        return render_segments(
            vocab.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=vocab.tokens[vocab.bos_id] if vocab.bos_id is not None else "",
            eos_token=vocab.tokens[vocab.eos_id] if vocab.eos_id is not None else "",
        )

    def apply_chat_template(self, messages: object, add_generation_prompt: bool = True) -> list[int]:
        """Prompt ids for a conversation: template markers are control tokens, content never is."""
        vocab = self._vocab
        pieces: list[str | int] = []
        for segment in self.render_chat_segments(messages, add_generation_prompt):
            # Content and template text are joined before BPE where no special token separates
            # them, so token boundaries at the seams are those of tokenising the whole rendering.
            pieces.extend(vocab.partition(segment.text, parse_special=not segment.is_content))
        return vocab.encode_pieces(pieces)
