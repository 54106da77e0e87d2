"""Batched augmentation on tensors: geometry (flip, rotation, scale, shift) and photometry.

Geometry moves the keypoints with the pixels, so it runs on whole batches with one
affine_grid/grid_sample call instead of per-image PIL work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from facekp.contract import FLIP_PERMUTATION, HALF, MIRROR_X_SHIFT

# affine_grid (align_corners=False) puts pixel p at (p + 0.5 - HALF) / HALF; our normalized
# coordinates put it at (p - HALF) / HALF.
_GRID_OFFSET = 0.5 / HALF


def _ibug68_mirror() -> list[int]:
    """Mirror permutation of the 68-point iBUG layout (jaw, brows, nose, eyes, mouth)."""
    pairs = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)] + [(31, 35), (32, 34)]
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
    perm = list(range(68))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


MIRROR_15_68 = list(FLIP_PERMUTATION) + [len(FLIP_PERMUTATION) + i for i in _ibug68_mirror()]
"""Mirror permutation of the 15 contract keypoints followed by the 68 auxiliary points."""


@dataclass
class AugmentConfig:
    flip: float = 0.5  # probability of a mirror image (left/right keypoints swapped)
    rotate_deg: float = 15.0  # uniform in +-rotate_deg
    scale_sigma: float = 0.08  # scale = exp(N(0, sigma)), like a face detector's box size
    shift_px: float = 3.0  # N(0, shift_px) per axis, in 96x96 pixels
    contrast_sigma: float = 0.25
    brightness: float = 0.08
    gamma_sigma: float = 0.2
    noise_max: float = 0.03
    blur: float = 0.2  # probability of a 3x3 blur


def augment(images: torch.Tensor, keypoints: torch.Tensor, cfg: AugmentConfig,
            gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N,1,96,96) in [0,1], keypoints (N,15,2) or (N,15+68,2) normalized -> augmented."""
    n = images.shape[0]
    kp = keypoints.clone()

    flip = torch.rand(n, generator=gen) < cfg.flip
    if flip.any():
        images = images.clone()
        images[flip] = images[flip].flip(-1)
        mirrored = kp[flip][:, MIRROR_15_68[: kp.shape[1]]]
        kp[flip] = mirrored * torch.tensor([-1.0, 1.0]) + torch.tensor([MIRROR_X_SHIFT, 0.0])

    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(cfg.rotate_deg)
    scale = torch.exp(torch.randn(n, generator=gen) * cfg.scale_sigma)
    shift = torch.randn(n, 2, generator=gen) * (cfg.shift_px / HALF)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n,2,2)
    forward = rot * scale[:, None, None]  # output = forward @ input + shift
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, (-inverse @ shift[:, :, None])], dim=2)  # output -> input
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    kp = (kp + _GRID_OFFSET) @ forward.transpose(1, 2) + shift[:, None, :] - _GRID_OFFSET

    shape = (n, 1, 1, 1)
    gamma = torch.exp(torch.randn(shape, generator=gen) * cfg.gamma_sigma)
    images = images.clamp(1e-4, 1).pow(gamma)
    contrast = torch.exp(torch.randn(shape, generator=gen) * cfg.contrast_sigma)
    mean = images.mean(dim=(2, 3), keepdim=True)
    images = (images - mean) * contrast + mean + torch.randn(shape, generator=gen) * cfg.brightness
    blur = torch.rand(shape, generator=gen) < cfg.blur
    images = torch.where(blur, F.avg_pool2d(images, 3, 1, 1, count_include_pad=False), images)
    images = images + torch.randn(images.shape, generator=gen) * (torch.rand(shape, generator=gen) * cfg.noise_max)
    return images.clamp(0, 1), kp
