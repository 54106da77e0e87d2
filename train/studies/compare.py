"""Compare two recipes on the same people: the paired difference of two train/cv.py runs.

    python train/studies/compare.py runs/cv-m1e60 runs/cv-m1e60-reg
    python train/studies/compare.py runs/cv-m1e60-reg runs/cv-m1e60-reg+runs/cv-m1e60   # B: the two networks together
    python train/studies/compare.py A A+B --save runs/cv-pair   # also write B as a cv run (then cv.py --summary --card)

A run written as `DIR1+DIR2` is the ensemble of those runs, each face's keypoints averaged over
them as one model with both networks answers (train/model.py averages its members), so whether a
second network pays can be measured before training a model that holds two.

Two recipes scored on the same people differ far less than either's score moves with which
people it holds (±10 % between folds): resampling the people once for both recipes (a paired
bootstrap) gives an interval on the ratio of their pooled scores that is much narrower than
the two intervals side by side. Only the folds both runs have done are compared. The interval
is over people only: the training's own noise (seed, batch order) is not in it, and moved a
one-network score by about 1 % between seeds (docs/accuracy.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from facekp import metrics
from train.cv import PREDICTIONS, bootstrap_interval, fold_number


def load_folds(cv_dir: Path) -> dict[int, dict[str, np.ndarray]]:
    """fold number -> its saved validation predictions (train/cv.py's fold_k/predictions.npz)."""
    found = {}
    for path in sorted(cv_dir.glob(f"fold_*/{PREDICTIONS}")):
        with np.load(path) as saved:
            found[fold_number(path.parent)] = {key: saved[key] for key in saved.files}
    return found


def check_same_faces(a: dict[str, np.ndarray], b: dict[str, np.ndarray], fold: int, name_a: str, name_b: str) -> None:
    """Refuse two runs whose fold holds other faces: their scores could not be paired."""
    if not (np.array_equal(a["people"], b["people"]) and np.allclose(a["truth"], b["truth"])):
        raise ValueError(f"fold {fold} holds different faces in {name_a} and {name_b}: not the same split")


def load_run(spec: str) -> dict[int, dict[str, np.ndarray]]:
    """A run's folds; `DIR1+DIR2` averages the runs' keypoints on the folds they all have (an ensemble)."""
    parts = spec.split("+")
    runs = [load_folds(Path(part)) for part in parts]
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    averaged = {}
    for fold in sorted(set.intersection(*(set(run) for run in runs))):
        for run, part in zip(runs[1:], parts[1:], strict=True):
            check_same_faces(first[fold], run[fold], fold, parts[0], part)
        averaged[fold] = dict(first[fold], pred=np.mean([run[fold]["pred"] for run in runs], axis=0),
                              minutes=sum(float(run[fold]["minutes"]) for run in runs))  # trained one after another
    return averaged


def save_run(folds: dict[int, dict[str, np.ndarray]], out: Path) -> None:
    """Write folds as a train/cv.py run of their own, e.g. an ensemble, for cv.py --summary and --card."""
    for fold, saved in folds.items():
        (out / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        np.savez(out / f"fold_{fold}" / PREDICTIONS, **saved)


def paired_ratio(mse_a: np.ndarray, mse_b: np.ndarray, people: np.ndarray, rounds: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Pooled score of B over that of A on the same faces, and its 95 % interval over people."""
    names, index = np.unique(people, return_inverse=True)
    sums_a, sums_b = np.bincount(index, mse_a), np.bincount(index, mse_b)
    draws = np.random.default_rng(seed).integers(0, len(names), size=(rounds, len(names)))
    ratios = sums_a[draws].sum(axis=1) / sums_b[draws].sum(axis=1)  # score = 1 / (2 mse): the ratio inverts
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(mse_a.sum() / mse_b.sum()), float(low), float(high)


def compare(dir_a: str | Path, dir_b: str | Path) -> dict:
    folds_a, folds_b = load_run(str(dir_a)), load_run(str(dir_b))
    common = sorted(set(folds_a) & set(folds_b))
    if not common:
        raise ValueError(f"{dir_a} and {dir_b} have no fold in common (folds {sorted(folds_a)} and {sorted(folds_b)})")
    rows, mse_a, mse_b, people = [], [], [], []
    for fold in common:
        a, b = folds_a[fold], folds_b[fold]
        check_same_faces(a, b, fold, str(dir_a), str(dir_b))
        rows.append({"fold": fold, "a": metrics.score(a["pred"], a["truth"]),
                     "b": metrics.score(b["pred"], b["truth"])})
        mse_a.append(metrics.per_image_mse(a["pred"], a["truth"]))
        mse_b.append(metrics.per_image_mse(b["pred"], b["truth"]))
        people.append(a["people"])
    mse_a, mse_b, people = np.concatenate(mse_a), np.concatenate(mse_b), np.concatenate(people)
    ratio, low, high = paired_ratio(mse_a, mse_b, people)
    return {"a": str(dir_a), "b": str(dir_b), "folds": common, "people": len(np.unique(people)),
            "faces": len(people), "pooled_a": float(1 / (2 * mse_a.mean())), "pooled_b": float(1 / (2 * mse_b.mean())),
            "pooled_a_95": list(bootstrap_interval(mse_a, people)),
            "pooled_b_95": list(bootstrap_interval(mse_b, people)),
            "ratio": ratio, "ratio_95": [low, high], "per_fold": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the reference recipe's train/cv.py --out folder (DIR1+DIR2: their ensemble)")
    parser.add_argument("b", help="the recipe compared with it (DIR1+DIR2: their ensemble)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--save", type=Path, default=None,
                        help="also write B's folds (an ensemble: its averaged keypoints) as a train/cv.py run there")
    args = parser.parse_args(argv)
    try:
        result = compare(args.a, args.b)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.save is not None:
        save_run(load_run(args.b), args.save)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for row in result["per_fold"]:
        print(f"fold {row['fold']}: {row['a']:7.1f} -> {row['b']:7.1f}  ({row['b'] / row['a'] - 1:+.1%})")
    low, high = result["ratio_95"]
    print(f"pooled over {result['people']} people, {result['faces']} faces, folds {result['folds']}: "
          f"{result['pooled_a']:.1f} -> {result['pooled_b']:.1f}, B/A {result['ratio']:.3f} "
          f"(95 % paired bootstrap over people {low:.3f} to {high:.3f})")
    for name in ("a", "b"):
        low, high = result[f"pooled_{name}_95"]
        print(f"{name.upper()} alone: {result[f'pooled_{name}']:.1f}, "
              f"95 % bootstrap over people {low:.1f} to {high:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
