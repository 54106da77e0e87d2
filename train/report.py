"""Figures for docs/accuracy.md from a trained model and its model card.

    python train/report.py                      # model_store/ -> docs/accuracy/
    python train/report.py --model-dir /tmp/m --out /tmp/figs
    python train/report.py --cv runs/cv-single-e120 runs/cv-teacher --out /tmp/figs   # per-fold curves

Writes learning_curve.png, per_keypoint.png and signed_error.png (no face pixels, committed) and
worst_faces.png (validation faces with predicted and true keypoints; it shows images of
the data set, so it stays out of git, under its source's terms).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from facekp import data as facedata
from facekp import metrics
from facekp.contract import KEYPOINT_NAMES, denormalize


def learning_curve(history: list[dict], path: Path, ensemble_score: float | None = None) -> None:
    """One line per ensemble member (cards from before ensembles have no 'member' field)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax2b = ax2.twinx()
    members = list(dict.fromkeys(h.get("member", "") for h in history))
    for k, member in enumerate(members):
        rows = [h for h in history if h.get("member", "") == member]
        scored = [h for h in rows if "val_score" in h]  # every --val-every epochs (cards before it: every epoch)
        name = f"member {member} " if len(members) > 1 else ""
        ax1.plot([h["epoch"] for h in scored], [h["val_score"] for h in scored], "o-", ms=3, color=f"C{k}",
                 label=f"{name}alone".strip())
        ax2.plot([h["epoch"] for h in rows], [h["train_loss"] for h in rows], "o-", ms=3, color=f"C{k}",
                 label=f"{name}train L1")
        ax2b.plot([h["epoch"] for h in scored], [h["val_rmse_px"] for h in scored], "s--", ms=3, color=f"C{k}",
                  alpha=0.6, label=f"{name}val RMSE px")
    if ensemble_score is not None and len(members) > 1:
        ax1.plot([history[-1]["epoch"]], [ensemble_score], "*", ms=12, color="black",
                 label=f"ensemble {ensemble_score:.1f}")
    ax1.set(xlabel="epoch", ylabel="validation score (1 / 2·MSE)", title="score on held-out people")
    ax1.axhline(100, color="grey", ls=":", lw=1)
    ax1.axhline(700, color="tab:red", ls="--", lw=1, label="goal (700)")
    ax1.legend(fontsize=8, loc="lower right")
    ax2.set(xlabel="epoch", ylabel="train loss (normalized L1)", title="loss and validation RMSE")
    ax2b.set_ylabel("validation RMSE (px)")
    handles = ax2.get_legend_handles_labels()[0] + ax2b.get_legend_handles_labels()[0]
    ax2.legend(handles=handles, fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_keypoint(rmse: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.barh(range(len(rmse)), rmse, color="tab:blue")
    ax.set_yticks(range(len(rmse)), KEYPOINT_NAMES, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="RMSE per coordinate (px, 96x96)", title="validation error per keypoint")
    for i, v in enumerate(rmse):
        ax.text(v, i, f" {v:.2f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def signed_error(bias: np.ndarray, path: Path) -> None:
    """Mean signed error (15, 2) per keypoint: a systematic offset (a bias, not noise) stands out here."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    rows = np.arange(len(bias))
    ax.barh(rows - 0.2, bias[:, 0], 0.4, label="x (+ = right)")
    ax.barh(rows + 0.2, bias[:, 1], 0.4, label="y (+ = down)")
    ax.set_yticks(rows, KEYPOINT_NAMES, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set(xlabel="mean signed error (px, predicted - true)", title="validation bias per keypoint")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def worst_faces(images: np.ndarray, pred: np.ndarray, true: np.ndarray, path: Path, count: int = 12) -> None:
    errors = metrics.per_image_mse(pred, true)
    worst = np.argsort(errors)[::-1][:count]
    cols = 6
    fig, axes = plt.subplots((count + cols - 1) // cols, cols, figsize=(2.2 * cols, 2.4 * ((count + cols - 1) // cols)))
    for ax, i in zip(axes.flat, worst, strict=False):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.scatter(true[i, :, 0], true[i, :, 1], s=10, c="lime", label="true")
        ax.scatter(pred[i, :, 0], pred[i, :, 1], s=10, c="red", marker="x", label="predicted")
        ax.set_title(f"#{i}: {np.sqrt(errors[i]) * 48:.2f} px", fontsize=8)
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cv_curves(cv_dirs: list[Path], path: Path) -> None:
    """Score per epoch of each fold's first network, one colour per fold, one line style per run."""
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for k, cv_dir in enumerate(cv_dirs):
        style = ["-", ":", "--", "-."][k % 4]
        for card_file in sorted(cv_dir.glob("fold_*/model_card.json")):
            fold = int(card_file.parent.name.removeprefix("fold_"))
            history = json.loads(card_file.read_text())["history"]
            first = [h for h in history if h.get("member") == history[0].get("member") and "val_score" in h]
            ax.plot([h["epoch"] for h in first], [h["val_score"] for h in first], ls=style, color=f"C{fold}",
                    label=f"{cv_dir.name}, fold {fold}")
    ax.set(xlabel="epoch", ylabel="score on the fold's own people (validated as exported)",
           title="cross-validation folds: each fold's first network, epoch by epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("model_store"))
    parser.add_argument("--out", type=Path, default=Path("docs/accuracy"))
    parser.add_argument("--data", default=None)
    parser.add_argument("--cv", type=Path, nargs="+", metavar="CV_DIR",
                        help="instead: the learning curves of train/cv.py runs, per fold -> OUT/cv_curves.png")
    args = parser.parse_args(argv)
    if args.cv:
        args.out.mkdir(parents=True, exist_ok=True)
        cv_curves(args.cv, args.out / "cv_curves.png")
        print(f"wrote {args.out / 'cv_curves.png'}")
        return 0
    card = json.loads((args.model_dir / "model_card.json").read_text())
    if card["validation"].get("seen_in_training"):
        print("warning: this model trained on the validation people (--all-people): the figures show how well it "
              "fits them, not how it does on new people; run this on the same recipe's person-split model instead")
    _, val = facedata.split_by_person(facedata.load(args.data))
    model = torch.jit.load(str(args.model_dir / card["model_file"]))
    with torch.inference_mode():
        pred = denormalize(model(torch.from_numpy(val.images).float().div(255).unsqueeze(1)).numpy())
    args.out.mkdir(parents=True, exist_ok=True)
    score, rmse = metrics.score(pred, val.keypoints), metrics.rmse_px(pred, val.keypoints)
    learning_curve(card["history"], args.out / "learning_curve.png", score)
    per_keypoint(metrics.rmse_px_per_keypoint(pred, val.keypoints), args.out / "per_keypoint.png")
    bias = (pred - val.keypoints).mean(0)  # per keypoint; a systematic offset shows here first
    signed_error(bias, args.out / "signed_error.png")
    worst_faces(val.images, pred, val.keypoints, args.out / "worst_faces.png")
    mean_x, mean_y = bias.mean(0)
    print(f"validation score {score:.1f}, rmse {rmse:.3f} px on {len(val)} faces; "
          f"mean signed error x {mean_x:+.2f} px, y {mean_y:+.2f} px; figures in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
