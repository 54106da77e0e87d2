"""CPU accounting on a shared machine: who used the cores during a measurement, and waiting for quiet."""

from __future__ import annotations

import time

import psutil


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal  # guest time is already inside user


def tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds of this process plus the given processes and all their descendants."""
    total = time.process_time()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            total += sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])
        except psutil.Error:
            pass
    return total


QUIET_LIMIT_PCT = 15.0
"""Before each measurement, wait while other programs use more than this share of one core."""


def wait_for_quiet(max_wait: float, ours: list[int] | None = None, limit_pct: float = QUIET_LIMIT_PCT) -> float:
    """Wait until other programs use under limit_pct of a core (1 s samples), at most max_wait seconds.

    The machine is shared: a training or an evaluation started beside the benchmark would be
    measured as the server's slowness. Returns the last sample (% of one core).
    """
    deadline = time.monotonic() + max_wait
    warned = False
    while True:
        busy0, own0 = busy_cpu_s(), tree_cpu_s(ours or [])
        time.sleep(1.0)
        other = 100 * max(0.0, busy_cpu_s() - busy0 - (tree_cpu_s(ours or []) - own0))
        if other < limit_pct or time.monotonic() > deadline:
            if other >= limit_pct:
                log(f"    warning: other programs still use {other:.0f} % of a core; measuring anyway")
            return other
        if not warned:
            log(f"    other programs use {other:.0f} % of a core; waiting up to {max_wait:.0f} s for quiet")
            warned = True


class CpuSampler:
    """CPU seconds of a TorchServe frontend, its workers, this process and the whole machine between marks."""

    def __init__(self, frontend_pid: int):
        self.frontend = psutil.Process(frontend_pid)
        self.marks: dict[str, dict[str, float]] = {}

    def mark(self, event: str) -> None:
        workers = self.frontend.children(recursive=True)
        self.marks[event] = {"frontend": sum(self.frontend.cpu_times()[:2]),
                             "workers": sum(sum(w.cpu_times()[:2]) for w in workers if w.is_running()),
                             "self": time.process_time(), "busy": busy_cpu_s()}

    def delta(self) -> dict[str, float]:
        """CPU seconds between the 'start' and 'end' marks, per part, plus 'other' (everything else)."""
        d = {k: self.marks["end"][k] - self.marks["start"][k] for k in self.marks["start"]}
        d["other"] = max(0.0, d["busy"] - d["frontend"] - d["workers"] - d["self"])
        return d
