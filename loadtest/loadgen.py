"""A low-overhead closed-loop load generator: asyncio streams, raw HTTP/1.1 keep-alive.

Locust's per-request bookkeeping costs more CPU than this on a 2-core box, where the
generator competes with the server it measures; here a request is one prebuilt bytes
write and one header parse. Each of `concurrency` clients keeps one connection and sends
its next upload as soon as the previous answer arrived.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np

from loadtest.images import Upload

EXPECTED_POINTS = 15
"""A valid answer names 15 keypoints; counting b'"name"' checks that without parsing JSON."""


def names_15_keypoints(status: int, body: bytes) -> bool:
    """The plain answer's check, cheap: 200 and 15 b'"name"'."""
    return status == 200 and body.count(b'"name"') == EXPECTED_POINTS


ReplyCheck = Callable[[int, bytes], bool]


@dataclass
class LoadResult:
    concurrency: int
    seconds: float  # length of the measurement window
    latencies_ms: np.ndarray  # of requests answered correctly inside the window
    errors: int
    error_samples: list[str] = field(default_factory=list)
    generator_cpu_s: float = 0.0  # this process's CPU time during the window

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.ok else float("nan")


def _requests(url: str, uploads: list[Upload]) -> list[bytes]:
    parts = urlparse(url)
    head = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
    return [f"{head}Content-Type: {u.content_type}\r\nContent-Length: {len(u.body)}\r\n\r\n".encode() + u.body
            for u in uploads]


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, server wants the connection closed)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(c[:-2] for c in chunks)
    else:
        body = await reader.read()
    return status, body, headers.get("connection", "").lower() == "close"


class _Window:
    """Shared clock: a request counts if it is answered inside [start, end] (after the warm-up).

    Counting by answer time, not send time, keeps throughput unbiased when latency is long.
    """

    def __init__(self, warmup: float, duration: float):
        self.start = time.perf_counter() + warmup
        self.end = self.start + duration


async def _client(host: str, port: int, requests: list[bytes], first: int, window: _Window, timeout: float,
                  max_requests: int, latencies: list[float], failures: list[str], check: ReplyCheck) -> None:
    reader = writer = None
    i = first
    sent = 0
    while time.perf_counter() < window.end and sent < max_requests:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(requests[i % len(requests)])
                status, body, close = await _read_reply(reader)
            problem = None if check(status, body) else f"HTTP {status}: {body[:120]!r}"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as err:
            problem, close = f"{type(err).__name__}: {err}", True
        done = time.perf_counter()
        i += 1
        sent += 1
        if window.start <= done <= window.end:
            if problem is None:
                latencies.append((done - started) * 1000)
            else:
                failures.append(problem)
        elif problem is not None and done < window.start:  # warm-up errors are reported, not hidden
            failures.append(f"(warm-up) {problem}")
        if close and writer is not None:
            writer.close()
            reader = writer = None
        if problem is not None:
            await asyncio.sleep(0.05)  # a refusing server must not turn the generator into a busy loop
    if writer is not None:
        writer.close()


async def _run(url: str, uploads: list[Upload], concurrency: int, duration: float, warmup: float, timeout: float,
               max_requests: int, on_window: Callable[[str], None] | None, check: ReplyCheck) -> LoadResult:
    parts = urlparse(url)
    requests = _requests(url, uploads)
    window = _Window(warmup, duration)
    latencies: list[float] = []
    failures: list[str] = []
    per_client = max(1, max_requests // concurrency)
    clients = [asyncio.create_task(_client(parts.hostname, parts.port or 80, requests,
                                           k * len(requests) // concurrency, window, timeout, per_client,
                                           latencies, failures, check))
               for k in range(concurrency)]
    cpu = {}

    async def mark(event: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        cpu[event] = time.process_time()
        if on_window:
            on_window(event)

    await asyncio.gather(mark("start", window.start), mark("end", window.end), *clients)
    return LoadResult(concurrency, duration, np.array(latencies), len(failures), failures[:5],
                      cpu["end"] - cpu["start"])


def run_load(url: str, uploads: list[Upload], concurrency: int, duration: float = 8.0, warmup: float = 2.0,
             timeout: float = 30.0, max_requests: int = 100_000,
             on_window: Callable[[str], None] | None = None, check: ReplyCheck = names_15_keypoints) -> LoadResult:
    """Closed-loop load for warmup + duration seconds (bounded by max_requests); stats over the window only.

    on_window('start') / on_window('end') is called at the window's edges, to snapshot server CPU.
    check(status, body) says whether an answer counts as correct.
    """
    return asyncio.run(_run(url, uploads, concurrency, duration, warmup, timeout, max_requests, on_window, check))
