"""An OpenAI-style HTTP server for an sqft export: continuous batching on OpenVINO GenAI
(deploy/engine.py) behind Starlette and uvicorn.

    python -m deploy.server runs/exp1/openvino [--host 127.0.0.1] [--port 8000] [--api-key-env VAR]

Endpoints: POST /v1/completions, POST /v1/chat/completions (both with `"stream": true` as
server-sent events), GET /v1/models, GET /health, GET /metrics (Prometheus). Concurrent requests
join the running batch. Loopback by default; with an API key every request needs
`Authorization: Bearer KEY` (compared in constant time). Requests beyond the queue get 503 at
once instead of piling up; malformed ones get a 4xx JSON error naming the field. A client that
disconnects mid-answer has its sequence cancelled, which frees its KV cache.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deploy.engine import BatchingEngine, EngineConfig, Generation
from deploy.metrics import CONTENT_TYPE, ServerMetrics
from deploy.protocol import (
    DONE,
    GenerationRequest,
    Limits,
    RequestError,
    ResponseHead,
    api_key_from_env,
    exposure_warning,
    parse_request,
    sse,
)

log = logging.getLogger("deploy.server")
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")


@dataclass(frozen=True)
class ServerConfig:
    """Args:
    host: interface to bind; 127.0.0.1 (this machine only) unless you mean to expose it.
    api_key: required bearer token, or None for none.
    queue_size: generation requests admitted at once (in the batch or waiting for a place in
        it); more get 503 at once.
    limits: body, prompt, message and `max_tokens` limits (deploy/protocol.py).
    max_connections: open connections at most (uvicorn's `limit_concurrency`; more get 503).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    queue_size: int = 32
    limits: Limits = field(default_factory=Limits)
    max_connections: int = 256

    def __post_init__(self):
        for name in ("queue_size", "max_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


class Admission:
    """The bounded queue: at most `size` generation requests admitted; `try_acquire` never waits."""

    def __init__(self, size: int):
        self.size, self.in_use = size, 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.in_use >= self.size:
                return False
            self.in_use += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.in_use -= 1


# ---------------------------------------------------------------- HTTP plumbing


def _count(request: Request, status: int) -> None:
    route = request.url.path if request.url.path in ROUTES else "other"
    request.app.state.metrics.requests.labels(route, str(status)).inc()


def _error(request: Request, err: RequestError) -> JSONResponse:
    _count(request, err.status)
    return JSONResponse(err.payload(), status_code=err.status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, never reading more than `limit` bytes (a declared larger one is not read at all)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise RequestError(413, f"request body is {int(length)} bytes; the limit is {limit}.")
    body = bytearray()
    async for chunk in request.stream():  # chunked bodies have no length to check up front
        body += chunk
        if len(body) > limit:
            raise RequestError(413, f"request body is over {limit} bytes; the limit is {limit}.")
    return bytes(body)


async def _until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _EventStream:
    """An ASGI response sending server-sent events while watching for the client to leave.

    `on_close(completed)` runs exactly once: completed=False when the client went away (or the
    send failed) before the last event.
    """

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[bool], None]):
        self.events, self._on_close = events, on_close

    def _close(self, completed: bool) -> None:
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close(completed)

    async def __call__(self, scope, receive, send) -> None:
        async def pump():
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]})
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            # released before the response ends: a client reusing the connection at once must
            # find its place in the queue free again
            self._close(True)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        pumping = asyncio.ensure_future(pump())
        watching = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait((pumping, watching), return_when=asyncio.FIRST_COMPLETED)
            if pumping.done() and not pumping.cancelled() and pumping.exception() is not None:
                log.error("event stream failed", exc_info=pumping.exception())
        finally:
            for task in (pumping, watching):
                task.cancel()
            await asyncio.gather(pumping, watching, return_exceptions=True)
            await self.events.aclose()  # runs the generator's cleanup now, not at garbage collection
            self._close(False)  # no-op when the last event went out


# ---------------------------------------------------------------- generation routes


