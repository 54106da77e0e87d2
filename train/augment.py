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
    # Face shape differs between people more than between frames of one person: an area-preserving
    # stretch (width against height, exp(N(0, aspect_sigma))) and a shear imitate other proportions.
    # The three below (and run.py's weight decay 0.05) were measured together over five folds: +1.7 %.
    aspect_sigma: float = 0.08
    shear: float = 0.08  # x += U(-shear, shear) * y
    erase: float = 0.25  # probability of a rectangle (15-45 % of a side) painted over: hands, glasses, hair


def augment(images: torch.Tensor, keypoints: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator,
            mirror: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N,1,96,96) in [0,1], keypoints (N,15,2) or (N,15+68,2) normalized -> augmented.

    mirror maps the labels of a face to the labels of its mirror image (KeypointNet.mirror);
    when it has learned parameters, the targets carry their gradient. The random numbers come from
    gen on the CPU, whatever device the batch is on (a GPU's batch then gets the CPU's stream).
    """
    n, device = images.shape[0], images.device
    kp = keypoints.clone()

    flip = (torch.rand(n, generator=gen) < cfg.flip).to(device)
    if flip.any():
        images = images.clone()
        images[flip] = images[flip].flip(-1)
        kp[flip] = mirror(kp[flip])

    angle = ((torch.rand(n, generator=gen) * 2 - 1) * math.radians(cfg.rotate_deg)).to(device)
    scale = torch.exp(torch.randn(n, generator=gen) * cfg.scale_sigma).to(device)
    shift = (torch.randn(n, 2, generator=gen) * (cfg.shift_px / HALF)).to(device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n,2,2)
    forward = rot * scale[:, None, None]  # output = forward @ input + shift
    if cfg.aspect_sigma > 0 or cfg.shear > 0:  # drawn only when asked: the default's random stream is as before
        forward = forward @ _proportions(n, cfg.aspect_sigma, cfg.shear, gen).to(device)
    inverse = torch.linalg.inv(forward)
    theta = torch.cat([inverse, (-inverse @ shift[:, :, None])], dim=2)  # output -> input
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    kp = (kp + _GRID_OFFSET) @ forward.transpose(1, 2) + shift[:, None, :] - _GRID_OFFSET

    shape = (n, 1, 1, 1)
    gamma = torch.exp(torch.randn(shape, generator=gen) * cfg.gamma_sigma).to(device)
    images = images.clamp(1e-4, 1).pow(gamma)
    contrast = torch.exp(torch.randn(shape, generator=gen) * cfg.contrast_sigma).to(device)
    mean = images.mean(dim=(2, 3), keepdim=True)
    images = (images - mean) * contrast + mean + (torch.randn(shape, generator=gen) * cfg.brightness).to(device)
    blur = (torch.rand(shape, generator=gen) < cfg.blur).to(device)
    images = torch.where(blur, F.avg_pool2d(images, 3, 1, 1, count_include_pad=False), images)
    noise = torch.randn(images.shape, generator=gen) * (torch.rand(shape, generator=gen) * cfg.noise_max)
    images = images + noise.to(device)
    if cfg.erase > 0:
        images = _erase(images, cfg.erase, gen)
    return images.clamp(0, 1), kp


def _proportions(n: int, aspect_sigma: float, shear: float, gen: torch.Generator) -> torch.Tensor:
    """(n, 2, 2) stretch-and-shear matrices of determinant 1: a face of other proportions, same size."""
    stretch = torch.exp(torch.randn(n, generator=gen) * aspect_sigma).sqrt()
    slant = (torch.rand(n, generator=gen) * 2 - 1) * shear
    return torch.stack([torch.stack([stretch, slant / stretch], -1),
                        torch.stack([torch.zeros(n), 1 / stretch], -1)], -2)


def _erase(images: torch.Tensor, probability: float, gen: torch.Generator) -> torch.Tensor:
    """Paint one random rectangle of a flat random grey over a share of the images; the labels stay,
    so the net learns to place what it cannot see from the rest of the face."""
    n, _, h, w = images.shape
    size = torch.rand(n, 2, generator=gen) * 0.3 + 0.15  # (height, width) as a share of the side
    corner = torch.rand(n, 2, generator=gen) * (1 - size)
    size, corner = size.to(images.device), corner.to(images.device)
    ys = torch.arange(h, device=images.device).div(h).view(1, h, 1)
    xs = torch.arange(w, device=images.device).div(w).view(1, 1, w)
    inside = ((ys >= corner[:, 0, None, None]) & (ys < (corner[:, 0] + size[:, 0])[:, None, None])
              & (xs >= corner[:, 1, None, None]) & (xs < (corner[:, 1] + size[:, 1])[:, None, None]))
    chosen = (torch.rand(n, generator=gen) < probability)[:, None, None].to(images.device)
    grey = torch.rand(n, 1, 1, 1, generator=gen).to(images.device)
    return torch.where((inside & chosen)[:, None], grey, images)
