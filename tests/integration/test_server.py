"""deploy/server.py on the tiny model's exact INT4 export: continuous batching, OpenAI-style routes,
limits, auth, 503, disconnects, metrics."""

import asyncio
import http.client
import json
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("openvino_genai")

from deploy.engine import BatchingEngine  # noqa: E402
from deploy.load_test import run_load  # noqa: E402
from deploy.protocol import Limits, exposure_warning, parse_request  # noqa: E402
from deploy.server import BackgroundServer, ServerConfig, main, make_app  # noqa: E402


@pytest.fixture(scope="module")
def engine(tiny_int4_run):
    eng = BatchingEngine(tiny_int4_run[0] / "openvino")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def serve(engine):
    """start(**config) -> (server, port): an app over the shared engine; all stopped at the end."""
    started = []

    def start(log_level="warning", **kw):
        config = ServerConfig(port=0, **kw)
        server = BackgroundServer(make_app(engine, config), config, log_level=log_level)
        started.append(server)
        return server, server.port

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def port(serve):
    return serve()[1]


def call(port, method, path, body=None, headers=None, raw: bytes | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                   **(headers or {})})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    return resp.status, text


def metric(port, name, headers=None) -> float:
    status, text = call(port, "GET", "/metrics", headers=headers)
    assert status == 200, text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_binds_loopback_by_default(serve):
    server, _ = serve()
    assert server.address[0] == "127.0.0.1" and ServerConfig().host == "127.0.0.1"


def test_exposed_without_key_warns_and_bad_flags_are_refused(monkeypatch, capsys):
    assert "without an API key" in exposure_warning("0.0.0.0", None)
    assert exposure_warning("0.0.0.0", "k") is None and exposure_warning("127.0.0.1", None) is None
    monkeypatch.delenv("SQFT_TEST_UNSET_KEY", raising=False)
    with pytest.raises(SystemExit) as e:  # refused while parsing: nothing is loaded or bound
        main(["nowhere", "--api-key-env", "SQFT_TEST_UNSET_KEY"])
    assert e.value.code == 2 and "SQFT_TEST_UNSET_KEY" in capsys.readouterr().err
    for flag, value in (("--queue-size", "0"), ("--max-num-seqs", "0"), ("--kv-cache-gb", "-1")):
        with pytest.raises(SystemExit) as e:
            main(["nowhere", flag, value])
        assert e.value.code == 2 and "must be" in capsys.readouterr().err


def test_small_writes_are_not_held_back(port):
    """Regression: the listening socket was made with proto 0, so asyncio left TCP_NODELAY off
    and every response's second write (and every SSE event) waited ~40 ms for a delayed ACK."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for _ in range(11):  # one keep-alive connection, as clients use it
        t0 = time.perf_counter()
        conn.request("GET", "/health")
        conn.getresponse().read()
        times.append(time.perf_counter() - t0)
    conn.close()
    assert sorted(times)[5] < 0.02, times


def test_completion(port):
    status, text = call(port, "POST", "/v1/completions", {"prompt": "Question: the sun", "max_tokens": 5})
    assert status == 200, text
    out = json.loads(text)
    assert out["object"] == "text_completion" and isinstance(out["choices"][0]["text"], str)
    assert 0 < out["usage"]["completion_tokens"] <= 5 and out["usage"]["prompt_tokens"] > 0


def test_usage_is_genai_count_and_greedy_text_matches_llm_pipeline(port, engine, tiny_int4_run):
    """Usage counts are GenAI's (prompt: the tokenizer's ids); the greedy answer is the one the
    serialized LLMPipeline server gives for the same prompt."""
    from deploy.serial_server import SerialEngine

    prompt = "Question: Which gas do plants take in?\nAnswer:"
    status, text = call(port, "POST", "/v1/completions", {"prompt": prompt, "max_tokens": 8})
    assert status == 200, text
    out = json.loads(text)
    assert out["usage"]["prompt_tokens"] == engine.tokenizer.encode(prompt).input_ids.get_shape()[1]
    assert out["usage"]["completion_tokens"] == 8 and out["usage"]["total_tokens"] == out["usage"][
        "prompt_tokens"] + 8
    serial = SerialEngine(tiny_int4_run[0] / "openvino")
    assert serial.generate(prompt, 8) == (out["choices"][0]["text"], 8)


CHAT = [{"role": "user", "content": "which is warmer, the sun or the moon?"}]
ROUTES = [("/v1/completions", {"prompt": "Question: the sun"}),
          ("/v1/chat/completions", {"messages": CHAT})]


def plain_and_streamed(port, path, body) -> tuple[dict, str, list[dict]]:
    """(plain response's choice, streamed text = concatenated deltas, stream chunks) for the
    same greedy request sent without and with `"stream": true`."""
    status, text = call(port, "POST", path, body)
    assert status == 200, text
    choice = json.loads(text)["choices"][0]
    status, text = call(port, "POST", path, {**body, "stream": True})
    assert status == 200, text
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 3, events  # >= 1 delta, the final chunk, DONE
    chunks = [json.loads(e) for e in events[:-1]]
    chat = path.endswith("chat/completions")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk" if chat else "text_completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"].get("content", "") if chat else c["choices"][0]["text"]
              for c in chunks]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert deltas[-1] == ""  # the final chunk carries only the finish_reason
    if chat:
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    return choice, "".join(deltas), chunks


@pytest.mark.parametrize("path, body", ROUTES)
def test_chat_completion_and_stream(port, path, body):
    """Regression: the stream's last chunk said "stop" even when `max_tokens` cut the answer."""
    choice, streamed, chunks = plain_and_streamed(port, path, {**body, "max_tokens": 6})
    plain = choice["text"] if "text" in choice else choice["message"]["content"]
    if "message" in choice:
        assert choice["message"]["role"] == "assistant"
    # the tiny random model never emits its end token this early: 6 tokens, cut by max_tokens
    assert choice["finish_reason"] == "length"
    assert plain and streamed == plain  # non-empty, so equality says something
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]


