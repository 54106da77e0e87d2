"""Overload: what the service does with more work than it can take, and how fast it recovers.

    python -m loadtest.overload                          # make overload: shipped configuration, ~4 min
    python -m loadtest.overload --configs shipped,queue100 --spike-clients 256

Per configuration, one TorchServe on free loopback ports (the shipped batching and workers, plus
the frontend settings named below), the data set's upload mix, and in order:

1. before: one client for 10 s (p50 latency = the normal case);
2. capacity: 16 closed-loop clients for 15 s (answered faces/s = C);
3. spike: 256 closed-loop clients for 30 s that back off 0.5 s x jitter after a 503/507;
4. recovery: one client, latency per second until p50 is within 1.5x of before; then 30 s after
   the spike's end, one client for 10 s;
5. open loop: Poisson arrivals at 1x, 2x and 4x C for 20 s each (no retries).

Reported per phase: answered faces/s (goodput), refusals, p50/p99 of the answered requests, the
generator's own CPU (% of one core), worker restarts, and the peak memory of TorchServe's processes.
Writes docs/reliability/overload.csv and prints a markdown table (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import psutil

from facekp.data import REPO_ROOT
from loadtest.cpu import log, wait_for_quiet
from loadtest.images import build_mix
from loadtest.loadgen import run_load, run_open_loop
from loadtest.torchserve_grid import Config, shipped_config, start_service

OUT = REPO_ROOT / "docs" / "reliability" / "overload.csv"


@dataclass(frozen=True)
class Variant:
    name: str
    frontend: dict[str, str] = field(default_factory=dict, hash=False)
    note: str = ""

    def config(self) -> Config:
        return replace(shipped_config(), name=self.name, frontend=self.frontend)


VARIANTS = {
    "shipped": Variant("shipped", {}, "config/config.properties as shipped"),
    "queue100": Variant("queue100", {"job_queue_size": "100"}, "TorchServe's default queue of 100"),
    "queue300": Variant("queue300", {"job_queue_size": "300"}, "a queue of 300 (about 2 s of work)"),
    "queue1000": Variant("queue1000", {"job_queue_size": "1000"}, "a queue of 1000"),
}


class Periodic:
    """Calls sample() every `period` seconds in a daemon thread until stop()."""

    def __init__(self, period: float):
        self._period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.sample()

    def sample(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class ProbeWatch(Periodic):
    """The Kubernetes probe's own command (config/healthcheck.py) run every 2 s: slowest run and failures."""

    COMMAND = [sys.executable, str(REPO_ROOT / "config" / "healthcheck.py"), "--quiet", "--timeout", "6"]

    def __init__(self, management_url: str, models: tuple[str, ...]):
        self.command = [*self.COMMAND, "--url", management_url, "--model", ",".join(models)]
        self.slowest_s, self.failures, self.runs = 0.0, 0, 0
        super().__init__(2.0)

    def sample(self) -> None:
        started = time.perf_counter()
        code = subprocess.run(self.command, capture_output=True).returncode
        self.slowest_s = max(self.slowest_s, time.perf_counter() - started)
        self.failures += code != 0
        self.runs += 1

    def summary(self) -> dict:
        return {"probe_runs": self.runs, "probe_failures": self.failures, "probe_slowest_s": round(self.slowest_s, 2)}


