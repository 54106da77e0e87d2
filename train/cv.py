"""Person-level k-fold cross-validation of a training recipe: every person validated exactly once.

The shipped recipe, all folds (each fold trains its own two teachers, then their student: ~45 min a fold on
a 2-core Xeon with AMX):

    python train/cv.py --folds 5 --out runs/recipe
    python train/cv.py --folds 5 --out runs/recipe-d7 -- --distill 0.7 \
        --teachers 'runs/recipe/fold_{fold}/teachers/long.pt+runs/recipe/fold_{fold}/teachers/short.pt'
                                     # a student's setting changed, from the same fold teachers
    python train/cv.py --folds 5 --only 0 --out /tmp/cv -- --quick  # one fold (the quick test)
    python train/cv.py --folds 5 --out runs/cv --summary           # train nothing: pool the folds done so far
    python train/cv.py --folds 5 --out runs/cv-pair --summary --card model_store/model_card.json
                                     # record the estimate in the card of the model it chose

Flags after `--` go to train/run.py, with `{fold}` replaced by the fold's number: a student is
distilled from the teacher of its own fold, never from one that saw its validation people.
Each fold trains with `--fold k --folds N` (never on all people) into OUT/fold_k and saves its
predictions there; a fold already done is kept (rerun to resume).
The summary pools the predictions of all folds done so far: the pooled score, the mean and
spread over folds, a 95 % bootstrap interval over people, and the score per person
(OUT/cv.json, OUT/per_person.png).
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
from facekp.contract import NUM_KEYPOINTS, VIEW_SETTINGS, denormalize, view_method
from train import run
from train.exported import CARD_FILE, MODEL_FILE, predict, to_tensors

PREDICTIONS = "predictions.npz"


def fold_number(fold_dir: Path) -> int:
    """k of a run's fold_k folder."""
    return int(fold_dir.name.split("_")[1])


def fold_people(data: str, fold: int, folds: int) -> tuple[facedata.FaceData, torch.Tensor]:
    """A fold's validation faces, and their images as a model takes them."""
    _, val = facedata.split_by_person(facedata.load(data or None), fold, folds)
    return val, to_tensors(val)[0]


def run_fold(fold: int, folds: int, out: Path, train_args: list[str]) -> Path:
    """Train one fold (unless already done) and save its validation predictions; returns the file."""
    fold_dir = out / f"fold_{fold}"
    done = fold_dir / PREDICTIONS
    if done.exists():
        print(f"fold {fold}/{folds}: kept {done}", flush=True)
        return done
    fold_args = [arg.replace("{fold}", str(fold)) for arg in train_args]
    cfg = run.parse_args([*fold_args, "--fold", str(fold), "--folds", str(folds), "--out", str(fold_dir)])
    print(f"fold {fold}/{folds}: training", flush=True)
    card = run.train(cfg)
    val, images = fold_people(cfg.data, fold, folds)
    model = torch.jit.load(str(fold_dir / MODEL_FILE))
    pred = denormalize(predict(model, images))
    np.savez(done, pred=pred, truth=val.keypoints, people=val.people, minutes=card["training_minutes"],
             **answers_68(model, images, val))
    return done


def answers_68(model: torch.jit.ScriptModule, images: torch.Tensor, val: facedata.FaceData) -> dict[str, np.ndarray]:
    """pred68 and truth68 (pixels) for a file that predicts the 68 points, at the views of its forward(); else {}."""
    method = getattr(model, view_method(max(VIEW_SETTINGS)), None)
    if method is None or val.keypoints68 is None:
        return {}
    with torch.inference_mode():
        answers = torch.cat([method(images[i:i + 256]) for i in range(0, len(images), 256)])
    if answers.shape[1] <= NUM_KEYPOINTS:
        return {}
    return {"pred68": denormalize(answers[:, NUM_KEYPOINTS:, :2].numpy()), "truth68": val.keypoints68}


