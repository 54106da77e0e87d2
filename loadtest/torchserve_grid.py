"""The served path: a TorchServe per configuration on free loopback ports, driven by loadtest.loadgen."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from facekp.archive import MODEL_CONFIG, MODEL_FILE, build_archive
from facekp.torchserve import SHIPPED_CONFIG, Service, free_ports
from loadtest.cpu import CpuSampler, log
from loadtest.images import Upload
from loadtest.loadgen import run_load


@dataclass(frozen=True)
class Config:
    """One served configuration: the model-config.yaml values and extra frontend properties."""

    name: str
    batch_size: int
    max_batch_delay_ms: int
    workers: int
    torch_threads: int
    frontend: dict[str, str] = field(default_factory=dict, hash=False)
    precision: str = "auto"  # the handler's: bf16 where the CPU has it (handler/inference.py), else fp32
    freeze: bool = True  # the handler freezes the model at load; False serves the file's graph as is
    views: int | None = None  # the handler's views_cpu (1, 2 or 6); None: its default
    runtime: str = "torchscript"  # the handler's runtime on a CPU: torchscript or onnx-int8

    def model_config(self) -> str:
        return (f"minWorkers: {self.workers}\nmaxWorkers: {self.workers}\nbatchSize: {self.batch_size}\n"
                f"maxBatchDelay: {self.max_batch_delay_ms}\nresponseTimeout: 60\n"
                f"handler:\n  max_pixels: 40000000\n  torch_threads: {self.torch_threads}\n"
                f"  precision: {self.precision}\n  freeze: {str(self.freeze).lower()}\n  runtime: {self.runtime}\n"
                + (f"  views_cpu: {self.views}\n" if self.views is not None else ""))

    def describe(self) -> str:
        return (f"{self.batch_size} per batch, {self.max_batch_delay_ms} ms delay, "
                f"{self.workers} workers x {self.torch_threads} thread(s)")


def shipped_config(model_config: Path = MODEL_CONFIG) -> Config:
    """config/model-config.yaml as a Config named like the grid's (b8-d1-w2t1): benchmarks follow the shipped file."""
    shipped = yaml.safe_load(model_config.read_text())
    handler = shipped.get("handler", {})
    batch, delay, workers = shipped["batchSize"], shipped["maxBatchDelay"], shipped["maxWorkers"]
    threads = handler.get("torch_threads", 1)
    return Config(f"b{batch}-d{delay}-w{workers}t{threads}", batch, delay, workers, threads,
                  precision=str(handler.get("precision", "auto")), views=handler.get("views_cpu"),
                  runtime=str(handler.get("runtime", "torchscript")))


LEAN_FRONTEND = {"number_of_netty_threads": "1", "netty_client_threads": "1"}
CONFIGS = (
    Config("b1-w1t2", 1, 0, 1, 2),
    Config("b8-d5-w1t2", 8, 5, 1, 2),
    Config("b16-d5-w1t2", 16, 5, 1, 2),
    Config("b16-d5-w1t1", 16, 5, 1, 1),
    Config("b8-d1-w2t1", 8, 1, 2, 1),
    Config("b8-d2-w2t1", 8, 2, 2, 1),
    Config("b16-d2-w2t1", 16, 2, 2, 1),
    Config("b8-d5-w2t1", 8, 5, 2, 1),
    Config("b16-d10-w2t1", 16, 10, 2, 1),
    Config("b8-d5-w2t1-lean", 8, 5, 2, 1, LEAN_FRONTEND),
    Config("b8-d5-w2t1-fp32", 8, 5, 2, 1, precision="fp32"),
)
"""Name: batch size, max batch delay (ms), workers x torch threads each. First batch size with one
2-thread worker (the usual setting), then 1 thread per worker and two workers, the delay, and a
frontend with one netty thread per pool instead of one per core."""