class MemoryPeak(Periodic):
    """Peak resident memory (MB) of a process tree, sampled every 0.5 s."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak_mb = 0.0
        super().__init__(0.5)

    def sample(self) -> None:
        try:
            tree = [self.root, *self.root.children(recursive=True)]
            self.peak_mb = max(self.peak_mb, sum(p.memory_info().rss for p in tree) / 2**20)
        except psutil.Error:
            pass

    def reset(self) -> float:
        peak, self.peak_mb = self.peak_mb, 0.0
        return round(peak, 0)


def row(variant: str, phase: str, seconds: float, answered: int, refused: int, other_errors: int,
        latencies: np.ndarray, generator_cpu_s: float, restarts: int, memory_mb: float, **extra) -> dict:
    def pct(q: float) -> float:
        return round(float(np.percentile(latencies, q)), 1) if len(latencies) else float("nan")

    return {"config": variant, "phase": phase, "seconds": seconds, "answered_per_s": round(answered / seconds, 1),
            "refused": refused, "other_errors": other_errors,
            "p50_ms": pct(50), "p99_ms": pct(99), "generator_cpu_pct": round(100 * generator_cpu_s / seconds, 1),
            "worker_restarts": restarts, "peak_memory_mb": memory_mb, **extra}


def measure(variant: Variant, uploads, spike_clients: int, spike_s: float, root: Path) -> list[dict]:
    service = start_service(variant.config(), root)
    url = f"{service.inference_url}/predictions/keypoints"
    memory = MemoryPeak(service.pid())
    rows: list[dict] = []
    stops0 = service.worker_stops()

    def closed(phase: str, clients: int, seconds: float, backoff_s: float = 0.0) -> dict:
        result = run_load(url, uploads, clients, duration=seconds, warmup=2.0 if clients < 100 else 0.5,
                          backoff_s=backoff_s)
        r = row(variant.name, phase, seconds, result.ok, result.refused, result.errors - result.refused,
                result.latencies_ms,
                result.generator_cpu_s, service.worker_stops() - stops0, memory.reset(), clients=clients)
        rows.append(r)
        log(f"  {phase}: {r['answered_per_s']} answered/s, {r['refused']} refused, {r['other_errors']} other errors,"
            f" p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, generator {r['generator_cpu_pct']} % of a core, "
            f"restarts {r['worker_restarts']}, peak memory {r['peak_memory_mb']} MB")
        for sample in result.error_samples[:2]:
            log(f"    e.g. {sample}")
        return r

    try:
        wait_for_quiet(60, [service.pid()])
        run_load(url, uploads, 16, duration=5.0, warmup=2.0)  # JVM JIT and TorchScript profiling, unmeasured
        before = closed("before: 1 client", 1, 10)
        capacity = closed("capacity: 16 clients", 16, 15)
        probes = ProbeWatch(service.management_url, service.models)
        spike = closed(f"spike: {spike_clients} clients, 0.5 s backoff", spike_clients, spike_s, backoff_s=0.5)
        probes.stop()
        spike.update(probes.summary())
        log(f"  health probe during the spike: {spike['probe_runs']} runs, {spike['probe_failures']} failed, "
            f"slowest {spike['probe_slowest_s']} s (the probes' timeout: 6 s)")
        spike_end = time.perf_counter()
        recovered_after = float("nan")
        while time.perf_counter() - spike_end < 30:
            probe = run_load(url, uploads, 1, duration=1.0, warmup=0.0)
            if probe.ok and probe.percentile(50) <= 1.5 * before["p50_ms"]:
                recovered_after = round(time.perf_counter() - spike_end, 1)
                break
        spike["recovered_s"] = recovered_after
        log(f"  single-client p50 back within 1.5x of before {recovered_after} s after the spike")
        time.sleep(max(0.0, 30 - (time.perf_counter() - spike_end)))
        after = closed("30 s after the spike: 1 client", 1, 10)
        after["vs_before"] = round(after["p50_ms"] / before["p50_ms"], 2)
        spike["vs_capacity"] = round(spike["answered_per_s"] / capacity["answered_per_s"], 2)
        for factor in (1, 2, 4):
            rate = factor * capacity["answered_per_s"]
            time.sleep(5)
            result = run_open_loop(url, uploads, rate, duration=20.0)
            r = row(variant.name, f"open loop {factor}x ({rate:.0f}/s offered)", 20.0, result.answered_in_window,
                    result.refused, result.errors, result.latencies_ms, result.generator_cpu_s,
                    service.worker_stops() - stops0, memory.reset(), offered=result.offered, answered_total=result.ok,
                    peak_in_flight=result.peak_in_flight)
            r["vs_capacity"] = round(r["answered_per_s"] / capacity["answered_per_s"], 2)
            rows.append(r)
            log(f"  {r['phase']}: {r['answered_per_s']} answered/s ({r['vs_capacity']} of C), {r['refused']} refused,"
                f" {r['other_errors']} other errors, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, generator "
                f"{r['generator_cpu_pct']} %, in flight at most {result.peak_in_flight}")
    finally:
        memory.stop()
        service.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="shipped", help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--spike-clients", type=int, default=256)
    parser.add_argument("--spike-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    uploads = build_mix(64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            log(f"{name}: {VARIANTS[name].note}")
            rows += measure(VARIANTS[name], uploads, args.spike_clients, args.spike_seconds, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for r in rows for key in r))
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {args.out}\n")
    print("| config | phase | answered/s | refused | other errors | p50 ms | p99 ms | generator CPU | restarts "
          "| peak memory MB |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['config']} | {r['phase']} | {r['answered_per_s']} | {r['refused']} | {r['other_errors']} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {r['generator_cpu_pct']} % | {r['worker_restarts']} | "
              f"{r['peak_memory_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
