"""OpenAI-style request parsing and validation: pure functions, no model, no sockets.

Kept apart from the server so it can be fuzzed (tests/unit/test_protocol_fuzz.py) and reused.
Every rejection is a `RequestError` with the HTTP status and a message that names the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": self.kind,
                                     "code": self.status}}).encode()


@dataclass(frozen=True)
class Limits:
    """Args:
    max_body_bytes: largest request body read (413 above).
    max_prompt_chars: longest prompt, or all chat messages together (413 above).
    max_prompt_tokens: longest tokenized prompt (413 above; checked by the server's tokenizer).
    max_new_tokens: ceiling for `max_tokens` (a larger request is refused, never silently cut).
    max_messages: most chat messages in one request.
    """

    max_body_bytes: int = 64 * 1024
    max_prompt_chars: int = 16_000
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512
    max_messages: int = 64


@dataclass(frozen=True)
class GenerationRequest:
    kind: str  # "completion" | "chat"
    prompt: str | None
    messages: tuple[tuple[str, str], ...]
    max_tokens: int
    stream: bool
    model: str | None


_ROLES = ("system", "user", "assistant")


def parse_request(kind: str, body: bytes, limits: Limits) -> GenerationRequest:
    """A validated request from a raw body; raises RequestError (400/413/422)."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is "
                                f"{limits.max_body_bytes}.")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise RequestError(400, f"request body is not valid UTF-8 JSON ({type(e).__name__}).") from e
    if not isinstance(data, dict):
        raise RequestError(400, "request body must be a JSON object.")
    max_tokens = data.get("max_tokens", 16 if kind == "completion" else 128)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError(422, f"`max_tokens` must be a positive integer, got {max_tokens!r}.")
    if max_tokens > limits.max_new_tokens:
        raise RequestError(422, f"`max_tokens`={max_tokens} exceeds this server's limit of "
                                f"{limits.max_new_tokens}.")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(422, f"`stream` must be true or false, got {stream!r}.")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(422, "`model` must be a string.")
    if kind == "completion":
        prompt = data.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError(422, "`prompt` must be a non-empty string.")
        if len(prompt) > limits.max_prompt_chars:
            raise RequestError(413, f"`prompt` has {len(prompt)} characters; the limit is "
                                    f"{limits.max_prompt_chars}.")
        return GenerationRequest(kind, prompt, (), max_tokens, stream, model)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(422, "`messages` must be a non-empty list of {role, content} objects.")
    if len(messages) > limits.max_messages:
        raise RequestError(413, f"{len(messages)} messages; the limit is {limits.max_messages}.")
    parsed, chars = [], 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise RequestError(422, f"`messages[{i}]` must be {{\"role\": one of {list(_ROLES)}, "
                                    "\"content\": string}.")
        chars += len(m["content"])
        parsed.append((m["role"], m["content"]))
    if chars > limits.max_prompt_chars:
        raise RequestError(413, f"the messages have {chars} characters; the limit is "
                                f"{limits.max_prompt_chars}.")
    return GenerationRequest(kind, None, tuple(parsed), max_tokens, stream, model)
