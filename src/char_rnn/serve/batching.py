"""The server's scheduler: one worker thread owns the model and steps every stream together.

A request becomes a `Ticket`. It waits in a bounded queue (at most `max_queue` tickets, each
for at most `queue_timeout` seconds) until the batch has room (`max_batch` streams); it then
joins the running batch at the next round (generate/batch.py), and leaves it at once when
its text is finished, stopped, past its time limit, or when its client has gone (the
ticket is cancelled from the event loop; the worker drops it before its next round).
Beyond the queue a request is refused at once, which the HTTP layer answers with 429 and
Retry-After.

The worker hands text to the event loop through `call_soon_threadsafe`, a stream's pieces
gathered for up to `FLUSH_SECONDS` so that a fast model does not flood the loop with
events; the first piece goes out at once. Anything that goes wrong with one stream ends
that stream alone, with an error for its client; the batch and the other streams carry on.

`drain(grace)` (on SIGTERM) refuses new and queued requests, lets running streams go on
for `grace` seconds, then ends those left with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from typing import Any

from ..config import SampleConfig
from ..generate.batch import BatchStream

log = logging.getLogger("char_rnn.serve")

FLUSH_SECONDS = 0.05


class Refused(Exception):
    """A request the server will not run now: `status` 429 (full) or 503 (shutting down)."""

    def __init__(self, status: int, detail: str, retry_after: int | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class Ticket:
    """One request, from the queue to the end of its text. Created and awaited on the event
    loop; the worker thread reaches it only through `loop.call_soon_threadsafe`."""

    def __init__(self, config: SampleConfig, loop: asyncio.AbstractEventLoop, deadline: float):
        self.config = config
        self.loop = loop
        self.deadline = deadline  # time.monotonic() past which the request is stopped
        self.admitted: asyncio.Future = loop.create_future()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = False  # set on the loop, read by the worker: a bool needs no lock
        self._held: tuple[str, Any] | None = None
        self._pending = ""  # worker side: text not yet handed over
        self._last_flush = -math.inf

    def cancel(self) -> None:
        """On the event loop: whoever still awaits the next event gets an end."""
        if not self.cancelled:
            self.cancelled = True
            self.events.put_nowait(("error", (499, "the request was withdrawn")))

    async def next_event(self) -> tuple[str, Any]:
        """("text", str), then ("done", {...}) or ("error", (status, detail)); text pieces
        that arrived together are joined into one."""
        if self._held is not None:
            event, self._held = self._held, None
            return event
        kind, data = await self.events.get()
        if kind != "text":
            return kind, data
        pieces = [data]
        while not self.events.empty():
            event = self.events.get_nowait()
            if event[0] != "text":
                self._held = event  # the end comes after the text gathered so far
                break
            pieces.append(event[1])
        return "text", "".join(pieces)

    # ---- worker side ----

    def _post(self, kind: str, data: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, data))

    def _admit(self) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.admitted, None)

    def _refuse(self, refusal: Refused) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.admitted, refusal)

    def _text(self, text: str, now: float, force: bool = False) -> None:
        self._pending += text
        if self._pending and (force or now - self._last_flush >= FLUSH_SECONDS):
            self._post("text", self._pending)
            self._pending, self._last_flush = "", now

    def _done(self, stream: BatchStream, now: float) -> None:
        self._text("", now, force=True)
        self._post("done", {"chars": stream.sent, "stop": stream.stopped})

    def _error(self, status: int, detail: str, now: float) -> None:
        self._text("", now, force=True)
        self._post("error", (status, detail))


def _resolve(future: asyncio.Future, refusal: Refused | None) -> None:
    if future.done():
        return
    if refusal is None:
        future.set_result(None)
    else:
        future.set_exception(refusal)


class Scheduler:
    """Owns a batch (generate/batch.py) and the thread that steps it."""

    def __init__(
        self,
        batch: Any,
        *,
        max_batch: int,
        max_queue: int,
        queue_timeout: float,
        timeout: float,
        own_thread: bool = True,
    ):
        self.batch = batch
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.timeout = timeout
        self.retry_after = max(1, min(60, math.ceil(queue_timeout)))
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._running = 0  # tickets taken from the queue and not yet finished
        self._drain_deadline: float | None = None
        self._closing = False
        self._active: dict[BatchStream, Ticket] = {}  # the worker's own
        self._thread: threading.Thread | None = None
        if own_thread:
            self._thread = threading.Thread(target=self.run, name="char-rnn-batch", daemon=True)
            self._thread.start()

    # ---- the event loop's side ----

    def submit(self, config: SampleConfig) -> Ticket:
        """A place in the queue, or Refused (429 when batch and queue are full, 503 when
        shutting down)."""
        ticket = Ticket(config, asyncio.get_running_loop(), time.monotonic() + self.timeout)
        with self._cond:
            if self._drain_deadline is not None or self._closing:
                raise Refused(503, "the server is shutting down")
            if self._running + len(self._waiting) >= self.max_batch + self.max_queue:
                raise Refused(
                    429,
                    f"{self.max_batch} generation(s) running and {len(self._waiting)} waiting, "
                    "the most this server takes; try again shortly",
                    self.retry_after,
                )
            self._waiting.append(ticket)
            self._cond.notify()
        return ticket

    async def admission(self, ticket: Ticket) -> None:
        """Wait until the ticket's stream has joined the batch (its start string read), at
        most `queue_timeout` seconds; Refused otherwise."""
        try:
            await asyncio.wait_for(asyncio.shield(ticket.admitted), self.queue_timeout)
        except asyncio.TimeoutError:
            self.withdraw(ticket)
            raise Refused(
                429,
                f"no room in the batch within {self.queue_timeout:g} s; try again shortly",
                self.retry_after,
            ) from None
        except BaseException:
            self.withdraw(ticket)
            raise

    def withdraw(self, ticket: Ticket) -> None:
        """The client no longer wants the text: out of the queue now, out of the batch
        before its next round."""
        ticket.cancel()
        with self._cond, contextlib.suppress(ValueError):
            self._waiting.remove(ticket)

    def info(self) -> dict[str, Any]:
        with self._cond:
            return {
                "batch": {"max": self.max_batch, "active": self._running},
                "queue": {
                    "max": self.max_queue,
                    "waiting": len(self._waiting),
                    "timeout_s": self.queue_timeout,
                },
                "draining": self._drain_deadline is not None,
            }

    # ---- any thread ----

    def drain(self, grace: float) -> None:
        """Stop taking requests; end the streams still running after `grace` seconds."""
        with self._cond:
            if self._drain_deadline is None:
                self._drain_deadline = time.monotonic() + grace
            refused, self._waiting = list(self._waiting), deque()
            self._cond.notify()
        for ticket in refused:
            ticket._refuse(Refused(503, "the server is shutting down"))

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---- the worker ----

    def run(self) -> None:
        """Step the batch until `close()`: on the scheduler's own thread, or, with
        `own_thread=False`, on the caller's (the main thread, where the CPU kernels run
        fastest: a second thread's parallel regions ran 2-3x slower once the main thread
        had used its own)."""
        while True:
            with self._cond:
                while not self._active and not self._waiting and not self._closing:
                    self._cond.wait()
                if self._closing:
                    joining, self._waiting = list(self._waiting), deque()
                    break
                joining = []
                while self._waiting and self._running < self.max_batch:
                    joining.append(self._waiting.popleft())
                    self._running += 1
                drain_deadline = self._drain_deadline
            self._join(joining)
            if self._active:
                self._round(drain_deadline)
        for ticket in [*joining, *self._active.values()]:
            self._safely(ticket._error, 503, "the server is shutting down", time.monotonic())

    def _join(self, tickets: list[Ticket]) -> None:
        """Every ticket's start string read at once; when that fails, one at a time, so
        that a bad request is refused alone."""
        live = [ticket for ticket in tickets if not ticket.cancelled]
        for _ in range(len(tickets) - len(live)):
            self._finished(None)
        if not live:
            return
        try:
            streams = self.batch.join([ticket.config for ticket in live])
        except Exception:
            for ticket in live:
                self._join_alone(ticket)
            return
        for ticket, stream in zip(live, streams, strict=True):
            self._admitted(ticket, stream)

    def _join_alone(self, ticket: Ticket) -> None:
        try:
            [stream] = self.batch.join([ticket.config])
        except Exception as error:  # this request alone; the batch is untouched
            log.exception("a stream could not start")
            self._finished(None)
            self._safely(ticket._refuse, Refused(500, f"the generation could not start: {error}"))
            return
        self._admitted(ticket, stream)

    def _admitted(self, ticket: Ticket, stream: BatchStream) -> None:
        self._safely(ticket._admit)
        if stream.finished:  # length 0
            self._finished(None)
            self._safely(ticket._done, stream, time.monotonic())
            return
        self._active[stream] = ticket

    def _round(self, drain_deadline: float | None) -> None:
        for stream, ticket in list(self._active.items()):
            if ticket.cancelled:  # the client left: its row is freed before the next step
                self._leave(stream)
        if not self._active:
            return
        try:
            results = self.batch.advance()
        except Exception as error:  # the model itself failed: every stream ends, the worker lives
            log.exception("a batch step failed")
            for stream, ticket in list(self._active.items()):
                self._leave(stream)
                self._safely(ticket._error, 500, f"generation failed: {error}", time.monotonic())
            return
        now = time.monotonic()
        # A stream's slot is freed before its client hears of the end, so that a client that
        # asks again at once finds the slot free.
        for stream, text in results:
            ticket = self._active[stream]
            try:
                if ticket.cancelled:
                    self._leave(stream)
                    continue
                ticket._text(text, now)
                if stream.finished:
                    self._leave(stream)
                    ticket._done(stream, now)
                elif now > ticket.deadline:
                    self._leave(stream)
                    ticket._error(503, self.timeout_message, now)
                elif drain_deadline is not None and now > drain_deadline:
                    self._leave(stream)
                    ticket._error(503, f"the server is shutting down; the text was cut at {stream.sent} "
                                  "characters", now)  # fmt: skip
            except Exception:  # e.g. its client's event loop is gone: this stream alone ends
                log.exception("a stream failed; it was ended, the others go on")
                self._leave(stream)
                self._safely(ticket._error, 500, "this generation failed on the server", now)

    @property
    def timeout_message(self) -> str:
        return f"generation stopped after the server's limit of {self.timeout:g} s; ask for fewer characters"

    def _leave(self, stream: BatchStream) -> None:
        if self._active.pop(stream, None) is None:
            return
        self._finished(stream)
        self.batch.remove(stream)

    def _finished(self, _stream: BatchStream | None) -> None:
        with self._cond:
            self._running -= 1

    @staticmethod
    def _safely(action: Any, *args: Any) -> None:
        try:
            action(*args)
        except Exception:  # nobody left to tell
            log.debug("could not reach a client", exc_info=True)
