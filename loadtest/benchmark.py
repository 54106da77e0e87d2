"""Benchmark: in-process ceiling vs the served path through TorchServe, on the same upload mix.

    python -m loadtest.benchmark            # make bench: the whole grid, ~7.5 minutes on 2 cores
    python -m loadtest.benchmark --configs b8-d5-w2t1 --concurrency 16 --duration 4   # one point

0. (last) The photo mix to /predictions/faces, both models served (loadtest.photo_bench).
1. Ceiling (loadtest.ceiling): handler.processing.decode_image + to_model_input + the TorchScript
   model in this process with torch threads = all cores, at batch sizes 1, 8, 16, 32; also two
   1-thread processes side by side. Measured at the start, at bs32 again just before each
   configuration (the machine's speed drifts), and at the end.
2. Served (loadtest.torchserve_grid): per configuration a TorchServe on free loopback ports with its own
   model-config, driven by loadtest.loadgen at 1, 4, 16, 64 clients; CPU time of the frontend,
   the workers, the generator and everything else is sampled over each window.
3. Writes docs/performance/bench.csv, bench.png and the generated block of docs/performance.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import torch

from facekp.archive import MODEL_FILE
from facekp.data import REPO_ROOT
from facekp.machine import machine
from handler.inference import choose_precision
from loadtest import photo_bench, report
from loadtest.ceiling import ceiling, ceiling_loop, ceiling_processes, handler_model, split
from loadtest.cpu import log, wait_for_quiet
from loadtest.images import build_mix, describe
from loadtest.loadgen import run_load
from loadtest.torchserve_grid import CONFIGS, served_point, start_service

OUT_DIR = REPO_ROOT / "docs" / "performance"
DOC = REPO_ROOT / "docs" / "performance.md"
CEILING_BATCHES = (1, 8, 16, 32)
ADJACENT_BATCH = 32


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="all", help=f"comma-separated names of: {[c.name for c in CONFIGS]}")
    parser.add_argument("--concurrency", default=",".join(map(str, report.CONCURRENCIES)))
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each point")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0, help="seconds per ceiling measurement")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="seconds to wait for other programs to go quiet before each measurement")
    parser.add_argument("--faces", type=int, default=64, help="distinct uploads in the mix")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder for bench.csv and bench.png")
    parser.add_argument("--photos", action=argparse.BooleanOptionalAction, default=True,
                        help="also serve the photo mix to /predictions/faces (loadtest.photo_bench, ~1.5 min)")
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown file whose generated block is replaced")
    args = parser.parse_args(argv)
    configs = CONFIGS if args.configs == "all" else tuple(c for c in CONFIGS if c.name in args.configs.split(","))
    if not configs:
        parser.error(f"no known configuration in {args.configs!r}")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    started = time.perf_counter()

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)  # the ceiling gets both cores through torch's intra-op threads
    uploads = build_mix(args.faces)
    model = handler_model(MODEL_FILE)  # frozen, bf16 where the CPU has it: what the handler runs
    digest = hashlib.sha256(MODEL_FILE.read_bytes()).hexdigest()[:12]
    precision = choose_precision("auto", torch.device("cpu"))
    log(f"upload mix: {describe(uploads)}; model {MODEL_FILE.name} sha256 {digest}, {precision}; torch threads {cores}")
    ceiling_loop(model, uploads, 8, 0.0)  # warm: TorchScript profiles its first runs
    rows: list[dict] = []

    def add_ceiling(batch: int, stage: str) -> dict:
        wait_for_quiet(args.quiet_wait)
        row = ceiling(model, uploads, batch, args.ceiling_seconds, stage)
        rows.append(row)
        log(f"ceiling ({stage}) {row['config']}: {row['throughput']} images/s, {row['cpu_ms_per_image']} CPU "
            f"ms/image, other programs {row['other_cpu_pct']} % of a core")
        return row

    def add_two_processes(stage: str) -> None:
        wait_for_quiet(args.quiet_wait)
        row = ceiling_processes(MODEL_FILE, uploads, 8, args.ceiling_seconds, cores, stage)
        rows.append(row)
        log(f"ceiling ({stage}) {row['config']}: {row['throughput']} images/s, {row['cpu_ms_per_image']} CPU "
            f"ms/image")

    for batch in CEILING_BATCHES:
        add_ceiling(batch, "start")
    add_two_processes("start")
    wait_for_quiet(args.quiet_wait)
    rows += split(model, uploads)
    log("split (ms/image): " + ", ".join(f"{r['config']} {r['cpu_ms_per_image']}" for r in rows
                                         if r["kind"] == "split"))

    with tempfile.TemporaryDirectory(prefix="facekp-bench-") as tmp:
        for k, config in enumerate(configs, 1):
            adjacent = add_ceiling(ADJACENT_BATCH, f"before {config.name}")["throughput"]
            log(f"[{k}/{len(configs)}] {config.name}: starting TorchServe ({config})")
            service = start_service(config, Path(tmp))
            try:
                # JVM JIT and TorchScript profiling runs happen in the first seconds: keep them out of the points.
                run_load(f"{service.inference_url}/predictions/keypoints", uploads, 16, 3.0, 1.0)
                for concurrency in concurrencies:
                    wait_for_quiet(args.quiet_wait, [service.pid()])
                    row = served_point(service, config, uploads, concurrency, args.duration, args.warmup)
                    row["ceiling_adjacent"] = adjacent
                    row["ratio_adjacent"] = round(row["throughput"] / adjacent, 3)
                    rows.append(row)
                    log(f"    {concurrency:>3} clients: {row['throughput']:7.1f} images/s ({row['ratio_adjacent']:.0%}"
                        f" of adjacent ceiling)  p50 {row['p50_ms']} p95 {row['p95_ms']} p99 {row['p99_ms']} ms  "
                        f"errors {row['errors']}  batch {row['mean_batch']}  generator {row['generator_cpu_pct']} % "
                        f"core, other {row['other_cpu_pct']} %")
            finally:
                service.stop()
    add_ceiling(ADJACENT_BATCH, "end")
    add_two_processes("end")
    if args.photos:
        log("photo mix: /predictions/faces with both models served (docs/performance/bench_photos.csv)")
        photo_bench.write(photo_bench.photo_points(), args.out / "bench_photos.csv")

    best_ceiling = max(r["throughput"] for r in report.one_process_ceilings(rows))
    for row in rows:
        if row["kind"] == "served":
            row["ceiling"] = best_ceiling
            row["ratio"] = round(row["throughput"] / best_ceiling, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_csv(rows, args.out / "bench.csv")
    report.plot(rows, args.out / "bench.png")
    wall = time.perf_counter() - started
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "cores": cores,
            "threads": cores, "ceiling": best_ceiling, "mix": describe(uploads),
            "model": f"{MODEL_FILE.relative_to(REPO_ROOT)}, sha256 {digest}, {precision} and frozen (as served)",
            "window": f"{args.warmup:g} s warm-up + {args.duration:g} s measured per point",
            "wall": f"`make bench` took {wall / 60:.1f} min"}
    report.update_doc(report.render(rows, meta), args.doc)
    log(f"wrote {args.out / 'bench.csv'}, {args.out / 'bench.png'}, {args.doc} in {wall:.0f} s")
    best = report.best_config(rows)
    if best:
        log(f"best at {report.GOAL_CONCURRENCY} clients: {best['config']} {best['throughput']} images/s = "
            f"{best['ratio']:.0%} of the best ceiling {best_ceiling}, {best['ratio_adjacent']:.0%} of the adjacent "
            f"one; p50 {best['p50_ms']} p99 {best['p99_ms']} ms")
        print(json.dumps(asdict(next(c for c in configs if c.name == best["config"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
