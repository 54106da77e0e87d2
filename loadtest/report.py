"""Benchmark output: bench.csv, bench.png and the generated block of docs/performance.md."""

from __future__ import annotations

import csv
from pathlib import Path

BEGIN, END = "<!-- bench:begin (written by `make bench`) -->", "<!-- bench:end -->"
CONCURRENCIES = (1, 4, 16, 64)
GOAL_CONCURRENCY = 16
GOAL_RATIO = 0.70
GOAL_TAIL = 4.0
"""The issue's goal: at 16 clients, served >= 70 % of the ceiling with p99 <= 4 x p50."""

FIELDS = ["kind", "stage", "config", "batch_size", "max_batch_delay_ms", "workers", "torch_threads", "frontend",
          "concurrency", "requests", "errors", "seconds", "throughput", "p50_ms", "p95_ms", "p99_ms", "ceiling",
          "ratio", "ceiling_adjacent", "ratio_adjacent", "cpu_ms_per_image", "frontend_cpu_ms_per_image",
          "worker_cpu_ms_per_image", "generator_cpu_ms_per_image", "other_cpu_ms_per_image", "generator_cpu_pct",
          "other_cpu_pct", "mean_batch", "handler_ms_per_batch", "queue_ms", "frontend_latency_ms"]


def one_process_ceilings(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["kind"] == "ceiling" and r["config"].startswith("in-process 1 process")]


def best_config(rows: list[dict]) -> dict | None:
    """Highest throughput at the goal concurrency among error-free points with p99 <= 4 x p50."""
    points = [r for r in rows if r["kind"] == "served" and r["concurrency"] == GOAL_CONCURRENCY and not r["errors"]
              and r["requests"] and r["p99_ms"] <= GOAL_TAIL * r["p50_ms"]]
    return max(points, key=lambda r: r["throughput"], default=None)


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ceilings = [r["throughput"] for r in one_process_ceilings(rows) if r["batch_size"] > 1]
    best = max(ceilings)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    served = [r for r in rows if r["kind"] == "served"]
    for name in dict.fromkeys(r["config"] for r in served):
        points = sorted((r for r in served if r["config"] == name), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in points]
        left.plot(xs, [r["throughput"] for r in points], marker="o", label=name)
        right.plot(xs, [r["p99_ms"] for r in points], marker="o", label=name)
    left.axhspan(min(ceilings), best, color="black", alpha=0.08, label="ceiling, range over the run (bs >= 8)")
    left.axhline(best, color="black", linestyle="--", label="in-process ceiling (best)")
    left.axhline(GOAL_RATIO * best, color="grey", linestyle=":", label=f"{GOAL_RATIO:.0%} of the best ceiling")
    for axis, title, unit in ((left, "throughput", "images/s"), (right, "p99 latency", "ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(CONCURRENCIES, [str(c) for c in CONCURRENCIES])
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(unit)
        axis.set_title(f"{title} vs concurrency")
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.set_ylim(bottom=0)
    left.legend(fontsize=7, loc="lower right")
    right.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for key, _ in columns) + " |")
    return lines


