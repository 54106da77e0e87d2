"""The square of an image the model sees, resized to 96x96: cutting it out, and its keypoints back in the image.

Both paths use it: the plain crop path (/predictions/keypoints) takes the centred square around the
whole image (Square.around), the photo path (/predictions/faces) the square that frames each face it
found like the training crops (fit_square), turned with the face's roll so that the model sees it upright.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from facekp.contract import HALF, IMAGE_SIZE, denormalize, rescale_pixels

UPRIGHT_RAD = math.radians(0.5)
"""A square turned less than this is cut as an upright one: the training crops' own path (Lanczos resize),
with no rotation's interpolation."""
TURN_FROM_DEG = 8.0
"""A face rolled less than this is read upright, as the training crops were cut (their faces keep their own roll);
beyond, in a square turned with it. Fold 0's model on its never-seen people's frames (NME of the 15): upright
3.26 % read upright against 3.30 % turned; turned 15 degrees 3.35 % against 3.30 %; 30 to 90 degrees alike."""


@dataclass(frozen=True)
class Square:
    """A square of an image in continuous pixel coordinates: x0, y0 its top-left corner, side its side, before
    it is turned by `angle` (radians) about its centre; a positive angle turns it clockwise as seen in the
    image (y points down), as a face whose left eye sits lower than its right. Where it leaves the image, the
    image's edge pixels repeat."""

    x0: float
    y0: float
    side: float
    angle: float = 0.0

    @classmethod
    def around(cls, width: int, height: int) -> Square:
        """The centred square holding a whole width x height image (padded on its short side)."""
        side = max(width, height)
        return cls(-((side - width) // 2), -((side - height) // 2), side)

    @property
    def scale(self) -> float:
        """Image pixels per model pixel."""
        return self.side / IMAGE_SIZE

    @property
    def centre(self) -> np.ndarray:
        """The square's centre in continuous coordinates (pixel i spans [i, i + 1))."""
        return np.array([self.x0 + self.side / 2, self.y0 + self.side / 2])

    @property
    def roll_deg(self) -> float:
        return math.degrees(self.angle)

    def _turn(self) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return np.array([[c, -s], [s, c]])

    def crop(self, gray: np.ndarray) -> np.ndarray:
        """This square of an (H, W) uint8 image resized to (96, 96) float32 in [0, 1], as the model takes it."""
        return self.cut(gray, IMAGE_SIZE).astype(np.float32) / 255.0

    def cut(self, image: np.ndarray, size: int) -> np.ndarray:
        """This square of an (H, W) or (H, W, C) uint8 image as size x size pixels: Lanczos like the training
        crops; a turned square is first brought to about its output resolution (Lanczos), then turned (bicubic)."""
        step = self.side / size  # image pixels per output pixel
        if abs(self.angle) < UPRIGHT_RAD:
            left, top = math.floor(self.x0), math.floor(self.y0)
            region = _region(image, left, top, math.ceil(self.x0 + self.side), math.ceil(self.y0 + self.side))
            if region is None:  # entirely outside: nothing to see
                return np.zeros((size, size, *image.shape[2:]), np.uint8)
            box = (self.x0 - left, self.y0 - top, self.x0 - left + self.side, self.y0 - top + self.side)
            return np.asarray(Image.fromarray(region).resize((size, size), Image.Resampling.LANCZOS, box=box))
        fine = size
        reach = self.side / 2 * (abs(math.cos(self.angle)) + abs(math.sin(self.angle))) + 2 * step
        cx, cy = self.centre
        left, top = math.floor(cx - reach), math.floor(cy - reach)
        region = _region(image, left, top, math.ceil(cx + reach), math.ceil(cy + reach))
        if region is None:
            return np.zeros((size, size, *image.shape[2:]), np.uint8)
        picture = Image.fromarray(region)
        factor = np.ones(2)
        if step > 1:  # down to about the output's resolution first, so that turning it aliases nothing
            smaller = (max(1, round(picture.width / step)), max(1, round(picture.height / step)))
            factor = np.array(smaller) / picture.size
            picture = picture.resize(smaller, Image.Resampling.LANCZOS)
        # output pixel edge u -> region pixel edge: centre + turn @ (u - fine / 2) * step, then * factor
        matrix = np.diag(factor) @ self._turn() * step
        offset = factor * (self.centre - [left, top]) - matrix @ [fine / 2, fine / 2]
        data = (matrix[0, 0], matrix[0, 1], offset[0], matrix[1, 0], matrix[1, 1], offset[1])
        return np.asarray(picture.transform((fine, fine), Image.Transform.AFFINE, data, Image.Resampling.BICUBIC))

    def from_cut(self, points: np.ndarray, size: int) -> np.ndarray:
        """Pixels (..., 2) of cut(image, size) -> pixels of the image."""
        step = self.side / size
        if self.angle == 0:
            return rescale_pixels(points, step, np.array([self.x0, self.y0]))
        edge = (np.asarray(points, np.float64) + 0.5 - size / 2) * step @ self._turn().T + self.centre
        return edge - 0.5

    def to_image(self, normalized: np.ndarray) -> np.ndarray:
        """Model output (..., 2) normalized -> pixels of the image."""
        return self.from_cut(denormalize(normalized), IMAGE_SIZE)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Pixels of the image (..., 2) -> pixels of the 96x96 crop (the inverse of to_image, before normalizing)."""
        if self.angle == 0:
            return rescale_pixels(np.asarray(points) - [self.x0, self.y0], 1 / self.scale)
        edge = (np.asarray(points, np.float64) + 0.5 - self.centre) @ self._turn() / self.scale
        return edge + HALF - 0.5


def _region(image: np.ndarray, left: int, top: int, right: int, bottom: int) -> np.ndarray | None:
    """image[top:bottom, left:right], its edge pixels repeated where that leaves the image; None when all of it
    lies outside."""
    height, width = image.shape[:2]
    region = image[max(0, top):min(height, bottom), max(0, left):min(width, right)]
    if region.size == 0:
        return None
    pad = [(max(0, -top), max(0, bottom - height)), (max(0, -left), max(0, right - width))]
    pad += [(0, 0)] * (image.ndim - 2)  # colour channels
    return np.pad(region, pad, mode="edge") if any(any(p) for p in pad) else region


def face_square(points: np.ndarray, layout: np.ndarray) -> Square:
    """The square the model reads a face in (fit_square): upright where the face is rolled less than TURN_FROM_DEG,
    else turned with it."""
    turned = fit_square(points, layout, turn=True)
    return turned if abs(turned.roll_deg) >= TURN_FROM_DEG else fit_square(points, layout)


def fit_square(points: np.ndarray, layout: np.ndarray, turn: bool = False) -> Square:
    """The square whose 96x96 crop puts `points` (N, 2, image pixels) closest to `layout` (least squares): scale
    and shift, as the training crops were framed, and with turn also the rotation (the face's roll)."""
    p = np.asarray(points, np.float64) + 0.5  # pixel edges: pixel i spans [i, i + 1)
    m = np.asarray(layout, np.float64) + 0.5
    pc, mc = p - p.mean(0), m - m.mean(0)
    # crop = k * rotation(-angle) @ image + shift; as complex numbers, crop = a * image with a = k e^(-i angle)
    zp, zm = pc[:, 0] + 1j * pc[:, 1], mc[:, 0] + 1j * mc[:, 1]
    a = (np.conj(zp) * zm).sum() / max(float((np.abs(zp) ** 2).sum()), 1e-9)
    k = max(abs(a) if turn else a.real, 1e-6)  # crop pixels per image pixel
    angle = -float(np.angle(a)) if turn else 0.0
    c, s = math.cos(angle), math.sin(angle)
    # the crop's centre (HALF, HALF) in the image: p_mean + turn @ (HALF - m_mean) / k
    centre = p.mean(0) + np.array([[c, -s], [s, c]]) @ (HALF - m.mean(0)) / k
    side = IMAGE_SIZE / k
    return Square(float(centre[0] - side / 2), float(centre[1] - side / 2), float(side), angle)


def turn_image(image: np.ndarray, degrees: float) -> np.ndarray:
    """The image turned clockwise by `degrees` as seen, on a canvas grown to hold all of it: quarter turns exact
    (numpy), others bicubic with black corners (PIL)."""
    if degrees % 90 == 0:
        return np.ascontiguousarray(np.rot90(image, k=-round(degrees / 90) % 4))
    turned = Image.fromarray(image).rotate(-degrees, resample=Image.Resampling.BICUBIC, expand=True)
    return np.asarray(turned)


def turned_points(points: np.ndarray, degrees: float, size: tuple[int, int], turned_size: tuple[int, int]
                  ) -> np.ndarray:
    """Pixel centres (..., 2) in a width x height image -> in that image turned clockwise by `degrees` about its
    centre onto a canvas of turned_size (turn_image); a negative `degrees` with the sizes swapped maps back."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    edge = np.asarray(points, np.float64) + 0.5 - np.array(size) / 2
    return edge @ np.array([[c, -s], [s, c]]).T + np.array(turned_size) / 2 - 0.5
