"""The serialized baseline: today's server before continuous batching, kept runnable to measure
against (benchmarks/serve_load.py). Standard library HTTP, one OpenVINO GenAI LLMPipeline behind
a lock, so concurrent requests wait for each other.

    python -m deploy.serial_server runs/exp1 [--host 127.0.0.1] [--port 8000] [--api-key-env VAR]

Same routes, limits, auth and response shapes as deploy/server.py (deploy/protocol.py is shared);
what differs is only the engine (one generation at a time) and the HTTP stack (http.server). Use
deploy/server.py to serve; this module exists so the speed-up stays measurable on any machine.
"""

from __future__ import annotations

import argparse
import hmac
import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from deploy.protocol import (
    DONE,
    GenerationRequest,
    Limits,
    RequestError,
    ResponseHead,
    api_key_from_env,
    exposure_warning,
    finish_reason,
    parse_request,
    sse,
)


@dataclass(frozen=True)
class SerialConfig:
    """Args:
    host: interface to bind; 127.0.0.1 (this machine only) unless you mean to expose it.
    api_key: required bearer token, or None for none.
    queue_size: requests admitted at once (one generates, the rest wait); more get 503.
    device: OpenVINO device of the pipeline.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    queue_size: int = 32
    device: str = "CPU"
    limits: Limits = field(default_factory=Limits)


class SerialEngine:
    """One OpenVINO GenAI LLMPipeline; generation is serialized (the pipeline is not re-entrant)."""

    def __init__(self, export_dir: Path, device: str = "CPU"):
        import openvino_genai as ov_genai

        from sqft_intel import export_properties

        if not (Path(export_dir) / "openvino_model.xml").is_file():
            raise SystemExit(f"{export_dir} holds no openvino_model.xml; run `sqft export` first.")
        self.name = Path(export_dir).resolve().parent.name or "sqft"
        # the export's compile properties (the sparse-weight rate of a sparse-int8 export)
        self.pipe = ov_genai.LLMPipeline(str(export_dir), device,
                                         **export_properties(Path(export_dir), device))
        self.tokenizer = self.pipe.get_tokenizer()
        self.lock = threading.Lock()

    def prompt_text(self, req: GenerationRequest) -> str:
        if req.kind == "completion":
            return req.prompt
        history = [{"role": r, "content": c} for r, c in req.messages]
        try:
            return self.tokenizer.apply_chat_template(history, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001  (GenAI raises RuntimeError subclasses)
            raise RequestError(400, f"this model cannot format chat messages ({e}); use "
                                    "/v1/completions.") from e

    def count_tokens(self, text: str) -> int:
        return int(self.tokenizer.encode([text], add_special_tokens=False).input_ids.get_shape()[1])

    def generate(self, text: str, max_tokens: int, on_piece=None) -> tuple[str, int]:
        cfg = self.pipe.get_generation_config()  # the model's eos from generation_config.json
        cfg.max_new_tokens = max_tokens
        cfg.do_sample = False
        cfg.apply_chat_template = False  # chat prompts are templated by prompt_text

        def streamer(piece: str) -> bool:
            on_piece(piece)
            return False

        with self.lock:  # a list prompt returns DecodedResults, which count the generated tokens
            result = self.pipe.generate([text], cfg, streamer if on_piece else None)
        return result.texts[0], int(result.perf_metrics.get_num_generated_tokens())


def make_handler(engine: SerialEngine, config: SerialConfig, slots: threading.BoundedSemaphore):

    class Handler(BaseHTTPRequestHandler):
        server_version = "sqft-serve-serial/0.1"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # one line per request on stderr, no bodies
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

        # ------------------------------------------------------------ plumbing
        def _send(self, status: int, payload: bytes, content_type: str = "application/json"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _error(self, err: RequestError):
            self._send(err.status, err.body())

        def _authorized(self) -> bool:
            if config.api_key is None:
                return True
            given = self.headers.get("Authorization", "")
            expected = f"Bearer {config.api_key}"
            return hmac.compare_digest(given.encode(), expected.encode())

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise RequestError(411, "a Content-Length header is required.")
            n = int(length)
            if n > config.limits.max_body_bytes:
                self.close_connection = True  # do not read an oversized body
                raise RequestError(413, f"request body is {n} bytes; the limit is "
                                        f"{config.limits.max_body_bytes}.")
            return self.rfile.read(n)

        # ------------------------------------------------------------ routes
        def do_GET(self):
            if not self._authorized():
                return self._error(RequestError(401, "missing or wrong API key.", "auth_error"))
            if self.path == "/health":
                return self._send(200, b'{"status":"ok"}')
            if self.path == "/v1/models":
                return self._send(200, json.dumps({"object": "list", "data": [
                    {"id": engine.name, "object": "model", "owned_by": "sqft"}]}).encode())
            self._error(RequestError(404, f"no route {self.path}.", "not_found"))

        def do_POST(self):
            kinds = {"/v1/completions": "completion", "/v1/chat/completions": "chat"}
            try:
                if not self._authorized():
                    raise RequestError(401, "missing or wrong API key.", "auth_error")
                if self.path not in kinds:
                    raise RequestError(404, f"no route {self.path}.", "not_found")
                req = parse_request(kinds[self.path], self._body(), config.limits)
                if not slots.acquire(blocking=False):
                    raise RequestError(503, "the server is at capacity; retry later.", "overloaded")
            except RequestError as e:
                return self._error(e)
            try:
                self._generate(req)
            except RequestError as e:
                self._error(e)
            finally:
                slots.release()

        def _generate(self, req: GenerationRequest):
            text = engine.prompt_text(req)
            n_prompt = engine.count_tokens(text)
            if n_prompt > config.limits.max_prompt_tokens:
                raise RequestError(413, f"the prompt has {n_prompt} tokens; the limit is "
                                        f"{config.limits.max_prompt_tokens}.")
            head = ResponseHead.new(req.kind, engine.name)
            if req.stream:
                return self._stream(req, text, head, n_prompt)
            out, n_out = engine.generate(text, req.max_tokens)
            self._send(200, json.dumps(head.response(out, finish_reason(n_out, req.max_tokens),
                                                     n_prompt, n_out)).encode())

        def _stream(self, req: GenerationRequest, text: str, head: ResponseHead, n_prompt: int):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            first = [True]

            def write(data: bytes):
                self.wfile.write(data)
                self.wfile.flush()

            def on_piece(piece: str):
                write(sse(head.chunk(piece, first=first[0])))
                first[0] = False

            _, n_out = engine.generate(text, req.max_tokens, on_piece)  # counted as without stream
            write(sse(head.last_chunk(finish_reason(n_out, req.max_tokens))))
            if req.include_usage:
                write(sse(head.usage_chunk(n_prompt, n_out)))
            write(DONE)

    return Handler


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: with 16 clients reconnecting after every streamed
    # answer (Connection: close) SYNs overflow it and wait 1 s to be resent, and the benchmark
    # would measure TCP retries instead of the engine
    request_queue_size = 128


def make_serial_server(export_dir: Path, config: SerialConfig) -> ThreadingHTTPServer:
    engine = SerialEngine(export_dir, config.device)
    slots = threading.BoundedSemaphore(config.queue_size)  # admitted requests, generating or waiting
    server = _Server((config.host, config.port), make_handler(engine, config, slots))
    server.daemon_threads = True
    server.engine, server.slots = engine, slots  # type: ignore[attr-defined]  (for tests)
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.serial_server", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path, help="an export directory (or a run dir holding openvino/)")
    ap.add_argument("--host", default="127.0.0.1",
                    help="interface to bind (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key-env", metavar="VAR", default=None,
                    help="read the required API key from this environment variable")
    ap.add_argument("--queue-size", type=int, default=32)
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--max-new-tokens", type=int, default=Limits.max_new_tokens)
    ap.add_argument("--max-prompt-tokens", type=int, default=Limits.max_prompt_tokens)
    args = ap.parse_args(argv)
    from sqft_intel import export_dir_of

    export = export_dir_of(args.export)
    key = api_key_from_env(ap, args.api_key_env)
    if (warning := exposure_warning(args.host, key)) is not None:
        print(warning, file=sys.stderr)
    config = SerialConfig(host=args.host, port=args.port, api_key=key, queue_size=args.queue_size,
                          device=args.device, limits=Limits(max_new_tokens=args.max_new_tokens,
                                                            max_prompt_tokens=args.max_prompt_tokens))
    server = make_serial_server(export, config)
    print(f"serving {export} on http://{args.host}:{server.server_address[1]} (serialized baseline; "
          "Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
