"""The web page and the HTTP API behind `char-rnn serve`.

    GET  /               the page: start text, length, temperature, top-k, top-p, Generate
    GET  /api/info       the model and this server's limits
    POST /api/generate   {"start", "length", "temperature", "top_k", "top_p", "seed"} -> {"text"}
    POST /api/stream     the same body -> server-sent events, one `data: {"text": ...}` per
                         chunk of new characters, then `event: done` (or `event: error`)

What keeps a local server safe to leave running:
- it listens on 127.0.0.1 unless told otherwise;
- the Host header must name this server (localhost, 127.0.0.1 or an allowed name, with the
  port), so a page from elsewhere that rebinds its DNS name to 127.0.0.1 cannot drive it;
- no CORS headers unless origins are given;
- bodies, start strings and lengths have limits (413, 422), as does the number of
  generations running at once (429) and the time one may take (503);
- the model is loaded once, before serving, through the safe loader; no endpoint loads
  files or fetches URLs.
Generation is CPU-bound, so it runs in worker threads and the event loop stays free to
answer other requests (and to refuse them) while text is being made.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ..errors import CharRNNError, UsageError

# Characters pulled per trip to the worker thread: small enough for text to appear as it is
# made, large enough that a fast model is not slowed by the hand-offs.
CHUNK_SECONDS = 0.05
CHUNK_CHARS = 256
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    allowed_hosts: tuple[str, ...] = ()  # extra names for the Host header, e.g. a LAN address
    cors_origins: tuple[str, ...] = ()
    max_length: int = 5000
    max_start: int = 1000
    max_body: int = 16 * 1024
    max_concurrent: int = 2
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise UsageError(f"port must be in 0..65535, got {self.port!r}")
        for name in ("max_length", "max_start", "max_body", "max_concurrent"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise UsageError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise UsageError(f"timeout must be a positive number of seconds, got {self.timeout!r}")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_header_name(host: str) -> str:
    """How a host appears in a Host header: IPv6 addresses in brackets."""
    try:
        if ipaddress.ip_address(host.strip("[]")).version == 6:
            return f"[{host.strip('[]')}]"
    except ValueError:
        pass
    return host.lower()


def allowed_host_headers(config: ServerConfig, port: int) -> set[str]:
    """Every Host header value this server answers to."""
    names = {"localhost", "127.0.0.1", "[::1]"}
    if config.host not in ("0.0.0.0", "::", ""):
        names.add(_host_header_name(config.host))
    allowed = set()
    for name in names | {_host_header_name(h) for h in config.allowed_hosts}:
        allowed.add(
            name if name.rsplit(":", 1)[-1].isdigit() and not name.endswith("]") else f"{name}:{port}"
        )
        if port == 80:
            allowed.add(name)
    return allowed


# ---- requests -----------------------------------------------------------------------


class GenerationTimeout(Exception):
    pass


class Slots:
    """Counts generations running at once; the event loop is one thread, so no lock."""

    def __init__(self, limit: int):
        self.limit = limit
        self.free = limit

    def take(self) -> Slot | None:
        if self.free <= 0:
            return None
        self.free -= 1
        return Slot(self)


class Slot:
    def __init__(self, slots: Slots):
        self.slots: Slots | None = slots

    def release(self) -> None:
        """Give the slot back; a second call does nothing."""
        if self.slots is not None:
            self.slots.free += 1
            self.slots = None


def _request_model(config: ServerConfig) -> type[BaseModel]:
    class GenerateRequest(BaseModel):
        # Strict: "5" is not a length and true is not a seed; JSON integers still fit floats.
        model_config = ConfigDict(extra="forbid", strict=True)

        start: str = Field("\n", min_length=1, max_length=config.max_start)
        length: int = Field(200, ge=0, le=config.max_length)
        temperature: float = Field(1.0, ge=0, allow_inf_nan=False)
        top_k: int | None = Field(None, ge=1)
        top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
        seed: int | None = Field(None, ge=0, le=MAX_SEED)

    return GenerateRequest


def _validation_message(error: Any) -> str:
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(part) for part in item.get("loc", ())) or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


def _collect(iterator: Iterator[list[str]], deadline: float, limit_chars: int, limit_seconds: float) -> str:
    """Pull up to `limit_chars` characters (or `limit_seconds` worth) from a generation."""
    chars: list[str] = []
    until = time.monotonic() + limit_seconds
    for (ch,) in iterator:
        chars.append(ch)
        now = time.monotonic()
        if now > deadline:
            raise GenerationTimeout
        if len(chars) >= limit_chars or now >= until:
            break
    return "".join(chars)


def _sse(data: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


# ---- the application -------------------------------------------------------------------


class SlotStreamingResponse(StreamingResponse):
    """Gives its slot back however the response ends, even when the client left before
    the body's generator ever started (whose `finally` would then never run)."""

    def __init__(self, slot: Slot, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
]


