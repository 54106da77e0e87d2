"""The shipped model against an earlier one from git history, side by side in one run.

    python -m loadtest.models_compare                 # make bench runs it first: ~4 min on 2 cores
    python -m loadtest.models_compare --baseline 9a2cdaa --concurrency 1,16

For each model and precision: GFLOP per face, in-process faces/s of the model alone at batch 1
and 32 (the handler's runner, handler.inference), served faces/s with p50/p99 at 1, 16 and 64
clients (a TorchServe of the shipped batching on free loopback ports, the benchmark's upload
mix), and the validation score in that precision. The baseline is served twice: in float32, as
it was served at its commit, and in the precision today's handler picks for it. Also the CPU's
measured matmul peak, for the GFLOP/s-against-peak section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from facekp import data as facedata
from facekp import metrics
from facekp.archive import MODEL_FILE
from facekp.contract import denormalize
from facekp.data import REPO_ROOT
from facekp.machine import machine
from handler.inference import choose_precision, int8_missing, int8_model, model_runner, view_answer
from handler.processing import decode_image, to_model_input
from loadtest import report
from loadtest.cpu import log, wait_for_quiet
from loadtest.images import build_mix, describe
from loadtest.loadgen import run_load
from loadtest.torchserve_grid import CONFIGS, Config, served_point, shipped_config, start_service

BASELINE = "9a2cdaa"  # the four-pass model shipped 2026-11-28 (two networks, each with its mirrored pass)
BASELINE_SERVING = next(c for c in CONFIGS if c.name == "b8-d5-w2t1")  # config/model-config.yaml at that commit
SHIPPED_SERVING = shipped_config()  # config/model-config.yaml now
OUT_CSV = REPO_ROOT / "docs" / "performance" / "models.csv"
DOC = REPO_ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- models:begin (written by `make bench`) -->", "<!-- models:end -->"


@dataclass(frozen=True)
class Variant:
    name: str
    model_file: Path
    precision: str  # auto / fp32 / bf16, as the handler's setting
    card: dict  # the model card beside the file
    freeze: bool = True  # False: as handlers ran models before they froze them (commit 9a2cdaa and earlier)
    serving: Config = SHIPPED_SERVING  # the batching it is served with
    views: int | None = None  # the view setting it is served with (None: the file's forward())
    runtime: str = "torchscript"  # on a CPU: or onnx-int8, the file's int8 ONNX twins


def passes_per_face(card: dict) -> int | str:
    """Network passes per face from a model card (older cards say it through members and flip_tta)."""
    if "network_passes_per_face" in card:
        return card["network_passes_per_face"]
    if "members" in card:
        return card["members"] * (2 if card.get("config", {}).get("flip_tta") else 1)
    return "?"


def from_git(ref: str, path: str) -> bytes:
    try:
        return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=REPO_ROOT, check=True,
                              capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(f"cannot read {path} at {ref} from git ({err}); a shallow clone lacks it: "
                         "`git fetch --unshallow`, or pass --baseline-file") from err


def baseline_model(ref: str, folder: Path) -> tuple[Path, dict]:
    """The TorchScript file of model_store/ at commit ref, written into folder, and its model card."""
    out = folder / f"keypoints-{ref}.pt"
    out.write_bytes(from_git(ref, "model_store/keypoints.pt"))
    return out, json.loads(from_git(ref, "model_store/model_card.json"))


def card_beside(model_file: Path) -> dict:
    card = model_file.with_name("model_card.json")
    return json.loads(card.read_text()) if card.exists() else {}


def gflop_per_face(model: torch.nn.Module, method: str | None = None) -> float:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        (getattr(model, method) if method else model)(torch.rand(1, 1, 96, 96))
    return counter.get_total_flops() / 1e9


def faces_per_s(run, inputs: np.ndarray, batch: int, seconds: float) -> float:
    """The model alone (no decoding) on batches taken in order from inputs."""
    run(inputs[:batch])  # warm
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 4 * batch:
        start = (n // batch * batch) % (len(inputs) - batch + 1)
        run(inputs[start:start + batch])
        n += batch
    return n / (time.perf_counter() - t0)


def validation_score(run) -> float | None:
    try:
        faces = facedata.load()
    except facedata.DataError:
        return None
    _, val = facedata.split_by_person(faces)
    val = val.subset(np.flatnonzero(facedata.complete_rows(val)))
    images = val.images.astype(np.float32)[:, None] / 255
    pred = np.concatenate([run(images[i:i + 128]) for i in range(0, len(images), 128)])
    return metrics.score(denormalize(pred), val.keypoints)


def matmul_peak_gflops(dtype: torch.dtype, seconds: float = 2.0, size: int = 2048) -> float:
    """What this CPU's BLAS reaches on a large square matmul with all torch threads: a practical peak."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * size ** 3 * n / (time.perf_counter() - t0) / 1e9


