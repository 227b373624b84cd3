"""`char-rnn serve` end to end: a real server process on 127.0.0.1, a real HTTP client."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import TINY_MODEL, run_cli, tiny_train_config

from char_rnn import CharRNN, train
from char_rnn.serve.server import ServerConfig, allowed_host_headers, is_loopback


def shared_tiny_run(tmp_path_factory, text: str) -> Path:
    """A tiny GRU trained for 30 steps, once per test session, for tests that only read it
    (a test that changes a run works on a copy)."""
    folder = tmp_path_factory.getbasetemp() / "shared-tiny-run"
    run = folder / "run"
    if not (run / "model.safetensors").is_file():
        folder.mkdir(exist_ok=True)
        corpus = folder / "small.txt"
        corpus.write_text(text[:30_000], encoding="utf-8")
        train(TINY_MODEL, tiny_train_config(corpus, run, max_steps=30))
    return run


@contextmanager
def running_server(run: Path, *flags: str, log: Path):
    """`python -m char_rnn serve RUN --port 0 FLAGS`: yields (process, base URL); stops it after."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "char_rnn", "serve", str(run), "--port", "0", *flags],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"at (http://127\.0\.0\.1:\d+/)", log.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield process, found.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shakespeare_text) -> Path:
    return shared_tiny_run(tmp_path_factory, shakespeare_text)


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    flags = ("--max-batch", "1", "--max-queue", "0", "--max-length", "100000", "--max-start", "50")
    with running_server(tiny_run, *flags, log=log) as (process, url):
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, process
        assert process.poll() is None, "the server died during the tests"
    assert process.returncode == 0, log.read_text()


def still_serving(client: httpx.Client) -> bool:
    return client.get("/api/info").status_code == 200


def read_events(response: httpx.Response) -> list[tuple[str, dict]]:
    events, name, data = [], "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            data.append(line.split(":", 1)[1].strip())
        elif not line and data:
            events.append((name, json.loads("\n".join(data))))
            name, data = "message", []
    return events


# ---- good requests ---------------------------------------------------------------------


def test_page_and_its_script_are_served_with_a_strict_policy(server):
    client, _ = server
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="generate"' in page.text and 'src="/app.js"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/app.js")
    assert script.status_code == 200 and "/api/stream" in script.text
    assert client.get("/style.css").status_code == 200


def test_generate_gives_the_same_text_as_the_library(server, tiny_run):
    client, _ = server
    body = {"start": "ROMEO:", "length": 120, "temperature": 0.8, "top_k": 10, "top_p": 0.95, "seed": 3}
    answer = client.post("/api/generate", json=body)
    assert answer.status_code == 200, answer.text
    text = answer.json()["text"]
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 120
    expected = CharRNN.load(tiny_run).generate("ROMEO:", 120, temperature=0.8, top_k=10, top_p=0.95, seed=3)
    assert text == expected


def test_stream_sends_the_text_in_chunks_then_done(server):
    client, _ = server
    body = {"start": "JULIET:", "length": 400, "seed": 11}
    with client.stream("POST", "/api/stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    chunks = [data["text"] for name, data in events if name == "message"]
    assert events[-1] == ("done", {"chars": 400, "stop": None})
    assert len("".join(chunks)) == 400 and len(chunks) >= 1
    whole = client.post("/api/generate", json=body).json()["text"]
    assert "JULIET:" + "".join(chunks) == whole


def test_info_describes_the_model_and_the_limits(server):
    client, _ = server
    info = client.get("/api/info").json()
    assert info["cell"] == "gru" and info["units"] == TINY_MODEL.units
    assert info["limits"]["max_length"] == 100000 and info["limits"]["max_concurrent"] == 1
    assert info["batch"] == {"max": 1, "active": 0}
    assert info["queue"]["max"] == 0 and info["queue"]["waiting"] == 0 and not info["draining"]


# ---- bad requests: refused, and the server carries on ---------------------------------


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"length": -1}, 422, "length"),
        ({"length": 100001}, 422, "less than or equal to 100000"),
        ({"length": "5"}, 422, "valid integer"),
        ({"start": "x" * 51}, 422, "at most 50 characters"),
        ({"start": ""}, 422, "start"),
        ({"start": "Ω"}, 422, "not in this model's vocabulary"),
        ({"temperature": -0.5}, 422, "temperature"),
        ({"top_k": 0}, 422, "top_k"),
        ({"top_p": 1.5}, 422, "top_p"),
        ({"seed": -1}, 422, "seed"),
        ({"lenght": 10}, 422, "lenght"),
        ("not json", 422, "Invalid JSON"),
        ([1, 2], 422, "object"),
        ({"start": "a" * 20_000}, 413, "limited to"),
    ],
)
@pytest.mark.parametrize("endpoint", ["/api/generate", "/api/stream"])
def test_bad_requests_are_refused_with_a_reason(server, endpoint, body, status, words):
    client, _ = server
    content = body if isinstance(body, str) else json.dumps(body)
    answer = client.post(endpoint, content=content, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]
    assert still_serving(client)


