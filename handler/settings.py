"""The keypoint servers' settings: the `handler:` block of a model-config.yaml, with the one default of each.

TorchServe hands the block to its handlers (context.model_yaml_config); the kserve predictor reads
the same file (handler.kserve_server). A key that is absent takes the default written here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Self

import torch

from handler.processing import MAX_PIXELS


@dataclass(frozen=True)
class HandlerSettings:
    """What both keypoint models' handlers and the kserve predictor take from a `handler:` block."""

    max_pixels: int = MAX_PIXELS
    torch_threads: int = 0
    """Intra-op threads per worker; 0: torch's default (docs/performance.md)."""
    precision: str = "auto"
    """auto: bf16 where the CPU has AMX or AVX-512 BF16, else fp32 (handler.inference)."""
    freeze: bool = True
    """False: the file's graph as is (benchmarks)."""
    views_cpu: int = 2
    """Test-time views on a CPU: 1, 2 or 6 (facekp.contract.VIEW_SETTINGS). Two: the face and its mirror image;
    six would add 0.9 % on people never seen for 2.4x the machine (docs/performance.md has each one's score
    and cost)."""
    views_gpu: int = 6
    """The same on a GPU, where more views cost little. (The confidences are calibrated at two views: six
    views' wider spreads make them somewhat lower, train/calibrate.py.)"""
    runtime: str = "onnx-int8"
    """On a CPU: onnx-int8 (ONNX Runtime on the file's views as int8 ONNX beside it, written by train/quantized.py;
    the TorchScript file, with a warning, where they are missing) or torchscript (the file, frozen, in
    `precision`): docs/performance.md. A GPU runs the TorchScript file."""

    def views_on(self, device: torch.device) -> int:
        return self.views_gpu if device.type == "cuda" else self.views_cpu

    @classmethod
    def from_block(cls, block: Mapping[str, Any] | None) -> Self:
        """The settings a `handler:` block gives, each as its default's type; keys these settings do not
        know are left to others."""
        block = block or {}
        return cls(**{f.name: type(f.default)(block[f.name]) for f in fields(cls) if f.name in block})
