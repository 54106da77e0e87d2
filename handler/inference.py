"""Running the TorchScript model on a batch, in the precision and memory layout the machine does best.

bfloat16 (torch.autocast) where the CPU has the instructions for it (AMX or AVX-512 BF16): on
a 2-core Xeon with AMX it runs the shipped model 2.3x faster in-process with the same validation
score (docs/performance.md). Elsewhere, on other CPUs and on GPUs, float32. On CUDA the weights and
inputs are channels-last: the NCHW bilinear upsampling kernel of the heatmap head took 84 % of an
H200's time on the shipped file (3.2 k faces/s), channels-last takes the NHWC kernel (25.6 k,
answers within 0.004 px). Every server loads the model through load_model or prepare_model, which pick the
path once at start; the servers log it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facekp.contract import NUM_KEYPOINTS, VIEW_SETTINGS, view_method

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
RUNTIMES = ("torchscript", "onnx-int8")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is not there."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_precision(setting: str, device: torch.device, flags: set[str] | None = None) -> str:
    """'bf16' or 'fp32' for a handler setting of auto / fp32 / bf16 on this device."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {setting!r}")
    if setting != "auto":
        return setting
    if device.type != "cpu":
        return "fp32"
    flags = cpu_flags() if flags is None else flags
    return "bf16" if any(flag in flags for flag in BF16_CPU_FLAGS) else "fp32"


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager:
    """bfloat16 autocast for 'bf16', nothing for 'fp32': the one place both serving and training switch it."""
    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last_on(device: torch.device) -> bool:
    """Whether the model runs channels-last on this device: on CUDA (see the module's docstring)."""
    return device.type == "cuda"


def for_inference(model: torch.nn.Module, device: torch.device, precision: str,
                  channels_last: bool | None = None, methods: tuple[str, ...] = ()) -> torch.nn.Module:
    """The TorchScript model frozen for inference: BatchNorm folded into the convolutions, weights constant.

    In float32 on a CPU, torch.jit.optimize_for_inference also hands the convolutions to oneDNN with
    pre-packed weights (1.5x on this project's model, the same numbers); under bfloat16 autocast that
    path would silently run float32, so bf16 gets the frozen graph only (1.3x over the unfrozen one).
    The file on disk stays a plain TorchScript file; this happens once, at load. channels_last (None:
    channels_last_on(device)) converts the weights first, so the frozen constants keep that layout.
    methods: the file's other methods to keep and optimize besides forward (a view setting's).
    """
    if not isinstance(model, torch.jit.ScriptModule):
        return model
    if channels_last is None:
        channels_last = channels_last_on(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    frozen = torch.jit.freeze(model.eval(), preserved_attrs=list(methods))
    if precision == "fp32" and device.type == "cpu":
        return torch.jit.optimize_for_inference(frozen, other_methods=list(methods))
    return frozen


def has_method(model: torch.nn.Module, name: str) -> bool:
    """Whether a TorchScript file has this method (older files have forward() alone)."""
    return isinstance(model, torch.jit.ScriptModule) and hasattr(model, name)


def view_answer(model: torch.nn.Module, views: int | None) -> str | None:
    """The method of the file that answers with `views` views (None: the file's forward(), its own default).
    ValueError, saying which the file offers, when it has view methods but not this one."""
    if views is None:
        return None
    offered = [n for n in VIEW_SETTINGS if has_method(model, view_method(n))]
    if not offered:  # a file exported before it had view settings: forward() is all it offers
        return None
    if views not in offered:
        raise ValueError(f"views must be one of {offered} for this model file, got {views}")
    return view_method(views)


def model_runner(model: torch.nn.Module, device: torch.device, precision: str, freeze: bool = True,
                 channels_last: bool | None = None, method: str | None = None,
                 all_points: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """batch (N, 1, 96, 96) float32 -> (N, 15, 2) float32, on device, in precision (model frozen first);
    channels-last weights and inputs where channels_last says so (None: channels_last_on(device)). method: a
    view setting's (view_answer) instead of forward(), its 15 keypoints, or with all_points all it answers:
    (N, points, 3), each point's x, y and confidence."""
    channels_last = channels_last_on(device) if channels_last is None else channels_last
    if freeze:
        model = for_inference(model, device, precision, channels_last, (method,) if method else ())
    elif channels_last:
        model = model.to(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.preserve_format
    answer = getattr(model, method) if method else model

    @torch.inference_mode()
    def run(batch: np.ndarray) -> np.ndarray:
        with autocast(precision, device.type):
            out = answer(torch.from_numpy(batch).to(device, memory_format=layout))
        if method and not all_points:
            out = out[:, :NUM_KEYPOINTS, :2]
        return out.float().cpu().numpy()

    return run


@dataclass(frozen=True)
class ServedModel:
    """The keypoint model ready to answer, and how it runs (for the servers' logs)."""

    run: Callable[[np.ndarray], np.ndarray]
    """batch (N, 1, 96, 96) float32 -> (N, 15, 2) float32 normalized keypoints."""
    device: torch.device
    precision: str
    frozen: bool
    views: int | None = None
    """The view setting it answers with; None: the file's forward() (a file without view settings)."""
    answer: Callable[[np.ndarray], np.ndarray] | None = None
    """batch -> (N, points, 3): every point the file answers (the 15, then the 68 where it has them), each with
    its confidence; None for a file without view settings."""
    glance: Callable[[np.ndarray], np.ndarray] | None = None
    """The same as answer from the face as it is alone (one view), where views is more: for the photo path's
    framing passes, whose points only place the square of the pass that answers."""
    runtime: str = "torchscript"

    @property
    def every_point(self) -> Callable[[np.ndarray], np.ndarray]:
        """answer where the file has view settings, else run: what the handlers answer requests with."""
        return self.answer or self.run

    @property
    def framing(self) -> Callable[[np.ndarray], np.ndarray]:
        """glance where there is one, else every_point."""
        return self.glance or self.every_point

    def describe(self) -> str:
        views = "the file's own views" if self.views is None else f"{self.views} view{'s' * (self.views > 1)}"
        if self.runtime != "torchscript":
            return f"{views}, {self.runtime} on ONNX Runtime's CPU"
        return (f"{views}, {self.precision}{', frozen' if self.frozen else ''}"
                f"{', channels-last' if channels_last_on(self.device) else ''} on {self.device}")


def int8_file(model_file: Path, views: int) -> Path:
    """Where a model file's view setting lies as int8 ONNX (train/quantized.py writes it): beside the file."""
    return model_file.with_name(f"{model_file.stem}.views{views}.int8.onnx")


def quiet_ort_options(threads: int):
    """ONNX Runtime's options for a worker that shares its cores: `threads` intra-op threads that do not spin.

    onnxruntime's pool threads spin after each run by default, holding a core that the keypoint model's threads
    then wait for: a photo took 32 ms in-process at 2 threads against 17 ms at 1 (2-core EPYC,
    loadtest/photo_latency.py). Without spinning: 16.6 ms."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def onnx_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """batch -> the ONNX file's answer, on ONNX Runtime's CPU with this many threads, which do not spin between
    runs (quiet_ort_options)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), quiet_ort_options(threads), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"x": np.ascontiguousarray(batch, dtype=np.float32)})[0]