def test_an_oversized_body_without_a_length_header_is_cut_off(server):
    client, _ = server

    def chunks():
        for _ in range(64):
            yield b" " * 1024

    answer = client.post("/api/generate", content=chunks())  # chunked: no Content-Length
    assert answer.status_code == 413
    assert still_serving(client)


def test_other_host_names_are_refused(server):
    client, _ = server
    port = client.base_url.port
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}"):
        answer = client.get("/api/info", headers={"host": host})
        assert answer.status_code == 403, host
        answer = client.post("/api/generate", json={"length": 5}, headers={"host": host})
        assert answer.status_code == 403, host
    assert client.get("/api/info", headers={"host": f"localhost:{port}"}).status_code == 200


def test_no_cors_headers_unless_asked(server):
    client, _ = server
    answer = client.post("/api/generate", json={"length": 5}, headers={"origin": "http://evil.example"})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers
    preflight = client.options(
        "/api/generate",
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_too_many_generations_at_once_get_429_until_one_ends(server):
    client, _ = server
    with client.stream("POST", "/api/stream", json={"length": 100000, "seed": 1}) as running:
        assert running.status_code == 200
        next(running.iter_lines())  # a generation is under way and holds the only slot
        busy = client.post("/api/generate", json={"length": 5})
        assert busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1
        with client.stream("POST", "/api/stream", json={"length": 5}) as second:
            assert second.status_code == 429
    # The client went away mid-stream: its slot comes back and the server carries on.
    for _ in range(200):
        answer = client.post("/api/generate", json={"length": 5})
        if answer.status_code != 429:
            break
        time.sleep(0.05)
    assert answer.status_code == 200


def test_a_second_server_on_a_busy_port_fails_in_one_line(server, tiny_run):
    client, _ = server
    done = run_cli("serve", tiny_run, "--port", str(client.base_url.port))
    assert done.returncode == 1
    assert done.stderr.startswith("char-rnn: error: cannot listen on 127.0.0.1:")
    assert "Traceback" not in done.stderr


# ---- the time limit --------------------------------------------------------------------


def test_requests_that_run_past_the_time_limit_are_stopped(tiny_run, tmp_path):
    flags = ("--timeout", "0.3", "--max-length", "1000000")
    with running_server(tiny_run, *flags, log=tmp_path / "server.log") as (_, url):
        client = httpx.Client(base_url=url, timeout=60)
        answer = client.post("/api/generate", json={"length": 1000000})
        assert answer.status_code == 503
        assert "limit of 0.3 s" in answer.json()["detail"]
        with client.stream("POST", "/api/stream", json={"length": 1000000}) as response:
            events = read_events(response)
        assert events[-1][0] == "error" and "limit of 0.3 s" in events[-1][1]["detail"]
        assert client.post("/api/generate", json={"length": 5}).status_code == 200
        client.close()


# ---- configuration ------------------------------------------------------------------------


def test_only_loopback_addresses_count_as_local():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")


def test_the_host_header_must_carry_the_port():
    allowed = allowed_host_headers(ServerConfig(allowed_hosts=("box.lan",)), 8123)
    assert {"localhost:8123", "127.0.0.1:8123", "[::1]:8123", "box.lan:8123"} <= allowed
    assert "localhost" not in allowed and "box.lan" not in allowed


@pytest.mark.parametrize(
    "changes",
    [{"max_batch": 0}, {"max_queue": -1}, {"queue_timeout": 0.0}, {"grace_period": -1.0}, {"timeout": 0.0},
     {"timeout": float("nan")}, {"port": 70000}],  # fmt: skip
)
def test_invalid_server_settings_are_usage_errors(changes):
    from char_rnn import UsageError

    with pytest.raises(UsageError):
        ServerConfig(**changes)