async def _generation(request: Request, kind: str):
    state = request.app.state
    limits: Limits = state.config.limits
    try:
        req = parse_request(kind, await _read_body(request, limits.max_body_bytes), limits)
    except RequestError as e:
        return _error(request, e)
    if not state.admission.try_acquire():
        return _error(request, RequestError(503, "the server is at capacity; retry later.", "overloaded"))
    started = time.perf_counter()
    gen: Generation | None = None
    handed_off = False
    try:
        ids = await run_in_threadpool(state.engine.prompt_ids, req)  # tokenizing can take a while
        n_prompt = int(ids.get_shape()[1])
        if n_prompt > limits.max_prompt_tokens:
            raise RequestError(413, f"the prompt has {n_prompt} tokens; the limit is "
                                    f"{limits.max_prompt_tokens}.")
        gen = state.engine.submit(ids, req.max_tokens)
        state.metrics.prompt_tokens.inc(n_prompt)
        head = ResponseHead.new(req.kind, state.engine.name)
        if req.stream:
            _count(request, 200)
            handed_off = True  # the stream releases the slot and the generation when it ends
            return _EventStream(_events(state, req, gen, head, started),
                                lambda completed: _finish(state, gen, completed))
        return await _answer(request, gen, head, started)
    except RequestError as e:
        return _error(request, e)
    finally:
        if not handed_off:
            _finish(state, gen, gen is None or gen.done)


def _finish(state, gen: Generation | None, completed: bool) -> None:
    if gen is not None and not completed:
        state.engine.cancel(gen)
        state.metrics.cancelled.inc()
    state.admission.release()


async def _tokens(state, gen: Generation, started: float) -> AsyncIterator[list[int]]:
    """The generation's tokens, counted in the metrics as they come."""
    first = True
    async for tokens in gen.stream():
        if first:
            state.metrics.ttft.observe(time.perf_counter() - started)
            first = False
        state.metrics.generated_tokens.inc(len(tokens))
        yield tokens
    state.metrics.duration.observe(time.perf_counter() - started)


async def _answer(request: Request, gen: Generation, head: ResponseHead, started: float):
    """A plain (not streamed) response; stops generating if the client goes away meanwhile."""
    state = request.app.state

    async def collect():
        async for _ in _tokens(state, gen, started):
            pass

    working = asyncio.ensure_future(collect())
    gone = asyncio.ensure_future(_until_disconnect(request.receive))
    try:
        await asyncio.wait((working, gone), return_when=asyncio.FIRST_COMPLETED)
        if not working.done():  # the client left: nobody reads this (the caller cancels gen)
            return Response(status_code=400)
        working.result()  # raises the generation's RequestError, if any
    finally:
        for task in (working, gone):
            task.cancel()
    text = state.engine.tokenizer.decode(gen.token_ids)  # what the stream's pieces add up to
    _count(request, 200)
    return JSONResponse(head.response(text, gen.finish_reason, gen.prompt_tokens, gen.completion_tokens))


async def _events(state, req: GenerationRequest, gen: Generation, head: ResponseHead,
                  started: float) -> AsyncIterator[bytes]:
    pieces: list[str] = []
    streamer = state.engine.text_streamer(pieces.append)
    first = True
    try:
        async for tokens in _tokens(state, gen, started):
            streamer.write(tokens)
            for piece in filter(None, pieces):
                yield sse(head.chunk(piece, first=first))
                first = False
            pieces.clear()
        streamer.end()
        for piece in filter(None, pieces):
            yield sse(head.chunk(piece, first=first))
            first = False
    except RequestError as e:  # headers are sent: the error travels as an event (OpenAI's way)
        yield sse(e.payload())
        return
    yield sse(head.last_chunk(gen.finish_reason))
    if req.include_usage:
        yield sse(head.usage_chunk(gen.prompt_tokens, gen.completion_tokens))
    yield DONE


# ---------------------------------------------------------------- other routes, app


async def _completions(request: Request):
    return await _generation(request, "completion")


async def _chat(request: Request):
    return await _generation(request, "chat")


async def _models(request: Request):
    engine = request.app.state.engine
    _count(request, 200)
    return JSONResponse({"object": "list", "data": [
        {"id": engine.name, "object": "model", "created": request.app.state.created, "owned_by": "sqft"}]})


async def _health(request: Request):
    _count(request, 200)
    return Response(b'{"status":"ok"}', media_type="application/json")


async def _metrics(request: Request):
    _count(request, 200)
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE)


async def _http_error(request: Request, exc: HTTPException):
    if exc.status_code == 404:
        return _error(request, RequestError(404, f"no route {request.url.path}.", "not_found"))
    if exc.status_code == 405:
        return _error(request, RequestError(405, f"{request.method} is not allowed on "
                                                 f"{request.url.path}.", "method_not_allowed"))
    return _error(request, RequestError(exc.status_code, str(exc.detail)))


async def _server_error(request: Request, exc: Exception):
    # the traceback goes to the log by Starlette; the client gets a JSON error without details
    return JSONResponse(RequestError(500, "internal error.", "server_error").payload(), status_code=500)


