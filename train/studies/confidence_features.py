"""Which signals of a served file rank its points' errors: the study behind the confidence's formula.

    python train/studies/confidence_features.py runs/recipe/fold_0
    python train/studies/confidence_features.py runs/jawreach/fold_0 \
        --teachers runs/recipe/fold_0/teachers/long.pt+runs/recipe/fold_0/teachers/short.pt

On a fold model's held-out people, at two views (the CPU default), each candidate set of signals predicts
log(error) linearly with an intercept per point, fitted on one half of the people and scored on the other
(both ways, as train/calibrate.py does); the line is Spearman's rank correlation of the prediction with the
error over all points. Signals, each per point or as the face's mean over the 15 points:
the heatmaps' spread (spread), the mirrored views' disagreement (disagree), the heatmaps' entropy (entropy),
the face's pose as the distance of its points from the mean face (pose), and the gap between each of the
15 and its twin among the 68 (twins), the face's size in its source frame (size: the eye distance in the
frame's pixels, which a crop no longer shows but the photo path knows), and with --teachers the gap between
each answer and the fold's teachers' (teachers: an ensemble's disagreement, at three times the cost). The last
line ranks by the true mean error of each face: what a perfect face-level signal would reach.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from facekp import data as facedata
from facekp import metrics
from facekp.contract import IMAGE_SIZE, NUM_KEYPOINTS, denormalize, keypoints_from_68
from train.calibrate import served
from train.cv import fold_people
from train.exported import load_teacher, predict

CANDIDATES = [("spread",), ("spread", "disagree"), ("spread", "entropy"), ("spread", "pose"), ("spread", "twins"),
              ("spread", "size"), ("spread", "teachers"), ("spread", "disagree", "entropy", "pose", "twins", "size")]


def signals(folder: Path, teachers: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(errors over the inter-ocular distance (N, 15), {signal: (N, 15)}, people) of the fold's held-out faces."""
    model, card = served(folder)
    (net,) = model.nets
    val, images = fold_people(card["config"]["data"], card["config"]["fold"], card["config"]["folds"])
    with torch.inference_mode():
        direct = torch.cat([net.forward_with_spread(images[i:i + 256]) for i in range(0, len(images), 256)])
        flipped = images.flip(-1)
        mirror = torch.cat([net.forward_with_spread(flipped[i:i + 256]) for i in range(0, len(images), 256)])
        heat = torch.cat([net.heatmap(images[i:i + 256]).flatten(2) for i in range(0, len(images), 256)])
        mirrored = net.mirror(mirror[..., :2])
    points = (0.5 * (direct[..., :2] + mirrored)).numpy()
    truth = np.concatenate([val.keypoints, val.keypoints68], axis=1)
    errors = metrics.relative_errors(denormalize(points), truth, metrics.inter_ocular(val.keypoints68))
    face = slice(0, NUM_KEYPOINTS)
    spread = np.sqrt((direct[..., 2] ** 2 + mirror[..., 2][:, net.mirror_perm] ** 2).numpy() / 2)
    gaps = points[:, :NUM_KEYPOINTS] - keypoints_from_68(points[:, NUM_KEYPOINTS:])
    found = {
        "spread": spread[:, face],
        "disagree": 0.5 * np.linalg.norm((direct[..., :2] - mirrored).numpy(), axis=-1)[:, face] + 1e-3,
        "entropy": -(heat * heat.clamp(min=1e-12).log()).sum(-1).numpy()[:, face],
        "pose": np.repeat(np.linalg.norm(points - points.mean(0), axis=-1).mean(1, keepdims=True), NUM_KEYPOINTS, 1),
        "twins": np.linalg.norm(gaps - gaps.mean(0), axis=-1) + 1e-3,
        "size": np.repeat(source_eye_px(card, val.keypoints68)[:, None], NUM_KEYPOINTS, 1),
    }
    if teachers:
        answered = predict(load_teacher(teachers), images)
        found["teachers"] = np.linalg.norm(points[:, face] - answered, axis=-1) + 1e-3
    return errors[:, face], found, val.people


def source_eye_px(card: dict, points68: np.ndarray) -> np.ndarray:
    """Each held-out face's outer-eye-corner distance in its source frame's pixels (the data set's crop_box)."""
    with np.load(facedata.resolve_data_path(card["config"]["data"] or None)) as npz:
        people = np.array([facedata.person_of(str(name)) for name in npz["source_file"]])
        held = [facedata.fold_of(p, card["config"]["folds"]) == card["config"]["fold"] for p in people]  # as cv.py
        side = npz["crop_box"][np.array(held)][:, 2]
    return metrics.inter_ocular(points68) * side / IMAGE_SIZE


def features(found: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """(N, 15, 2 per signal): each signal's log per point and its face's mean of it."""
    columns = []
    for name in names:
        logged = np.log(found[name])
        columns += [logged, np.repeat(logged.mean(1, keepdims=True), logged.shape[1], 1)]
    return np.stack(columns, -1)


def cross_fitted_spearman(errors: np.ndarray, x: np.ndarray, people: np.ndarray) -> float:
    """log(error) ~ per-point intercept + x, fitted on one half of the people, predicted on the other."""
    names = np.unique(people)
    half = np.isin(people, np.random.default_rng(0).permutation(names)[: len(names) // 2])
    predicted = np.empty_like(errors)
    for test in (half, ~half):
        y, xs = np.log(errors[~test]), x[~test]
        y_mean, x_mean = y.mean(0), xs.mean(0)
        weights = np.linalg.lstsq((xs - x_mean).reshape(-1, x.shape[-1]), (y - y_mean).ravel(), rcond=None)[0]
        predicted[test] = y_mean + (x[test] - x_mean) @ weights
    return metrics.spearman(-predicted.ravel(), errors.ravel())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a fold's run folder (train/cv.py): keypoints.pt and its card")
    parser.add_argument("--teachers", default=None, help="the fold's teachers, A.pt+B.pt: their disagreement too")
    args = parser.parse_args(argv)
    errors, found, people = signals(args.folder, args.teachers)
    print(f"{len(people)} faces of {len(set(people))} people never seen, 15 points, two views:")
    for names in CANDIDATES:
        if any(name not in found for name in names):
            continue
        rho = cross_fitted_spearman(errors, features(found, names), people)
        print(f"  {' + '.join(names):52s} Spearman {rho:+.3f}")
    face_error = np.repeat(errors.mean(1, keepdims=True), errors.shape[1], 1)
    oracle = -(errors.mean(0) * face_error)
    rho = metrics.spearman(oracle.ravel(), errors.ravel())
    print(f"  {'the true error of the whole face (oracle)':52s} Spearman {rho:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
