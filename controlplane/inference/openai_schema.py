"""OpenAI request bodies, validated into typed values: every parameter we accept, and a clear 400 for
every one we do not (never silence)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from controlplane.core.errors import DomainError

Endpoint = Literal["chat", "completion", "embedding"]

MAX_N = 8
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
MAX_EMBEDDING_INPUTS = 256


class InvalidParameter(DomainError):
    """A 400 in OpenAI's shape: `param` names the offending field."""

    code = "invalid_parameter"
    http_status = 400

    def __init__(self, message: str, *, param: str | None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.param = param


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """A chat or text completion after validation; `messages` or `prompt` holds the content."""

    endpoint: Endpoint
    model: str
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str | list[int] | None = None
    n: int = 1
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    sampling: Sampling = field(default_factory=Sampling)
    logprobs: bool = False
    top_logprobs: int = 0
    stream: bool = False
    include_usage: bool = False
    user: str = ""


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: list[str | list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str = ""
    endpoint: Endpoint = "embedding"


# Parameters of OpenAI's API that this cloud does not implement: refused by name, with the reason.
_REFUSED: dict[str, str] = {
    "tools": "tool calling is not supported by the models of this cloud",
    "tool_choice": "tool calling is not supported by the models of this cloud",
    "functions": "function calling is not supported by the models of this cloud",
    "function_call": "function calling is not supported by the models of this cloud",
    "parallel_tool_calls": "tool calling is not supported by the models of this cloud",
    "response_format": "structured output (response_format) is not supported",
    "logit_bias": "logit_bias is not supported",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "the models of this cloud have no reasoning effort setting",
    "service_tier": "service tiers are not offered",
    "store": "stored completions are not offered; see the request log instead",
    "metadata": "request metadata is not stored",
    "web_search_options": "web search is not supported",
    "suffix": "suffix (insertion) is not supported",
    "best_of": "best_of is not supported; use n",
    "echo": "echo is not supported",
}

_COMMON = {"model", "user"}
_GENERATION = _COMMON | {
    "n", "stop", "seed", "temperature", "top_p", "max_tokens", "stream", "stream_options",
    "frequency_penalty", "presence_penalty", "top_k", "min_p", "repetition_penalty",
}  # fmt: skip
_ALLOWED: dict[Endpoint, set[str]] = {
    "chat": _GENERATION | {"messages", "max_completion_tokens", "logprobs", "top_logprobs"},
    "completion": _GENERATION | {"prompt", "logprobs"},
    "embedding": _COMMON | {"input", "encoding_format", "dimensions"},
}
_NO_OP_DEFAULTS: dict[str, Any] = {"best_of": 1, "echo": False, "logit_bias": {}, "parallel_tool_calls": True}


def _check_keys(body: dict[str, Any], endpoint: Endpoint) -> None:
    for key in body:
        if key in _ALLOWED[endpoint]:
            continue
        if key in _NO_OP_DEFAULTS and body[key] == _NO_OP_DEFAULTS[key]:
            continue
        if key in _REFUSED:
            raise InvalidParameter(f"{_REFUSED[key]}.", param=key, code="unsupported_parameter")
        raise InvalidParameter(
            f"Unrecognized request argument supplied: {key}", param=key, code="unsupported_parameter"
        )


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidParameter(f"'{name}' must be a number.", param=name, code="invalid_type")
    if not low <= value <= high:
        raise InvalidParameter(f"'{name}' must be between {low:g} and {high:g}; got {value}.", param=name)
    return float(value)


def _integer(body: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"'{name}' must be an integer.", param=name, code="invalid_type")
    if not low <= value <= high:
        raise InvalidParameter(f"'{name}' must be between {low} and {high}; got {value}.", param=name)
    return value


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidParameter(f"'{name}' must be a boolean.", param=name, code="invalid_type")
    return value


def _string(body: dict[str, Any], name: str, *, required: bool = False, limit: int = 256) -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidParameter(f"you must provide a '{name}' parameter", param=name, code="missing_parameter")
        return ""
    if not isinstance(value, str):
        raise InvalidParameter(f"'{name}' must be a string.", param=name, code="invalid_type")
    if required and not value:
        raise InvalidParameter(f"'{name}' must not be empty.", param=name)
    if len(value) > limit:
        raise InvalidParameter(f"'{name}' is longer than {limit} characters.", param=name)
    return value


def _stop(body: dict[str, Any]) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise InvalidParameter("'stop' must be a string or a list of strings.", param="stop", code="invalid_type")
    if len(items) > MAX_STOP:
        raise InvalidParameter(f"'stop' takes at most {MAX_STOP} sequences.", param="stop")
    return [x for x in items if x]


def _sampling(body: dict[str, Any]) -> Sampling:
    for name in ("frequency_penalty", "presence_penalty"):
        if _number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise InvalidParameter(
                f"'{name}' is not supported; use 'repetition_penalty' (a multiplicative penalty, 1.0 = off).",
                param=name,
                code="unsupported_parameter",
            )
    seed = _integer(body, "seed", None, -(2**63), 2**64 - 1)
    return Sampling(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        top_k=_integer(body, "top_k", 0, 0, 1_000_000) or 0,
        min_p=_number(body, "min_p", 0.0, 0.0, 1.0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 10.0),
        seed=None if seed is None else seed % 2**64,
    )


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = _boolean(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise InvalidParameter("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    if not isinstance(options, dict):
        raise InvalidParameter("'stream_options' must be an object.", param="stream_options", code="invalid_type")
    unknown = set(options) - {"include_usage"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidParameter(
            f"Unrecognized stream option: {name}", param=f"stream_options.{name}", code="unsupported_parameter"
        )
    return stream, _boolean(options, "include_usage")


def _message_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidParameter(
                    "only text content parts ({'type': 'text', 'text': ...}) are supported.",
                    param=f"messages[{index}].content[{k}]",
                    code="unsupported_content",
                )
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidParameter(
        "message content must be a string or a list of text parts.",
        param=f"messages[{index}].content",
        code="invalid_type",
    )


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    value = body.get("messages")
    if value is None:
        raise InvalidParameter("you must provide a 'messages' parameter", param="messages", code="missing_parameter")
    if not isinstance(value, list):
        raise InvalidParameter("'messages' must be a list.", param="messages", code="invalid_type")
    if not value:
        raise InvalidParameter("'messages' must contain at least one message.", param="messages")
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise InvalidParameter("each message must be an object.", param=f"messages[{i}]", code="invalid_type")
        role = message.get("role")
        if role == "developer":
            role = "system"
        if role not in {"system", "user", "assistant"}:
            raise InvalidParameter(
                "role must be one of system, developer, user, assistant.", param=f"messages[{i}].role"
            )
        unknown = set(message) - {"role", "content", "name"}
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidParameter(
                f"message field '{name}' is not supported.", param=f"messages[{i}].{name}", code="unsupported_parameter"
            )
        out.append({"role": role, "content": _message_text(message.get("content"), i)})
    return out


def _prompt(body: dict[str, Any]) -> str | list[int]:
    value = body.get("prompt")
    if value is None:
        raise InvalidParameter("you must provide a 'prompt' parameter", param="prompt", code="missing_parameter")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return list(value)
    raise InvalidParameter(
        "'prompt' must be a string, a list of one string, or a list of token ids (batches of prompts: one request "
        "each).",
        param="prompt",
        code="invalid_type",
    )


def parse_generation(body: Any, endpoint: Literal["chat", "completion"]) -> GenerationRequest:
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object.", param=None, code="invalid_type")
    _check_keys(body, endpoint)
    model = _string(body, "model", required=True)
    stream, include_usage = _stream(body)
    max_tokens = _integer(body, "max_tokens", None, 1, 1 << 31)
    top_logprobs = 0
    if endpoint == "chat":
        messages, prompt = _messages(body), None
        completion_cap = _integer(body, "max_completion_tokens", None, 1, 1 << 31)
        if completion_cap is not None:
            max_tokens = completion_cap if max_tokens is None else min(max_tokens, completion_cap)
        logprobs = _boolean(body, "logprobs")
        top_logprobs = _integer(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS) or 0
        if top_logprobs and not logprobs:
            raise InvalidParameter("'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
    else:
        messages, prompt = [], _prompt(body)
        if max_tokens is None and "max_tokens" not in body:
            max_tokens = 16  # OpenAI's default for the legacy completions endpoint
        wanted = _integer(body, "logprobs", None, 0, MAX_COMPLETION_LOGPROBS)
        logprobs, top_logprobs = wanted is not None, wanted or 0
    return GenerationRequest(
        endpoint=endpoint,
        model=model,
        messages=messages,
        prompt=prompt,
        n=_integer(body, "n", 1, 1, MAX_N) or 1,
        max_tokens=max_tokens,
        stop=_stop(body),
        sampling=_sampling(body),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        stream=stream,
        include_usage=include_usage,
        user=_string(body, "user"),
    )


def parse_embedding(body: Any) -> EmbeddingRequest:
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object.", param=None, code="invalid_type")
    _check_keys(body, "embedding")
    model = _string(body, "model", required=True)
    raw = body.get("input")
    inputs: list[str | list[int]]
    if raw is None:
        raise InvalidParameter("you must provide an 'input' parameter", param="input", code="missing_parameter")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        inputs = list(raw)
    elif isinstance(raw, list) and raw and all(isinstance(x, int) and not isinstance(x, bool) for x in raw):
        inputs = [list(raw)]
    elif (
        isinstance(raw, list)
        and raw
        and all(
            isinstance(x, list) and x and all(isinstance(y, int) and not isinstance(y, bool) for y in x) for x in raw
        )
    ):
        inputs = [list(x) for x in raw]
    else:
        raise InvalidParameter(
            "'input' must be a non-empty string, list of strings, list of token ids or list of token-id lists.",
            param="input",
            code="invalid_type",
        )
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidParameter(f"'input' takes at most {MAX_EMBEDDING_INPUTS} items.", param="input")
    if any(isinstance(x, str) and not x for x in inputs):
        raise InvalidParameter("'input' must not contain empty strings.", param="input")
    fmt = body.get("encoding_format", "float") or "float"
    if fmt != "float" and fmt != "base64":
        raise InvalidParameter("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    encoding: Literal["float", "base64"] = "base64" if fmt == "base64" else "float"
    return EmbeddingRequest(
        model=model,
        inputs=inputs,
        encoding_format=encoding,
        dimensions=_integer(body, "dimensions", None, 1, 1 << 20),
        user=_string(body, "user"),
    )
