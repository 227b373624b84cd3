"""The web page and the HTTP API behind `char-rnn serve`.

    GET  /               the page: start text, length, temperature, top-k, top-p, Generate
    GET  /api/info       the model, this server's limits, its batch and queue now
    POST /api/generate   {"start", "length", "temperature", "top_k", "top_p", "seed", "stop"}
                         -> {"text", "stop"}
    POST /api/stream     the same body -> server-sent events, one `data: {"text": ...}` per
                         chunk of new characters, then `event: done` (or `event: error`)

What keeps a local server safe to leave running:
- it listens on 127.0.0.1 unless told otherwise;
- the Host header must name this server (localhost, 127.0.0.1 or an allowed name, with the
  port), so a page from elsewhere that rebinds its DNS name to 127.0.0.1 cannot drive it;
- no CORS headers unless origins are given;
- bodies, start strings and lengths have limits (413, 422), as do the streams generated
  at once and the requests waiting for room (429 with Retry-After beyond them) and the
  time one may take (503);
- the model is loaded once, before serving, through the safe loader; no endpoint loads
  files or fetches URLs.
Generation runs in one worker thread that steps every request's stream together
(batching.py), so the event loop stays free to answer other requests (and to refuse them)
while text is being made.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import SampleConfig, ServerConfig
from ..data.items import ITEM_MARK
from ..errors import CharRNNError
from ..generate.batch import open_batch
from ..generate.items import item_request
from ..generate.stops import check_stops
from .batching import Refused, Scheduler, Ticket

__all__ = ["ServerConfig", "create_app", "serve"]

MAX_SEED = 2**63 - 1
MAX_STOPS, MAX_STOP_CHARS = 8, 100


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

StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


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
        # One string or a list: the text ends just before the first one it writes.
        stop: StopString | list[StopString] | None = Field(None, max_length=MAX_STOPS)

    return GenerateRequest


def _validation_message(error: Any) -> str:
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(part) for part in item.get("loc", ())) or "body"
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts)


def _sse(data: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


# ---- the application -------------------------------------------------------------------


class TicketStreamingResponse(StreamingResponse):
    """Withdraws its ticket however the response ends, even when the client left before
    the body's generator ever started (whose `finally` would then never run): the stream
    leaves the batch before its next round."""

    def __init__(self, scheduler: Scheduler, ticket: Ticket, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.scheduler = scheduler
        self.ticket = ticket

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.scheduler.withdraw(self.ticket)


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


def open_scheduler(engine: Any, config: ServerConfig, *, own_thread: bool = True) -> Scheduler:
    """The worker that batches every request's stream, for a loaded model (a CharRNN);
    with `own_thread=False` the caller runs it (`Scheduler.run`)."""
    return Scheduler(
        open_batch(engine.engine), max_batch=config.max_batch, max_queue=config.max_queue,
        queue_timeout=config.queue_timeout, timeout=config.timeout, own_thread=own_thread,
    )  # fmt: skip


def create_app(
    engine: Any, config: ServerConfig, port: int, *, description: str = "", scheduler: Scheduler | None = None
):
    """The FastAPI application around one loaded model (a CharRNN, whatever its engine).

    `port` is the port actually listened on, which the Host check needs; `scheduler` the
    worker that generates (by default one is opened here). The returned application keeps
    it as `.scheduler`."""
    GenerateRequest = _request_model(config)
    static = resources.files("char_rnn.serve") / "static"
    page = (static / "index.html").read_text(encoding="utf-8")
    script = (static / "app.js").read_text(encoding="utf-8")
    style = (static / "style.css").read_text(encoding="utf-8")
    scheduler = scheduler or open_scheduler(engine, config)

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
            sample = SampleConfig(**{**params.model_dump(), "stop": params.stop or ()})
            if getattr(engine, "items", None):  # each request makes one whole item
                sample = item_request(sample, engine.items, start_given="start" in params.model_fields_set)
            engine.vocab.check(sample.start, "the start string")
            check_stops(engine.vocab, sample.stop)
        except CharRNNError as error:
            raise HTTPException(422, str(error)) from None
        return sample

    async def start(sample: SampleConfig) -> Ticket:
        """A place in the batch, waited for in the queue; 429/503 when there is none."""
        try:
            ticket = scheduler.submit(sample)
            await scheduler.admission(ticket)
        except Refused as refusal:
            headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else None
            raise HTTPException(refusal.status, refusal.detail, headers=headers) from None
        return ticket

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
                "max_concurrent": config.max_batch,  # the name before batching, kept for clients
                "max_batch": config.max_batch,
                "max_queue": config.max_queue,
                "queue_timeout_s": config.queue_timeout,
                "timeout_s": config.timeout,
            },
            **scheduler.info(),
        }

    @app.post("/api/generate")
    async def generate(request: Request) -> dict[str, Any]:
        sample = await read_request(request)
        ticket = await start(sample)
        # A client that hangs up withdraws its request, as a stream's does.
        watcher = asyncio.ensure_future(_wait_for_disconnect(request))
        watcher.add_done_callback(lambda _: scheduler.withdraw(ticket))
        pieces = []
        try:
            while True:
                kind, data = await ticket.next_event()
                if kind == "text":
                    pieces.append(data)
                elif kind == "done":
                    return {
                        "text": sample.start.removeprefix(ITEM_MARK) + "".join(pieces),
                        "stop": data["stop"],
                    }
                else:
                    raise HTTPException(data[0], data[1])
        finally:
            watcher.cancel()
            scheduler.withdraw(ticket)

    @app.post("/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        sample = await read_request(request)
        ticket = await start(sample)

        async def events() -> AsyncIterator[str]:
            while True:
                kind, data = await ticket.next_event()
                if kind == "text":
                    yield _sse({"text": data})
                elif kind == "done":
                    yield _sse(data, event="done")
                    return
                else:
                    yield _sse({"detail": data[1]}, event="error")
                    return

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return TicketStreamingResponse(scheduler, ticket, events(), media_type="text/event-stream",
                                       headers=headers)  # fmt: skip

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
    guard = HostGuard(guarded, allowed_host_headers(config, port))
    guard.scheduler = scheduler
    return guard


async def _wait_for_disconnect(request: Request) -> None:
    """Returns once the client has gone (the body was read whole before this is called)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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