def _budget(best: dict, rows: list[dict], cores: int) -> list[str]:
    """Where the CPU of one served image goes at the best point, next to the in-process cost of the same work."""
    total = cores * 1000 / best["throughput"]
    parts = [("TorchServe frontend (Java: HTTP, queue, batching, logs)", best["frontend_cpu_ms_per_image"]),
             ("TorchServe workers (Python worker + handler: decode, preprocess, model, JSON)",
              best["worker_cpu_ms_per_image"]),
             ("load generator", best["generator_cpu_ms_per_image"]),
             ("other programs", best["other_cpu_ms_per_image"])]
    idle = total - sum(v for _, v in parts)
    lines = ["| where | CPU ms per served image |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in parts]
    lines += [f"| idle | {idle:.2f} |", f"| **total = {cores} cores / {best['throughput']} images/s** | "
              f"**{total:.2f}** |"]
    refs = [r for r in rows if r["kind"] == "ceiling" and r["batch_size"] == best["batch_size"]]
    for r in refs:
        lines.append(f"| reference, {r['config']} ({r['stage']}) | {r['cpu_ms_per_image']:.2f} |")
    return lines


def render(rows: list[dict], meta: dict) -> str:
    ceilings = [r for r in rows if r["kind"] == "ceiling"]
    served = [r for r in rows if r["kind"] == "served"]
    for r in served:
        r["tail"] = round(r["p99_ms"] / r["p50_ms"], 2) if r["p50_ms"] else ""
    best = best_config(rows)
    out = [BEGIN, "", f"Run of {meta['date']} on {meta['machine']}; model `{meta['model']}`; "
           f"upload mix {meta['mix']}; {meta['window']}; {meta['wall']}. "
           "Full data: [bench.csv](performance/bench.csv).", "",
           "![throughput and p99 vs concurrency](performance/bench.png)", "",
           f"**Ceiling** (decode + preprocess + model; `1 process` = torch threads {meta['threads']}, the headline "
           f"ceiling, best {meta['ceiling']:.1f} images/s; `2 processes x 1 thread` = the layout of two 1-thread "
           "workers, for reference):", ""]
    out += _table(ceilings, [("stage", "measured"), ("config", "layout"), ("throughput", "images/s"),
                             ("cpu_ms_per_image", "CPU ms/image"), ("other_cpu_pct", "other programs, % of a core")])
    out += ["", "**One request's work, in process** (wall ms per image):", ""]
    out += _table([r for r in rows if r["kind"] == "split"], [("config", "step"), ("cpu_ms_per_image", "ms/image")])
    out += ["", "**Served** (ratio = served / best ceiling of the run; adj = served / the 1-process bs32 ceiling "
            "measured just before that configuration; CPU in ms per answered image):", ""]
    out += _table(served, [("config", "config"), ("concurrency", "clients"), ("throughput", "images/s"),
                           ("ratio", "ratio"), ("ratio_adjacent", "adj"), ("p50_ms", "p50 ms"),
                           ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"), ("tail", "p99/p50"), ("errors", "errors"),
                           ("mean_batch", "mean batch"), ("handler_ms_per_batch", "handler ms/batch"),
                           ("queue_ms", "queue ms"), ("frontend_cpu_ms_per_image", "frontend CPU"),
                           ("worker_cpu_ms_per_image", "worker CPU"), ("generator_cpu_pct", "generator % core"),
                           ("other_cpu_pct", "other % core")])
    if best:
        met = best["ratio"] >= GOAL_RATIO and best["tail"] <= GOAL_TAIL
        met_adj = best["ratio_adjacent"] >= GOAL_RATIO and best["tail"] <= GOAL_TAIL
        out += ["", f"**Best at {GOAL_CONCURRENCY} clients: `{best['config']}`**: {best['throughput']} images/s = "
                f"{best['ratio']:.0%} of the best ceiling ({best['ceiling']}), {best['ratio_adjacent']:.0%} of the "
                f"ceiling measured just before it ({best['ceiling_adjacent']}); p50 {best['p50_ms']} ms, "
                f"p99 {best['p99_ms']} ms (p99/p50 {best['tail']}). Goal (>= {GOAL_RATIO:.0%} of the ceiling, "
                f"p99 <= {GOAL_TAIL:g} x p50): {'met' if met else 'NOT met'} against the best ceiling, "
                f"{'met' if met_adj else 'NOT met'} against the adjacent one.", "",
                "CPU per served image at that point:", ""]
        out += _budget(best, rows, meta["cores"])
    out += ["", END]
    return "\n".join(out)


def update_doc(block: str, doc: Path, begin: str = BEGIN, end: str = END) -> None:
    """Replace the generated block (begin ... end, which block includes), keeping the hand-written text around it."""
    text = doc.read_text() if doc.exists() else f"# Performance\n\n{begin}\n{end}\n"
    if begin not in text or end not in text:
        text = text.rstrip() + f"\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    doc.write_text(head + block + tail)