def bootstrap_interval(per_image_mse: np.ndarray, people: np.ndarray, rounds: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """95 % interval of the pooled score when the people themselves are resampled."""
    names, index = np.unique(people, return_inverse=True)
    sums = np.bincount(index, per_image_mse)
    counts = np.bincount(index)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(rounds, len(names)))
    scores = 1 / (2 * sums[draws].sum(axis=1) / counts[draws].sum(axis=1))
    low, high = np.percentile(scores, [2.5, 97.5])
    return float(low), float(high)


def summarize(files: list[Path], folds: int) -> dict:
    parts = [np.load(f) for f in files]
    pred = np.concatenate([p["pred"] for p in parts])
    truth = np.concatenate([p["truth"] for p in parts])
    people = np.concatenate([p["people"] for p in parts])
    fold_scores = [metrics.score(p["pred"], p["truth"]) for p in parts]
    mse = metrics.per_image_mse(pred, truth)
    per_person = {name: float(1 / (2 * mse[people == name].mean())) for name in np.unique(people)}
    low, high = bootstrap_interval(mse, people)
    crossed = metrics.crossed_labels(truth)
    nme68 = {}
    if all("pred68" in p.files for p in parts):  # files that predict the 68 points (exported since 2026-12-04)
        truth68 = np.concatenate([p["truth68"] for p in parts])
        errors = metrics.relative_errors(np.concatenate([p["pred68"] for p in parts]), truth68,
                                         metrics.inter_ocular(truth68))
        nme68 = {"nme68_pct": 100 * float(np.nanmean(errors)),
                 "nme68_pct_jaw_and_inner": [100 * float(np.nanmean(errors[:, :17])),
                                             100 * float(np.nanmean(errors[:, 17:]))]}
    return {
        "folds": folds,
        "folds_done": [fold_number(f.parent) for f in files],
        "pooled_score": metrics.score(pred, truth),
        "pooled_rmse_px": metrics.rmse_px(pred, truth),
        "rmse_px_per_keypoint": metrics.rmse_px_by_name(pred, truth),  # where the error of people never seen lives
        "bootstrap_95": [low, high],
        "crossed_labels": int(crossed.sum()),  # mislabelled faces: kept in every score above
        "pooled_score_without_crossed_labels": metrics.score(pred[~crossed], truth[~crossed]),
        "fold_scores": fold_scores,
        "fold_mean": float(np.mean(fold_scores)),
        "fold_std": float(np.std(fold_scores, ddof=1)) if len(fold_scores) > 1 else 0.0,
        "faces": len(truth),
        "people": len(per_person),
        "training_minutes": [float(p["minutes"]) for p in parts],
        "per_person_score": dict(sorted(per_person.items(), key=lambda kv: kv[1])),
        **nme68,
    }


def hardest_keypoints(summary: dict, count: int = 4) -> str:
    """The keypoints that carry most of the pooled error, for the summary line (all of them are in cv.json)."""
    rmse = sorted(summary["rmse_px_per_keypoint"].items(), key=lambda kv: -kv[1])
    median = np.median([value for _, value in rmse])
    return ", ".join(f"{name} {value:.2f}" for name, value in rmse[:count]) + f"; median {median:.2f}"


def plot_per_person(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = list(summary["per_person_score"].values())
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(scores)), scores, width=1.0, color="tab:blue")
    ax.axhline(summary["pooled_score"], color="black", lw=1, label=f"pooled {summary['pooled_score']:.0f}")
    ax.axhline(700, color="tab:red", lw=1, ls="--", label="goal 700")
    ax.set_yscale("log")
    ax.set_xlabel(f"person (sorted), {summary['people']} people")
    ax.set_ylabel("score of the person's faces")
    ax.set_title(f"{len(summary['folds_done'])}-of-{summary['folds']}-fold cross-validation, score per person")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fold_recipes(files: list[Path]) -> list[str]:
    """What trained each fold, from its card: the command, and the file it was given its mirror from."""
    recipes = []
    for path in files:
        card_file = path.parent / CARD_FILE
        if not card_file.is_file():  # e.g. an ensemble's predictions written by train/studies/compare.py --save
            recipes.append(f"{path.parent}: no model card")
            continue
        card = json.loads(card_file.read_text())
        mirrored = f" (then train/studies/mirror.py of {card['mirrored_from']})" if "mirrored_from" in card else ""
        recipes.append(card["command"] + mirrored)
    return recipes


