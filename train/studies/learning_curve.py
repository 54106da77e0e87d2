"""How much more people help: fit score against training people, and extrapolate to all of them.

    python train/studies/learning_curve.py runs/lc60-p50 runs/lc60-p70 runs/cv-m1e60-reg
    python train/studies/learning_curve.py A B C --plot docs/learning_curve.png

Each argument is a train/cv.py run of one recipe trained on a different share of each fold's
training people (train/run.py's `--train-people F` until commit 77f3fea; the records are in docs/cv/lc*);
the folds they all have are used. A fold's model never sees
a fifth of the people, the shipped one sees them all, so a cross-validated score understates the
shipped model by what those people add. A power law, score ∝ people^alpha, is fitted with one
slope for all folds (each fold its own level), and the shipped model's gain is read off it at
every fold's people (its training people plus its validation people). The interval resamples the
validation people of each fold, every run alike; the training's own noise is not in it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from facekp import metrics
from train.studies.compare import check_same_faces, load_folds


def train_people(run: Path, fold: int) -> int:
    """How many people fold `fold` of a run trained on, from its card."""
    return int(json.loads((run / f"fold_{fold}" / "model_card.json").read_text())["data"]["train_people"])


def common_slope(log_people: list[np.ndarray], log_mse: list[np.ndarray]) -> float:
    """Least-squares slope of log mse on log people, one slope for all folds, each fold its own intercept."""
    x = np.concatenate([v - v.mean() for v in log_people])
    y = np.concatenate([v - v.mean(axis=-1, keepdims=True) for v in log_mse], axis=-1)
    return (y @ x) / (x @ x)


def fit(runs: list[Path], target: int | None = None, rounds: int = 2000, seed: int = 0) -> dict:
    loaded = [load_folds(run) for run in runs]
    folds = sorted(set.intersection(*(set(run) for run in loaded)))
    if not folds:
        raise ValueError("the runs have no fold in common")
    rng = np.random.default_rng(seed)
    log_people, log_mse, draws_log_mse, rows, full = [], [], [], [], []
    for fold in folds:
        first = loaded[0][fold]
        for run, found in zip(runs[1:], loaded[1:], strict=True):
            check_same_faces(first, found[fold], fold, str(runs[0]), str(run))
        counts = np.array([train_people(run, fold) for run in runs])
        if len(set(counts)) < 2:
            raise ValueError(f"fold {fold}: every run trained on {counts[0]} people; give runs of other shares")
        mse = np.array([metrics.per_image_mse(found[fold]["pred"], first["truth"]) for found in loaded])
        names, index = np.unique(first["people"], return_inverse=True)
        sums = np.array([np.bincount(index, row) for row in mse])  # (runs, people)
        faces = np.bincount(index)
        draw = rng.integers(0, len(names), size=(rounds, len(names)))  # the same people for every run
        log_people.append(np.log(counts))
        log_mse.append(np.log(sums.sum(axis=1) / faces.sum()))
        draws_log_mse.append(np.log(sums[:, draw].sum(axis=2) / faces[draw].sum(axis=1)).T)  # (rounds, runs)
        biggest = int(np.argmax(counts))
        everyone = target or int(counts[biggest]) + len(names)
        full.append((sums[biggest], draw, np.log(everyone / counts[biggest])))
        rows.append({"fold": fold, "people": counts.tolist(), "scores": [1 / (2 * m) for m in mse.mean(axis=1)],
                     "everyone": everyone})

    def gain(slope: float, draw_index: int | None) -> float:
        """Pooled score of the largest runs moved along the fit to everyone, over their pooled score."""
        now = moved = 0.0
        for sums, draw, step in full:  # every fold keeps its faces: the ratio of scores is that of summed mse
            picked = sums.sum() if draw_index is None else sums[draw[draw_index]].sum()
            now += picked
            moved += picked * np.exp(slope * step)
        return now / moved

    slope = float(common_slope(log_people, log_mse))
    slopes = common_slope(log_people, draws_log_mse)  # (rounds,)
    gains = np.array([gain(s, i) for i, s in enumerate(slopes)])
    return {"folds": folds, "per_fold": rows, "alpha": -slope,
            "alpha_95": sorted((-np.percentile(slopes, [97.5, 2.5])).tolist()),
            "gain": gain(slope, None), "gain_95": np.percentile(gains, [2.5, 97.5]).tolist()}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in result["per_fold"]:
        people, scores = np.array(row["people"]), np.array(row["scores"])
        line = ax.plot(people, scores, "o", label=f"fold {row['fold']}")[0]
        grid = np.geomspace(people.min(), row["everyone"], 50)
        level = np.exp(np.mean(np.log(scores) - result["alpha"] * np.log(people)))
        ax.plot(grid, level * grid ** result["alpha"], "--", color=line.get_color())
        ax.axvline(row["everyone"], color="0.8", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers, not powers of ten
        axis.set_major_formatter(FormatStrFormatter("%d"))
        axis.set_minor_formatter(FormatStrFormatter("%d"))
    ax.set_xlabel("training people")
    ax.set_ylabel("score on the fold's people never seen")
    ax.set_title(f"score ∝ people^{result['alpha']:.2f}; all people: ×{result['gain']:.3f}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="train/cv.py --out folders of one recipe at other shares")
    parser.add_argument("--people", type=int, default=None,
                        help="extrapolate to this many people (default: each fold's training + validation people)")
    parser.add_argument("--plot", type=Path, default=None, help="also save the curve as a PNG")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two runs (the same recipe on different shares of the people)")
    try:
        result = fit(args.runs, args.people)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for row in result["per_fold"]:
        points = ", ".join(f"{n} people {s:.1f}" for n, s in zip(row["people"], row["scores"], strict=True))
        print(f"fold {row['fold']}: {points}")
    low, high = result["alpha_95"]
    print(f"score ∝ people^{result['alpha']:.3f} (95 % over the validation people {low:.3f} to {high:.3f}), "
          f"one slope for folds {result['folds']}")
    low, high = result["gain_95"]
    everyone = sorted({row["everyone"] for row in result["per_fold"]})
    print(f"trained on {'/'.join(map(str, everyone))} people instead: pooled score ×{result['gain']:.3f} "
          f"(95 % {low:.3f} to {high:.3f})")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
