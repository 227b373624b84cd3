"""The `shakespeare` download against a real HTTP server on 127.0.0.1.

CHAR_RNN_SHAKESPEARE_URL points the download at the local server, XDG_CACHE_HOME points
the cache at a temporary folder, and CHAR_RNN_DATA is unset so that nothing is read from
the offline copy except by the server itself.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import shakespeare_folder

from char_rnn.data.corpus import DATA_ENV, SHAKESPEARE_FILE, SHAKESPEARE_SHA256, URL_ENV, shakespeare_path
from char_rnn.errors import CharRNNError


class _Server:
    """Serves `body` at /shakespeare.txt, slowly if asked, counting the requests."""

    def __init__(self, body: bytes, seconds: float = 0.0):
        self.body, self.seconds, self.requests = body, seconds, 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server calls)
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                chunks = 20
                step = -(-len(server.body) // chunks)
                for start in range(0, len(server.body), step):
                    self.wfile.write(server.body[start : start + step])
                    time.sleep(server.seconds / chunks)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/{SHAKESPEARE_FILE}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def genuine() -> bytes:
    return (shakespeare_folder() / SHAKESPEARE_FILE).read_bytes()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "char-rnn"


def test_a_genuine_download_is_verified_cached_and_reused(cache, monkeypatch, genuine):
    with _Server(genuine) as server:
        monkeypatch.setenv(URL_ENV, server.url)
        path = shakespeare_path()
        assert path == cache / SHAKESPEARE_FILE
        assert hashlib.sha256(path.read_bytes()).hexdigest() == SHAKESPEARE_SHA256
        assert shakespeare_path() == path
        assert server.requests == 1  # the second call used the cache


@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_a_damaged_download_is_rejected_and_never_cached(cache, monkeypatch, genuine, damage):
    body = genuine[:-1000] if damage == "truncated" else genuine.replace(b"ROMEO", b"R0MEO", 1)
    with _Server(body) as server:
        monkeypatch.setenv(URL_ENV, server.url)
        with pytest.raises(CharRNNError, match="could not download.*hash"):
            shakespeare_path()
    assert not (cache / SHAKESPEARE_FILE).exists()
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_an_unreachable_source_says_how_to_use_a_local_copy(cache, monkeypatch):
    with socket.socket() as probe:  # a port that nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(URL_ENV, f"http://127.0.0.1:{port}/{SHAKESPEARE_FILE}")
    with pytest.raises(CharRNNError, match=f"could not download.*set {DATA_ENV}.*--data FILE"):
        shakespeare_path()
    assert not (cache / SHAKESPEARE_FILE).exists()


def test_two_processes_fetching_at_once_share_one_verified_file(cache, monkeypatch, genuine, tmp_path):
    fetch = "from char_rnn.data.corpus import shakespeare_path; print(shakespeare_path())"
    with _Server(genuine, seconds=1.5) as server:  # slow enough for the two to overlap
        env = {**os.environ, URL_ENV: server.url}
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", fetch],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for _ in range(2)
        ]
        results = [p.communicate(timeout=300) for p in processes]
    for process, (stdout, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr
        assert Path(stdout.strip()) == cache / SHAKESPEARE_FILE
    assert hashlib.sha256((cache / SHAKESPEARE_FILE).read_bytes()).hexdigest() == SHAKESPEARE_SHA256
    assert server.requests == 1  # the second waited for the first instead of downloading again
