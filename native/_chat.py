"""Chat-template rendering for `native.tokenizer`: the GGUF's own Jinja template, sandboxed.

The template is rendered with every message's content replaced by a unique placeholder, and the
result is split at the placeholders into template text and content. The caller tokenises template
text with special-token parsing on and content with it off, so a user who types `<|im_start|>`
gets ordinary text tokens while the template's own markers stay control tokens.
"""

from __future__ import annotations

import datetime
import functools
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import jinja2
import jinja2.ext
import jinja2.sandbox

# Roles are inserted into template text, which is tokenised with special parsing on, so they are
# a closed set: a free-form role could smuggle in control tokens.
ALLOWED_ROLES: Final = frozenset({"system", "user", "assistant", "tool"})
MESSAGE_KEYS: Final = frozenset({"role", "content"})

_OPEN: Final = "\ue000"  # private-use code points: never produced by templates, never trimmed
_CLOSE: Final = "\ue001"
# a content marker: nonce and message index (one pattern, compiled once; the nonce is compared per match)
_MARKER: Final = re.compile(re.escape(_OPEN) + r"(\d+):(\d+)" + re.escape(_CLOSE))


class ChatTemplateError(ValueError):
    """The messages are invalid for the chat template, or the template itself failed."""


@dataclass(frozen=True, slots=True)
class Segment:
    """A run of rendered text; `is_content` marks message content (never parsed for special tokens)."""

    text: str
    is_content: bool


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(f"the chat template refused the messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime(fmt)


def _tojson(value: Any, indent: int | None = None) -> str:
    # Hugging Face's templates expect tojson without HTML escaping and with non-ASCII kept.
    return json.dumps(value, ensure_ascii=False, indent=indent)


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    # The same environment Hugging Face transformers uses for chat templates, so renderings agree.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc
    except RecursionError as exc:  # jinja2's parser recurses once per nested expression
        raise ChatTemplateError("the model's chat template does not compile: it nests too deeply") from exc
    except SyntaxError as exc:  # jinja2 accepted it, but the Python it generated does not compile
        raise ChatTemplateError(f"the model's chat template does not compile: {exc.msg}") from exc


def validate_messages(messages: object) -> list[tuple[str, str]]:
    """Return (role, content) pairs, or raise `ChatTemplateError` saying what is wrong."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise ChatTemplateError("messages must be a list of {'role': ..., 'content': ...} objects")
    if not messages:
        raise ChatTemplateError("messages must not be empty")
    out: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"messages[{index}] must be an object with 'role' and 'content'")
        extra = set(message) - MESSAGE_KEYS
        if extra:
            raise ChatTemplateError(f"messages[{index}] has unsupported keys: {sorted(map(str, extra))}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in ALLOWED_ROLES:
            raise ChatTemplateError(f"messages[{index}].role must be one of {sorted(ALLOWED_ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ChatTemplateError(f"messages[{index}].content must be a string, got {type(content).__name__}")
        out.append((role, content))
    return out


def _split_whitespace(content: str) -> tuple[str, str, str]:
    """Split content into leading whitespace, core and trailing whitespace (as `str.strip` sees them)."""
    rest = content.lstrip()
    lead = content[: len(content) - len(rest)]
    core = rest.rstrip()
    return lead, core, rest[len(core) :]


def render_segments(
    source: str,
    messages: object,
    *,
    add_generation_prompt: bool,
    bos_token: str,
    eos_token: str,
) -> list[Segment]:
    """Render the template and return its output as template and content segments, in order."""
    pairs = validate_messages(messages)
    template = _compile(source)
    while True:
        nonce = str(secrets.randbits(64))
        if not any(_OPEN + nonce in content for _, content in pairs):
            break
    # The placeholder keeps the content's outer whitespace outside the marker, so a template that
    # trims content (`| trim`) trims the whitespace exactly as it would have trimmed the real text.
    cores: list[str] = []
    rendered_messages: list[dict[str, str]] = []
    for index, (role, content) in enumerate(pairs):
        lead, core, trail = _split_whitespace(content)
        cores.append(core)
        marker = f"{_OPEN}{nonce}:{index}{_CLOSE}" if core else ""
        rendered_messages.append({"role": role, "content": lead + marker + trail})
    try:
        text = template.render(
            messages=rendered_messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except ChatTemplateError:
        raise
    except jinja2.TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed to render: {exc}") from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        raise ChatTemplateError(f"the chat template failed to render: {exc}") from exc

    segments: list[Segment] = []
    position = 0
    for match in _MARKER.finditer(text):
        if match.group(1) != nonce:  # not one of this call's markers: template text
            continue
        if match.start() > position:
            segments.append(Segment(text[position : match.start()], is_content=False))
        segments.append(Segment(cores[int(match.group(2))], is_content=True))
        position = match.end()
    if position < len(text):
        segments.append(Segment(text[position:], is_content=False))
    return segments