def greedy_ids(engine, kind, body, max_tokens) -> list[int]:
    """The engine's greedy token ids for a request body, as the server would run it."""
    req = parse_request(kind, json.dumps(body).encode(), Limits())

    async def run():
        return await engine.submit(engine.prompt_ids(req), max_tokens).wait()

    return asyncio.run(run())


@pytest.mark.parametrize("path, body", ROUTES)
def test_stream_says_stop_like_the_plain_response_when_the_model_ends(serve, engine, monkeypatch,
                                                                      path, body):
    """The model ends before `max_tokens`: a token it generates early is made a stop token of
    the generation config (as an end token in generation_config.json would be), so GenAI itself
    ends the answer. Both responses say "stop", with the same text and the same usage."""
    ids = greedy_ids(engine, "completion" if "prompt" in body else "chat", body, 6)
    k = next(i for i in range(1, len(ids)) if ids[i] not in ids[:i])  # the first new token after #0
    real = engine.generation_config

    def ending_early(max_tokens):
        cfg = real(max_tokens)
        cfg.stop_token_ids = cfg.stop_token_ids | {ids[k]}
        return cfg

    monkeypatch.setattr(engine, "generation_config", ending_early)
    _, p = serve()
    choice, streamed, chunks = plain_and_streamed(p, path, {**body, "max_tokens": 6})
    plain = choice["text"] if "text" in choice else choice["message"]["content"]
    assert choice["finish_reason"] == "stop" == chunks[-1]["choices"][0]["finish_reason"]
    assert plain and streamed == plain
    status, text = call(p, "POST", path, {**body, "max_tokens": 6})
    assert json.loads(text)["usage"]["completion_tokens"] == k + 1 < 6  # GenAI counts the end token


def test_stream_usage_chunk_matches_plain_usage(port):
    body = {"prompt": "Question: the moon", "max_tokens": 5}
    plain = json.loads(call(port, "POST", "/v1/completions", body)[1])
    status, text = call(port, "POST", "/v1/completions",
                        {**body, "stream": True, "stream_options": {"include_usage": True}})
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    usage_chunk = json.loads(events[-2])
    assert status == 200 and events[-1] == "[DONE]"
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == plain["usage"]


def test_max_completion_tokens_is_accepted_for_chat(port):
    status, text = call(port, "POST", "/v1/chat/completions", {"messages": CHAT, "max_completion_tokens": 3})
    assert status == 200, text
    out = json.loads(text)
    assert out["usage"]["completion_tokens"] == 3 and out["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid UTF-8 JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"max_tokens": 4}).encode(), 422, "`prompt`"),
    (json.dumps({"prompt": "hi", "max_tokens": 10_000}).encode(), 422, "exceeds this server's limit"),
    (json.dumps({"prompt": "hi", "max_tokens": -1}).encode(), 422, "positive integer"),
    (json.dumps({"prompt": "hi", "stream": "yes"}).encode(), 422, "`stream`"),
    (json.dumps({"prompt": "hi", "stream_options": {"include_usage": True}}).encode(), 422,
     "`stream_options`"),
    (json.dumps({"prompt": "x" * 17_000}).encode(), 413, "`prompt` has 17000 characters"),
    (json.dumps({"prompt": "x" * 70_000}).encode(), 413, "limit is 65536"),
])
def test_bad_requests_get_clean_json_errors(port, body, status, words):
    got, text = call(port, "POST", "/v1/completions", raw=body)
    assert got == status, text
    err = json.loads(text)["error"]
    assert words in err["message"] and err["code"] == status


