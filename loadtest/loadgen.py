"""A low-overhead load generator: asyncio streams, raw HTTP/1.1 keep-alive.

Locust's per-request bookkeeping costs more CPU than this on a 2-core box, where the
generator competes with the server it measures; here a request is one prebuilt bytes
write and one header parse.

- run_load (closed loop): each of `concurrency` clients keeps one connection and sends its
  next upload as soon as the previous answer arrived; after a refusal (503/507) it backs
  off for `backoff_s` times a random factor in [0.5, 1.5) (jitter).
- run_open_loop: requests arrive at a fixed mean rate (Poisson), whatever the server's
  state, each on an idle pooled connection or a new one: the load of many independent users.
"""

from __future__ import annotations

import asyncio
import random
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

REFUSALS = (503, 507)
"""TorchServe's "full, retry later" (queue full) and "worker died, retry" statuses."""


@dataclass
class LoadResult:
    concurrency: int
    seconds: float  # length of the measurement window
    latencies_ms: np.ndarray  # of requests answered correctly inside the window
    errors: int  # wrong answers, refusals included
    error_samples: list[str] = field(default_factory=list)
    generator_cpu_s: float = 0.0  # this process's CPU time during the window
    refused: int = 0  # of the errors: 503/507 answers
    warmup_errors: int = 0  # before the window: not in errors, but their first samples are in error_samples

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
    requests = []
    for upload in uploads:
        headers = [("Content-Type", upload.content_type), ("Content-Length", str(len(upload.body))), *upload.headers]
        requests.append((head + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n").encode()
                        + upload.body)
    return requests


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
                  max_requests: int, latencies: list[float], failures: list[str], check: ReplyCheck,
                  backoff_s: float, refusals: list[int], warmup_failures: list[str]) -> None:
    reader = writer = None
    i = first
    sent = 0
    rng = random.Random(first)
    while time.perf_counter() < window.end and sent < max_requests:
        started = time.perf_counter()
        status = 0
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
                if status in REFUSALS:
                    refusals.append(status)
        elif problem is not None and done < window.start:  # warm-up errors are reported, not hidden
            warmup_failures.append(f"(warm-up) {problem}")
        if close and writer is not None:
            writer.close()
            reader = writer = None
        if problem is not None:
            # A refusing server must not turn the generator into a busy loop; a polite client backs off.
            await asyncio.sleep(backoff_s * rng.uniform(0.5, 1.5) if status in REFUSALS and backoff_s else 0.05)
    if writer is not None:
        writer.close()


