"""Load on `char-rnn serve`: N concurrent streaming readers against a real server on 127.0.0.1.

    .venv/bin/python bench/serve_load.py RUN                        # N = 1, 8, 32, 64
    .venv/bin/python bench/serve_load.py RUN --soak 10              # 10 minutes, 64 readers

For each N, every reader asks for streams of --length characters one after another for
--seconds: aggregate chars/s (all text received / the phase's time), chars/s per reader
(the median over streams of its characters / its duration), p50 and p95 time to the first
character (from sending the request, queueing included), and errors by HTTP status. The
same load then runs against the server with --max-batch 1 (one stream at a time, the rest
queued: the unbatched server) so the ratio comes from one run, and the batched engine's
own speed at the same batch size (`char-rnn bench generate`'s measurement, on RUN's model)
gives the share of it that the server delivers.

--soak: 64 readers for the given minutes, each stream cut off at a random point with
probability --disconnect; it checks that every stream read to its end has the length
asked, counts errors by status (429 is the only acceptable one), and prints the server's
resident memory in the first tenth against the last tenth of the time.

Tiny check (under a minute of CPU): train a tiny run, then
    .venv/bin/python bench/serve_load.py RUN --clients 1 8 --seconds 3 --length 200
    .venv/bin/python bench/serve_load.py RUN --soak 0.3 --length 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
from soak import rss_kib  # bench/soak.py, beside this script


@dataclass
class Load:
    chars: int = 0
    streams: int = 0
    first_char_s: list[float] = field(default_factory=list)
    per_stream_chars_s: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    wrong_lengths: int = 0
    cut_off: int = 0
    longest_s: float = 0.0  # the slowest stream read to its end


class Server:
    """`python -m char_rnn serve RUN --port 0 FLAGS` until stopped."""

    def __init__(self, run: str, *flags: str):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "char_rnn", "serve", run, "--port", "0", "--quiet", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if found := re.search(r"at (http://127\.0\.0\.1:\d+/)", line):
                self.url = found.group(1)
                # Keep reading what it prints, so that a full pipe never blocks it.
                self.log: list[str] = []
                threading.Thread(target=self._keep_log, daemon=True).start()
                return
        raise SystemExit(f"the server did not start (exit {self.process.wait()})")

    def _keep_log(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log = [*self.log[-199:], line]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def read_stream(client: httpx.AsyncClient, body: dict, load: Load, cut_after: int | None) -> None:
    sent = time.perf_counter()
    first = None
    chars = 0
    try:
        async with client.stream("POST", "/api/stream", json=body) as response:
            if response.status_code != 200:
                load.errors[response.status_code] += 1
                await response.aread()
                return
            event = "message"
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    data = json.loads(line.split(":", 1)[1])
                    if event == "message":
                        if first is None:
                            first = time.perf_counter()
                            load.first_char_s.append(first - sent)
                        chars += len(data["text"])
                        if cut_after is not None and chars >= cut_after:
                            load.cut_off += 1
                            load.chars += chars
                            return  # leaving mid-stream closes the connection
                    elif event == "error":
                        load.errors[f"error event: {data.get('detail', '')[:60]}"] += 1
                        load.chars += chars
                        return
                    else:
                        load.wrong_lengths += data["chars"] != body["length"] or chars != body["length"]
    except httpx.HTTPError as error:
        load.errors[type(error).__name__] += 1
        return
    load.chars += chars
    load.streams += 1
    load.longest_s = max(load.longest_s, time.perf_counter() - sent)
    if first is not None:
        load.per_stream_chars_s.append(chars / max(time.perf_counter() - sent, 1e-9))


async def reader(
    client: httpx.AsyncClient, seconds: float, length: int, load: Load, seed: int, disconnect: float
) -> None:
    rng = random.Random(seed)
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        cut = rng.randrange(1, length) if rng.random() < disconnect else None
        body = {"start": "ROMEO:", "length": length, "temperature": 0.8, "seed": rng.randrange(2**31)}
        await read_stream(client, body, load, cut)
        if load.errors and not load.per_stream_chars_s and load.errors.total() > 1000:
            return  # nothing but errors: stop hammering


async def run_load(
    url: str, clients: int, seconds: float, length: int, disconnect: float = 0.0
) -> tuple[Load, float]:
    """`clients` readers on one connection pool, each with its own connection: a client
    object per reader would cost each one an SSL context, built while the others' first
    characters wait on this one event loop."""
    load = Load()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(reader(client, seconds, length, load, i, disconnect) for i in range(clients)))
        return load, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(label: str, clients: int, load: Load, seconds: float) -> float:
    aggregate = load.chars / seconds
    per_client = statistics.median(load.per_stream_chars_s) if load.per_stream_chars_s else float("nan")
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(load.errors.items(), key=str)) or "none"
    print(f"{label:<12} N={clients:<3} {aggregate:>9,.0f} chars/s aggregate  {per_client:>8,.0f} per reader  "
          f"first char p50 {1000 * percentile(load.first_char_s, 0.5):6.0f} ms  "
          f"p95 {1000 * percentile(load.first_char_s, 0.95):6.0f} ms  {load.streams} streams  "
          f"errors: {errors}", flush=True)  # fmt: skip
    return aggregate


def engine_speed(run: str, batch: int, length: int) -> float:
    """The fast engine's own chars/s for `batch` streams on RUN's model, in this process."""
    from char_rnn import CharRNN
    from char_rnn.generate.speed import measure_generation

    model = CharRNN.load(run)
    return measure_generation(model.engine, model.vocab, batch_size=batch, length=length).chars_per_s


def soak(args: argparse.Namespace) -> None:
    server = Server(args.run, "--max-batch", str(args.max_batch), "--max-length", str(max(args.length, 5000)))
    samples: list[tuple[float, int]] = []

    async def sample_memory(until: float) -> None:
        while time.perf_counter() < until:
            samples.append((time.perf_counter(), rss_kib(server.process.pid)))
            await asyncio.sleep(1)

    async def main() -> tuple[Load, float]:
        seconds = args.soak * 60
        sampler = asyncio.ensure_future(sample_memory(time.perf_counter() + seconds))
        result = await run_load(server.url, 64, seconds, args.length, args.disconnect)
        await sampler
        return result

    try:
        load, seconds = asyncio.run(main())
    finally:
        server.stop()
    report("soak", 64, load, seconds)
    tenth = max(1, len(samples) // 10)
    first = statistics.mean(r for _, r in samples[:tenth]) / 1024
    last = statistics.mean(r for _, r in samples[-tenth:]) / 1024
    bad = {k: v for k, v in load.errors.items() if k != 429}
    print(f"soak: {args.soak:g} min, {load.streams} streams read to the end, {load.cut_off} cut off by their "
          f"reader; wrong lengths: {load.wrong_lengths}; errors other than 429: {bad or 'none'}; "
          f"the slowest stream read to its end took {load.longest_s:.1f} s")  # fmt: skip
    print(
        f"server RSS: {first:,.1f} MiB in the first tenth, {last:,.1f} MiB in the last ({last - first:+.1f})"
    )
    if bad:
        print("the server's last lines:", *server.log[-40:], sep="\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="run folder to serve (the README's figures: a --preset tutorial run)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase (default 20)")
    parser.add_argument("--length", type=int, default=1000, help="characters per stream (default 1000)")
    parser.add_argument("--max-batch", type=int, default=64, help="of the batched server (default 64)")
    parser.add_argument("--soak", type=float, metavar="MINUTES", help="run the soak instead")
    parser.add_argument("--disconnect", type=float, default=0.2,
                        help="soak: share of streams cut off at a random point (default 0.2)")  # fmt: skip
    args = parser.parse_args()
    if args.soak:
        soak(args)
        return
    figures: dict[tuple[str, int], float] = {}
    queue = str(max(args.clients) + 1)
    servers = (("batched", ("--max-batch", str(args.max_batch))), ("max-batch 1", ("--max-batch", "1")))
    for label, flags in servers:
        server = Server(args.run, *flags, "--max-queue", queue, "--queue-timeout", "600",
                        "--max-length", str(max(args.length, 5000)))  # fmt: skip
        try:
            asyncio.run(run_load(server.url, 1, 2, min(args.length, 200)))  # warm the connection path
            for clients in args.clients:
                load, seconds = asyncio.run(run_load(server.url, clients, args.seconds, args.length))
                figures[label, clients] = report(label, clients, load, seconds)
        finally:
            server.stop()
    for clients in args.clients:
        engine = engine_speed(args.run, min(clients, args.max_batch), args.length)
        batched, single = figures["batched", clients], figures["max-batch 1", clients]
        print(f"N={clients:<3} batched / max-batch 1: x{batched / single:.2f}; batched server / engine "
              f"alone at batch {min(clients, args.max_batch)} ({engine:,.0f} chars/s): "
              f"{batched / engine:.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