def test_chunked_oversize_body_is_cut_off(port):
    """No Content-Length to check up front: the body is read only up to the limit."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    chunks = (b"x" * 16384 for _ in range(5))  # 80 KiB in all, sent with Transfer-Encoding: chunked
    conn.request("POST", "/v1/completions", body=chunks, encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 413 and "limit is 65536" in json.loads(text)["error"]["message"]


def test_unknown_route_and_health(port):
    status, text = call(port, "POST", "/v1/nothing", {"prompt": "x"})
    assert status == 404 and json.loads(text)["error"]["code"] == 404
    assert call(port, "GET", "/v1/completions")[0] == 405
    assert call(port, "GET", "/health") == (200, '{"status":"ok"}')
    status, text = call(port, "GET", "/v1/models")
    assert status == 200 and json.loads(text)["data"][0]["object"] == "model"


def test_prompt_token_limit(serve):
    _, p = serve(limits=Limits(max_prompt_tokens=4))
    status, text = call(p, "POST", "/v1/completions", {"prompt": "the sun the moon the star water"})
    assert status == 413 and "tokens; the limit is 4" in text


def test_api_key_required_when_set(serve):
    _, p = serve(api_key="s3cret")
    body = {"prompt": "the sun", "max_tokens": 2}
    assert call(p, "POST", "/v1/completions", body)[0] == 401
    assert call(p, "POST", "/v1/completions", body, {"Authorization": "Bearer wrong"})[0] == 401
    assert call(p, "POST", "/v1/completions", body, {"Authorization": "Bearer s3cre"})[0] == 401
    assert call(p, "POST", "/v1/completions", body, {"Authorization": "s3cret"})[0] == 401
    for path in ("/v1/models", "/health", "/metrics", "/nowhere"):
        status, text = call(p, "GET", path)
        assert status == 401 and json.loads(text)["error"]["type"] == "auth_error", path
    assert call(p, "POST", "/v1/completions", body, {"Authorization": "Bearer s3cret"})[0] == 200
    assert call(p, "GET", "/metrics", headers={"Authorization": "Bearer s3cret"})[0] == 200


def test_full_queue_answers_503_at_once(serve):
    server, p = serve(queue_size=2)
    admission = server.app.state.admission
    for _ in range(2):  # two requests admitted and still running: the queue is full
        assert admission.try_acquire()
    try:
        t0 = time.perf_counter()
        status, text = call(p, "POST", "/v1/completions", {"prompt": "the moon", "max_tokens": 2})
        assert status == 503 and "capacity" in text and time.perf_counter() - t0 < 2.0
    finally:
        for _ in range(2):
            admission.release()
    assert call(p, "POST", "/v1/completions", {"prompt": "the moon", "max_tokens": 2})[0] == 200


LONG = 4096  # tokens of a long answer: about a second of the tiny model, with the limit raised to it


@pytest.fixture
def long_answers(engine, monkeypatch):
    """Answers that run to `max_tokens`: GenAI ignores the end token, as a model that has not
    learned to stop would. These tests are about batching and cancellation, and a fine-tuned tiny
    model may end "Question: the sun" after a few tokens."""
    real = engine.generation_config

    def ignoring_eos(max_tokens):
        cfg = real(max_tokens)
        cfg.ignore_eos = True
        return cfg

    monkeypatch.setattr(engine, "generation_config", ignoring_eos)


def open_stream(port, max_tokens=LONG) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                 body=json.dumps({"prompt": "Question: the sun", "max_tokens": max_tokens, "stream": True}))
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")  # the first event: generation is under way
    return conn, resp


def test_requests_join_the_running_batch(serve, engine, long_answers):
    """A short request sent while a long one streams finishes first: it joined the running batch
    instead of waiting for a lock (the serialized server answers it only after the long one)."""
    server, p = serve(limits=Limits(max_new_tokens=LONG))
    engine.peak_running = 0  # a statistic: counted again from here
    conn, resp = open_stream(p)
    long_done = threading.Event()

    def drain():
        resp.read()
        long_done.set()

    threading.Thread(target=drain, daemon=True).start()
    status, text = call(p, "POST", "/v1/completions", {"prompt": "Question: the moon", "max_tokens": 4})
    assert status == 200, text
    assert not long_done.is_set(), "the short request waited for the long one"
    assert engine.peak_running >= 2  # both were in one step
    long_done.wait(60)
    conn.close()


def test_client_leaving_mid_stream_frees_its_sequence(serve, engine, long_answers):
    server, p = serve(limits=Limits(max_new_tokens=LONG))
    cancelled, steps = engine.cancelled, engine.steps
    conn, resp = open_stream(p)
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away after the first event
    conn.close()
    wait_for(lambda: engine.in_flight == 0 and server.app.state.admission.in_use == 0)
    assert engine.cancelled == cancelled + 1  # cancelled inside GenAI, its KV blocks freed
    assert engine.steps - steps < LONG - 100  # it did not run on to its last token
    assert metric(p, "sqft_requests_cancelled_total") == 1
    assert call(p, "POST", "/v1/completions", {"prompt": "the moon", "max_tokens": 2})[0] == 200


def test_client_leaving_a_plain_request_frees_its_sequence(serve, engine, long_answers):
    server, p = serve(limits=Limits(max_new_tokens=LONG))
    cancelled = engine.cancelled
    body = json.dumps({"prompt": "Question: the sun", "max_tokens": LONG}).encode()
    with socket.create_connection(("127.0.0.1", p), timeout=30) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: engine.in_flight == 1)
    wait_for(lambda: engine.in_flight == 0 and server.app.state.admission.in_use == 0)
    assert engine.cancelled == cancelled + 1


def test_metrics_in_prometheus_text_format(serve):
    from prometheus_client.parser import text_string_to_metric_families

    _, p = serve()
    status, text = call(p, "POST", "/v1/completions", {"prompt": "Question: the sun", "max_tokens": 4})
    usage = json.loads(text)["usage"]
    status, text = call(p, "GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"sqft_requests", "sqft_prompt_tokens", "sqft_generated_tokens", "sqft_queue_depth",
            "sqft_requests_in_flight", "sqft_time_to_first_token_seconds",
            "sqft_generated_tokens_per_second", "sqft_kv_cache_usage_ratio"} <= families.keys()
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in families.values() for s in f.samples}
    assert value[("sqft_generated_tokens_total", ())] == usage["completion_tokens"]
    assert value[("sqft_prompt_tokens_total", ())] == usage["prompt_tokens"]
    assert value[("sqft_requests_total", (("code", "200"), ("route", "/v1/completions")))] == 1
    assert value[("sqft_time_to_first_token_seconds_count", ())] == 1
    assert value[("sqft_requests_in_flight", ())] == 0 and value[("sqft_queue_depth", ())] == 0
    assert value[("sqft_generated_tokens_per_second", ())] > 0
    call(p, "GET", "/no/such/route/12345")  # unknown paths share one label: the set stays bounded
    assert 'route="other"' in call(p, "GET", "/metrics")[1] and "12345" not in call(p, "GET", "/metrics")[1]


def test_no_request_bodies_in_logs(serve, caplog):
    _, p = serve(log_level="debug")
    secret = "SECRET-PROMPT-TEXT-4711"
    with caplog.at_level("DEBUG"):
        call(p, "POST", "/v1/completions", {"prompt": f"Question: {secret}", "max_tokens": 2})
        call(p, "POST", "/v1/completions", raw=f'{{"prompt": "{secret}", "max_tokens": '.encode())
        call(p, "POST", "/v1/completions", {"prompt": secret, "max_tokens": 10_000})
    assert "POST /v1/completions" in caplog.text  # the access log is there ...
    assert secret not in caplog.text  # ... without the bodies


def test_engine_takes_eos_from_the_exports_generation_config(tmp_path, tiny_int4_run):
    """A fresh config would take the tokenizer's eos; the export's generation_config.json wins."""
    export = tmp_path / "openvino"
    shutil.copytree(tiny_int4_run[0] / "openvino", export)
    path = export / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token_id": [5, 7]}))
    eng = BatchingEngine(export)
    try:
        cfg = eng.generation_config(4)
        assert cfg.eos_token_id == 5 and cfg.stop_token_ids == {5, 7}
        assert cfg.max_new_tokens == 4 and not cfg.do_sample and not cfg.apply_chat_template
    finally:
        eng.close()


def test_concurrent_clients_no_errors(port):
    result = run_load(f"http://127.0.0.1:{port}", clients=4, requests=10, max_tokens=4)
    assert result["errors"] == 0 and result["total_requests"] == 40, result["error_samples"]
    assert result["latency_p99_s"] >= result["latency_p50_s"] > 0
    assert 0 < result["ttft_p50_s"] <= result["latency_p50_s"]
    assert result["generated_tokens"] == 40 * 4
