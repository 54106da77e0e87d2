"""The One Euro filter (Casiez, Roussel and Vogel, CHI 2012), for keypoints that follow a face over video frames.

A first-order low-pass filter whose cutoff rises with the signal's speed: at rest it smooths hard (little
jitter), in motion it lets the signal through (little lag). Here the cutoff also falls with each point's
confidence, so a point the model is unsure of is smoothed more, and the speed is measured in the face's own
size (outer-eye distances per second), so one setting fits a face of any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneEuroSettings:
    """The filter's three parameters (the paper's names) and the confidence floor."""

    min_cutoff: float = 1.0
    """Hz: the cutoff of a still point of full confidence; lower smooths more."""
    beta: float = 400.0
    """Hz per (outer-eye distance per second): how fast the cutoff rises with the point's speed; higher lags less.
    At 400 a face in motion is followed as answered (lag under 0.3 ms) and one at rest is still steadied (jitter
    halved); 20 lagged a gliding face 3.9 ms and raised its error 6 % (docs/video.md)."""
    d_cutoff: float = 1.0
    """Hz: the cutoff of the speed estimate itself."""
    min_confidence: float = 0.1
    """A point's confidence counts at least this much: one of confidence 0 is still followed, slowly."""


def smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    """The exponential smoothing factor alpha of a low-pass filter with this cutoff (Hz), sampled every dt seconds."""
    tau = 1.0 / (2 * math.pi * np.asarray(cutoff, dtype=np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Filters one face's points, (P, 2), frame after frame; each point gets its own cutoff."""

    def __init__(self, settings: OneEuroSettings | None = None):
        self.settings = settings or OneEuroSettings()
        self.value: np.ndarray | None = None  # the last filtered points, (P, 2)
        self.speed: np.ndarray | None = None  # the last filtered velocity, (P, 2), pixels per second

    def __call__(self, points: np.ndarray, dt: float, confidence: np.ndarray | None = None,
                 scale: float = 1.0) -> np.ndarray:
        """The filtered points for this frame: `points` (P, 2) seen dt seconds after the last call, with each
        point's confidence in [0, 1] (None: all sure) and the face's size in pixels (its outer-eye distance)."""
        points = np.asarray(points, dtype=np.float64)
        if self.value is None or self.speed is None or dt <= 0:
            self.value, self.speed = points.copy(), np.zeros_like(points)
            return self.value.copy()
        s = self.settings
        raw_speed = (points - self.value) / dt
        self.speed = self.speed + smoothing_factor(s.d_cutoff, dt) * (raw_speed - self.speed)
        faces_per_s = np.linalg.norm(self.speed, axis=-1) / max(scale, 1e-6)
        sure = np.ones(len(points)) if confidence is None else np.clip(confidence, s.min_confidence, 1.0)
        alpha = smoothing_factor(s.min_cutoff * sure + s.beta * faces_per_s, dt)[:, None]
        self.value = self.value + alpha * (points - self.value)
        return self.value.copy()
