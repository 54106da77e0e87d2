"""What ran a measurement: training cards and benchmark reports record it, since 2-core CPUs differ 1.5-2x in speed."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def machine() -> str:
    """'2 CPU cores (AMD EPYC ...), no GPU, torch 2.13.0': the CPU model, its cores and any GPU."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    return f"{os.cpu_count()} CPU cores ({model}), {gpu}, torch {torch.__version__}"
