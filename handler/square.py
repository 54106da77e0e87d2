"""The square of an image the model sees, resized to 96x96: cutting it out, and its keypoints back in the image.

Both paths use it: the plain crop path (/predictions/keypoints) takes the centred square around the
whole image (Square.around), the photo path (/predictions/faces) the square that frames each face it
found like the training crops (fit_square).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from facekp.contract import IMAGE_SIZE, denormalize, rescale_pixels


@dataclass(frozen=True)
class Square:
    """A square of an image in continuous pixel coordinates: x0, y0 its top-left corner, side its side.
    Where it leaves the image, the image's edge pixels repeat."""

    x0: float
    y0: float
    side: float

    @classmethod
    def around(cls, width: int, height: int) -> Square:
        """The centred square holding a whole width x height image (padded on its short side)."""
        side = max(width, height)
        return cls(-((side - width) // 2), -((side - height) // 2), side)

    @property
    def scale(self) -> float:
        """Image pixels per model pixel."""
        return self.side / IMAGE_SIZE

    def crop(self, gray: np.ndarray) -> np.ndarray:
        """This square of an (H, W) uint8 image resized to (96, 96) float32 in [0, 1], Lanczos like the
        training crops."""
        height, width = gray.shape
        left, top = int(np.floor(self.x0)), int(np.floor(self.y0))
        right, bottom = int(np.ceil(self.x0 + self.side)), int(np.ceil(self.y0 + self.side))
        pad = ((max(0, -top), max(0, bottom - height)), (max(0, -left), max(0, right - width)))
        region = gray[max(0, top):min(height, bottom), max(0, left):min(width, right)]
        if region.size == 0:  # entirely outside: nothing to see
            return np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
        if any(any(p) for p in pad):
            region = np.pad(region, pad, mode="edge")
        box = (self.x0 - left, self.y0 - top, self.x0 - left + self.side, self.y0 - top + self.side)
        resized = Image.fromarray(region).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS, box=box)
        return np.asarray(resized, np.float32) / 255.0

    def to_image(self, normalized: np.ndarray) -> np.ndarray:
        """Model output (..., 2) normalized -> pixels of the image."""
        return rescale_pixels(denormalize(normalized), self.scale, np.array([self.x0, self.y0]))

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Pixels of the image (..., 2) -> pixels of the 96x96 crop (the inverse of to_image, before normalizing)."""
        return rescale_pixels(np.asarray(points) - [self.x0, self.y0], 1 / self.scale)


def fit_square(points: np.ndarray, layout: np.ndarray) -> Square:
    """The square whose 96x96 crop puts `points` (N, 2, image pixels) closest to `layout` (least squares)."""
    p = np.asarray(points, np.float64)
    m = np.asarray(layout, np.float64)
    pc, mc = p - p.mean(0), m - m.mean(0)
    scale = float((pc * mc).sum() / max((pc**2).sum(), 1e-9))  # crop pixels per image pixel
    scale = max(scale, 1e-6)
    shift = m.mean(0) - scale * p.mean(0)  # crop pixel = scale * image pixel + shift
    # the crop's edge, its pixel -0.5, is image pixel x0 - 0.5 (x0 is an edge: pixel i spans [i, i + 1))
    x0, y0 = 0.5 - (shift + 0.5) / scale
    return Square(float(x0), float(y0), IMAGE_SIZE / scale)
