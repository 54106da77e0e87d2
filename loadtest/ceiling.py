"""The in-process ceiling: the handler's own functions and the TorchScript model, no server in between.

decode_image + to_model_input (handler.processing, exactly what the handler runs) on the same
upload mix the served path gets, stacked into batches, then the model. Nothing is cached between
batches: every image is decoded every time.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from handler.inference import load_model
from handler.processing import decode_image, keypoints_json, to_model_input
from handler.settings import HandlerSettings
from loadtest.cpu import busy_cpu_s
from loadtest.images import Upload

Model = Callable[[torch.Tensor], np.ndarray]


def handler_model(model_file: Path, precision: str = "auto", views: int | None = None) -> Model:
    """The model as the handlers run it: frozen, in the precision they pick on this machine (handler.inference),
    with the views the handlers' default settings serve on a CPU (None) or these."""
    views = HandlerSettings().views_cpu if views is None else views
    run = load_model(model_file, torch.device("cpu"), precision, views=views).run
    return lambda x: run(x.numpy())


def decode_all(uploads: list[Upload]) -> list[np.ndarray]:
    return [to_model_input(decode_image(u.body))[0] for u in uploads]


def ceiling_loop(model: Model, uploads: list[Upload], batch: int, seconds: float,
                 first: int = 0) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds of this process) for batches of `batch` taken in order from the mix."""
    n, i = 0, first
    cpu0, t0 = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - t0 < seconds or n < 2 * batch:
            inputs = decode_all([uploads[(i + k) % len(uploads)] for k in range(batch)])
            model(torch.from_numpy(np.stack(inputs)))
            i += batch
            n += batch
    return n, time.perf_counter() - t0, time.process_time() - cpu0


def _row(layout: str, batch: int, threads: int, n: int, seconds: float, cpu: float, other: float,
         stage: str) -> dict:
    return {"kind": "ceiling", "config": f"in-process {layout} bs{batch}", "batch_size": batch,
            "torch_threads": threads, "requests": n, "errors": 0, "seconds": round(seconds, 2),
            "throughput": round(n / seconds, 2), "cpu_ms_per_image": round(1000 * cpu / n, 3),
            "other_cpu_pct": round(100 * other / seconds, 1), "stage": stage}


def ceiling(model: Model, uploads: list[Upload], batch: int, seconds: float, stage: str) -> dict:
    """One process, torch's current thread count (the benchmark sets all cores)."""
    busy0 = busy_cpu_s()
    n, wall, cpu = ceiling_loop(model, uploads, batch, seconds)
    other = max(0.0, busy_cpu_s() - busy0 - cpu)
    return _row("1 process", batch, torch.get_num_threads(), n, wall, cpu, other, stage)


def _child(model_file: str, uploads: list[Upload], batch: int, seconds: float, first: int, ready, go,
           results) -> None:
    torch.set_num_threads(1)
    model = handler_model(Path(model_file))
    ceiling_loop(model, uploads, batch, 0.0, first)  # warm
    ready.put(True)
    go.wait()
    results.put(ceiling_loop(model, uploads, batch, seconds, first))


def ceiling_processes(model_file: Path, uploads: list[Upload], batch: int, seconds: float, processes: int,
                      stage: str) -> dict:
    """`processes` single-thread processes at once: the layout of a TorchServe with that many 1-thread workers."""
    ctx = mp.get_context("spawn")  # forking a process whose OpenMP pool is running is unsafe
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    children = [ctx.Process(target=_child, args=(str(model_file), uploads, batch, seconds,
                                                 k * len(uploads) // processes, ready, go, results))
                for k in range(processes)]
    for child in children:
        child.start()
    try:
        for _ in children:
            ready.get(timeout=180)
        busy0, t0 = busy_cpu_s(), time.perf_counter()
        go.set()
        done = [results.get(timeout=seconds + 120) for _ in children]
        wall, busy = time.perf_counter() - t0, busy_cpu_s() - busy0  # before the children's exit costs CPU
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    n = sum(d[0] for d in done)
    cpu = sum(d[2] for d in done)
    rate = sum(d[0] / d[1] for d in done)  # each child's own rate: they ran side by side
    other = max(0.0, busy - cpu)
    row = _row(f"{processes} processes x 1 thread", batch, 1, n, wall, cpu, other, stage)
    row["throughput"] = round(rate, 2)
    return row


def split(model: Model, uploads: list[Upload]) -> list[dict]:
    """Wall ms per image of each step of the handler, in process: where one request's work goes."""
    rows = []
    threads = torch.get_num_threads()

    def timed(name: str, fn, repeat: int, per: int, n_threads: int = threads) -> None:
        fn()  # warm
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn()
        ms = 1000 * (time.perf_counter() - t0) / (repeat * per)
        rows.append({"kind": "split", "config": name, "batch_size": per, "torch_threads": n_threads,
                     "cpu_ms_per_image": round(ms, 3)})

    images = [decode_image(u.body) for u in uploads]
    inputs = [to_model_input(im) for im in images]
    timed("decode_image (mix)", lambda: [decode_image(u.body) for u in uploads], 3, len(uploads))
    timed("to_model_input (mix)", lambda: [to_model_input(im) for im in images], 3, len(uploads))
    for kind in sorted({u.kind for u in uploads}):
        same = [u for u in uploads if u.kind == kind]
        timed(f"decode+preprocess {kind}", lambda same=same: decode_all(same), 3, len(same))
    with torch.inference_mode():
        for batch in (1, 8, 16, 32):
            x = torch.from_numpy(np.stack([inputs[k % len(inputs)][0] for k in range(batch)]))
            timed(f"model bs{batch} ({threads} threads)", lambda x=x: model(x), max(3, 64 // batch), batch)
        torch.set_num_threads(1)  # what each worker of a 1-thread configuration gets
        try:
            for batch in (1, 8):
                x = torch.from_numpy(np.stack([inputs[k % len(inputs)][0] for k in range(batch)]))
                timed(f"model bs{batch} (1 thread)", lambda x=x: model(x), max(3, 32 // batch), batch, 1)
        finally:
            torch.set_num_threads(threads)
        out = np.asarray(model(torch.from_numpy(np.stack([t for t, _ in inputs]))))

    def postprocess() -> list[str]:  # as the handler answers: compact JSON
        return [json.dumps(keypoints_json(f.square.to_image(o), f), separators=(",", ":"))
                for o, (_, f) in zip(out, inputs, strict=True)]

    timed("postprocess + JSON", postprocess, 3, len(inputs))
    return rows