def int8_missing(model_file: Path, views: int) -> list[Path]:
    """The int8 files runtime onnx-int8 needs for this view setting (and one view, the glance) that are not there."""
    needed = [int8_file(model_file, n) for n in sorted({views, min(VIEW_SETTINGS)})]
    return [path for path in needed if not path.is_file()]


def int8_model(model_file: Path, device: torch.device, views: int) -> ServedModel:
    """The file's view setting (and its one view, for the glance) on ONNX Runtime in int8, with torch's threads."""
    answer = onnx_runner(int8_file(model_file, views), torch.get_num_threads())
    glance = onnx_runner(int8_file(model_file, 1), torch.get_num_threads()) if views != 1 else None

    def run(batch: np.ndarray) -> np.ndarray:
        return answer(batch)[:, :NUM_KEYPOINTS, :2]

    return ServedModel(run, device, "int8", False, views, answer, glance, runtime="onnx-int8")


def prepare_model(model: torch.nn.Module, device: torch.device, precision: str = "auto",
                  freeze: bool = True, views: int | None = None, model_file: Path | None = None,
                  runtime: str = "torchscript") -> ServedModel:
    """A loaded TorchScript model ready to serve: the precision the setting (auto / fp32 / bf16) picks on this
    device (choose_precision), frozen unless freeze is False (benchmarks of the file's graph as is), answering
    with `views` views (None: the file's forward()). With runtime onnx-int8 on a CPU, the int8 ONNX files beside
    model_file answer instead (int8_model). TorchServe's handlers call it on the model BaseHandler loaded for
    their worker's device."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "onnx-int8" and device.type == "cpu":
        if model_file is None or views is None:
            raise ValueError("runtime onnx-int8 serves a view setting of a model file: give both")
        missing = int8_missing(model_file, views)
        if not missing:
            return int8_model(model_file, device, views)
        logger.warning("runtime onnx-int8: %s not found beside the model (python train/quantized.py %s writes "
                       "them); serving the TorchScript file instead", ", ".join(p.name for p in missing), model_file)
    chosen = choose_precision(precision, device)
    method = view_answer(model, views)
    if method is None:
        return ServedModel(model_runner(model, device, chosen, freeze), device, chosen, freeze)
    answer = model_runner(model, device, chosen, freeze, method=method, all_points=True)  # frozen once
    one_view = view_method(min(VIEW_SETTINGS))
    glance = (model_runner(model, device, chosen, freeze, method=one_view, all_points=True)
              if has_method(model, one_view) and one_view != method else None)

    def run(batch: np.ndarray) -> np.ndarray:
        return answer(batch)[:, :NUM_KEYPOINTS, :2]

    return ServedModel(run, device, chosen, freeze, views, answer, glance)


def load_model(model_file: Path, device: torch.device | None = None, precision: str = "auto",
               freeze: bool = True, views: int | None = None, runtime: str = "torchscript") -> ServedModel:
    """The TorchScript file ready to serve (prepare_model) on `device`; None: the GPU where there is one."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = torch.jit.load(str(model_file), map_location=device).eval()
    return prepare_model(model, device, precision, freeze, views, Path(model_file), runtime)
