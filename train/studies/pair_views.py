"""Two students at the cost of one with its mirrored pass: A reads the face, B its mirror image.

    python train/studies/pair_views.py runs/seed0 runs/seed1 --out runs/pair01   # then compare.py, cv.py --summary

A served student reads each face twice, as it is and mirrored (two views). Two students trained from other
seeds, one reading the face and the other its mirror image, cost the same two passes and average two
networks' errors as well as the mirror's. For every fold both runs have, this rebuilds both students from
their files and scores, on the fold's own people: A with its two views (the served setting), and the pair.
Each is written as a train/cv.py run (OUT-a2, OUT), so train/studies/compare.py pairs them over people.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from facekp import metrics
from facekp.contract import NUM_KEYPOINTS, denormalize
from train.cv import PREDICTIONS, fold_people
from train.exported import CARD_FILE, MODEL_FILE, exported_networks
from train.model import KeypointNet


@torch.inference_mode()
def answers(net: KeypointNet, images: torch.Tensor, mirrored: bool) -> np.ndarray:
    """A network's normalized 15 points for the faces, read as they are or from their mirror image."""
    out = []
    for start in range(0, len(images), 256):
        batch = images[start:start + 256]
        points = net.mirror(net(batch.flip(-1))) if mirrored else net(batch)
        out.append(points[:, :NUM_KEYPOINTS])
    return torch.cat(out).numpy()


def fold_runs(run_a: Path, run_b: Path, fold: int) -> dict[str, np.ndarray]:
    """Pixel predictions of A with two views and of the pair (A on the face, B on its mirror) for a fold."""
    (net_a,), _ = exported_networks(run_a / f"fold_{fold}" / MODEL_FILE)
    (net_b,), _ = exported_networks(run_b / f"fold_{fold}" / MODEL_FILE)
    config = json.loads((run_a / f"fold_{fold}" / CARD_FILE).read_text())["config"]
    _, images = fold_people(config["data"], fold, config["folds"])
    face_a, mirror_a, mirror_b = (answers(n, images, m) for n, m in ((net_a, False), (net_a, True), (net_b, True)))
    return {"a2": denormalize((face_a + mirror_a) / 2), "pair": denormalize((face_a + mirror_b) / 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="a train/cv.py run of students (its fold_k/keypoints.pt)")
    parser.add_argument("b", type=Path, help="another, trained from another seed")
    parser.add_argument("--out", type=Path, required=True, help="the pair's run; A with two views goes to OUT-a2")
    args = parser.parse_args(argv)
    folds = sorted(int(p.parent.name.split("_")[1]) for p in args.a.glob(f"fold_*/{MODEL_FILE}")
                   if (args.b / p.parent.name / MODEL_FILE).is_file())
    if not folds:
        print(f"error: {args.a} and {args.b} have no fold with a model in common", file=sys.stderr)
        return 2
    for fold in folds:
        saved = {key: value for key, value in np.load(args.a / f"fold_{fold}" / PREDICTIONS).items()
                 if key in ("truth", "people", "minutes")}  # the 68 points' answers were forward()'s: left out
        made = fold_runs(args.a, args.b, fold)
        for name, out in (("a2", Path(f"{args.out}-a2")), ("pair", args.out)):
            (out / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
            np.savez(out / f"fold_{fold}" / PREDICTIONS, **{**saved, "pred": made[name]})
            print(f"fold {fold}, {name}: {metrics.score(made[name], saved['truth']):.1f}", flush=True)
    print(f"python train/studies/compare.py {args.out}-a2 {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
