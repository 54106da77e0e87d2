"""The served model on other runtimes: ONNX Runtime (float32, and int8 convolutions) and OpenVINO, against the
handler's TorchScript in bfloat16. Speed, and how far their answers lie from the file's own.

    pip install onnx openvino                  # study tools, not the service's
    python train/studies/runtimes.py runs/seed0/fold_0/keypoints.pt --split fold-0    # a fold's model, its people
    python train/studies/runtimes.py model_store/keypoints.pt --split validation

The file's served views (two on a CPU: the face and its mirror image) are exported to ONNX with their 15 points
(the mirrored pass un-mirrored and averaged as views_2 does); int8 quantizes the convolutions but the heatmaps'
(static, per channel, calibrated on 128 faces of people the split leaves out), which kept the answers within
0.05 px on average where quantizing all of them moved them 0.4 px. Each runtime answers the split's faces: the
score, the mean and largest distance of its answers from the TorchScript file's in float32, and the median ms a
face at batch 1 and 8 on one thread. A benchmark: run it with nothing else running.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from facekp import data as facedata
from facekp import metrics
from facekp.contract import NUM_KEYPOINTS, denormalize
from handler.inference import load_model
from train.exported import exported_networks, to_tensors

Runner = Callable[[np.ndarray], np.ndarray]
"""(N, 1, 96, 96) float32 -> (N, 15, 2) normalized."""


class TwoViews(torch.nn.Module):
    """The network's answer from the face and its mirror image, averaged: views_2's 15 points."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(torch.cat([x, x.flip(-1)]))
        direct, mirrored = out.chunk(2)
        return (0.5 * (direct + self.net.mirror(mirrored)))[:, :NUM_KEYPOINTS]


def onnx_bytes(model_file: Path) -> bytes:
    (net,), _ = exported_networks(model_file)
    buffer = io.BytesIO()
    torch.onnx.export(TwoViews(net.eval()), torch.rand(8, 1, 96, 96), buffer, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    return buffer.getvalue()


def onnxruntime_runner(model: bytes | str) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"x": batch})[0]


def int8_model(model: bytes, calibration: np.ndarray, folder: Path) -> str:
    """The ONNX model with its convolutions but the last (the heatmaps') in int8, calibrated on these faces."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": calibration[k:k + 8]} for k in range(0, len(calibration), 8)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    plain, prepared, quantized = folder / "plain.onnx", folder / "prepared.onnx", folder / "int8.onnx"
    plain.write_bytes(model)
    quant_pre_process(str(plain), str(prepared))
    convolutions = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Conv"]
    quantize_static(str(prepared), str(quantized), Faces(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                    nodes_to_exclude=convolutions[-1:])
    return str(quantized)


def openvino_runner(model_path: Path) -> Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(str(model_path), "CPU", {"INFERENCE_NUM_THREADS": 1,
                                                                "PERFORMANCE_HINT": "LATENCY"})
    return lambda batch: compiled(batch)[0]


def ms_a_face(run: Runner, images: np.ndarray, batch: int, repeats: int = 40) -> float:
    chunk = images[:batch]
    for _ in range(5):
        run(chunk)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(chunk)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / batch


def answers(run: Runner, images: np.ndarray) -> np.ndarray:
    return np.concatenate([run(images[k:k + 64]) for k in range(0, len(images), 64)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_file", type=Path, help="an exported student with its card beside it")
    parser.add_argument("--split", choices=facedata.SPLITS, default="validation", help="whose faces it answers")
    parser.add_argument("--data", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    faces = facedata.load(args.data)
    scored = faces.subset(np.flatnonzero([facedata.in_split(p, args.split) for p in faces.people]))
    others = faces.subset(np.flatnonzero([not facedata.in_split(p, args.split) for p in faces.people])[:128])
    images = to_tensors(scored)[0].numpy()
    served = load_model(args.model_file, torch.device("cpu"), views=2)
    reference = load_model(args.model_file, torch.device("cpu"), "fp32", views=2).run
    model = onnx_bytes(args.model_file)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "served.onnx").write_bytes(model)
        runners = {f"TorchScript, {served.precision} (the handler's)": served.run,
                   "TorchScript, fp32": reference,
                   "ONNX Runtime, fp32": onnxruntime_runner(model),
                   "ONNX Runtime, int8 convolutions": onnxruntime_runner(
                       int8_model(model, to_tensors(others)[0].numpy(), Path(folder))),
                   "OpenVINO, its CPU default": openvino_runner(Path(folder) / "served.onnx")}
        truth = answers(reference, images)
        print(f"{args.model_file}, two views, {len(images)} faces of {args.split}; one thread")
        print("| runtime | score | answers' distance from fp32, px: mean / largest | ms a face, batch 1 | batch 8 |")
        print("| --- | --- | --- | --- | --- |")
        for name, run in runners.items():
            out = answers(run, images)
            distance = np.linalg.norm(denormalize(out) - denormalize(truth), axis=-1)
            print(f"| {name} | {metrics.score(denormalize(out), scored.keypoints):.1f} | {distance.mean():.3f} / "
                  f"{distance.max():.2f} | {ms_a_face(run, images, 1):.2f} | {ms_a_face(run, images, 8):.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
