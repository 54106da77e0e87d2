"""loadtest.gpu_bench, the GPU benchmark, where there is no GPU: it says so and exits 0, and every part of it
runs once, tiny, on the CPU (--check-on-cpu), so that a lent GPU's few minutes go to measuring."""

from __future__ import annotations

import os
import subprocess
import sys

from facekp.data import REPO_ROOT


def bench(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loadtest.gpu_bench", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **env})


def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    result = bench(CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no CUDA device") and len(result.stdout.strip().splitlines()) == 1


def test_every_part_runs_on_the_cpu(tmp_path, needs_data):
    result = bench("--check-on-cpu", "--out", str(tmp_path), CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tables = (tmp_path / "gpu_bench.md").read_text()
    for table in ("### model", "### worker", "### photo", "### score", "### training"):
        assert table in tables, tables
    skipped = [line for line in result.stdout.splitlines() if "not measured" in line]
    assert all("fp16" in line for line in skipped), skipped  # half-precision convolutions may lack a CPU kernel
    served = next(line for line in tables.splitlines() if line.startswith("| served: frozen"))
    deviation = float(served.split("|")[3])
    assert deviation < 0.01, served  # as the handlers serve it on this device (the CPU's layout here)
