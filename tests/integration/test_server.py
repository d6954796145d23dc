"""deploy/server.py on the tiny model's exact INT4 export: OpenAI-style routes, limits, auth, 503."""

import http.client
import json
import threading

import pytest

pytest.importorskip("openvino_genai")

from deploy.load_test import run_load  # noqa: E402
from deploy.protocol import Limits  # noqa: E402
from deploy.server import ServerConfig, make_server  # noqa: E402


@pytest.fixture(scope="module")
def serve(tiny_int4_run):
    """start(**config) -> (server, port); every server is shut down at the end."""
    started = []

    def start(**kw):
        server = make_server(tiny_int4_run[0] / "openvino", ServerConfig(port=0, **kw))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server, server.server_address[1]

    yield start
    for s in started:
        s.shutdown()
        s.server_close()


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


def test_binds_loopback_by_default(serve):
    server, _ = serve()
    assert server.server_address[0] == "127.0.0.1" and ServerConfig().host == "127.0.0.1"


def test_completion(port):
    status, text = call(port, "POST", "/v1/completions", {"prompt": "Question: the sun", "max_tokens": 5})
    assert status == 200, text
    out = json.loads(text)
    assert out["object"] == "text_completion" and isinstance(out["choices"][0]["text"], str)
    assert 0 < out["usage"]["completion_tokens"] <= 5 and out["usage"]["prompt_tokens"] > 0


def test_chat_completion_and_stream(port):
    msgs = [{"role": "user", "content": "which is warmer, the sun or the moon?"}]
    status, text = call(port, "POST", "/v1/chat/completions", {"messages": msgs, "max_tokens": 4})
    assert status == 200, text
    assert json.loads(text)["choices"][0]["message"]["role"] == "assistant"
    status, text = call(port, "POST", "/v1/chat/completions",
                        {"messages": msgs, "max_tokens": 4, "stream": True})
    assert status == 200
    events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 2
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, "not valid UTF-8 JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"max_tokens": 4}).encode(), 422, "`prompt`"),
    (json.dumps({"prompt": "hi", "max_tokens": 10_000}).encode(), 422, "exceeds this server's limit"),
    (json.dumps({"prompt": "hi", "max_tokens": -1}).encode(), 422, "positive integer"),
    (json.dumps({"prompt": "hi", "stream": "yes"}).encode(), 422, "`stream`"),
    (json.dumps({"prompt": "x" * 70_000}).encode(), 413, "limit is 65536"),
])
def test_bad_requests_get_clean_json_errors(port, body, status, words):
    got, text = call(port, "POST", "/v1/completions", raw=body)
    assert got == status, text
    err = json.loads(text)["error"]
    assert words in err["message"] and err["code"] == status


def test_unknown_route_and_health(port):
    assert call(port, "POST", "/v1/nothing", {"prompt": "x"})[0] == 404
    assert call(port, "GET", "/health") == (200, '{"status":"ok"}')


def test_prompt_token_limit(serve):
    _, p = serve(limits=Limits(max_prompt_tokens=4))
    status, text = call(p, "POST", "/v1/completions", {"prompt": "the sun the moon the star water"})
    assert status == 413 and "tokens; the limit is 4" in text


def test_api_key_required_when_set(serve):
    _, p = serve(api_key="s3cret")
    body = {"prompt": "the sun", "max_tokens": 2}
    assert call(p, "POST", "/v1/completions", body)[0] == 401
    assert call(p, "POST", "/v1/completions", body, {"Authorization": "Bearer wrong"})[0] == 401
    assert call(p, "GET", "/v1/models")[0] == 401
    assert call(p, "POST", "/v1/completions", body, {"Authorization": "Bearer s3cret"})[0] == 200


def test_full_queue_answers_503_at_once(serve):
    server, p = serve(queue_size=2)
    for _ in range(2):  # two requests admitted and still running: the queue is full
        server.slots.acquire()
    try:
        status, text = call(p, "POST", "/v1/completions", {"prompt": "the moon", "max_tokens": 2})
        assert status == 503 and "capacity" in text
    finally:
        for _ in range(2):
            server.slots.release()
    assert call(p, "POST", "/v1/completions", {"prompt": "the moon", "max_tokens": 2})[0] == 200


def test_concurrent_clients_no_errors(port):
    result = run_load(f"http://127.0.0.1:{port}", clients=4, requests=10, max_tokens=4)
    assert result["errors"] == 0 and result["total_requests"] == 40, result["error_samples"]
    assert result["latency_p99_s"] >= result["latency_p50_s"] > 0
