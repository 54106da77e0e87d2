"""The confidence of each served point, calibrated on people the network never saw.

    python train/calibrate.py fit runs/jawreach/fold_0 runs/reach/fold_1 runs/reach/fold_4 \
        --out train/confidence.json --plot docs/accuracy/confidence.png    # fold models, each on its people
    python train/calibrate.py apply train/confidence.json model_store      # re-export a model with it

A served file answers every point with an uncertainty (train/model.py's ServingModel.answers: the heatmaps'
spread plus the views' disagreement). Alone it ranks errors poorly: a jaw point's heatmap is wide on every
face. So the score is the point's usual error, times the root of how unsure the network is of the whole face
and of this point, each against its usual (train/model.py's expected_error). Confidence is then the
probability that the point lies within CLOSE (5 %) of the face's inter-ocular distance (outer eye corners,
iBUG points 36 and 45) of its label: a logistic curve in log(score), one for the 15 points and one for the 68.

`fit` measures all of it on the held-out people of models of folds (each card says which), each model on its
own fold's people, at the CPU's default views, and reports it honestly: each fold is scored with the numbers
fitted on the others (a different model and other people, as the shipped file is), or with one fold, each half
of its people with the numbers of the other half. `apply` puts the numbers fitted on all of them into a served
file's buffers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from facekp import data as facedata
from facekp import metrics
from facekp.contract import NUM_KEYPOINTS, denormalize
from facekp.data import REPO_ROOT
from train.exported import CARD_FILE, MODEL_FILE, export, exported_networks, to_tensors
from train.model import ServingModel, expected_error, shift_views

CALIBRATION = REPO_ROOT / "train" / "confidence.json"  # the shipped recipe's, fitted on folds' held-out people
CLOSE = metrics.CLOSE  # 5 % of the inter-ocular distance: a point this close to its label counts as right
VIEWS = 2  # the CPU's default (handler/settings.py): flip, no shift
PARTS = {"15": slice(0, NUM_KEYPOINTS), "68": slice(NUM_KEYPOINTS, None)}


def served(folder: Path) -> tuple[ServingModel, dict]:
    """A folder's served file rebuilt as a module, with its card's views."""
    card = json.loads((folder / CARD_FILE).read_text())
    nets, flip = exported_networks(folder / MODEL_FILE)
    shift = card.get("views", {}).get("shift", card["config"].get("student_tta_shift", 0))
    return ServingModel(nets, flip, shift_views(shift)).eval(), card


def held_out(model: ServingModel, card: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(relative errors (N, points), raw spreads (N, points), people (N,)) on the card's held-out people, at
    VIEWS views."""
    config = card["config"]
    if config.get("all_people", True):
        raise SystemExit("this model trained on every person: calibrate a model of a fold (train/cv.py)")
    _, val = facedata.split_by_person(facedata.load(config["data"] or None), config["fold"], config["folds"])
    images, _ = to_tensors(val)
    with torch.inference_mode():
        # VIEWS: the face and its mirror image, not moved
        raw = torch.cat([model.answers(images[i:i + 256], True, shift_views(0)) for i in range(0, len(images), 256)])
    raw = raw.numpy()
    truth = np.concatenate([val.keypoints, val.keypoints68], axis=1)[:, :raw.shape[1]]  # the points it predicts
    errors = metrics.relative_errors(denormalize(raw[..., :2]), truth, metrics.inter_ocular(val.keypoints68))
    return errors, raw[..., 2], val.people