class LogWindow:
    """What the TorchServe logs say about one window: batch sizes, handler time, queue time."""

    FILES = ("model_log.log", "model_metrics.log", "ts_metrics.log")

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.offsets: dict[str, dict[str, int]] = {}

    def mark(self, event: str) -> None:
        self.offsets[event] = {name: self._size(name) for name in self.FILES}

    def _size(self, name: str) -> int:
        path = self.log_dir / name
        return path.stat().st_size if path.exists() else 0

    def _text(self, name: str) -> str:
        start, end = self.offsets["start"][name], self.offsets["end"][name]
        with open(self.log_dir / name, "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start)).decode(errors="replace")

    def summary(self) -> dict[str, float]:
        def mean(pattern: str, text: str, scale: float = 1.0) -> float:
            values = [float(v) for v in re.findall(pattern, text)]
            return round(scale * float(np.mean(values)), 2) if values else float("nan")

        metrics = self._text("ts_metrics.log")
        return {"mean_batch": mean(r"batch of (\d+):", self._text("model_log.log")),
                "handler_ms_per_batch": mean(r"PredictionTime\.ms:([\d.]+)", self._text("model_metrics.log")),
                "queue_ms": mean(r"ts_queue_latency_microseconds\.Microseconds:([\d.]+)", metrics, 1e-3),
                "frontend_latency_ms": mean(r"ts_inference_latency_microseconds\.Microseconds:([\d.]+)", metrics,
                                            1e-3)}


def start_service(config: Config, root: Path, model_file: Path = MODEL_FILE, name: str = "") -> Service:
    """Archive with this configuration's model-config.yaml, start TorchServe on free ports, wait for READY."""
    folder = root / (name or config.name)
    folder.mkdir()
    (folder / "model-config.yaml").write_text(config.model_config())
    archive = build_archive(model_file, folder / "store", folder / "model-config.yaml")
    service = Service(run_dir=folder / "run", model_store=folder / "store", config=SHIPPED_CONFIG,
                      extra_config=dict(config.frontend), **free_ports())
    service.start(archive)
    try:
        service.wait_ready(timeout=180)
    except Exception:
        service.stop()
        raise
    return service


def served_point(service: Service, config: Config, uploads: list[Upload], concurrency: int, duration: float,
                 warmup: float) -> dict:
    """One closed-loop point: throughput, latency percentiles, CPU per image by process, TorchServe's own view."""
    pid = service.pid()
    if pid is None:
        raise RuntimeError(f"TorchServe of {config.name} is not running.\n{service.log_tail()}")
    sampler = CpuSampler(pid)
    logs = LogWindow(service.log_dir)

    def on_window(event: str) -> None:
        sampler.mark(event)
        logs.mark(event)

    result = run_load(f"{service.inference_url}/predictions/keypoints", uploads, concurrency, duration, warmup,
                      on_window=on_window)
    time.sleep(0.5)  # no new requests after the window: let the asynchronous log appenders catch up
    logs.mark("end")
    cpu = sampler.delta()
    n = max(result.ok, 1)
    for sample in result.error_samples:
        log(f"    error: {sample}")
    return {"kind": "served", "config": config.name, "batch_size": config.batch_size,
            "max_batch_delay_ms": config.max_batch_delay_ms, "workers": config.workers,
            "torch_threads": config.torch_threads,
            "frontend": " ".join(f"{k}={v}" for k, v in config.frontend.items()) or "shipped",
            "concurrency": concurrency, "requests": result.ok, "errors": result.errors, "seconds": duration,
            "throughput": round(result.throughput, 2), "p50_ms": round(result.percentile(50), 1),
            "p95_ms": round(result.percentile(95), 1), "p99_ms": round(result.percentile(99), 1),
            "cpu_ms_per_image": round(1000 * (cpu["frontend"] + cpu["workers"]) / n, 2),
            "frontend_cpu_ms_per_image": round(1000 * cpu["frontend"] / n, 2),
            "worker_cpu_ms_per_image": round(1000 * cpu["workers"] / n, 2),
            "generator_cpu_ms_per_image": round(1000 * cpu["self"] / n, 2),
            "other_cpu_ms_per_image": round(1000 * cpu["other"] / n, 2),
            "generator_cpu_pct": round(100 * cpu["self"] / duration, 1),
            "other_cpu_pct": round(100 * cpu["other"] / duration, 1), **logs.summary()}
