"""dlib's HOG face detector and its 68-point shape predictor, scored on the same frames and scenes as the service.

dlib is the anchor most users know for the 68 points, so the photo path's figures come with dlib's, measured by
the same code in the same run:

    pip install dlib-bin face-recognition-models     # not a dependency of the service: a benchmark only
    python -m facekp.evaluate --model dlib --split fold-0 --points 68

The predictor's weights come from the face-recognition-models wheel (iBUG 300-W's licence: non-commercial).
Images are decoded from the bytes the service would be sent, on one thread (dlib's HOG detector has no
other), upsampled once as face_recognition does, so faces from about 40 px wide are found. The 15 named
keypoints are derived from the 68 as the data set derived its labels (facekp.contract.keypoints_from_68).
"""

from __future__ import annotations

import importlib.util
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facekp.contract import keypoints_from_68
from facekp.photos import Scene, SceneScore, jpeg_bytes

INSTALL = "pip install dlib-bin face-recognition-models"
UPSAMPLE = 1  # face_recognition's default: the image doubled once before the HOG detector runs


class DlibMissing(RuntimeError):
    """dlib or the predictor's weights are not installed."""


def predictor_file() -> Path:
    """shape_predictor_68_face_landmarks.dat from face-recognition-models, found without importing the package
    (its __init__ needs setuptools' pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DlibMissing(f"dlib's 68-point predictor is not installed: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise DlibMissing(f"{path} is missing: {INSTALL}")
    return path


class DlibLandmarks:
    """One detector and one shape predictor, answering every face of an image with its 68 points (pixels)."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError as err:
            raise DlibMissing(f"dlib is not installed: {INSTALL}") from err
        self.detector = dlib.get_frontal_face_detector()
        self.predictor = dlib.shape_predictor(str(predictor_file()))

    def faces(self, image: Image.Image) -> list[np.ndarray]:
        gray = np.asarray(image.convert("L"))
        return [np.array([[p.x, p.y] for p in self.predictor(gray, box).parts()], dtype=np.float64)
                for box in self.detector(gray, UPSAMPLE)]

    def score(self, scenes: list[Scene], points: int = 15) -> tuple[SceneScore, np.ndarray, list[str]]:
        """photos.score_over_http's answer for dlib: the score, each image's milliseconds (decoding included),
        and no errors."""
        score, latencies = SceneScore(), []
        for scene in scenes:
            started = time.perf_counter()
            found = self.faces(Image.open(io.BytesIO(scene.path_bytes or jpeg_bytes(scene.image))))
            latencies.append((time.perf_counter() - started) * 1000)
            score.add(scene, found if points == 68 else [keypoints_from_68(face) for face in found])
        return score, np.array(latencies), []
