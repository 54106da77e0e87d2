"""The training augmentation moves the labels with the pixels, and hides without moving them."""

import dataclasses

import torch

from facekp.contract import HALF
from train.augment import AugmentConfig, augment

NO_PHOTOMETRY = {"contrast_sigma": 0.0, "brightness": 0.0, "gamma_sigma": 0.0, "noise_max": 0.0, "blur": 0.0}


def _dots(points_px: list[tuple[int, int]], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n black images with a bright 3x3 dot centred on each point, and those points normalized."""
    images = torch.zeros(n, 1, 96, 96)
    for x, y in points_px:
        images[:, 0, y - 1:y + 2, x - 1:x + 2] = 1.0
    keypoints = (torch.tensor(points_px, dtype=torch.float32) - HALF) / HALF
    return images, keypoints.repeat(n, 1, 1)


def _centroid_near(image: torch.Tensor, x: float, y: float, radius: float = 5.0) -> tuple[float, float]:
    ys, xs = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    weight = image * (((xs - x) ** 2 + (ys - y) ** 2) < radius**2)
    return float((weight * xs).sum() / weight.sum()), float((weight * ys).sum() / weight.sum())


def test_stretch_shear_rotation_and_shift_move_the_keypoints_with_the_pixels():
    points = [(30, 36), (64, 40), (48, 70)]
    images, keypoints = _dots(points, 6)
    cfg = AugmentConfig(flip=0.0, rotate_deg=10.0, scale_sigma=0.1, shift_px=3.0, aspect_sigma=0.15, shear=0.2,
                        erase=0.0, **NO_PHOTOMETRY)  # a painted rectangle would hide a dot
    out, moved = augment(images, keypoints, cfg, torch.Generator().manual_seed(0), lambda kp: kp)
    assert not torch.allclose(moved, keypoints, atol=1 / HALF)  # they did move
    for image, kps in zip(out, moved * HALF + HALF, strict=True):
        for x, y in kps.tolist():
            cx, cy = _centroid_near(image[0], x, y)
            assert abs(cx - x) < 0.3 and abs(cy - y) < 0.3


def test_stretch_and_shear_keep_the_face_size():
    """Determinant 1: the face changes proportions, not area (scale_sigma alone sets the size)."""
    _, keypoints = _dots([(20, 20), (76, 20), (48, 80)], 64)
    cfg = AugmentConfig(flip=0.0, rotate_deg=0.0, scale_sigma=0.0, shift_px=0.0, aspect_sigma=0.2, shear=0.3)
    _, moved = augment(torch.zeros(64, 1, 96, 96), keypoints, cfg, torch.Generator().manual_seed(1), lambda kp: kp)

    def area(tri: torch.Tensor) -> torch.Tensor:
        a, b, c = tri.unbind(-2)
        (ux, uy), (vx, vy) = (b - a).unbind(-1), (c - a).unbind(-1)
        return (ux * vy - vx * uy).abs() / 2

    torch.testing.assert_close(area(moved), area(keypoints), rtol=1e-4, atol=1e-6)


def test_erase_paints_a_flat_rectangle_and_leaves_the_labels():
    images = torch.rand(200, 1, 96, 96)
    keypoints = torch.rand(200, 15, 2) - 0.5
    cfg = dataclasses.replace(AugmentConfig(flip=0.0, rotate_deg=0.0, scale_sigma=0.0, shift_px=0.0, aspect_sigma=0.0,
                                            shear=0.0, **NO_PHOTOMETRY), erase=0.5)
    out, labels = augment(images, keypoints, cfg, torch.Generator().manual_seed(2), lambda kp: kp)
    torch.testing.assert_close(labels, keypoints)
    changed = (out - images).abs() > 1e-3
    erased = changed.flatten(1).any(1)
    assert 70 < int(erased.sum()) < 130  # about half
    for image, mask in zip(out[erased], changed[erased], strict=True):
        rows, cols = mask[0].any(1).nonzero()[:, 0], mask[0].any(0).nonzero()[:, 0]
        height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert 0.13 * 96 <= height <= 0.46 * 96 and 0.13 * 96 <= width <= 0.46 * 96
        box = image[0, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert torch.all(box == box[0, 0])  # one flat grey
