"""OpenAI response bodies, built from what the engine produced: whole responses, stream chunks and
embeddings. Pure functions: the worker builds final responses with them, the web process chunks."""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any

SYSTEM_FINGERPRINT = "sov-native-cpu"


def response_id(kind: str, request_id: str) -> str:
    prefix = {"chat": "chatcmpl-", "completion": "cmpl-"}.get(kind, "")
    return f"{prefix}{request_id}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_logprobs(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": e["token"],
                "logprob": e["logprob"],
                "bytes": e["bytes"],
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, lp, b in e["top"]],
            }
            for e in entries
        ],
        "refusal": None,
    }


def _completion_logprobs(entries: Sequence[dict[str, Any]], start_offset: int = 0) -> dict[str, Any]:
    offsets, position = [], start_offset
    for e in entries:
        offsets.append(position)
        position += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t: lp for t, lp, _ in e["top"]} for e in entries],
        "text_offset": offsets,
    }


def generation_response(
    *,
    kind: str,
    request_id: str,
    created: int,
    model: str,
    choices: Sequence[dict[str, Any]],
    prompt_tokens: int,
    completion_tokens: int,
    logprobs: bool,
) -> dict[str, Any]:
    """`choices`: dicts with `text`, `finish_reason` and, when asked for, `logprobs` entries."""
    out_choices: list[dict[str, Any]] = []
    for index, choice in enumerate(choices):
        if kind == "chat":
            out_choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": choice["text"], "refusal": None},
                    "logprobs": _chat_logprobs(choice["logprobs"]) if logprobs else None,
                    "finish_reason": choice["finish_reason"],
                }
            )
        else:
            out_choices.append(
                {
                    "index": index,
                    "text": choice["text"],
                    "logprobs": _completion_logprobs(choice["logprobs"]) if logprobs else None,
                    "finish_reason": choice["finish_reason"],
                }
            )
    body: dict[str, Any] = {
        "id": response_id(kind, request_id),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": out_choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }
    return body


def stream_chunk(
    *,
    kind: str,
    request_id: str,
    created: int,
    model: str,
    index: int,
    text: str | None,
    finish_reason: str | None = None,
    logprobs: Sequence[dict[str, Any]] | None = None,
    first: bool = False,
    include_usage: bool = False,
) -> dict[str, Any]:
    choice: dict[str, Any]
    if kind == "chat":
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": _chat_logprobs(logprobs) if logprobs is not None else None,
            "finish_reason": finish_reason,
        }
    else:
        choice = {
            "index": index,
            "text": text or "",
            "logprobs": _completion_logprobs(logprobs) if logprobs is not None else None,
            "finish_reason": finish_reason,
        }
    chunk: dict[str, Any] = {
        "id": response_id(kind, request_id),
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
    }
    if include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(
    *, kind: str, request_id: str, created: int, model: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": response_id(kind, request_id),
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def embedding_vector(values: Sequence[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
    return [float(v) for v in values]


def embedding_response(
    *, model: str, vectors: Sequence[Sequence[float]], encoding_format: str, prompt_tokens: int
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": embedding_vector(v, encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
