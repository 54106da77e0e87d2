"""The committed record of cross-validation folds: what each fold's model answered, kept in git.

A fold of the shipped recipe (its two teachers, then its student) takes about an hour on 2 cores, so
five folds of a new recipe take five hours or more, and runs/ is git-ignored (not kept with the code).
A record keeps, for each fold done, its model's keypoints for the fold's validation faces (in 0.01 px
steps, under 40 kB a fold) and its model card; not the network, and nothing of the data set (no image,
label or name: those are read back from the data set when the record is restored):

    python train/studies/record.py save runs/cv-student-mid64-reuse2-mirrored     # -> docs/cv/<its name>/fold_k/
    python train/studies/record.py restore docs/cv/cv-student-mid64-reuse2-mirrored   # -> runs/<its name>/fold_k/
    python train/cv.py --folds 5 --out runs/cv-student-mid64-reuse2-mirrored --summary   # as if trained here

Saving adds the run's folds to the record (folds recorded earlier stay), so an estimate over
five folds can be gathered a fold or two at a time; restoring writes train/cv.py's own files, which
train/cv.py --summary, train/studies/compare.py and train/report.py read as they read a run trained here.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from facekp import data as facedata
from facekp import metrics
from train.cv import PREDICTIONS, fold_number
from train.exported import CARD_FILE

RECORDS = facedata.REPO_ROOT / "docs" / "cv"
RECORD_FILE = "record.npz"
STEPS_PER_PX = 100  # keypoints kept in 0.01 px: the rounding adds under 0.003 px to an RMSE of about 1.3


def people_digest(people: np.ndarray) -> str:
    """Which faces a fold holds, in order, without writing their names down."""
    return hashlib.sha256("\n".join(map(str, people)).encode()).hexdigest()


def save_fold(fold_dir: Path, target: Path) -> float:
    """Record one fold of a run; returns its score (kept in the record, checked when restored)."""
    with np.load(fold_dir / PREDICTIONS) as saved:
        pred, truth, people, minutes = saved["pred"], saved["truth"], saved["people"], float(saved["minutes"])
    card_file = fold_dir / CARD_FILE
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    folds = card.get("config", {}).get("folds", 5)
    if np.abs(pred).max() * STEPS_PER_PX > np.iinfo(np.int16).max:
        raise facedata.DataError(f"{fold_dir}: keypoints hundreds of pixels off the face; not a model to record")
    target.mkdir(parents=True, exist_ok=True)
    score = metrics.score(pred, truth)
    np.savez_compressed(target / RECORD_FILE, pred=np.round(pred * STEPS_PER_PX).astype(np.int16),
                        fold=fold_number(fold_dir), folds=folds, faces=len(people), people=people_digest(people),
                        minutes=minutes, score=score)
    if card:
        shutil.copyfile(card_file, target / CARD_FILE)
    return score


def restore_fold(record_dir: Path, target: Path, data: str = "") -> float:
    """Write a recorded fold back as train/cv.py's files; returns its score, checked against the saved one."""
    with np.load(record_dir / RECORD_FILE) as saved:
        record = {key: saved[key].item() if saved[key].ndim == 0 else saved[key] for key in saved.files}
    _, val = facedata.split_by_person(_faces(data), record["fold"], record["folds"])
    if len(val.people) != record["faces"] or people_digest(val.people) != record["people"]:
        raise facedata.DataError(f"{record_dir} was recorded on other faces than fold {record['fold']} of "
                                 f"{record['folds']} of this data set holds")
    pred = record["pred"].astype(np.float32) / STEPS_PER_PX
    score = metrics.score(pred, val.keypoints)
    if abs(score / record["score"] - 1) > 1e-3:
        raise facedata.DataError(f"{record_dir} scores {score:.1f} on these labels, recorded as {record['score']:.1f}")
    target.mkdir(parents=True, exist_ok=True)
    np.savez(target / PREDICTIONS, pred=pred, truth=val.keypoints, people=val.people, minutes=record["minutes"])
    if (record_dir / CARD_FILE).is_file():
        shutil.copyfile(record_dir / CARD_FILE, target / CARD_FILE)
    return score


@functools.cache  # one load for all the folds of a record
def _faces(data: str) -> facedata.FaceData:
    return facedata.load(data or None)


def _shown(path: Path) -> Path:
    return path.relative_to(Path.cwd()) if path.is_absolute() and path.is_relative_to(Path.cwd()) else path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("save", help="add a train/cv.py run's folds to its record")
    save.add_argument("run", type=Path, help="a train/cv.py --out folder")
    save.add_argument("--to", type=Path, default=None, help="the record (default docs/cv/<the run's name>)")
    restore = commands.add_parser("restore", help="write a record's folds back as a train/cv.py run")
    restore.add_argument("record", type=Path, help="a record folder (docs/cv/<name>)")
    restore.add_argument("--to", type=Path, default=None, help="the run folder (default runs/<the record's name>)")
    restore.add_argument("--data", default="", help="the data set (default: $FACEKP_DATA or ../shared)")
    args = parser.parse_args(argv)
    if args.command == "save":
        source, target, marker, write = args.run, args.to or RECORDS / args.run.name, PREDICTIONS, save_fold
    else:
        source, target, marker = args.record, args.to or Path("runs") / args.record.name, RECORD_FILE
        write = functools.partial(restore_fold, data=args.data)
    fold_dirs = sorted(path.parent for path in source.glob(f"fold_*/{marker}"))
    if not fold_dirs:
        parser.error(f"{source} has no fold (fold_*/{marker})")
    for fold_dir in fold_dirs:
        try:
            score = write(fold_dir, target / fold_dir.name)
        except facedata.DataError as err:
            parser.exit(2, f"error: {err}\n")
        print(f"{fold_dir.name}: score {score:.1f} -> {_shown(target / fold_dir.name)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
