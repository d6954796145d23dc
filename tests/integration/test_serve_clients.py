"""Real clients against deploy/server.py on the tiny INT4 export: the `openai` Python package
and `curl`, as deploy/README.md shows them, with an API key set."""

import json
import shutil
import subprocess

import openai  # the `dev` extra pins it
import pytest

pytest.importorskip("openvino_genai")

from deploy.engine import BatchingEngine  # noqa: E402
from deploy.server import BackgroundServer, ServerConfig, make_app  # noqa: E402

KEY = "test-key-not-secret"
CHAT = [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "which is warmer, the sun or the moon?"}]


@pytest.fixture(scope="module")
def url(tiny_int4_run):
    engine = BatchingEngine(tiny_int4_run[0] / "openvino")
    config = ServerConfig(port=0, api_key=KEY)
    server = BackgroundServer(make_app(engine, config), config)
    yield f"http://127.0.0.1:{server.port}"
    server.stop()
    engine.close()


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)


def test_openai_models(client):
    assert [m.object for m in client.models.list().data] == ["model"]


def test_openai_completion_plain_and_streamed(client):
    kw = {"model": "sqft", "prompt": "Question: the sun", "max_tokens": 6}
    plain = client.completions.create(**kw)
    assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == 6
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text and text == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].usage == plain.usage


def test_openai_chat_plain_and_streamed(client):
    kw = {"model": "sqft", "messages": CHAT, "max_tokens": 6}
    plain = client.chat.completions.create(**kw)
    msg = plain.choices[0].message
    assert msg.role == "assistant" and msg.content and plain.choices[0].finish_reason == "length"
    stream = client.chat.completions.create(**kw, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == msg.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_openai_errors_carry_our_messages(client, url):
    with pytest.raises(openai.UnprocessableEntityError, match="exceeds this server's limit"):
        client.completions.create(model="sqft", prompt="hi", max_tokens=10_000)
    with pytest.raises(openai.UnprocessableEntityError, match="messages"):
        client.chat.completions.create(model="sqft", messages=[{"role": "robot", "content": "hi"}])
    wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="sqft", prompt="hi", max_tokens=2)


CURL = shutil.which("curl")


def curl(*args: str) -> tuple[int, str]:
    """(HTTP status, body) of a curl call; `-w` appends the status on its own line."""
    proc = subprocess.run([CURL, "-sS", "--noproxy", "*", "-w", "\n%{http_code}", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    body, _, status = proc.stdout.rpartition("\n")
    return int(status), body


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl_plain_stream_and_refusals(url, tmp_path):
    auth = ["-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json"]
    status, body = curl(f"{url}/v1/completions", *auth,
                        "-d", json.dumps({"prompt": "Question: the sun", "max_tokens": 6}))
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 6
    plain = json.loads(body)["choices"][0]["text"]
    status, body = curl("-N", f"{url}/v1/completions", *auth,
                        "-d", json.dumps({"prompt": "Question: the sun", "max_tokens": 6, "stream": True}))
    events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == plain
    status, body = curl(f"{url}/v1/chat/completions", *auth,
                        "-d", json.dumps({"messages": CHAT, "max_tokens": 4}))
    assert status == 200 and json.loads(body)["choices"][0]["message"]["role"] == "assistant"
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"prompt": "x" * 70_000}))
    status, body = curl(f"{url}/v1/completions", *auth, "--data-binary", f"@{big}")
    assert status == 413 and "limit is 65536" in json.loads(body)["error"]["message"]
    status, body = curl(f"{url}/v1/completions", "-H", "Content-Type: application/json",
                        "-d", json.dumps({"prompt": "hi"}))
    assert status == 401 and json.loads(body)["error"]["type"] == "auth_error"
    status, body = curl(f"{url}/metrics", *auth)
    assert status == 200 and "sqft_generated_tokens_total" in body