class _ApiKey:
    """ASGI middleware: every HTTP request needs `Authorization: Bearer KEY` (constant-time check)."""

    def __init__(self, app, key: str | None):
        self.app = app
        self.expected = None if key is None else f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if self.expected is not None and scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                payload = RequestError(401, "missing or wrong API key.", "auth_error").payload()
                response = JSONResponse(payload, status_code=401, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def make_app(engine: BatchingEngine, config: ServerConfig) -> Starlette:
    """The ASGI app over an engine; `app.state` holds engine, config, admission and metrics."""
    app = Starlette(
        routes=[Route("/v1/completions", _completions, methods=["POST"]),
                Route("/v1/chat/completions", _chat, methods=["POST"]),
                Route("/v1/models", _models, methods=["GET"]),
                Route("/health", _health, methods=["GET"]),
                Route("/metrics", _metrics, methods=["GET"])],
        middleware=[Middleware(_ApiKey, key=config.api_key)],
        exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.state.engine, app.state.config = engine, config
    app.state.admission = Admission(config.queue_size)
    app.state.metrics = ServerMetrics(engine, app.state.admission)
    app.state.created = int(time.time())
    return app


# ---------------------------------------------------------------- running it


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), bound before uvicorn starts so callers know it."""
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every small write (an SSE event) waits for the client's delayed ACK (~40 ms)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                         socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def _uvicorn_config(app, config: ServerConfig, **kw) -> uvicorn.Config:
    # h11 + asyncio: pure-Python and the same everywhere; the model, not HTTP parsing, is the cost
    return uvicorn.Config(app, http="h11", loop="asyncio", lifespan="off", server_header=False,
                          limit_concurrency=config.max_connections, timeout_keep_alive=5,
                          timeout_graceful_shutdown=10, **kw)


class BackgroundServer:
    """uvicorn in a daemon thread (tests, in-process use): `.app`, `.port`, `.address`, `.stop()`."""

    def __init__(self, app, config: ServerConfig, log_level: str = "warning"):
        self.app = app
        self.sock = bind_socket(config.host, config.port)
        self.address = self.sock.getsockname()[:2]
        self.port = self.address[1]
        # log_config=None: uvicorn's loggers stay as the host process set them up
        self.server = uvicorn.Server(_uvicorn_config(app, config, log_config=None, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path, help="an export directory (or a run dir holding openvino/)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="interface to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    ap.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    ap.add_argument("--api-key-env", metavar="VAR", default=None,
                    help="read the required API key from this environment variable")
    ap.add_argument("--queue-size", type=int, default=ServerConfig.queue_size,
                    help="generation requests admitted at once; more get 503 (default %(default)s)")
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--kv-cache-gb", type=int, default=EngineConfig.kv_cache_gb,
                    help="KV-cache pool in GB; 0 = sized to the running requests (default %(default)s)")
    ap.add_argument("--max-batched-tokens", type=int, default=EngineConfig.max_batched_tokens,
                    help="most tokens computed in one step (default %(default)s)")
    ap.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs,
                    help="most sequences in one step (default %(default)s)")
    ap.add_argument("--max-new-tokens", type=int, default=Limits.max_new_tokens)
    ap.add_argument("--max-prompt-tokens", type=int, default=Limits.max_prompt_tokens)
    ap.add_argument("--max-connections", type=int, default=ServerConfig.max_connections)
    ap.add_argument("--no-access-log", action="store_true", help="no line per request on stderr")
    args = ap.parse_args(argv)
    from sqft_intel import export_dir_of

    export = export_dir_of(args.export)
    key = api_key_from_env(ap, args.api_key_env)
    if (warning := exposure_warning(args.host, key)) is not None:
        print(warning, file=sys.stderr)
    try:  # bad numbers are refused before the model loads
        engine_config = EngineConfig(device=args.device, kv_cache_gb=args.kv_cache_gb,
                                     max_batched_tokens=args.max_batched_tokens,
                                     max_num_seqs=args.max_num_seqs)
        config = ServerConfig(host=args.host, port=args.port, api_key=key, queue_size=args.queue_size,
                              limits=Limits(max_new_tokens=args.max_new_tokens,
                                            max_prompt_tokens=args.max_prompt_tokens),
                              max_connections=args.max_connections)
    except ValueError as e:
        ap.error(str(e))
    engine = BatchingEngine(export, engine_config)
    sock = bind_socket(config.host, config.port)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {export} on http://{host}:{sock.getsockname()[1]} (continuous batching; "
          "Ctrl-C stops)", file=sys.stderr, flush=True)
    server = uvicorn.Server(_uvicorn_config(make_app(engine, config), config,
                                            access_log=not args.no_access_log))
    try:
        server.run(sockets=[sock])  # SIGINT/SIGTERM: stop accepting, let answers finish (10 s)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled
        pass
    finally:
        engine.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
