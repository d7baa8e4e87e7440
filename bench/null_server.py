"""The HTTP floor of `bench/serve.py`: an ASGI app (run by uvicorn) that answers every request at once
with the same small chat completion, so that the `openai` client's own work and one HTTP exchange on
loopback can be measured with the same client as the servers under test."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

_BODY = json.dumps(
    {
        "id": "chatcmpl-null",
        "object": "chat.completion",
        "created": 0,
        "model": "null",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "The"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(
    scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Callable[..., Awaitable[None]]
) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):  # the request body, read and dropped
        pass
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