def record_in_card(summary: dict, card_path: Path, command: str) -> None:
    """The shipped model's card keeps the cross-validated estimate its recipe was chosen by."""
    card = json.loads(card_path.read_text())
    card["cross_validation"] = {
        "what": "pooled over people never seen by the fold's model; the recipe is fold_commands, "
                "which may be the shipped model's teacher rather than the model itself",
        "command": command,
        **{key: value for key, value in summary.items() if key != "per_person_score"},  # names stay in cv.json
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", type=int, nargs="+", default=None, help="run these folds only (0-based)")
    parser.add_argument("--out", type=Path, default=Path("runs/cv"))
    parser.add_argument("--summary", action="store_true",
                        help="train nothing: summarize the folds of --out already done (a fold missing is left out)")
    parser.add_argument("--card", type=Path, default=None,
                        help="a model card (model_card.json) to record the pooled estimate in, as 'cross_validation'")
    args = parser.parse_args(own)
    folds = args.only if args.only is not None else list(range(args.folds))
    if args.folds < 2 or any(not 0 <= k < args.folds for k in folds):
        parser.error(f"--only takes folds 0..{args.folds - 1}, and --folds is at least 2")
    if args.card is not None and not args.card.is_file():
        parser.error(f"--card {args.card}: no such file")
    if args.summary:
        files = [path for k in folds if (path := args.out / f"fold_{k}" / PREDICTIONS).exists()]
        if not files:
            parser.error(f"--summary: {args.out} has no fold done (fold_k/{PREDICTIONS})")
    else:
        try:
            files = [run_fold(k, args.folds, args.out, train_args) for k in folds]
        except facedata.DataError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    summary = summarize(files, args.folds)
    summary["train_args"] = train_args
    summary["fold_commands"] = fold_recipes(files)
    (args.out / "cv.json").write_text(json.dumps(summary, indent=2) + "\n")
    try:
        plot_per_person(summary, args.out / "per_person.png")
    except ImportError:
        pass  # matplotlib is a dev requirement; the numbers are in cv.json
    if args.card is not None:
        record_in_card(summary, args.card, "python train/cv.py " + " ".join(argv))
    scores = ", ".join(f"{s:.1f}" for s in summary["fold_scores"])
    low, high = summary["bootstrap_95"]
    lines = [f"cross-validation over {summary['people']} people, {summary['faces']} faces, "
             f"folds {summary['folds_done']} of {args.folds}:",
             f"pooled score {summary['pooled_score']:.1f} (rmse {summary['pooled_rmse_px']:.3f} px), "
             f"95 % bootstrap over people {low:.1f} to {high:.1f}",
             f"fold scores {scores}: mean {summary['fold_mean']:.1f} sd {summary['fold_std']:.1f}",
             f"hardest keypoints (rmse px): {hardest_keypoints(summary)}"]
    if "nme68_pct" in summary:
        jaw, inner = summary["nme68_pct_jaw_and_inner"]
        lines.append(f"68 iBUG points: NME {summary['nme68_pct']:.2f} % of the inter-ocular distance (jawline "
                     f"{jaw:.2f} %, the 51 inner points {inner:.2f} %)")
    if summary["crossed_labels"]:
        lines.append(f"without the {summary['crossed_labels']} crossed label(s) (a subject's-left point left of its "
                     f"right one: a mislabel, kept above): pooled score "
                     f"{summary['pooled_score_without_crossed_labels']:.1f}")
    lines.append(f"wrote {args.out / 'cv.json'}" + (f" and {args.card}" if args.card else ""))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
