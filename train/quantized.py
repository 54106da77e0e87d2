"""The served views of a model file as ONNX with int8 convolutions, for ONNX Runtime on a CPU (`runtime:
onnx-int8` in a model-config's handler block).

    python train/quantized.py model_store/keypoints.pt      # -> model_store/keypoints.views1.int8.onnx, views2
    python train/quantized.py runs/seed0/fold_0/keypoints.pt --check fold-0

Each view setting a CPU serves (one and two views) is exported from the file's own weights and calibration as
it answers: every point with its confidence, (N, points, 3). Its convolutions but the heatmaps' run in int8
(static, per channel; quantizing the heatmaps' too moved the answers 0.4 px), their ranges calibrated on faces
of the people the file trained on: so this runs where the data set is, beside training, and the files it
writes are shipped with the model. On fold 0's model: answers 0.03 px from float32's on average, score 818.8
against 819.3, and half the time a face at batch 1 on one EPYC thread (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from facekp import data as facedata
from facekp import metrics
from facekp.contract import NUM_KEYPOINTS, denormalize, view_method
from handler.inference import int8_file
from train.exported import CARD_FILE, card_beside, exported_networks, to_tensors
from train.model import ServingModel

SERVED_ON_A_CPU = (1, 2)
"""The view settings a CPU may serve (handler.settings: views_cpu): each gets its own file."""
CALIBRATION_FACES = 256


class ViewSetting(torch.nn.Module):
    """One view method of a ServingModel as a module of its own (ONNX exports a module's forward)."""

    def __init__(self, serving: ServingModel, views: int):
        super().__init__()
        self.serving, self.method = serving, view_method(views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.serving, self.method)(x)


def serving_model(model_file: Path) -> ServingModel:
    """The file's ServingModel as a module again: its network rebuilt from the weights, its calibration loaded."""
    found = exported_networks(model_file)
    if found is None:
        raise FileNotFoundError(f"{model_file} has no model card beside it: its architecture is unknown")
    nets, flip = found
    serving = ServingModel(nets, flip).eval()
    traced = torch.jit.load(str(model_file), map_location="cpu").state_dict()
    for name in ("usual_spread", "error_prior", "curve_a", "curve_b"):
        getattr(serving, name).copy_(traced[name])
    return serving


def calibration_faces(model_file: Path, data: str | None = None) -> np.ndarray:
    """(N, 1, 96, 96) faces of the people the file trained on: the ranges int8 must hold are theirs."""
    config = json.loads((card_beside(model_file) or model_file.parent / CARD_FILE).read_text())["config"]
    faces = facedata.load(data or config.get("data") or None)
    if not config.get("all_people", True):
        faces, _ = facedata.split_by_person(faces, config.get("fold", -1), config.get("folds", 5))
    return sample(to_tensors(faces)[0].numpy())


def sample(images: np.ndarray) -> np.ndarray:
    """CALIBRATION_FACES of the images, the same ones every time."""
    picked = np.random.default_rng(0).choice(len(images), min(CALIBRATION_FACES, len(images)), replace=False)
    return images[np.sort(picked)]


def write_int8_files(model_file: Path, calibration: np.ndarray) -> list[Path]:
    """Every view setting a CPU serves, beside the file (handler.inference.int8_file)."""
    return [quantize(model_file, calibration, views, int8_file(model_file, views)) for views in SERVED_ON_A_CPU]


def quantize(model_file: Path, calibration: np.ndarray, views: int, out: Path) -> Path:
    """Export one view setting of the file and write it with int8 convolutions (but the heatmaps') to out."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": calibration[k:k + 16]} for k in range(0, len(calibration), 16)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as folder:
        plain, prepared = Path(folder) / "plain.onnx", Path(folder) / "prepared.onnx"
        torch.onnx.export(ViewSetting(serving_model(model_file), views), torch.rand(4, 1, 96, 96), str(plain),
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                          opset_version=17, dynamo=False)
        quant_pre_process(str(plain), str(prepared))
        convolutions = [node.name for node in onnx.load(str(prepared)).graph.node if node.op_type == "Conv"]
        quantize_static(str(prepared), str(out), Faces(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                        nodes_to_exclude=convolutions[-1:])
    return out


def check(model_file: Path, split: str, data: str | None = None) -> None:
    """Each int8 file's answers against the TorchScript file's (float32) on the split's faces: score, distance."""
    import onnxruntime as ort

    faces = facedata.load(data)
    scored = faces.subset(np.flatnonzero([facedata.in_split(p, split) for p in faces.people]))
    images = to_tensors(scored)[0]
    file = torch.jit.load(str(model_file), map_location="cpu").eval()
    for views in SERVED_ON_A_CPU:
        session = ort.InferenceSession(str(int8_file(model_file, views)), providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            exact = torch.cat([getattr(file, view_method(views))(images[k:k + 256])
                               for k in range(0, len(images), 256)]).numpy()
        int8 = np.concatenate([session.run(None, {"x": images[k:k + 256].numpy()})[0]
                               for k in range(0, len(images), 256)])
        distance = np.linalg.norm(denormalize(int8[..., :2]) - denormalize(exact[..., :2]), axis=-1)
        exact_score = metrics.score(denormalize(exact[:, :NUM_KEYPOINTS, :2]), scored.keypoints)
        int8_score = metrics.score(denormalize(int8[:, :NUM_KEYPOINTS, :2]), scored.keypoints)
        print(f"{views} view(s), {len(images)} faces of {split}: score {exact_score:.1f} float32, {int8_score:.1f} "
              f"int8; points "
              f"{distance.mean():.3f} px apart on average, {distance.max():.2f} at most; confidence "
              f"{np.abs(int8[..., 2] - exact[..., 2]).mean():.4f} apart on average")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_file", type=Path)
    parser.add_argument("--data", default=None, help="the data set (default: the card's, or ../shared)")
    parser.add_argument("--check", choices=facedata.SPLITS, default=None,
                        help="then compare the int8 files' answers with the file's on these people")
    args = parser.parse_args(argv)
    try:
        for path in write_int8_files(args.model_file, calibration_faces(args.model_file, args.data)):
            print(f"wrote {path}")
        if args.check:
            check(args.model_file, args.check, args.data)
    except (facedata.DataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
