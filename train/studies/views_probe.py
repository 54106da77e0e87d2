"""Score an exported model's networks with test-time views moved by 0..N pixels, without exporting anything.

    python train/studies/views_probe.py runs/tta-m1e120/fold_4/keypoints.pt          # a fold's network, on its people
    git show bcb5090:model_store/keypoints.pt > runs/bcb5090.pt && git show bcb5090:model_store/model_card.json \
        > runs/bcb5090.json && python train/studies/views_probe.py runs/bcb5090.pt   # a pair, on the fixed split

Each network of the file (rebuilt from its card, train/exported.py's exported_networks) is scored on the people
its card validated on, with its mirrored pass and the face moved ±1..±N px (train/model.py's shift_views),
then the networks together: what `--student-tta-shift` would give a model, to compare before choosing.

    python train/studies/views_probe.py runs/tta-student/fold_4/keypoints.pt --max-shift 3 --zoom 6 --rotate 6

adds views the served model does not use, for each network: the face zoomed in and out by 6 % and rotated
±6° about the centre (bilinear, the border repeated), alone and beside the moved ones, each mirrored too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facekp import metrics
from facekp.contract import HALF, denormalize
from train.cv import fold_people
from train.exported import card_beside, exported_networks, predict
from train.model import ServingModel, shift_views, shifted

PIXEL_CENTRE = 1 / 96  # a pixel's centre in grid_sample's [-1, 1] coordinates = its normalized keypoint + this


def turned(images: torch.Tensor, scale: float, degrees: float) -> torch.Tensor:
    """The images zoomed by scale and rotated by degrees about their centre, the border repeated."""
    grid = F.affine_grid(_inverse(scale, degrees).expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def turned_back(keypoints: torch.Tensor, scale: float, degrees: float) -> torch.Tensor:
    """Keypoints found in turned(images, scale, degrees), where they lie in the images."""
    return (keypoints + PIXEL_CENTRE) @ _inverse(scale, degrees)[0, :, :2].T - PIXEL_CENTRE


def _inverse(scale: float, degrees: float) -> torch.Tensor:
    """affine_grid's theta: where in the image each turned pixel is read from."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    inverse = torch.linalg.inv(scale * torch.tensor([[c, -s], [s, c]]))
    return torch.cat([inverse, torch.zeros(2, 1)], dim=1).unsqueeze(0)


def view_answer(model: torch.nn.Module, images: torch.Tensor, dx: int = 0, dy: int = 0, scale: float = 1.0,
                degrees: float = 0.0) -> torch.Tensor:
    """The model's keypoints for the images moved (dx, dy) px, then turned, mapped back onto the images."""
    view = turned(shifted(images, dx, dy), scale, degrees)
    answer = turned_back(torch.from_numpy(predict(model, view)).float(), scale, degrees)
    return answer - torch.tensor([dx, dy]) / HALF


def other_views(net: torch.nn.Module, images: torch.Tensor, truth: np.ndarray, shift: int, zoom: float,
                rotate: float) -> list[tuple[str, float]]:
    """Scores of one network (with its mirrored pass) over sets of views: moved, zoomed, rotated, together."""
    model = ServingModel(net, flip=True).eval()
    moved = [dict(dx=dx, dy=dy) for dx, dy in shift_views(shift)[1:]]
    zoomed = [dict(scale=1 - zoom / 100), dict(scale=1 + zoom / 100)]
    rotated = [dict(degrees=-rotate), dict(degrees=rotate)]
    sets = {"as it is": [], f"zoomed ±{zoom:g} %": zoomed, f"rotated ±{rotate:g}°": rotated,
            f"moved ±{shift} px": moved, "moved and zoomed": moved + zoomed, "moved and rotated": moved + rotated,
            "all of them": moved + zoomed + rotated}
    answers = {str(view): view_answer(model, images, **view) for view in [{}, *moved, *zoomed, *rotated]}
    return [(name, metrics.score(denormalize(torch.stack([answers[str(v)] for v in [{}, *views]]).mean(0).numpy()),
                                 truth)) for name, views in sets.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a TorchScript model from train/run.py, its card beside it")
    parser.add_argument("--max-shift", type=int, default=4, help="moved views from ±1 to this many px; default 4")
    parser.add_argument("--zoom", type=float, default=0, help="also score views zoomed by ± this many percent")
    parser.add_argument("--rotate", type=float, default=0, help="and rotated by ± this many degrees")
    args = parser.parse_args(argv)
    rebuilt = exported_networks(args.model)
    if rebuilt is None:
        parser.error(f"{args.model} has no model card beside it: its networks cannot be rebuilt")
    nets, _ = rebuilt
    config = json.loads(card_beside(args.model).read_text())["config"]
    val, images = fold_people(config["data"], config.get("fold", -1), config.get("folds", 5))
    print(f"{len(nets)} network(s), {len(val)} faces of {len(set(val.people))} people; each with its mirrored pass")
    for shift in range(args.max_shift + 1):
        models = [ServingModel(net, flip=True, shifts=shift_views(shift)) for net in nets]
        if len(nets) > 1:
            models.append(ServingModel(models, flip=False))
        scores = [metrics.score(denormalize(predict(model.eval(), images)), val.keypoints) for model in models]
        label = "as it is" if shift == 0 else f"and moved ±{shift} px"
        print(f"{label:17s} " + "  ".join(f"{score:6.1f}" for score in scores), flush=True)
    if args.zoom or args.rotate:
        for k, net in enumerate(nets):
            print(f"network {k + 1}, each view with its mirrored pass:")
            for name, score in other_views(net, images, val.keypoints, args.max_shift, args.zoom, args.rotate):
                print(f"  {name:19s} {score:6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
