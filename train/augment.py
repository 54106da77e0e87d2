"""Batched augmentation on tensors: geometry (flip, rotation, scale, shift) and photometry.

Geometry moves the keypoints with the pixels, so it runs on whole batches with one
affine_grid/grid_sample call instead of per-image PIL work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from facekp.contract import HALF

# affine_grid (align_corners=False) puts pixel p at (p + 0.5 - HALF) / HALF; our normalized
# coordinates put it at (p - HALF) / HALF.
_GRID_OFFSET = 0.5 / HALF


@dataclass
class AugmentConfig:
    flip: float = 0.5  # probability of a mirror image (left/right keypoints swapped)
    rotate_deg: float = 6.0  # uniform in +-rotate_deg (the crops themselves are never rotated)
    scale_sigma: float = 0.05  # scale = exp(N(0, sigma)), on top of the crops' own exp(N(0, 0.06))
    shift_px: float = 2.0  # N(0, shift_px) per axis in 96x96 pixels, on top of the crops' own 2 px
    contrast_sigma: float = 0.25
    brightness: float = 0.08
    gamma_sigma: float = 0.2
    noise_max: float = 0.03
    blur: float = 0.2  # probability of a 3x3 blur


def augment(images: torch.Tensor, keypoints: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
            mirror: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N,1,96,96) in [0,1], keypoints (N,15,2) or (N,15+68,2) normalized -> augmented.

    mirror maps the labels of a face to the labels of its mirror image (KeypointNet.mirror);
    when it has learned parameters, the targets carry their gradient.
    """
    n = images.shape[0]
    kp = keypoints.clone()

    flip = torch.rand(n, generator=gen) < cfg.flip
    if flip.any():
        images = images.clone()
        images[flip] = images[flip].flip(-1)
        kp[flip] = mirror(kp[flip])

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
