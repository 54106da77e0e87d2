"""The keypoint network: a small residual CNN, cheap at 96x96 on a CPU.

A stride-2 stem brings the face to 48x48 at once; four residual stages halve it down to
6x6. The head fuses the 24x24, 12x12 and 6x6 features into heatmaps at 24x24, read out by a
soft-argmax (integral regression), which keeps the translation equivariance of the
convolutions up to the output.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from facekp.contract import (
    FLIP_PERMUTATION,
    HALF,
    IMAGE_SIZE,
    MIRROR_X_SHIFT,
    NUM_KEYPOINTS,
    VIEW_SETTINGS,
    view_method,
)
from train.recipe import SERVED_VIEWS


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

JAW = range(17)  # the iBUG jawline, 0-16
JAW_REACH = 1.6
"""How far the jawline's heatmap cells reach, as a multiple of the crop's half-width: a third of the faces have
jaw points outside the 96x96 crop (the chin's median sits at y = 102 px), which cells inside it cannot name.
1.6 holds 99.5 % of every jaw point; the other points keep the crop's own cells."""


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

    HEATMAP_SIZE = 24  # the 24x24 stage's resolution

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 192), blocks: tuple[int, ...] = (1, 1, 2, 2),
                 extra_points: int = 0, head: tuple[int, int] = (2, 3)):
        super().__init__()
        self.points = NUM_KEYPOINTS + extra_points
        # Systematic offset of each point's label from where mirror symmetry puts it (ours sit
        # ~1.3 px right of the pixels, and left/right brow and eye corners are placed slightly
        # asymmetrically). Mirroring labels with pure geometry would teach the net the average
        # of both conventions; learned from the flipped training faces instead (see mirror()).
        self.label_offset = nn.Parameter(torch.zeros(self.points, 2))
        self.register_buffer("mirror_perm", torch.tensor(MIRROR_15_68[: self.points]))
        self.register_buffer("mirror_sign", torch.tensor([-1.0, 1.0]))
        self.register_buffer("mirror_shift", torch.tensor([MIRROR_X_SHIFT, 0.0]))
        reach = torch.ones(self.points)
        if extra_points:
            reach[[NUM_KEYPOINTS + i for i in JAW]] = JAW_REACH
        self.register_buffer("reach", reach.unsqueeze(-1))  # (points, 1): each point's cells, in crop half-widths
        self.stem = conv_bn(1, widths[0], stride=2)  # 48x48
        self.stage1 = stage(widths[0], widths[0], blocks[0], 1)  # 48x48
        self.stage2 = stage(widths[0], widths[1], blocks[1], 2)  # 24x24
        self.stage3 = stage(widths[1], widths[2], blocks[2], 2)  # 12x12
        self.stage4 = stage(widths[2], widths[3], blocks[3], 2)  # 6x6
        mid = widths[1]
        self.lateral3 = nn.Conv2d(widths[2], mid, 1)
        self.lateral4 = nn.Conv2d(widths[3], mid, 1)
        fuse_convs, kernel = head  # 3x3 convolutions fusing the stages, and the heatmaps' kernel (train/recipe.py)
        self.fuse = nn.Sequential(*[conv_bn(mid, mid) for _ in range(fuse_convs)])
        self.heatmaps = nn.Conv2d(mid, self.points, kernel, 1, kernel // 2)
        # Centres of the heatmap cells, in normalized image coordinates.
        size = self.HEATMAP_SIZE
        centres = (torch.arange(size, dtype=torch.float32) + 0.5) * (IMAGE_SIZE / size)
        self.register_buffer("grid", (centres - 0.5 - IMAGE_SIZE / 2) / (IMAGE_SIZE / 2))

    def mirror(self, kp: torch.Tensor) -> torch.Tensor:
        """Labels (N, points, 2) of a face -> labels of its mirror image (an involution).

        A label is geometry g plus a systematic offset e: mirroring the geometry and re-adding
        the offsets gives g' + e = mirror(kp) + e + e[perm] * (1, -1).
        """
        e = self.label_offset
        geometric = kp[:, self.mirror_perm] * self.mirror_sign + self.mirror_shift
        return geometric + e + e[self.mirror_perm] * -self.mirror_sign

    def heatmap(self, x: torch.Tensor) -> torch.Tensor:
        """Each point's probability over the 24x24 cells, (N, points, 24, 24), in float32."""
        x = x - 0.5
        c1 = self.stage1(self.stem(x))
        c2 = self.stage2(c1)
        c3 = self.stage3(c2)
        c4 = self.stage4(c3)
        size = c2.shape[-1]
        p = c2 + F.interpolate(self.lateral3(c3), size=size, mode="bilinear", align_corners=False)
        p = p + F.interpolate(self.lateral4(c4), size=size, mode="bilinear", align_corners=False)
        logits = self.heatmaps(self.fuse(p)).float()  # (N, points, size, size); fp32 under bf16 autocast too
        return logits.flatten(2).softmax(-1).view_as(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prob = self.heatmap(x)
        xs = (prob.sum(2) * self.grid).sum(-1)
        ys = (prob.sum(3) * self.grid).sum(-1)
        return torch.stack([xs, ys], dim=-1) * self.reach

    def forward_with_spread(self, x: torch.Tensor) -> torch.Tensor:
        """(N, points, 3): forward's (x, y) and the heatmap's spread around them (the root of its variance in
        x plus in y, normalized units): a sharp peak is a sure point, a wide one a guess."""
        prob = self.heatmap(x)
        px, py = prob.sum(2), prob.sum(3)
        xs, ys = (px * self.grid).sum(-1), (py * self.grid).sum(-1)
        variance = (px * self.grid**2).sum(-1) - xs**2 + (py * self.grid**2).sum(-1) - ys**2
        return torch.stack([xs, ys, variance.clamp(min=0).sqrt()], dim=-1) * self.reach


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """The images moved dx pixels right and dy down, the border repeated into the gap."""
    pad = max(abs(dx), abs(dy))
    if pad == 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return padded[..., pad - dy:pad - dy + IMAGE_SIZE, pad - dx:pad - dx + IMAGE_SIZE]


def shift_views(shift: int) -> tuple[tuple[int, int], ...]:
    """The test-time views of train/recipe.py's Views: the face as it is and moved shift pixels down-right and
    up-left."""
    return ((0, 0),) if shift == 0 else ((0, 0), (shift, shift), (-shift, -shift))


class ServingModel(nn.Module):
    """What is exported: the 15 contract keypoints, averaged over the ensemble's members and,
    optionally, over each member's mirrored pass and over copies of the face moved a few pixels.

    The averaging lives inside the TorchScript file, so the served score is the score
    measured in training. Each member mirrors with its own learned label offsets; a moved
    view's answer is moved back. With flip=False the members may also be exported models
    (a teacher of several: train/exported.py's load_teacher).
    """

    VIEW_METHODS = tuple(view_method(n) for n in VIEW_SETTINGS)

    def __init__(self, nets: KeypointNet | list[KeypointNet] | list[nn.Module], flip: bool = True,
                 shifts: tuple[tuple[int, int], ...] = ((0, 0),)):
        super().__init__()
        self.nets = nn.ModuleList(nets if isinstance(nets, list) else [nets])
        self.flip = flip
        self.shifts = tuple(shifts)
        # How a point's uncertainty becomes its confidence (train/calibrate.py fits them on people the network
        # never saw; these defaults, uncalibrated, answer 0.5 for every point): each point's usual spread, its
        # mean error, and per point the logistic curve of P(within 5 % of the inter-ocular distance).
        points = getattr(self.nets[0], "points", NUM_KEYPOINTS)
        self.register_buffer("usual_spread", torch.ones(points))
        self.register_buffer("error_prior", torch.ones(points))
        self.register_buffer("curve_a", torch.zeros(points))
        self.register_buffer("curve_b", torch.zeros(points))

    @property
    def passes_per_net(self) -> int:
        return len(self.shifts) * (2 if self.flip else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        views = []
        for dx, dy in self.shifts:
            view = shifted(x, dx, dy)
            views += [view, view.flip(-1)] if self.flip else [view]
        batch = torch.cat(views) if len(views) > 1 else x
        members = []
        for net in self.nets:
            outs = net(batch).chunk(len(views))
            answers = []
            for k, (dx, dy) in enumerate(self.shifts):
                out = 0.5 * (outs[2 * k] + net.mirror(outs[2 * k + 1])) if self.flip else outs[k]
                out = out[:, :NUM_KEYPOINTS]
                if dx or dy:  # the answer moved back (python floats: constants in the trace)
                    out = moved_back(out, dx, dy)
                answers.append(out)
            members.append(answers[0] if len(answers) == 1 else torch.stack(answers).mean(0))
        return torch.stack(members).mean(0)

    def answers(self, x: torch.Tensor, flip: bool, shifts: tuple[tuple[int, int], ...]) -> torch.Tensor:
        """(N, points, 3) for views of one network (a student): every point it predicts (the 15, then the 68
        where it has them) averaged over the views exactly as forward() averages the 15, and each point's
        uncertainty: the root of the heatmaps' mean variance plus the views' disagreement (normalized units).
        Its view loop must stay in step with forward()'s, which stays as it is for the files already served."""
        (net,) = self.nets
        views = []
        for dx, dy in shifts:
            view = shifted(x, dx, dy)
            views += [view, view.flip(-1)] if flip else [view]
        outs = net.forward_with_spread(torch.cat(views) if len(views) > 1 else x).chunk(len(views))
        averaged, seen, variances = [], [], []
        for k, (dx, dy) in enumerate(shifts):
            if flip:
                direct, mirrored = outs[2 * k], outs[2 * k + 1]
                mirrored_points = net.mirror(mirrored[..., :2])
                out = 0.5 * (direct[..., :2] + mirrored_points)
                pair = [direct[..., :2], mirrored_points]
                variances += [direct[..., 2] ** 2, mirrored[..., 2][:, net.mirror_perm] ** 2]
            else:
                out, pair = outs[k][..., :2], [outs[k][..., :2]]
                variances.append(outs[k][..., 2] ** 2)
            if dx or dy:
                out, pair = moved_back(out, dx, dy), [moved_back(p, dx, dy) for p in pair]
            averaged.append(out)
            seen += pair
        points = averaged[0] if len(averaged) == 1 else torch.stack(averaged).mean(0)
        disagreement = (torch.stack(seen) - points).pow(2).sum(-1).mean(0)
        spread = (torch.stack(variances).mean(0) + disagreement).sqrt()
        return torch.cat([points, spread.unsqueeze(-1)], dim=-1)

    def confident(self, answers: torch.Tensor) -> torch.Tensor:
        """answers() with the uncertainty turned into the calibrated confidence in [0, 1]."""
        score = expected_error(answers[..., 2], self.usual_spread, self.error_prior).clamp(min=1e-8)
        confidence = torch.sigmoid(self.curve_a + self.curve_b * score.log())
        return torch.cat([answers[..., :2], confidence.unsqueeze(-1)], dim=-1)

    # The view settings a served file offers (facekp.contract.VIEW_SETTINGS), each a method of the TorchScript
    # file answering (N, points, 3): x, y and the confidence. The face as it is; with its mirror image; and
    # moved the recipe's shift both ways, each mirrored.
    def views_1(self, x: torch.Tensor) -> torch.Tensor:
        return self.confident(self.answers(x, False, ((0, 0),)))

    def views_2(self, x: torch.Tensor) -> torch.Tensor:
        return self.confident(self.answers(x, True, ((0, 0),)))

    def views_6(self, x: torch.Tensor) -> torch.Tensor:
        return self.confident(self.answers(x, True, shift_views(SERVED_VIEWS.shift)))


def expected_error(spread: torch.Tensor, usual: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """(N, points) spreads -> how large each point's error is expected to be, relative to others: its point's
    usual error, times the root of how unsure the network is of the whole face (its points' mean spread against
    their usual) and of this point. Roots of both, not the face whole: on folds 0 and 1, each scored with the
    numbers of the other, the 15 rank their errors at -0.278 / -0.286 so, -0.272 / -0.278 with the face whole."""
    relative = spread / usual
    return prior * (relative.mean(-1, keepdim=True) * relative).sqrt()


def moved_back(points: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """A moved view's (x, y) answers moved back onto the face (python floats: constants in the trace)."""
    return torch.stack([points[..., 0] - dx / HALF, points[..., 1] - dy / HALF], dim=-1)


def networks_from_weights(weights: dict[str, torch.Tensor], widths: tuple[int, ...],
                          blocks: tuple[int, ...], head: tuple[int, int] = (2, 3)) -> list[KeypointNet]:
    """The networks of an exported ServingModel rebuilt as modules from its state_dict: unlike the traced
    file they can be run without its mirrored pass, or given one (train/studies/mirror.py)."""
    count = 1 + max((int(key.split(".")[1]) for key in weights if key.startswith("nets.")), default=-1)
    nets = []
    for k in range(count):
        prefix = f"nets.{k}."
        own = {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}
        net = KeypointNet(widths, blocks, extra_points=own["label_offset"].shape[0] - NUM_KEYPOINTS, head=head)
        own.setdefault("reach", torch.ones_like(net.reach))  # files trained before the jaw's reach
        net.load_state_dict(own)
        nets.append(net.eval())
    return nets


def label_x_offset_px(net: KeypointNet) -> float:
    """How far right of the pixels the labels sit on average, as learned from flipped faces."""
    return float(net.label_offset.detach()[:, 0].mean()) * HALF


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
