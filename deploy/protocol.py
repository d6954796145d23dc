"""OpenAI-style request parsing and response shapes: pure functions, no model, no sockets.

Kept apart from the servers so it can be fuzzed (tests/unit/test_fuzz.py) and shared by
deploy/server.py (continuous batching) and deploy/serial_server.py (the serialized baseline).
Every rejection is a `RequestError` with the HTTP status and a message that names the field.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass


class RequestError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def payload(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}

    def body(self) -> bytes:
        return json.dumps(self.payload()).encode()


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
    include_usage: bool = False  # `stream_options.include_usage`: a last chunk with the usage


_ROLES = ("system", "user", "assistant")


def _max_tokens(kind: str, data: dict, limits: Limits) -> int:
    # chat clients now send `max_completion_tokens` (OpenAI's newer name); both mean the same
    names = [n for n in ("max_tokens", "max_completion_tokens") if n in data and kind == "chat"]
    if len(names) == 2:
        raise RequestError(422, "give `max_tokens` or `max_completion_tokens`, not both.")
    name = names[0] if names else "max_tokens"
    value = data.get(name, 16 if kind == "completion" else 128)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(422, f"`{name}` must be a positive integer, got {value!r}.")
    if value > limits.max_new_tokens:
        raise RequestError(422, f"`{name}`={value} exceeds this server's limit of "
                                f"{limits.max_new_tokens}.")
    return value


def _include_usage(data: dict, stream: bool) -> bool:
    options = data.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise RequestError(422, "`stream_options` is only allowed with `\"stream\": true`.")
    if not isinstance(options, dict):
        raise RequestError(422, "`stream_options` must be an object such as {\"include_usage\": true}.")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise RequestError(422, f"`stream_options.include_usage` must be true or false, got {include!r}.")
    return include


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
    max_tokens = _max_tokens(kind, data, limits)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(422, f"`stream` must be true or false, got {stream!r}.")
    include_usage = _include_usage(data, stream)
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
        return GenerationRequest(kind, prompt, (), max_tokens, stream, model, include_usage)
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
    return GenerationRequest(kind, None, tuple(parsed), max_tokens, stream, model, include_usage)


# ---------------------------------------------------------------- responses


def finish_reason(n_generated: int, max_tokens: int) -> str:
    """OpenAI's `finish_reason`: "length" when generation used all of `max_tokens`, else "stop"
    (the model ended its answer). One rule for the streamed and the plain response."""
    return "length" if n_generated >= max_tokens else "stop"


@dataclass(frozen=True)
class ResponseHead:
    """What every response and chunk of one request repeats: id, object type, time, model."""

    kind: str
    id: str
    created: int
    model: str

    @classmethod
    def new(cls, kind: str, model: str) -> ResponseHead:
        prefix = "cmpl" if kind == "completion" else "chatcmpl"
        return cls(kind, f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()), model)

    @property
    def object(self) -> str:
        return "text_completion" if self.kind == "completion" else "chat.completion"

    def _base(self, suffix: str = "") -> dict:
        return {"id": self.id, "object": self.object + suffix, "created": self.created,
                "model": self.model}

    def response(self, text: str, finish: str, n_prompt: int, n_out: int) -> dict:
        choice: dict = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.kind == "completion":
            choice["text"] = text
        else:
            choice["message"] = {"role": "assistant", "content": text}
        return {**self._base(), "choices": [choice], "usage": usage(n_prompt, n_out)}

    def chunk(self, piece: str, *, first: bool = False) -> dict:
        """A streamed piece of text (chat: the first delta also carries the role)."""
        if self.kind == "completion":
            delta = {"text": piece}
        else:
            delta = {"delta": {"role": "assistant", "content": piece} if first else {"content": piece}}
        return {**self._base(".chunk"), "choices": [{"index": 0, **delta, "finish_reason": None}]}

    def last_chunk(self, finish: str) -> dict:
        """The chunk that ends the choice: no text, only the finish_reason."""
        delta = {"text": ""} if self.kind == "completion" else {"delta": {}}
        return {**self._base(".chunk"), "choices": [{"index": 0, **delta, "finish_reason": finish}]}

    def usage_chunk(self, n_prompt: int, n_out: int) -> dict:
        """OpenAI's `stream_options.include_usage` chunk: no choices, the request's usage."""
        return {**self._base(".chunk"), "choices": [], "usage": usage(n_prompt, n_out)}


def usage(n_prompt: int, n_out: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}


def sse(payload: dict | str) -> bytes:
    """One server-sent event: `data: <json>` (or `data: [DONE]`) and a blank line."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return b"data: " + text.encode() + b"\n\n"


DONE = sse("[DONE]")


# ---------------------------------------------------------------- start-up rules (both servers)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning printed when the server is reachable from other machines without a key."""
    if host in LOOPBACK or api_key is not None:
        return None
    return (f"warning: serving on {host} without an API key: anyone who can reach this port can "
            "use the model.")


def api_key_from_env(parser, var: str | None) -> str | None:
    """The API key named by `--api-key-env VAR`; an unset or empty variable is a usage error (a
    server the user asked to protect never starts unprotected)."""
    if not var:
        return None
    key = os.environ.get(var)
    if not key:
        parser.error(f"--api-key-env {var}: that variable is unset or empty.")
    return key
