"""Give one-pass students already trained their mirrored pass: the models `--student-flip-tta` exports.

    python train/mirror.py runs/cv-student-reg runs/cv-student-reg-mirrored   # every fold of a train/cv.py run
    python train/cv.py --folds 5 --out runs/cv-student-reg-mirrored --summary   # its pooled estimate

`--student-flip-tta` changes only what a student exports and the score it prints, not its training, so a
one-pass student's file already holds the weights of the two-pass model. This rebuilds the network from them,
exports it with its mirrored pass (train/model.py's ServingModel), and scores the fold's own people again:
the cross-validated estimate of the two-pass model costs seconds instead of four hours of training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from facekp import metrics  # noqa: E402
from facekp.contract import denormalize  # noqa: E402
from train import run  # noqa: E402
from train.cv import PREDICTIONS, fold_people  # noqa: E402
from train.model import ServingModel  # noqa: E402


def mirror_fold(source: Path, target: Path) -> dict:
    """Export source's student with its mirrored pass into target and score it on the fold's people."""
    card = json.loads((source / run.CARD_FILE).read_text())
    if card["network_passes_per_face"] != 1 or card["members"] != 0:
        raise ValueError(f"{source} is not a one-pass student (--members 0): nothing to mirror")
    config = card["config"]
    (net,), _ = run.exported_networks(source / run.MODEL_FILE)  # a student: one network, checked against the file
    val, images = fold_people(config["data"], config["fold"], config["folds"])
    one_pass = denormalize(run.predict(ServingModel(net, flip=False), images))
    saved = np.load(source / PREDICTIONS)
    if not np.allclose(one_pass, saved["pred"], atol=1e-3):  # px; the rebuilt network must be the trained one
        raise ValueError(f"the network rebuilt from {source / run.MODEL_FILE} does not reproduce its predictions")
    model = ServingModel(net, flip=True).eval()
    pred = denormalize(run.predict(model, images))
    target.mkdir(parents=True, exist_ok=True)
    run.export(model, target / run.MODEL_FILE)
    np.savez(target / PREDICTIONS, pred=pred, truth=saved["truth"], people=saved["people"], minutes=saved["minutes"])
    card["network_passes_per_face"] = 2
    card["config"]["student_flip_tta"] = True
    card["validation"]["score_without_flip_tta"] = card["validation"]["score"]
    card["validation"]["score"] = metrics.score(pred, val.keypoints)
    card["validation"]["rmse_px"] = metrics.rmse_px(pred, val.keypoints)
    card["mirrored_from"] = str(source / run.MODEL_FILE)
    (target / run.CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card["validation"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a train/cv.py run of one-pass students")
    parser.add_argument("target", type=Path, help="where the two-pass folds go (a train/cv.py run of its own)")
    args = parser.parse_args(argv)
    folds = sorted(path.parent for path in args.source.glob(f"fold_*/{PREDICTIONS}"))
    if not folds:
        parser.error(f"{args.source} has no finished fold (fold_*/{PREDICTIONS})")
    for fold_dir in folds:
        try:
            validation = mirror_fold(fold_dir, args.target / fold_dir.name)
        except ValueError as error:
            parser.exit(2, f"error: {error}\n")
        print(f"{fold_dir.name}: one pass {validation['score_without_flip_tta']:.1f}, "
              f"with its mirrored pass {validation['score']:.1f} -> {args.target / fold_dir.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
