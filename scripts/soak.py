"""Soak test: steady load for a fixed time; no request may fail and worker memory must stay flat.

A few client threads (requests, each call bounded by a timeout) POST real validation faces as
PNG and JPEG of several sizes for --duration seconds. Every --sample seconds the model
worker's RSS is read (psutil, pid from the management API). At the end it prints the samples,
the failures, and the worker RSS after warm-up against the end, and exits 1 if any request
failed, the worker was replaced, or its RSS grew by more than --max-growth percent.

By default it starts its own TorchServe (the shipped model config) on free loopback ports in a
temporary folder; --url/--management-url measure a running service instead (`make serve`).
Heavy: run it under the CPU lock, and not in `make test`:

    flock /tmp/facekp-cpu.lock .venv/bin/python scripts/soak.py --duration 600
    .venv/bin/python scripts/soak.py --url http://127.0.0.1:8080 --management-url http://127.0.0.1:8081
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
import requests

from facekp import data as facedata
from facekp.archive import MODEL_CONFIG, MODEL_FILE, build_archive
from facekp.evaluate import encode_face
from facekp.processes import free_port
from facekp.torchserve import Service


@dataclass
class Sample:
    seconds: float
    requests: int
    failures: int
    worker_pids: list[int]
    worker_rss_mb: float
    frontend_rss_mb: float | None


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    failures: int = 0
    first_failures: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, error: str | None, latency_ms: float) -> None:
        with self.lock:
            self.requests += 1
            self.latencies_ms.append(latency_ms)
            if error is not None:
                self.failures += 1
                if len(self.first_failures) < 10:
                    self.first_failures.append(error)


def bodies(count: int = 64) -> list[bytes]:
    """Validation faces as 96 PNG, 192 JPEG and 400 PNG: decode and resize paths all run."""
    faces = facedata.split_by_person(facedata.load())[1].images[:count]
    kinds = [("png", 96), ("jpeg", 192), ("png", 400)]
    return [encode_face(face, fmt, size) for face, (fmt, size) in zip(faces, itertools.cycle(kinds))]


def client(url: str, payloads: list[bytes], offset: int, stop: threading.Event, tally: Tally, timeout: float) -> None:
    with requests.Session() as session:
        for body in itertools.islice(itertools.cycle(payloads), offset, None):
            if stop.is_set():
                return
            started = time.perf_counter()
            error = None
            try:
                reply = session.post(url, data=body, headers={"Content-Type": "application/octet-stream"},
                                     timeout=timeout)
                if reply.status_code != 200 or len(reply.json().get("keypoints", [])) != 15:
                    error = f"HTTP {reply.status_code}: {reply.text[:200]}"
            except (requests.RequestException, ValueError) as err:
                error = f"{type(err).__name__}: {err}"
            tally.add(error, (time.perf_counter() - started) * 1000)


def workers(management_url: str) -> list[int]:
    reply = requests.get(f"{management_url}/models/keypoints", timeout=10)
    reply.raise_for_status()
    return [w["pid"] for w in reply.json()[0]["workers"] if w.get("pid")]


def rss_mb(pid: int | None) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / 2**20 if pid else None
    except psutil.Error:
        return None


def soak(url: str, management_url: str, frontend_pid: int | None, duration: float, threads: int, timeout: float,
         sample_every: float) -> tuple[list[Sample], Tally]:
    payloads = bodies()
    tally, stop = Tally(), threading.Event()
    target = f"{url}/predictions/keypoints"
    pool = [threading.Thread(target=client, args=(target, payloads, i * len(payloads) // threads, stop, tally,
                                                  timeout), daemon=True) for i in range(threads)]
    start = time.monotonic()
    for thread in pool:
        thread.start()
    samples: list[Sample] = []
    try:
        while True:
            elapsed = time.monotonic() - start
            pids = workers(management_url)
            sample = Sample(round(elapsed, 1), tally.requests, tally.failures, pids,
                            round(sum(rss_mb(pid) or 0.0 for pid in pids), 1),
                            None if frontend_pid is None else round(rss_mb(frontend_pid) or 0.0, 1))
            samples.append(sample)
            print(f"{sample.seconds:7.1f} s  {sample.requests:7d} requests  {sample.failures} failed  "
                  f"worker {sample.worker_pids} RSS {sample.worker_rss_mb:7.1f} MB  "
                  f"frontend RSS {sample.frontend_rss_mb} MB", flush=True)
            if elapsed >= duration:
                break
            time.sleep(min(sample_every, max(duration - elapsed, 0.0)))
    finally:
        stop.set()
        for thread in pool:
            thread.join(timeout + 5)
    return samples, tally


def summarize(samples: list[Sample], tally: Tally, warmup: float, max_growth: float) -> tuple[dict, list[str]]:
    steady = [s for s in samples if s.seconds >= warmup] or samples[-1:]
    base, end = steady[0], steady[-1]
    growth = 100 * (end.worker_rss_mb - base.worker_rss_mb) / base.worker_rss_mb
    peak = max(s.worker_rss_mb for s in steady)
    latencies = sorted(tally.latencies_ms) or [float("nan")]
    seconds = samples[-1].seconds
    summary = {
        "seconds": seconds, "requests": tally.requests, "failures": tally.failures,
        "throughput_rps": round(tally.requests / seconds, 1) if seconds else None,
        "latency_ms_p50": round(latencies[len(latencies) // 2], 1),
        "latency_ms_p99": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 1),
        "latency_ms_max": round(latencies[-1], 1),
        "worker_rss_mb_after_warmup": base.worker_rss_mb, "worker_rss_mb_at_warmup_s": base.seconds,
        "worker_rss_mb_end": end.worker_rss_mb, "worker_rss_mb_peak_after_warmup": peak,
        "worker_rss_growth_pct": round(growth, 2),
        "worker_rss_peak_growth_pct": round(100 * (peak - base.worker_rss_mb) / base.worker_rss_mb, 2),
        "worker_pids": sorted({pid for s in samples for pid in s.worker_pids}),
        "first_failures": tally.first_failures,
    }
    problems = []
    if tally.failures:
        problems.append(f"{tally.failures} of {tally.requests} requests failed")
    if len({tuple(s.worker_pids) for s in samples}) > 1:
        problems.append(f"the worker was replaced during the soak: pids {summary['worker_pids']}")
    if growth > max_growth:
        problems.append(f"worker RSS grew {growth:.1f} % after warm-up (limit {max_growth} %)")
    return summary, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the memory baseline")
    parser.add_argument("--threads", type=int, default=4, help="concurrent clients")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds before a request counts as failed")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--max-growth", type=float, default=10.0, help="percent of worker RSS growth allowed")
    parser.add_argument("--url", help="inference API of a running service (default: start one)")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081", help="with --url")
    parser.add_argument("--json", type=Path, help="write the summary and samples here")
    args = parser.parse_args(argv)

    service = None
    with tempfile.TemporaryDirectory(prefix="facekp-soak-") as tmp:
        if args.url:
            url, management_url, frontend_pid = args.url.rstrip("/"), args.management_url.rstrip("/"), None
        else:
            archive = build_archive(MODEL_FILE, Path(tmp) / "store", MODEL_CONFIG)
            service = Service(run_dir=Path(tmp) / "run", model_store=archive.parent, inference_port=free_port(),
                              management_port=free_port(), metrics_port=free_port(),
                              grpc_inference_port=free_port(), grpc_management_port=free_port())
            service.start(archive)
            service.wait_ready(180)
            url, management_url, frontend_pid = service.inference_url, service.management_url, service.pid()
        print(f"soak: {args.threads} clients for {args.duration:.0f} s against {url} (timeout {args.timeout} s), "
              f"memory baseline after {args.warmup:.0f} s", flush=True)
        try:
            samples, tally = soak(url, management_url, frontend_pid, args.duration, args.threads, args.timeout,
                                  args.sample)
        finally:
            if service is not None:
                service.stop()
    summary, problems = summarize(samples, tally, args.warmup, args.max_growth)
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "samples": [asdict(s) for s in samples]}, indent=2))
    print("FAIL: " + "; ".join(problems) if problems else "PASS: no failed request, worker memory flat")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