async def _run(url: str, uploads: list[Upload], concurrency: int, duration: float, warmup: float, timeout: float,
               max_requests: int, on_window: Callable[[str], None] | None, check: ReplyCheck,
               backoff_s: float) -> LoadResult:
    parts = urlparse(url)
    requests = _requests(url, uploads)
    window = _Window(warmup, duration)
    latencies: list[float] = []
    failures: list[str] = []
    refusals: list[int] = []
    warmup_failures: list[str] = []
    per_client = max(1, max_requests // concurrency)
    clients = [asyncio.create_task(_client(parts.hostname, parts.port or 80, requests,
                                           k * len(requests) // concurrency, window, timeout, per_client,
                                           latencies, failures, check, backoff_s, refusals, warmup_failures))
               for k in range(concurrency)]
    cpu = {}

    async def mark(event: str, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        cpu[event] = time.process_time()
        if on_window:
            on_window(event)

    await asyncio.gather(mark("start", window.start), mark("end", window.end), *clients)
    return LoadResult(concurrency, duration, np.array(latencies), len(failures), (warmup_failures + failures)[:5],
                      cpu["end"] - cpu["start"], len(refusals), len(warmup_failures))


def run_load(url: str, uploads: list[Upload], concurrency: int, duration: float = 8.0, warmup: float = 2.0,
             timeout: float = 30.0, max_requests: int = 100_000,
             on_window: Callable[[str], None] | None = None, check: ReplyCheck = names_15_keypoints,
             backoff_s: float = 0.0) -> LoadResult:
    """Closed-loop load for warmup + duration seconds (bounded by max_requests); stats over the window only.

    on_window('start') / on_window('end') is called at the window's edges, to snapshot server CPU.
    check(status, body) says whether an answer counts as correct; backoff_s is the mean pause after a
    503/507 (0: 50 ms, just enough not to spin).
    """
    return asyncio.run(_run(url, uploads, concurrency, duration, warmup, timeout, max_requests, on_window, check,
                            backoff_s))


@dataclass
class OpenLoopResult:
    rate: float  # offered requests per second
    seconds: float
    offered: int  # requests sent in the window
    latencies_ms: np.ndarray  # of the requests answered correctly (some after the window)
    refused: int  # 503/507
    errors: int  # anything else: other statuses, timeouts, connection errors
    error_samples: list[str] = field(default_factory=list)
    generator_cpu_s: float = 0.0
    peak_in_flight: int = 0
    answered_in_window: int = 0  # correct answers that arrived inside the window: goodput's numerator

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def goodput(self) -> float:
        """Correct answers per second while the load lasted (a queue still draining afterwards adds nothing)."""
        return self.answered_in_window / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.ok else float("nan")


async def _open_loop(url: str, uploads: list[Upload], rate: float, duration: float, timeout: float,
                     max_in_flight: int, seed: int, check: ReplyCheck) -> OpenLoopResult:
    parts = urlparse(url)
    host, port = parts.hostname, parts.port or 80
    requests = _requests(url, uploads)
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    failures: list[str] = []
    counts = {"refused": 0, "in_flight": 0, "peak": 0, "in_window": 0}
    end = time.perf_counter() + duration

    async def one(body: bytes) -> None:
        counts["in_flight"] += 1
        counts["peak"] = max(counts["peak"], counts["in_flight"])
        started = time.perf_counter()
        connection = None
        try:
            async with asyncio.timeout(timeout):
                connection = idle.pop() if idle else await asyncio.open_connection(host, port)
                connection[1].write(body)
                status, reply, close = await _read_reply(connection[0])
            if check(status, reply):
                done = time.perf_counter()
                latencies.append((done - started) * 1000)
                counts["in_window"] += done <= end
            elif status in REFUSALS:
                counts["refused"] += 1
            else:
                failures.append(f"HTTP {status}: {reply[:120]!r}")
            if close:
                connection[1].close()
            else:
                idle.append(connection)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as err:
            failures.append(f"{type(err).__name__}: {err}")
            if connection is not None:
                connection[1].close()
        finally:
            counts["in_flight"] -= 1

    rng = random.Random(seed)
    tasks = []
    start = end - duration
    cpu0 = time.process_time()
    due = start
    sent = 0
    while True:
        due += rng.expovariate(rate)
        if due >= start + duration:
            break
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if counts["in_flight"] >= max_in_flight:  # the generator's own bound: counted as an error
            failures.append(f"generator: {max_in_flight} requests already in flight")
            continue
        tasks.append(asyncio.create_task(one(requests[sent % len(requests)])))
        sent += 1
    cpu = time.process_time() - cpu0
    await asyncio.gather(*tasks)
    for _, writer in idle:
        writer.close()
    return OpenLoopResult(rate, duration, sent, np.array(latencies), counts["refused"], len(failures),
                          failures[:5], cpu, counts["peak"], counts["in_window"])


def run_open_loop(url: str, uploads: list[Upload], rate: float, duration: float = 20.0, timeout: float = 30.0,
                  max_in_flight: int = 4096, seed: int = 0,
                  check: ReplyCheck = names_15_keypoints) -> OpenLoopResult:
    """Poisson arrivals at `rate` per second for `duration` seconds; waits for the last answers (up to timeout).

    Every request sent in the window is counted: answered (latency kept), refused (503/507) or failed.
    """
    return asyncio.run(_open_loop(url, uploads, rate, duration, timeout, max_in_flight, seed, check))