def render(rows: list[dict], meta: dict) -> str:
    columns = [("variant", "model"), ("serving", "batching"), ("passes", "passes/face"), ("precision", "precision"),
               ("gflop", "GFLOP/face"), ("inproc_bs1", "in-process faces/s bs1"),
               ("inproc_bs32", "bs32"), ("gflops_bs32", "GFLOP/s at bs32"), ("score", "validation score")]
    for c in meta["concurrency"]:
        columns += [(f"c{c}_faces_s", f"{c} clients faces/s"), (f"c{c}_p50", "p50 ms"), (f"c{c}_p99", "p99 ms")]
    lines = [BEGIN, "", f"Run of {meta['date']} on {meta['machine']}; `{meta['command']}`; upload mix {meta['mix']}; "
             f"batching `{BASELINE_SERVING.name}` = {BASELINE_SERVING.describe()} (commit {BASELINE}'s), "
             f"`{SHIPPED_SERVING.name}` = {SHIPPED_SERVING.describe()} (today's); {meta['wall']}. "
             "Full data: [models.csv](performance/models.csv).", ""]
    lines += report._table(rows, columns)
    then, last = rows[0], rows[-1]
    same_way = next((r for r in rows if r is not last and r["variant"] != last["variant"]
                     and r["precision"] == last["precision"]), None)  # the baseline in the shipped's precision
    lines += ["", f"Measured matmul peak of this CPU ({meta['threads']} torch threads, 2048² matmul): "
              f"{meta['peak_fp32']:.0f} GFLOP/s float32, {meta['peak_bf16']:.0f} GFLOP/s bfloat16.", ""]
    for c in meta["concurrency"]:
        if then.get(f"c{c}_faces_s"):
            text = (f"At {c} clients `{last['variant']}` ({last['precision']}) answers "
                    f"{last[f'c{c}_faces_s'] / then[f'c{c}_faces_s']:.2f}x the faces/s of `{then['variant']}`")
            if same_way:
                text += (f", {last[f'c{c}_faces_s'] / same_way[f'c{c}_faces_s']:.2f}x those of `{same_way['variant']}` "
                         f"({same_way['precision']})")
            lines.append(text + f"; p50 {last[f'c{c}_p50'] / then[f'c{c}_p50']:.2f}x.")
    lines += ["", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=BASELINE, help="git commit whose model_store/keypoints.pt to compare")
    parser.add_argument("--baseline-file", type=Path, help="a TorchScript file instead of --baseline's")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per served point")
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per in-process measurement")
    parser.add_argument("--quiet-wait", type=float, default=120.0)
    parser.add_argument("--out", type=Path, default=OUT_CSV)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--views", default="1,2,6",
                        help="the shipped model's view settings to serve (handler views_cpu), the default one last")
    args = parser.parse_args(argv)
    default_views = SHIPPED_SERVING.views or 6
    views = sorted({int(n) for n in args.views.split(",")}, key=lambda n: (n == default_views, n))
    concurrency = [int(c) for c in args.concurrency.split(",")]
    started = time.perf_counter()
    cores = torch.get_num_threads()
    uploads = build_mix()
    inputs = np.stack([to_model_input(decode_image(u.body))[0] for u in uploads]).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory(prefix="facekp-models-") as tmp:
        if args.baseline_file:
            old, old_card, label = args.baseline_file, card_beside(args.baseline_file), args.baseline_file.name
        else:
            (old, old_card), label = baseline_model(args.baseline, Path(tmp)), args.baseline
        shipped_card = card_beside(MODEL_FILE)
        int8 = [n for n in views if not int8_missing(MODEL_FILE, n)]  # the twins train/quantized.py wrote
        shipped_runtime = SHIPPED_SERVING.runtime if default_views in int8 else "torchscript"
        variants = [Variant(f"{label} as served then", old, "fp32", old_card, freeze=False, serving=BASELINE_SERVING),
                    Variant(f"{label}, today's handler", old, "fp32", old_card),
                    Variant(f"{label}, today's handler", old, "auto", old_card),
                    Variant(f"shipped, {default_views} views", MODEL_FILE, "fp32", shipped_card, views=default_views),
                    *(Variant(f"shipped, {n} view{'s' * (n > 1)}", MODEL_FILE, "auto", shipped_card, views=n)
                      for n in views if not (n == default_views and shipped_runtime == "torchscript")),
                    *(Variant(f"shipped, {n} view{'s' * (n > 1)}", MODEL_FILE, "auto", shipped_card, views=n,
                              runtime="onnx-int8") for n in int8 if n != default_views),
                    Variant(f"shipped, {default_views} views", MODEL_FILE, "auto", shipped_card, views=default_views,
                            runtime=shipped_runtime)]  # the default, last
        for k, v in enumerate(variants, 1):
            model = torch.jit.load(str(v.model_file), map_location="cpu").eval()
            precision = choose_precision(v.precision, torch.device("cpu"))
            method = view_answer(model, v.views)
            run = model_runner(model, torch.device("cpu"), precision, v.freeze, method=method)
            if v.runtime == "onnx-int8":
                precision, run = "int8 (ONNX Runtime)", int8_model(v.model_file, torch.device("cpu"), v.views).run
            row = {"variant": v.name, "serving": v.serving.name, "gflop": round(gflop_per_face(model, method), 3),
                   "precision": precision + ("" if v.freeze else ", not frozen")}
            row["passes"] = v.views if method else passes_per_face(v.card)
            wait_for_quiet(args.quiet_wait)
            row["inproc_bs1"] = round(faces_per_s(run, inputs, 1, args.seconds), 1)
            row["inproc_bs32"] = round(faces_per_s(run, inputs, 32, args.seconds), 1)
            row["gflops_bs32"] = round(row["gflop"] * row["inproc_bs32"], 1)
            score = validation_score(run)
            row["score"] = round(score, 1) if score is not None else "no data"
            if score is not None and v.card.get("validation", {}).get("seen_in_training"):
                row["score"] = f"{score:.1f} (trained on these people)"
            log(f"[{k}/{len(variants)}] {v.name} ({precision}): {row['gflop']} GFLOP/face, in-process "
                f"{row['inproc_bs1']} faces/s at bs1, {row['inproc_bs32']} at bs32; score {row['score']}")
            serving = replace(v.serving, precision=v.precision, freeze=v.freeze, views=v.views, runtime=v.runtime)
            service = start_service(serving, Path(tmp), v.model_file, f"variant{k}")
            try:
                run_load(f"{service.inference_url}/predictions/keypoints", uploads, 16, 3.0, 1.0)  # JIT warm-up
                for c in concurrency:
                    wait_for_quiet(args.quiet_wait, [service.pid()])
                    point = served_point(service, serving, uploads, c, args.duration, args.warmup)
                    row.update({f"c{c}_faces_s": point["throughput"], f"c{c}_p50": point["p50_ms"],
                                f"c{c}_p99": point["p99_ms"], f"c{c}_errors": point["errors"]})
                    log(f"    {c:>3} clients: {point['throughput']:7.1f} faces/s  p50 {point['p50_ms']} ms  "
                        f"p99 {point['p99_ms']} ms  errors {point['errors']}")
            finally:
                service.stop()
            rows.append(row)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
            "threads": cores, "mix": describe(uploads), "concurrency": concurrency,
            "command": "python -m loadtest.models_compare " + " ".join(argv if argv is not None else sys.argv[1:]),
            "peak_fp32": matmul_peak_gflops(torch.float32), "peak_bf16": matmul_peak_gflops(torch.bfloat16)}
    meta["wall"] = f"took {(time.perf_counter() - started) / 60:.1f} min"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    report.update_doc(render(rows, meta), args.doc, BEGIN, END)
    log(f"wrote {args.out} and the models block of {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
