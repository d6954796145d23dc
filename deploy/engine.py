"""Continuous batching on OpenVINO GenAI: one ContinuousBatchingPipeline, one scheduler thread,
many requests in flight.

The HTTP side (deploy/server.py, an asyncio event loop) calls `submit()`, which queues the request
and returns a `Generation` at once; the scheduler thread adds queued requests to the pipeline,
calls `step()` (one forward pass over every running sequence: new prompts are prefilled in the
same pass as the others' next tokens, up to `max_batched_tokens`), then hands each request its new
token ids on the event loop that submitted it. A request that arrives while others generate joins
the next step instead of waiting for them to finish. Every pipeline call happens on the scheduler
thread, so no GenAI object is shared between threads; `step()` releases the GIL, so the event loop
keeps serving HTTP while the model runs. A cancelled request (a client that went away) is
cancelled in the pipeline (`GenerationHandle.cancel()`), which frees its KV-cache blocks at the
next step.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from deploy.protocol import GenerationRequest, RequestError, finish_reason

log = logging.getLogger("deploy.engine")


@dataclass(frozen=True)
class EngineConfig:
    """Args:
    device: OpenVINO device of the pipeline.
    kv_cache_gb: KV-cache size. 0 (default): GenAI sizes the cache to what the running
        sequences need (at most `max_num_seqs` x their prompt + `max_tokens`; bounded by the
        server's limits). N > 0: a fixed pool of N GB; its pages become resident as the block
        allocator first uses them, so the process's RSS climbs toward N GB under load (measured:
        linear in tokens served until the pool is touched; bounded, not a leak).
    max_batched_tokens: most tokens one step computes (prompt chunks plus one per running
        sequence); longer prompts are prefilled over several steps (dynamic split-fuse).
    max_num_seqs: most sequences in one step; more wait inside GenAI for a free place.
    """

    device: str = "CPU"
    kv_cache_gb: int = 0
    max_batched_tokens: int = 256
    max_num_seqs: int = 32

    def __post_init__(self):
        for name, least in (("kv_cache_gb", 0), ("max_batched_tokens", 1), ("max_num_seqs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"`{name}` must be an integer >= {least}, got {value!r}.")


_END = object()  # queued after a generation's last tokens
_WINDOW_S = 60.0  # how far back `tokens_per_second` can look


class Generation:
    """One request in the running batch, read from the event loop that submitted it.

    After the last tokens: `finish_reason` ("stop" | "length"), `prompt_tokens` and
    `completion_tokens` (GenAI's own counts), or `error` (a RequestError) if it failed.
    """

    def __init__(self, request_id: int, input_ids, config, max_tokens: int,
                 loop: asyncio.AbstractEventLoop):
        self.request_id, self.input_ids, self.config = request_id, input_ids, config
        self.max_tokens, self.loop = max_tokens, loop
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.error: RequestError | None = None
        self.done = False  # set on the event loop once the last tokens were queued
        self.cancelled = False
        self.handle = None  # GenAI's GenerationHandle: scheduler thread only
        self.started = False  # has produced a token (scheduler thread only)
        self._queue: asyncio.Queue = asyncio.Queue()

    async def stream(self) -> AsyncIterator[list[int]]:
        """New token ids as the pipeline produces them; raises `error` if the generation failed."""
        while True:
            item = await self._queue.get()
            if item is _END:
                break
            yield item
        if self.error is not None:
            raise self.error

    async def wait(self) -> list[int]:
        """All token ids, once generation has ended."""
        async for _ in self.stream():
            pass
        return self.token_ids

    def _deliver(self, tokens: list[int], final: dict | None) -> None:  # on the event loop
        if self.done:
            return
        if tokens:
            self.token_ids.extend(tokens)
            self._queue.put_nowait(tokens)
        if final is not None:
            for key, value in final.items():
                setattr(self, key, value)
            self.done = True
            self._queue.put_nowait(_END)


class BatchingEngine:
    """A GenAI ContinuousBatchingPipeline on an export, driven by one scheduler thread.

    Example:
        engine = BatchingEngine(Path("runs/exp1/openvino"))
        async def complete(prompt):
            gen = engine.submit(engine.tokenizer.encode(prompt).input_ids, max_tokens=16)
            return engine.tokenizer.decode(await gen.wait()), gen.finish_reason
    """

    def __init__(self, export_dir: Path, config: EngineConfig = EngineConfig()):
        import openvino_genai as ov_genai

        from sqft_intel import export_properties

        export_dir = Path(export_dir)
        if not (export_dir / "openvino_model.xml").is_file():
            raise SystemExit(f"{export_dir} holds no openvino_model.xml; run `sqft export` first.")
        self._ov_genai = ov_genai
        self.name = export_dir.resolve().parent.name or "sqft"
        self.config = config
        scheduler = ov_genai.SchedulerConfig()
        scheduler.cache_size = config.kv_cache_gb
        scheduler.max_num_batched_tokens = config.max_batched_tokens
        scheduler.max_num_seqs = config.max_num_seqs
        scheduler.dynamic_split_fuse = True
        scheduler.enable_prefix_caching = False  # a finished request's KV blocks are freed at once
        # the export's compile properties (the sparse-weight rate of a sparse-int8 export)
        self.pipe = ov_genai.ContinuousBatchingPipeline(str(export_dir), scheduler, config.device,
                                                        export_properties(export_dir, config.device))
        self.tokenizer = self.pipe.get_tokenizer()
        self._ids = itertools.count()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # ("add" | "cancel" | "stop", Generation)
        self._running: dict[int, Generation] = {}  # scheduler thread only
        # read by /metrics from other threads: plain ints/floats, replaced whole
        self._count_lock = threading.Lock()
        self.in_flight = 0  # requests submitted and not yet retired
        self.waiting = 0  # of those in the pipeline, the ones without a token yet
        self.peak_running = 0  # most requests in one step so far
        self.cancelled = 0  # requests cancelled inside the pipeline (their clients left)
        self.steps = 0
        self.kv_cache_usage = 0.0  # fraction of the KV cache in use after the last step
        self._window: collections.deque = collections.deque()  # [second, tokens generated in it]
        self._window_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sqft-batching", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ event-loop side
    def prompt_ids(self, req: GenerationRequest):
        """Token ids of a request's prompt (an ov.Tensor, shape (1, n)). Completions are encoded
        as `LLMPipeline.generate(str)` encodes them (with the tokenizer's special tokens); chat
        messages go through the tokenizer's chat template, whose text already holds its special
        tokens, as GenAI's own chat mode does."""
        if req.kind == "completion":
            return self.tokenizer.encode(req.prompt).input_ids
        history = [{"role": r, "content": c} for r, c in req.messages]
        try:
            text = self.tokenizer.apply_chat_template(history, add_generation_prompt=True)
        except Exception as e:  # noqa: BLE001  (GenAI raises RuntimeError subclasses)
            raise RequestError(400, f"this model cannot format chat messages ({e}); use "
                                    "/v1/completions.") from e
        return self.tokenizer.encode(text, add_special_tokens=False).input_ids

    def generation_config(self, max_tokens: int):
        """Greedy decoding with the export's generation_config.json (its eos: a fresh config would
        take the tokenizer's, which GGUF conversions can get wrong)."""
        cfg = self.pipe.get_config()  # a copy of the config GenAI read from generation_config.json
        cfg.max_new_tokens = max_tokens
        cfg.do_sample = False
        cfg.apply_chat_template = False  # prompts arrive as token ids, templated by prompt_ids
        return cfg

    def submit(self, input_ids, max_tokens: int) -> Generation:
        """Queue a request; call from a running event loop, which will receive its tokens."""
        gen = Generation(next(self._ids), input_ids, self.generation_config(max_tokens), max_tokens,
                         asyncio.get_running_loop())
        with self._count_lock:
            self.in_flight += 1
        self._inbox.put(("add", gen))
        return gen

    def cancel(self, gen: Generation) -> None:
        """Stop a generation nobody reads any more and free its sequence (no-op once finished)."""
        if gen.done or gen.cancelled:
            return
        gen.cancelled = True
        self._inbox.put(("cancel", gen))

    def text_streamer(self, on_text: Callable[[str], None]):
        """GenAI's incremental detokenizer (the one LLMPipeline streams with): `write(ids)` calls
        `on_text` with each piece of text that is complete, `end()` flushes the rest."""

        def callback(piece: str) -> bool:
            on_text(piece)
            return False  # keep going

        return self._ov_genai.TextStreamer(self.tokenizer, callback)

    def tokens_per_second(self, window_s: float = 10.0) -> float:
        """Generated tokens per second over the last `window_s` (at most 60) whole seconds."""
        window_s = int(min(window_s, _WINDOW_S))
        since = int(time.monotonic()) - window_s
        with self._window_lock:
            return sum(n for t, n in self._window if t >= since) / window_s

    def close(self) -> None:
        """Stop the scheduler thread; unfinished requests end with a 503."""
        if self._thread.is_alive():
            self._inbox.put(("stop", None))
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ scheduler thread
    def _run(self) -> None:
        while True:
            try:
                if not self._iterate():
                    return self._shutdown()
            except Exception as e:  # noqa: BLE001  (a failed step fails its requests, not the server)
                log.exception("generation step failed")
                self._fail_all(RequestError(500, f"generation failed ({type(e).__name__}).", "server_error"))

    def _iterate(self) -> bool:
        """Take in queued requests and cancellations (waiting for one when idle), run one step,
        hand out its tokens. False once asked to stop."""
        idle = not self._running and not self.pipe.has_non_finished_requests()
        try:
            msg = self._inbox.get(block=idle)
            while True:
                if not self._handle(*msg):
                    return False
                msg = self._inbox.get_nowait()
        except queue.Empty:
            pass
        if self._running or self.pipe.has_non_finished_requests():  # (cancelled ones end in a step)
            self.pipe.step()
            self.steps += 1
            self.peak_running = max(self.peak_running, len(self._running))
            self._collect()
        return True

    def _handle(self, kind: str, gen: Generation | None) -> bool:
        if kind == "stop":
            return False
        if kind == "add":
            if gen.cancelled:  # its client left before it reached the pipeline
                self._retire(gen)
                return True
            try:
                gen.handle = self.pipe.add_request(gen.request_id, gen.input_ids, gen.config)
            except Exception as e:  # noqa: BLE001  (GenAI validates the request here)
                self._retire(gen)
                self._post({gen.loop: [(gen, [], {"error": RequestError(400, f"cannot generate: {e}")})]})
                return True
            self._running[gen.request_id] = gen
            self.waiting += 1
        elif kind == "cancel" and self._running.pop(gen.request_id, None) is not None:
            gen.handle.cancel()  # its KV blocks are freed at the next step
            self.cancelled += 1
            self._retire(gen)
        return True

    def _retire(self, gen: Generation) -> None:
        with self._count_lock:
            self.in_flight -= 1
        if gen.handle is not None and not gen.started:
            self.waiting -= 1

    def _collect(self) -> None:
        """Hand every running request the tokens of the last step; retire the finished ones."""
        ov_genai = self._ov_genai
        running, finished = ov_genai.GenerationStatus.RUNNING, ov_genai.GenerationStatus.FINISHED
        by_loop: dict[asyncio.AbstractEventLoop, list] = collections.defaultdict(list)
        produced = 0
        for rid, gen in list(self._running.items()):
            handle, tokens, reason = gen.handle, [], None
            while handle.can_read():  # one output per step that produced a token
                for out in handle.read().values():
                    tokens.extend(out.generated_ids)
                    if out.finish_reason != ov_genai.GenerationFinishReason.NONE:
                        reason = out.finish_reason
            if tokens and not gen.started:
                gen.started = True
                self.waiting -= 1
            produced += len(tokens)
            status = handle.get_status()
            final = None
            if status != running:
                del self._running[rid]
                self._retire(gen)
                if status == finished:
                    metrics = handle.get_perf_metrics()
                    n_out = int(metrics.get_num_generated_tokens())
                    final = {"prompt_tokens": int(metrics.get_num_input_tokens()),
                             "completion_tokens": n_out,
                             "finish_reason": {ov_genai.GenerationFinishReason.LENGTH: "length",
                                               ov_genai.GenerationFinishReason.STOP: "stop"}.get(
                                 reason, finish_reason(n_out, gen.max_tokens))}
                else:  # IGNORED: GenAI could not schedule it (e.g. its prompt outgrows the KV cache)
                    final = {"error": RequestError(
                        503, f"the server could not schedule this request ({status.name}): its "
                             "prompt may not fit the KV cache; retry later or shorten it.", "overloaded")}
            if tokens or final is not None:
                by_loop[gen.loop].append((gen, tokens, final))
        if produced:
            second = int(time.monotonic())
            with self._window_lock:  # one entry per second, the last minute only
                if self._window and self._window[-1][0] == second:
                    self._window[-1][1] += produced
                else:
                    self._window.append([second, produced])
                while self._window[0][0] < second - _WINDOW_S:
                    self._window.popleft()
        self.kv_cache_usage = float(self.pipe.get_metrics().cache_usage) / 100.0
        self._post(by_loop)

    def _post(self, by_loop: dict) -> None:
        for loop, updates in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_all, updates)
            except RuntimeError:  # that event loop is closed: nobody will read these
                for gen, _, final in updates:
                    if final is None:
                        self._inbox.put(("cancel", gen))

    def _fail_all(self, error: RequestError) -> None:
        by_loop: dict = collections.defaultdict(list)
        for gen in self._running.values():
            try:
                gen.handle.cancel()
            except Exception:  # noqa: BLE001,S110  (best effort: the pipeline is already failing)
                pass
            by_loop[gen.loop].append((gen, [], {"error": error}))
            self._retire(gen)
        self._running.clear()
        self._post(by_loop)

    def _shutdown(self) -> None:
        self._fail_all(RequestError(503, "the server is shutting down; retry later.", "overloaded"))
        while True:  # requests still in the inbox
            try:
                kind, gen = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "add":
                self._retire(gen)
                self._post({gen.loop: [(gen, [], {"error": RequestError(
                    503, "the server is shutting down; retry later.", "overloaded")})]})


def _deliver_all(updates: list) -> None:
    for gen, tokens, final in updates:
        gen._deliver(tokens, final)
