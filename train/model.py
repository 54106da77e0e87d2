"""The keypoint network: a small residual CNN, cheap at 96x96 on a CPU.

A stride-2 stem brings the face to 48x48 at once; four residual stages halve it down to
6x6. Two heads are available: direct regression from the 6x6 features, or heatmaps at
24x24 read out by a soft-argmax (integral regression), which keeps the translation
equivariance of the convolutions up to the output.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from facekp.contract import FLIP_PERMUTATION, IMAGE_SIZE, MIRROR_X_SHIFT, NUM_KEYPOINTS


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ResBlock(nn.Module):
    """Basic residual block (two 3x3 convs), with a strided 1x1 shortcut when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x), inplace=True)


def stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(ResBlock(cin, cout, stride), *[ResBlock(cout, cout) for _ in range(blocks - 1)])


class KeypointNet(nn.Module):
    """(N, 1, 96, 96) in [0, 1] -> (N, 15 + extra_points, 2) normalized (x, y).

    extra_points > 0 adds auxiliary targets (the 68-point labels) that share the trunk.
    """

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 192), blocks: tuple[int, ...] = (1, 1, 2, 2),
                 head: str = "heatmap", extra_points: int = 0, dropout: float = 0.1):
        super().__init__()
        self.head_kind = head
        self.points = NUM_KEYPOINTS + extra_points
        self.stem = conv_bn(1, widths[0], stride=2)  # 48x48
        self.stage1 = stage(widths[0], widths[0], blocks[0], 1)  # 48x48
        self.stage2 = stage(widths[0], widths[1], blocks[1], 2)  # 24x24
        self.stage3 = stage(widths[1], widths[2], blocks[2], 2)  # 12x12
        self.stage4 = stage(widths[2], widths[3], blocks[3], 2)  # 6x6
        if head == "heatmap":
            mid = widths[1]
            self.lateral3 = nn.Conv2d(widths[2], mid, 1)
            self.lateral4 = nn.Conv2d(widths[3], mid, 1)
            self.fuse = nn.Sequential(conv_bn(mid, mid), conv_bn(mid, mid))
            self.heatmaps = nn.Conv2d(mid, self.points, 3, 1, 1)
            size = IMAGE_SIZE // 4
            # Centres of the 24x24 heatmap cells, in normalized image coordinates.
            centres = (torch.arange(size, dtype=torch.float32) + 0.5) * (IMAGE_SIZE / size)
            self.register_buffer("grid", (centres - 0.5 - IMAGE_SIZE / 2) / (IMAGE_SIZE / 2))
        else:
            self.regress = nn.Sequential(
                nn.Conv2d(widths[3], 64, 1), nn.ReLU(inplace=True), nn.Flatten(),
                nn.Dropout(dropout), nn.Linear(64 * 6 * 6, 256), nn.ReLU(inplace=True),
                nn.Linear(256, self.points * 2),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - 0.5
        c2 = self.stage2(self.stage1(self.stem(x)))
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        if self.head_kind != "heatmap":
            return self.regress(c4).view(-1, self.points, 2)
        size = c2.shape[-1]
        p = c2 + F.interpolate(self.lateral3(c3), size=size, mode="bilinear", align_corners=False)
        p = p + F.interpolate(self.lateral4(c4), size=size, mode="bilinear", align_corners=False)
        logits = self.heatmaps(self.fuse(p))  # (N, points, 24, 24)
        prob = logits.flatten(2).softmax(-1).view_as(logits)
        xs = (prob.sum(2) * self.grid).sum(-1)
        ys = (prob.sum(3) * self.grid).sum(-1)
        return torch.stack([xs, ys], dim=-1)


class ServingModel(nn.Module):
    """What is exported: the 15 contract keypoints, optionally averaged with the mirrored pass.

    The flip test-time augmentation lives inside the TorchScript file, so the served score
    is the score measured in training.
    """

    def __init__(self, net: nn.Module, flip: bool = True):
        super().__init__()
        self.net = net
        self.flip = flip
        self.register_buffer("perm", torch.tensor(FLIP_PERMUTATION, dtype=torch.long))
        self.register_buffer("mirror", torch.tensor([-1.0, 1.0]))
        self.register_buffer("shift", torch.tensor([MIRROR_X_SHIFT, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flip:
            return self.net(x)[:, :NUM_KEYPOINTS]
        both = self.net(torch.cat([x, x.flip(-1)]))[:, :NUM_KEYPOINTS]
        direct, flipped = both.chunk(2)
        return 0.5 * (direct + flipped[:, self.perm] * self.mirror + self.shift)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
