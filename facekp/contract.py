"""The model's contract: input size, keypoint order and coordinate normalization.

Training, the handler, the evaluation client and the tests all import these names, so the
contract is written down exactly once.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 96
"""Model input is (1, IMAGE_SIZE, IMAGE_SIZE) grayscale in [0, 1]."""

HALF = IMAGE_SIZE / 2
"""Normalized coordinate = (pixel - HALF) / HALF."""

KEYPOINT_NAMES: tuple[str, ...] = (
    "left_eye_center",
    "right_eye_center",
    "left_eye_inner_corner",
    "left_eye_outer_corner",
    "right_eye_inner_corner",
    "right_eye_outer_corner",
    "left_eyebrow_inner_end",
    "left_eyebrow_outer_end",
    "right_eyebrow_inner_end",
    "right_eyebrow_outer_end",
    "nose_tip",
    "mouth_left_corner",
    "mouth_right_corner",
    "mouth_center_top_lip",
    "mouth_center_bottom_lip",
)
"""Kaggle order. "left" is the subject's left, which is on the image's right."""

NUM_KEYPOINTS = len(KEYPOINT_NAMES)
OUTER_EYES = (KEYPOINT_NAMES.index("left_eye_outer_corner"), KEYPOINT_NAMES.index("right_eye_outer_corner"))
"""The outer eye corners among the 15: their distance is a face's size in the NME (the 300-W convention)."""


def _ibug68_names() -> tuple[str, ...]:
    """The 68 iBUG 300-W points in their order; "left" and "right" are the subject's, as above (iBUG numbers
    from the image's left: its first brow and eye, points 17-21 and 36-41, are the subject's right)."""
    parts = [("jaw", 17), ("right_eyebrow", 5), ("left_eyebrow", 5), ("nose_bridge", 4), ("nose_lower", 5),
             ("right_eye", 6), ("left_eye", 6), ("mouth_outer", 12), ("mouth_inner", 8)]
    return tuple(f"{part}_{k}" for part, count in parts for k in range(1, count + 1))


IBUG68_NAMES = _ibug68_names()
"""Names of the 68 iBUG 300-W points, in iBUG order (the data set's keypoints68, the model's points 15-82)."""

IBUG68_OF_KEYPOINT = ((42, 43, 44, 45, 46, 47), (36, 37, 38, 39, 40, 41), (42,), (45,), (39,), (36,), (22,), (26,),
                      (21,), (17,), (30,), (54,), (48,), (51,), (57,))
"""The iBUG points whose mean is each of the 15 named keypoints: how the data set made its 15 from its 68
(../shared/data/facial_keypoints/build.py), and how a 68-point answer (dlib's) gives the 15."""


def keypoints_from_68(points68: np.ndarray) -> np.ndarray:
    """(..., 68, 2) iBUG points -> (..., 15, 2) named keypoints, as the data set derived its labels."""
    return np.stack([points68[..., list(ibug), :].mean(-2) for ibug in IBUG68_OF_KEYPOINT], axis=-2)

MEAN_LAYOUT = np.array([
    [64.72, 38.52], [30.94, 38.81], [58.06, 38.85], [71.03, 38.17], [37.48, 39.06], [24.62, 38.51], [57.45, 27.51],
    [78.06, 29.55], [37.84, 27.72], [16.87, 30.05], [48.76, 58.91], [62.01, 76.09], [34.66, 76.34], [48.72, 72.08],
    [48.91, 83.20],
], dtype=np.float64)
"""Mean pixel position of each keypoint over the data set's 3601 crops: the framing a crop must have.
The photo path frames every face it finds like this before the model sees it (handler/faces.py)."""


def _mirror_permutation(names: tuple[str, ...]) -> tuple[int, ...]:
    """Index of each keypoint's mirror image: *left* <-> *right*, midline points stay."""
    swap = {"left": "right", "right": "left"}
    index = {name: i for i, name in enumerate(names)}
    return tuple(
        index["_".join(swap.get(word, word) for word in name.split("_"))] for name in names
    )


FLIP_PERMUTATION: tuple[int, ...] = _mirror_permutation(KEYPOINT_NAMES)
"""After a horizontal flip, keypoint i of the flipped face is keypoint FLIP_PERMUTATION[i]."""

MIRROR_X_SHIFT = -1.0 / HALF
"""A flip sends pixel x to (IMAGE_SIZE - 1 - x): normalized x becomes -x + MIRROR_X_SHIFT."""

VIEW_SETTINGS = (1, 2, 6)
"""The test-time views a served file offers besides its forward(): the face as it is; with its mirror image;
and moved a few pixels down-right and up-left, each mirrored. Each is a method of the TorchScript file
(view_method) answering (N, points, 3): every point the network predicts, in normalized (x, y), and its
uncertainty in normalized units."""


def view_method(views: int) -> str:
    """The TorchScript method of a served file that answers with this many views."""
    return f"views_{views}"


def normalize(pixels: np.ndarray) -> np.ndarray:
    """Pixel coordinates in the 96x96 frame -> the model's normalized coordinates."""
    return (np.asarray(pixels, dtype=np.float32) - HALF) / HALF


def denormalize(normalized: np.ndarray) -> np.ndarray:
    """The model's normalized coordinates -> pixel coordinates in the 96x96 frame."""
    return np.asarray(normalized, dtype=np.float32) * HALF + HALF


def rescale_pixels(points: np.ndarray, scale: float | np.ndarray, offset: float | np.ndarray = 0.0) -> np.ndarray:
    """Pixel coordinates in one raster -> in another, where each pixel of the first spans `scale` pixels
    (a scalar, or per axis) and its pixel 0 starts at `offset`.

    The pixel-centre convention of PIL's resizing and the data set: pixel i covers [i, i + 1) and is
    at its centre i + 0.5, so x -> (x + 0.5) * scale - 0.5 + offset. The inverse is
    rescale_pixels(y - offset, 1 / scale). Every move of a keypoint between the 96x96 frame, a crop
    of an image, a resized copy and the image as sent goes through here.
    """
    return (np.asarray(points, dtype=np.float64) + 0.5) * scale - 0.5 + offset
