"""The course's score and per-keypoint pixel errors."""

from __future__ import annotations

import numpy as np

from facekp.contract import HALF, KEYPOINT_NAMES


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
