"""Give students already trained other served views: their mirrored pass, and views moved a few pixels.

    python train/studies/mirror.py runs/cv-student-reg runs/cv-student-reg-mirrored   # every fold of a train/cv.py run
    python train/cv.py --folds 5 --out runs/cv-student-reg-mirrored --summary   # its pooled estimate
    python train/studies/mirror.py runs/cv-student-reg runs/cv-student-shift2 --tta-shift 2   # and views moved 2 px
    python train/studies/mirror.py runs/ship runs/ship-shift2 --tta-shift 2   # one student's directory (a card in it)

The served views (train/recipe.py's Views) change only what a student exports and the score it prints, not
its training, so a student's file already holds the weights of the model with other views. This rebuilds the
network from them, exports it with its mirrored pass and `--tta-shift` (train/model.py's ServingModel), and
scores the fold's own people again: the cross-validated estimate of other views costs seconds instead of
hours of training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from facekp import metrics
from facekp.contract import denormalize
from train.cv import PREDICTIONS, fold_people
from train.exported import CARD_FILE, MODEL_FILE, export, exported_networks, predict
from train.model import ServingModel, shift_views


def mirror_fold(source: Path, target: Path, shift: int = 0) -> dict:
    """Export source's student with its mirrored pass (and views moved by shift pixels) into target and score
    it on the validation people of its card."""
    card = json.loads((source / CARD_FILE).read_text())
    nets, _ = exported_networks(source / MODEL_FILE)  # checked against the file
    if card.get("members", 0) != 0 or len(nets) != 1:
        raise ValueError(f"{source} is not a student: it has no single network to give views")
    (net,), config = nets, card["config"]
    val, images = fold_people(config["data"], config["fold"], config["folds"])
    one_pass = denormalize(predict(ServingModel(net, flip=False), images))
    model = ServingModel(net, flip=True, shifts=shift_views(shift)).eval()
    pred = denormalize(predict(model, images))
    target.mkdir(parents=True, exist_ok=True)
    export(model, target / MODEL_FILE)
    if (source / PREDICTIONS).exists():  # a fold of train/cv.py: the new answers, for its summary
        saved = np.load(source / PREDICTIONS)
        np.savez(target / PREDICTIONS, pred=pred, truth=saved["truth"], people=saved["people"],
                 minutes=saved["minutes"])
    card["network_passes_per_face"] = model.passes_per_net
    if "views" in card:
        card["views"] = {"flip": True, "shift": shift}
    else:  # a card from before the recipe had names
        card["config"]["student_flip_tta"] = True
        card["config"]["student_tta_shift"] = shift
    card["validation"]["score_without_flip_tta"] = metrics.score(one_pass, val.keypoints)
    card["validation"]["score"] = metrics.score(pred, val.keypoints)
    card["validation"]["rmse_px"] = metrics.rmse_px(pred, val.keypoints)
    card["validation"]["rmse_px_per_keypoint"] = metrics.rmse_px_by_name(pred, val.keypoints)
    card["size_bytes"] = (target / MODEL_FILE).stat().st_size
    card["mirrored_from"] = str(source / MODEL_FILE)
    (target / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card["validation"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a train/cv.py run of students, or one student's directory")
    parser.add_argument("target", type=Path, help="where the exported students go (a train/cv.py run of its own)")
    parser.add_argument("--tta-shift", type=int, default=0,
                        help="also average views moved this many pixels down-right and up-left (train/recipe.py's "
                             "Views.shift); default 0")
    args = parser.parse_args(argv)
    if (args.source / CARD_FILE).is_file():
        pairs = [(args.source, args.target)]
    else:
        pairs = [(path.parent, args.target / path.parent.name)
                 for path in sorted(args.source.glob(f"fold_*/{PREDICTIONS}"))]
    if not pairs:
        parser.error(f"{args.source} has neither a {CARD_FILE} nor a finished fold (fold_*/{PREDICTIONS})")
    for source, target in pairs:
        try:
            validation = mirror_fold(source, target, args.tta_shift)
        except ValueError as error:
            parser.exit(2, f"error: {error}\n")
        views = f" and views moved {args.tta_shift} px" if args.tta_shift else ""
        print(f"{source.name}: one pass {validation['score_without_flip_tta']:.1f}, with its mirrored pass{views} "
              f"{validation['score']:.1f} -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
