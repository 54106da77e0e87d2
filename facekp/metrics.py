"""The course's score and per-keypoint pixel errors."""

from __future__ import annotations

import numpy as np

from facekp.contract import FLIP_PERMUTATION, HALF, KEYPOINT_NAMES


def per_image_mse(pred_px: np.ndarray, true_px: np.ndarray) -> np.ndarray:
    """Each image's mean squared error over its 30 normalized numbers; shape (N,)."""
    diff = (np.asarray(pred_px, np.float64) - np.asarray(true_px, np.float64)) / HALF
    return (diff.reshape(len(diff), -1) ** 2).mean(axis=1)


def score(pred_px: np.ndarray, true_px: np.ndarray) -> float:
    """Score = 1 / (2 * MSE), MSE the mean over images of each image's MSE (normalized units)."""
    return float(1.0 / (2.0 * per_image_mse(pred_px, true_px).mean()))


def rmse_px(pred_px: np.ndarray, true_px: np.ndarray) -> float:
    """Root mean squared error per coordinate, in 96x96 pixels (score = 1152 / rmse_px**2)."""
    diff = np.asarray(pred_px, np.float64) - np.asarray(true_px, np.float64)
    return float(np.sqrt((diff**2).mean()))


def rmse_px_by_name(pred_px: np.ndarray, true_px: np.ndarray) -> dict[str, float]:
    """RMSE per keypoint in pixels, keyed by keypoint name, for reports and model cards."""
    return dict(zip(KEYPOINT_NAMES, rmse_px_per_keypoint(pred_px, true_px).round(3).tolist(), strict=True))


def rmse_px_per_keypoint(pred_px: np.ndarray, true_px: np.ndarray) -> np.ndarray:
    """RMSE per coordinate for each keypoint, in pixels; shape (15,)."""
    diff = np.asarray(pred_px, np.float64) - np.asarray(true_px, np.float64)
    return np.sqrt((diff**2).mean(axis=(0, 2)))


def crossed_labels(true_px: np.ndarray) -> np.ndarray:
    """Faces whose label puts a subject's-left point at or left of its right counterpart; shape (N,) bool.

    No face looks like that, so such a label is a mistake (the data set has one, its SOURCE.md's corrupt row).
    It stays in every score; train/cv.py also reports the pooled score without it, to say what it costs.
    """
    true_px = np.asarray(true_px)
    pairs = [(i, FLIP_PERMUTATION[i]) for i, name in enumerate(KEYPOINT_NAMES) if "left" in name]
    return np.any([true_px[:, left, 0] <= true_px[:, right, 0] for left, right in pairs], axis=0)