SWITCH_INTERVAL = 0.0005  # seconds


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

    class DrainingServer(uvicorn.Server):
        """On SIGTERM/SIGINT the scheduler drains first: no new requests, and the running
        streams end within the grace period; uvicorn then waits for their responses."""

        def handle_exit(self, sig: int, frame: Any) -> None:
            captured.append(sig)
            scheduler.drain(config.grace_period)
            super().handle_exit(sig, frame)

        def run(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                super().run(sockets=sockets)
            finally:
                scheduler.close()

    captured: list[int] = []
    sock = listen(config.host, config.port)
    # The model steps on this (the main) thread and the HTTP server's event loop on another.
    scheduler = open_scheduler(engine, config, own_thread=False)
    app = create_app(engine, config, sock.getsockname()[1], description=description, scheduler=scheduler)
    server = DrainingServer(
        uvicorn.Config(
            app, log_level="warning", timeout_graceful_shutdown=config.grace_period + 2, lifespan="off",
            server_header=False,
        )
    )  # fmt: skip
    # uvicorn set its loggers to log_level above; the request log is one line a request.
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if access_log else logging.WARNING)
    handlers = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    http = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="char-rnn-http")
    # The model's thread gives up the GIL for every kernel; with the default 5 ms switch
    # interval it then waits that long for it whenever the HTTP thread is busy.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    http.start()
    try:
        if on_ready is not None:
            on_ready(url_of(sock))
        scheduler.run()
    finally:
        server.should_exit = True
        http.join()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        sys.setswitchinterval(switch_interval)
    # As uvicorn does on the main thread: the signal that stopped the server takes effect now.
    for sig in reversed(captured):
        signal.raise_signal(sig)
