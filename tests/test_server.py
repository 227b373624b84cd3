"""`char-rnn serve` end to end: a real server process on 127.0.0.1, a real HTTP client."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import TINY_MODEL, run_cli, tiny_train_config

from char_rnn import CharRNN, train
from char_rnn.config import SampleConfig
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
    flags = ("--max-batch", "1", "--max-queue", "0", "--max-length", "100000000", "--max-start", "50")
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
    assert info["limits"]["max_length"] == 100000000 and info["limits"]["max_concurrent"] == 1
    assert info["batch"] == {"max": 1, "active": 0}
    assert info["queue"]["max"] == 0 and info["queue"]["waiting"] == 0 and not info["draining"]


# ---- bad requests: refused, and the server carries on ---------------------------------


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"length": -1}, 422, "length"),
        ({"length": 100000001}, 422, "less than or equal to 100000000"),
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
    with client.stream("POST", "/api/stream", json={"length": 100000000, "seed": 1}) as running:
        assert running.status_code == 200
        lines = running.iter_lines()  # kept: a dropped iterator closes the connection
        next(lines)  # a generation is under way and holds the only slot
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
    [
        {"max_batch": 0},
        {"max_queue": -1},
        {"queue_timeout": 0.0},
        {"grace_period": -1.0},
        {"timeout": 0.0},
        {"timeout": float("nan")},
        {"port": 70000},
    ],  # fmt: skip
)
def test_invalid_server_settings_are_usage_errors(changes):
    from char_rnn import UsageError

    with pytest.raises(UsageError):
        ServerConfig(**changes)


# ---- many readers: the batch, the queue, disconnects, shutdown ---------------------------


async def _stream_until_cancelled(client: httpx.AsyncClient, body: dict, started: list) -> None:
    async with client.stream("POST", "/api/stream", json=body) as response:
        assert response.status_code == 200
        async for _ in response.aiter_lines():
            started.append(1)
            await asyncio.sleep(3600)  # hold the stream open until cancelled


def test_a_request_gives_the_same_text_alone_and_beside_63_others(tiny_run, tmp_path):
    target = {"start": "ROMEO:", "length": 300, "temperature": 0.9, "top_k": 20, "seed": 42, "stop": "zqz"}
    flags = ("--max-batch", "64", "--max-queue", "0", "--max-length", "1000000")
    with running_server(tiny_run, *flags, log=tmp_path / "server.log") as (_, url):
        alone = httpx.post(url + "api/generate", json=target, timeout=60).json()

        async def beside_others() -> tuple[dict, dict, dict]:
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                started: list = []
                others = [
                    asyncio.ensure_future(_stream_until_cancelled(client, {
                        "start": "A" * (i % 4 + 1), "length": 1000000, "temperature": (0, 0.7, 1.2)[i % 3],
                        "seed": i, **({"top_p": 0.8} if i % 2 else {})}, started))
                    for i in range(63)
                ]  # fmt: skip
                while len(started) < 63:
                    await asyncio.sleep(0.02)
                before = (await client.get("/api/info")).json()
                answer = (await client.post("/api/generate", json=target)).json()
                after = (await client.get("/api/info")).json()
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)
                return answer, before, after

        answer, before, after = asyncio.run(beside_others())
    assert before["batch"] == {"max": 64, "active": 63} and after["batch"]["active"] == 63
    assert answer == alone and len(alone["text"]) == len("ROMEO:") + 300 and alone["stop"] is None
    kept = {k: v for k, v in target.items() if k not in ("start", "length")}
    assert alone["text"] == CharRNN.load(tiny_run).generate("ROMEO:", 300, **kept)


def info_of(url: str) -> dict:
    return httpx.get(url + "api/info", timeout=30).json()


def wait_for(condition, what: str, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_full_queue_answers_429_and_a_disconnect_frees_its_slot(tiny_run, tmp_path):
    flags = ("--max-batch", "1", "--max-queue", "1", "--queue-timeout", "3", "--max-length", "1000000")
    with running_server(tiny_run, *flags, log=tmp_path / "server.log") as (_, url):
        first = httpx.Client(base_url=url, timeout=60)
        with first.stream("POST", "/api/stream", json={"length": 1000000}) as running:
            lines = running.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)  # it holds the only place in the batch
            queued: dict = {}
            waiter = threading.Thread(target=lambda: queued.update(
                answer=httpx.post(url + "api/generate", json={"length": 5}, timeout=60)))  # fmt: skip
            waiter.start()
            wait_for(lambda: info_of(url)["queue"]["waiting"] == 1, "the second request never queued")
            full = httpx.post(url + "api/generate", json={"length": 5}, timeout=60)
            assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
            assert "1 waiting" in full.json()["detail"]
            waiter.join()  # the queued one waited its 3 s, then was told to come back
            assert queued["answer"].status_code == 429 and "within 3 s" in queued["answer"].json()["detail"]
            assert int(queued["answer"].headers["retry-after"]) >= 1
            assert info_of(url)["batch"]["active"] == 1
        first.close()  # the reader vanished mid-stream: its stream leaves the batch
        wait_for(lambda: info_of(url)["batch"]["active"] == 0, "the slot was never freed")
        assert httpx.post(url + "api/generate", json={"length": 5}, timeout=60).status_code == 200


def test_sigterm_lets_running_streams_finish_then_ends_the_rest(tiny_run, tmp_path):
    # The grace period leaves the short stream five times the time it needs on a slow day.
    flags = ("--grace-period", "10", "--max-length", "10000000", "--timeout", "600")
    with running_server(tiny_run, *flags, log=tmp_path / "server.log") as (process, url):
        results: dict = {}

        def read(name: str, length: int) -> None:
            with httpx.stream("POST", url + "api/stream", json={"length": length, "seed": 1},
                              timeout=60) as response:  # fmt: skip
                results[name] = read_events(response)

        readers = [threading.Thread(target=read, args=("short", 2_000)),
                   threading.Thread(target=read, args=("endless", 10_000_000))]  # fmt: skip
        for reader in readers:
            reader.start()
        wait_for(lambda: info_of(url)["batch"]["active"] + len(results) == 2, "the streams never started")
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: process.poll() is not None or _refused(url), "new requests were still taken")
        for reader in readers:
            reader.join(60)
        process.wait(60)
    short, endless = results["short"], results["endless"]
    assert short[-1] == ("done", {"chars": 2_000, "stop": None})
    assert endless[-1][0] == "error" and "shutting down" in endless[-1][1]["detail"]
    assert sum(len(data.get("text", "")) for _, data in endless) > 0
    assert process.returncode == -signal.SIGTERM


def _refused(url: str) -> bool:
    try:
        return httpx.post(url + "api/generate", json={"length": 5}, timeout=5).status_code == 503
    except httpx.TransportError:  # the socket is closed: refused before HTTP
        return True


@pytest.mark.slow
def test_a_failing_stream_ends_alone_and_the_others_finish(tiny_run):
    """A stream whose client's event loop is gone cannot be delivered to: it ends, the
    batch and the other stream go on."""
    from char_rnn.serve.server import open_scheduler

    model = CharRNN.load(tiny_run)
    scheduler = open_scheduler(model, ServerConfig(max_batch=4))
    doomed_loop = asyncio.new_event_loop()
    doomed = threading.Thread(target=doomed_loop.run_forever)
    doomed.start()

    async def submit_there():
        return scheduler.submit(SampleConfig(length=1_000_000))

    lost = asyncio.run_coroutine_threadsafe(submit_there(), doomed_loop).result()

    async def survivor() -> str:
        ticket = scheduler.submit(SampleConfig(start="ROMEO:", length=3000, seed=2))
        await scheduler.admission(ticket)
        doomed_loop.call_soon_threadsafe(doomed_loop.stop)
        doomed.join()
        doomed_loop.close()  # the other client's loop is gone while its stream runs
        pieces = []
        while (event := await ticket.next_event())[0] == "text":
            pieces.append(event[1])
        assert event == ("done", {"chars": 3000, "stop": None})
        return "".join(pieces)

    try:
        text = asyncio.run(survivor())
        wait_for(lambda: scheduler.info()["batch"]["active"] == 0, "the failed stream kept its row")
    finally:
        scheduler.close()
    assert lost.cancelled is False and len(text) == 3000
    assert "ROMEO:" + text == model.generate("ROMEO:", 3000, seed=2)


@pytest.mark.parametrize("endpoint", ["/api/generate", "/api/stream"])
def test_stop_strings_over_http(server, endpoint, tiny_run):
    client, _ = server
    free = client.post("/api/generate", json={"start": "ROMEO:", "length": 400, "seed": 9}).json()["text"]
    stop = free[20:22]
    body = {"start": "ROMEO:", "length": 400, "seed": 9, "stop": [stop, "qqqq"]}
    expected = free[: free.find(stop, len("ROMEO:"))]
    if endpoint == "/api/generate":
        answer = client.post(endpoint, json=body).json()
        assert answer == {"text": expected, "stop": stop}
    else:
        with client.stream("POST", endpoint, json=body) as response:
            events = read_events(response)
        assert "ROMEO:" + "".join(d["text"] for n, d in events if n == "message") == expected
        assert events[-1] == ("done", {"chars": len(expected) - len("ROMEO:"), "stop": stop})
    assert CharRNN.load(tiny_run).generate("ROMEO:", 400, seed=9, stop=stop) == expected
    for bad, words in ((["", "x"], "at least 1 character"), ("Ω", "not in this model's vocabulary")):
        refused = client.post(endpoint, json={"stop": bad})
        assert refused.status_code == 422 and words in refused.json()["detail"]


def test_stop_on_the_command_line(tiny_run):
    free = run_cli("generate", tiny_run, "--start", "ROMEO:", "--length", "300", "--seed", "4").stdout
    stop = free[30:32]
    cut = run_cli("generate", tiny_run, "--start", "ROMEO:", "--length", "300", "--seed", "4", "--stop", stop)
    assert cut.returncode == 0 and cut.stdout == free[: free.find(stop, len("ROMEO:"))] + "\n"
    empty = run_cli("generate", tiny_run, "--stop", "")
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1
    assert empty.stderr.startswith("char-rnn: error: stop strings must be non-empty")
