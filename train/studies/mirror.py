"""Give students already trained their mirrored pass: the models `--student-flip-tta` exports.

    python train/studies/mirror.py runs/cv-student-reg runs/cv-student-reg-mirrored   # every fold of a train/cv.py run
    python train/cv.py --folds 5 --out runs/cv-student-reg-mirrored --summary   # its pooled estimate
    python train/studies/mirror.py runs/cv-student-reg runs/cv-student-shift2 --tta-shift 2   # and views moved 2 px
    python train/studies/mirror.py runs/ship runs/ship-shift2 --tta-shift 2   # one student's directory (a card in it)

`--student-flip-tta` changes only what a student exports and the score it prints, not its training, so a
one-pass student's file already holds the weights of the two-pass model. This rebuilds the network from them,
exports it with its mirrored pass (train/model.py's ServingModel), and scores the fold's own people again:
the cross-validated estimate of the two-pass model costs seconds instead of four hours of training.
`--tta-shift` (test-time views, like --student-flip-tta not part of training) is given the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from facekp import metrics
from facekp.contract import denormalize
from train import run
from train.cv import PREDICTIONS, fold_people
from train.model import ServingModel, shift_views


def mirror_fold(source: Path, target: Path, shift: int = 0) -> dict:
    """Export source's student with its mirrored pass (and views moved by shift pixels) into target and score
    it on the validation people of its card."""
    card = json.loads((source / run.CARD_FILE).read_text())
    if card["members"] != 0:
        raise ValueError(f"{source} is not a student (--members 0): it has no single network to give views")
    config = card["config"]
    (net,), _ = run.exported_networks(source / run.MODEL_FILE)  # a student: one network, checked against the file
    val, images = fold_people(config["data"], config["fold"], config["folds"])
    one_pass = denormalize(run.predict(ServingModel(net, flip=False), images))
    model = ServingModel(net, flip=True, shifts=shift_views(shift)).eval()
    pred = denormalize(run.predict(model, images))
    target.mkdir(parents=True, exist_ok=True)
    run.export(model, target / run.MODEL_FILE)
    if (source / PREDICTIONS).exists():  # a fold of train/cv.py: the new answers, for its summary
        saved = np.load(source / PREDICTIONS)
        np.savez(target / PREDICTIONS, pred=pred, truth=saved["truth"], people=saved["people"],
                 minutes=saved["minutes"])
    card["network_passes_per_face"] = model.passes_per_net
    card["config"]["student_flip_tta"] = True
    card["config"]["student_tta_shift"] = shift
    card["validation"]["score_without_flip_tta"] = metrics.score(one_pass, val.keypoints)
    card["validation"]["score"] = metrics.score(pred, val.keypoints)
    card["validation"]["rmse_px"] = metrics.rmse_px(pred, val.keypoints)
    card["validation"]["rmse_px_per_keypoint"] = metrics.rmse_px_by_name(pred, val.keypoints)
    card["size_bytes"] = (target / run.MODEL_FILE).stat().st_size
    card["mirrored_from"] = str(source / run.MODEL_FILE)
    (target / run.CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card["validation"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a train/cv.py run of students, or one student's directory")
    parser.add_argument("target", type=Path, help="where the exported students go (a train/cv.py run of its own)")
    parser.add_argument("--tta-shift", type=int, default=0,
                        help="also average views moved this many pixels down-right and up-left (train/run.py's "
                             "--student-tta-shift); default 0")
    args = parser.parse_args(argv)
    if (args.source / run.CARD_FILE).is_file():
        pairs = [(args.source, args.target)]
    else:
        pairs = [(path.parent, args.target / path.parent.name)
                 for path in sorted(args.source.glob(f"fold_*/{PREDICTIONS}"))]
    if not pairs:
        parser.error(f"{args.source} has neither a {run.CARD_FILE} nor a finished fold (fold_*/{PREDICTIONS})")
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