class HostGuard:
    """ASGI middleware: refuse requests whose Host header does not name this server."""

    def __init__(self, app: Any, allowed: set[str]):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1").lower()
        if host not in self.allowed:
            body = json.dumps({"detail": f"host {host!r} is not served here"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *SECURITY_HEADERS,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(engine: Any, config: ServerConfig, port: int, *, description: str = ""):
    """The FastAPI application around one loaded model (a CharRNN, whatever its engine).

    `port` is the port actually listened on, which the Host check needs."""
    GenerateRequest = _request_model(config)
    static = resources.files("char_rnn.serve") / "static"
    page = (static / "index.html").read_text(encoding="utf-8")
    script = (static / "app.js").read_text(encoding="utf-8")
    style = (static / "style.css").read_text(encoding="utf-8")
    slots = Slots(config.max_concurrent)

    app = FastAPI(title="char-rnn", docs_url=None, redoc_url=None, openapi_url=None)

    async def read_request(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > config.max_body):
            raise HTTPException(413, f"the request body is limited to {config.max_body} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body:
                raise HTTPException(413, f"the request body is limited to {config.max_body} bytes")
        try:
            params = GenerateRequest.model_validate_json(bytes(body) or b"{}")
        except ValidationError as error:
            raise HTTPException(422, _validation_message(error)) from None
        try:
            engine.vocab.check(params.start, "the start string")
        except CharRNNError as error:
            raise HTTPException(422, str(error)) from None
        return params

    def take_slot() -> Slot:
        slot = slots.take()
        if slot is None:
            raise HTTPException(
                429,
                f"{config.max_concurrent} generation(s) already running; try again shortly",
                headers={"Retry-After": "1"},
            )
        return slot

    def start_stream(params: Any) -> Iterator[list[str]]:
        options = params.model_dump(exclude={"start", "length"})
        return iter(engine.stream(params.start, length=params.length, **options))

    timeout_message = (
        f"generation stopped after the server's limit of {config.timeout:g} s; ask for fewer characters"
    )

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/app.js")
    async def app_js() -> Response:
        return Response(script, media_type="text/javascript")

    @app.get("/style.css")
    async def app_css() -> Response:
        return Response(style, media_type="text/css")

    @app.get("/api/info")
    async def info() -> dict[str, Any]:
        model_config = engine.config
        return {
            "model": description,
            "cell": model_config.cell,
            "layers": model_config.layers,
            "units": model_config.units,
            "vocab_size": len(engine.vocab),
            "limits": {
                "max_length": config.max_length,
                "max_start": config.max_start,
                "max_body": config.max_body,
                "max_concurrent": config.max_concurrent,
                "timeout_s": config.timeout,
            },
        }

    @app.post("/api/generate")
    async def generate(request: Request) -> dict[str, str]:
        params = await read_request(request)
        slot = take_slot()
        deadline = time.monotonic() + config.timeout
        try:
            iterator = start_stream(params)
            text = await run_in_threadpool(_collect, iterator, deadline, params.length, math.inf)
        except GenerationTimeout:
            raise HTTPException(503, timeout_message) from None
        finally:
            slot.release()
        return {"text": params.start + text}

    @app.post("/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        params = await read_request(request)
        slot = take_slot()
        deadline = time.monotonic() + config.timeout

        async def events() -> AsyncIterator[str]:
            try:
                iterator = start_stream(params)
                sent = 0
                while True:
                    chunk = await run_in_threadpool(_collect, iterator, deadline, CHUNK_CHARS, CHUNK_SECONDS)
                    if not chunk:
                        break
                    sent += len(chunk)
                    yield _sse({"text": chunk})
                yield _sse({"chars": sent}, event="done")
            except GenerationTimeout:
                yield _sse({"detail": timeout_message}, event="error")
            finally:
                slot.release()

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return SlotStreamingResponse(slot, events(), media_type="text/event-stream", headers=headers)

    @app.exception_handler(CharRNNError)
    async def library_error(_request: Request, error: CharRNNError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    guarded: Any = app
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        guarded = CORSMiddleware(
            guarded,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["content-type"],
        )
    return HostGuard(guarded, allowed_host_headers(config, port))


# ---- running ---------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        raise CharRNNError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{_host_header_name(host)}:{port}/"


def serve(
    engine: Any,
    config: ServerConfig,
    *,
    description: str = "",
    access_log: bool = True,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. `on_ready(url)` is called once the socket is listening."""
    import uvicorn

    sock = listen(config.host, config.port)
    app = create_app(engine, config, sock.getsockname()[1], description=description)
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_level="warning", timeout_graceful_shutdown=2, lifespan="off", server_header=False
        )
    )
    # uvicorn set its loggers to log_level above; the request log is one line a request.
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if access_log else logging.WARNING)
    if on_ready is not None:
        on_ready(url_of(sock))
    server.run(sockets=[sock])