def pooled(folders: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """held_out of each fold model on its own people, pooled: (errors, spreads, people, each face's fold, where
    they came from)."""
    found, sources = [], []
    for folder in folders:
        model, card = served(folder)
        errors, spreads, people = held_out(model, card)
        found.append((errors, spreads, people, np.full(len(people), card["config"]["fold"])))
        sources.append(f"{folder} ({card['data']['split']})")
    if len({errors.shape[1] for errors, *_ in found}) > 1:
        raise SystemExit(f"{', '.join(map(str, folders))}: the models predict different points; calibrate alike ones")
    errors, spreads, people, folds = (np.concatenate([f[k] for f in found]) for k in range(4))
    return errors, spreads, people, folds, "; ".join(sources)


def parts(errors: np.ndarray) -> dict[str, slice]:
    """The 15 named points, and the 68 where the model predicts them."""
    return {name: part for name, part in PARTS.items() if errors.shape[1] > part.start}


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """(a, b) of P(y) = sigmoid(a + b x), by maximum likelihood (Newton's method on two numbers)."""
    design = np.stack([np.ones_like(x), x], axis=1)
    ab = np.zeros(2)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(design @ ab)))
        hessian = design.T @ (design * (p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        ab = ab + np.linalg.solve(hessian, design.T @ (y - p))
    return float(ab[0]), float(ab[1])


def fit(errors: np.ndarray, spreads: np.ndarray) -> dict[str, list[float]]:
    """The buffers of ServingModel's confidence, fitted on these faces (NaN errors: unlabelled points)."""
    usual = np.median(spreads, axis=0)
    prior = np.nanmean(errors, axis=0)
    calibration = {"usual_spread": usual.tolist(), "error_prior": prior.tolist()}
    score = np.log(np.maximum(scores(spreads, calibration), 1e-8))  # as ServingModel.confident clamps
    a, b = np.zeros(errors.shape[1]), np.zeros(errors.shape[1])
    for part in parts(errors).values():
        known = np.isfinite(errors[:, part])
        a[part], b[part] = fit_logistic(score[:, part][known], (errors[:, part][known] < CLOSE).astype(float))
    return {**calibration, "curve_a": a.tolist(), "curve_b": b.tolist()}


def scores(spreads: np.ndarray, calibration: dict) -> np.ndarray:
    """expected_error of these spreads with these numbers, as ServingModel.confident computes it."""
    return expected_error(*(torch.as_tensor(np.asarray(v, dtype=np.float64)) for v in
                            (spreads, calibration["usual_spread"], calibration["error_prior"]))).numpy()


def confidences(spreads: np.ndarray, calibration: dict) -> np.ndarray:
    score = np.log(np.maximum(scores(spreads, calibration), 1e-8))
    z = np.array(calibration["curve_a"]) + np.array(calibration["curve_b"]) * score
    return 1 / (1 + np.exp(-z))


def report(confidence: np.ndarray, errors: np.ndarray) -> dict:
    """Per part (the 15, the 68): facekp.metrics.confidence_report."""
    return {name: metrics.confidence_report(confidence[:, part], errors[:, part], CLOSE)
            for name, part in parts(errors).items()}


def groups(folds: np.ndarray, people: np.ndarray) -> np.ndarray:
    """Which group each face is scored in: its fold, or with one fold, a random half of its people."""
    if len(np.unique(folds)) > 1:
        return folds
    names = np.unique(people)
    return np.isin(people, np.random.default_rng(0).permutation(names)[: len(names) // 2]).astype(int)


def cross_fitted(errors: np.ndarray, spreads: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Each group's confidences, from the numbers fitted on the other groups."""
    out = np.empty_like(errors)
    for g in np.unique(group):
        part = group == g
        out[part] = confidences(spreads[part], fit(errors[~part], spreads[~part]))
    return out


BUFFERS = ("usual_spread", "error_prior", "curve_a", "curve_b")


def apply(model: ServingModel, calibration: dict | None = None) -> bool:
    """Put a calibration (None: the shipped recipe's, train/confidence.json) into a served model's buffers;
    False, leaving it uncalibrated, when it predicts other points than the calibration's."""
    if calibration is None:
        if not CALIBRATION.is_file():
            return False
        calibration = json.loads(CALIBRATION.read_text())
    if len(calibration["curve_a"]) != len(model.curve_a):
        return False
    for name in BUFFERS:
        getattr(model, name).copy_(torch.tensor(calibration[name]))
    return True


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    for (name, part), colour in zip(result.items(), ("C0", "C1"), strict=False):
        rows = part["reliability"]
        ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], "o-", color=colour,
                label=f"{name} points: Spearman {part['spearman_confidence_error']:.2f}")
    ax.set(xlabel="confidence (mean over a tenth of the points)", ylabel=f"share within {CLOSE:.0%} of the IOD",
           title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def described(path: Path, calibration: dict) -> dict:
    """A card's note of the confidence calibration a model carries."""
    resolved = path.resolve()  # a clone's own file by its path in the clone, not this machine's
    return {"calibration": str(resolved.relative_to(REPO_ROOT) if resolved.is_relative_to(REPO_ROOT) else path),
            "fitted_on": calibration["fitted_on"],
            "held_out_report": {name: {k: v for k, v in part.items() if k != "reliability"}
                                for name, part in calibration["held_out_report"].items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fitting = sub.add_parser("fit", help="fit on fold models' held-out people and report it")
    fitting.add_argument("folders", type=Path, nargs="+",
                         help="run folders of folds (train/cv.py): keypoints.pt and its card")
    fitting.add_argument("--out", type=Path, required=True, help="the calibration (JSON)")
    fitting.add_argument("--plot", type=Path, default=None, help="a reliability plot (PNG)")
    applying = sub.add_parser("apply", help="re-export a served file with a calibration")
    applying.add_argument("calibration", type=Path)
    applying.add_argument("folder", type=Path, help="a run folder (keypoints.pt and its card), rewritten")
    args = parser.parse_args(argv)
    if args.command == "apply":
        model, card = served(args.folder)
        calibration = json.loads(args.calibration.read_text())
        if not apply(model, calibration):
            parser.error(f"{args.folder / MODEL_FILE} predicts other points than {args.calibration} was fitted on")
        export(model, args.folder / MODEL_FILE)
        card["size_bytes"] = (args.folder / MODEL_FILE).stat().st_size
        card["confidence"] = described(args.calibration, calibration)
        (args.folder / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        print(f"re-exported {args.folder / MODEL_FILE} with the confidence of {args.calibration}")
        return 0
    errors, spreads, people, folds, sources = pooled(args.folders)
    confidence = cross_fitted(errors, spreads, groups(folds, people))
    result = report(confidence, errors)
    several = len(set(folds)) > 1
    how = ("each fold scored with the numbers fitted on the others" if several
           else "each half scored with the numbers of the other")
    for name, part in result.items():
        print(f"{name} points on {len(people)} faces of {len(set(people))} people never seen ({how}): "
              f"{metrics.describe_confidence(part)}", flush=True)
    by_fold = {}  # one model's ranking of its own people: what a served file's users see
    for fold in sorted(set(folds)) if several else []:
        by_fold[int(fold)] = report(confidence[folds == fold], errors[folds == fold])
        for name, part in by_fold[int(fold)].items():
            print(f"  fold {fold}, {name} points: {metrics.describe_confidence(part)}", flush=True)
    calibration = {**fit(errors, spreads), "fitted_on": f"{sources}, {VIEWS} views", "close": CLOSE,
                   "held_out_report": result, "held_out_by_fold": by_fold}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(calibration, indent=1) + "\n")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(result, args.plot, f"confidence on {len(set(people))} people never seen, {VIEWS} views")
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
