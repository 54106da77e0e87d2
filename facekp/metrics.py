"""The course's score, per-keypoint pixel errors, the 68 points' NME, and how well a confidence ranks errors."""

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


OUTER_EYE_CORNERS = (36, 45)  # of the 68 iBUG points: the NME's inter-ocular distance
CLOSE = 0.05  # of the inter-ocular distance: a point's confidence is the chance it lies this close to its label


def inter_ocular(points68: np.ndarray) -> np.ndarray:
    """(N, 68, 2) -> each face's distance between its outer eye corners, (N,)."""
    return np.linalg.norm(points68[:, OUTER_EYE_CORNERS[1]] - points68[:, OUTER_EYE_CORNERS[0]], axis=-1)


def relative_errors(pred: np.ndarray, true: np.ndarray, iod: np.ndarray) -> np.ndarray:
    """(N, P) point errors over each face's inter-ocular distance; NaN where a label is missing."""
    return np.linalg.norm(np.asarray(pred, np.float64) - true, axis=-1) / iod[:, None]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties are rare among float confidences and errors)."""
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def confidence_report(confidence: np.ndarray, errors: np.ndarray, close: float = CLOSE) -> dict:
    """How well a confidence ranks relative errors (pooled over faces and points, unlabelled ones left out): the
    NME, Spearman's rank correlation, the least and most confident tenths' mean error, and the reliability table
    (predicted against the observed share within `close`, by tenth of confidence)."""
    known = np.isfinite(errors)
    c, e = confidence[known], errors[known]
    order = np.argsort(c)
    tenth = len(order) // 10
    return {"points": int(len(c)), "nme": float(e.mean()), "spearman_confidence_error": spearman(c, e),
            "least_confident_tenth_error": float(e[order[:tenth]].mean()),
            "most_confident_tenth_error": float(e[order[-tenth:]].mean()),
            "reliability": [{"predicted": float(c[b].mean()), "observed": float((e[b] < close).mean())}
                            for b in np.array_split(order, 10)]}


def describe_confidence(part: dict) -> str:
    """A line of a confidence_report, as the clients print it."""
    least, most = part["least_confident_tenth_error"], part["most_confident_tenth_error"]
    return (f"NME {part['nme']:.2%}; Spearman(confidence, error) {part['spearman_confidence_error']:+.3f}; least "
            f"confident tenth's mean error {least:.2%}, most confident's {most:.2%} (x{least / most:.2f})")
