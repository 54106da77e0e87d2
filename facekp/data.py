"""Loading the face data set (npz or Kaggle CSV) and splitting it by person."""

from __future__ import annotations

import csv
import os
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekp.contract import IMAGE_SIZE, KEYPOINT_NAMES, NUM_KEYPOINTS

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ENV = "FACEKP_DATA"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "facial_keypoints" / "facial_keypoints.npz"
VALIDATION_PERCENT = 15
"""Share of people (not rows) held out for validation."""

FORMATS_HELP = (
    "Accepted formats: the project's .npz (arrays images (N,96,96) uint8, keypoints (N,15,2) "
    "pixel x,y, optional source_file and keypoints68), or a CSV in the Kaggle 'Facial "
    "Keypoints Detection' layout (columns left_eye_center_x, left_eye_center_y, ... and Image "
    "with 9216 space-separated pixel values; an optional 'person' column enables the "
    "person split). Get the data set from ../shared/data/facial_keypoints/ (see its SOURCE.md) "
    f"or pass --data PATH or set {DATA_ENV}."
)


class DataError(Exception):
    """The data set is missing or not in an accepted format."""


@dataclass
class FaceData:
    images: np.ndarray  # (N, 96, 96) uint8
    keypoints: np.ndarray  # (N, 15, 2) float32 pixels, NaN where a label is missing
    people: np.ndarray  # (N,) str, one id per person (frames of one video share it)
    keypoints68: np.ndarray | None = None  # (N, 68, 2) float32, when the source has them
    source: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray) -> FaceData:
        k68 = None if self.keypoints68 is None else self.keypoints68[index]
        return FaceData(self.images[index], self.keypoints[index], self.people[index], k68, self.source)


def data_path(path: str | os.PathLike | None = None) -> Path:
    """Where the data set is looked for: --data, else $FACEKP_DATA, else ../shared beside the checkout."""
    return Path(path or os.environ.get(DATA_ENV) or DEFAULT_DATA)


def resolve_data_path(path: str | os.PathLike | None = None) -> Path:
    """data_path(), which must exist."""
    chosen = data_path(path)
    if not chosen.exists():
        raise DataError(f"data set not found at {chosen}. {FORMATS_HELP}")
    return chosen


def person_of(source_file: str) -> str:
    """'training/Luis_Fonsi_21.jpg' -> 'Luis_Fonsi': all frames of one video share the name."""
    return re.sub(r"_\d+\.\w+$", "", Path(source_file).name)


def load(path: str | os.PathLike | None = None) -> FaceData:
    """Load a data set from .npz or Kaggle-layout .csv; see FORMATS_HELP."""
    path = resolve_data_path(path)
    if path.suffix == ".npz":
        return _load_npz(path)
    if path.suffix == ".csv":
        return _load_csv(path)
    raise DataError(f"unsupported data file {path} (suffix {path.suffix!r}). {FORMATS_HELP}")


def _load_npz(path: Path) -> FaceData:
    with np.load(path) as npz:
        missing = {"images", "keypoints"} - set(npz.files)
        if missing:
            raise DataError(f"{path} lacks arrays {sorted(missing)}. {FORMATS_HELP}")
        images = npz["images"]
        keypoints = npz["keypoints"].astype(np.float32)
        if "source_file" in npz.files:
            people = np.array([person_of(str(s)) for s in npz["source_file"]])
        else:
            print(f"warning: {path} has no source_file; each row is treated as its own person", file=sys.stderr)
            people = np.array([f"row{i}" for i in range(len(images))])
        k68 = npz["keypoints68"].astype(np.float32) if "keypoints68" in npz.files else None
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or keypoints.shape[1:] != (NUM_KEYPOINTS, 2):
        raise DataError(f"{path}: images {images.shape} / keypoints {keypoints.shape} do not match. {FORMATS_HELP}")
    return FaceData(images.astype(np.uint8), keypoints, people, k68, str(path))


def _load_csv(path: Path) -> FaceData:
    columns = [f"{name}_{axis}" for name in KEYPOINT_NAMES for axis in "xy"]
    images, keypoints, people = [], [], []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        absent = [c for c in [*columns, "Image"] if c not in (reader.fieldnames or [])]
        if absent:
            raise DataError(f"{path} lacks columns {absent[:4]}{'...' if len(absent) > 4 else ''}. {FORMATS_HELP}")
        has_person = "person" in reader.fieldnames
        for i, row in enumerate(reader):
            pixels = np.array(row["Image"].split(), dtype=np.float32)
            if pixels.size != IMAGE_SIZE * IMAGE_SIZE:
                raise DataError(f"{path} row {i + 2}: Image has {pixels.size} values, expected {IMAGE_SIZE**2}")
            images.append(pixels.clip(0, 255).astype(np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE))
            keypoints.append([float(row[c]) if row[c].strip() else np.nan for c in columns])
            people.append(row["person"] if has_person else f"row{i}")
    if not images:
        raise DataError(f"{path} has no rows. {FORMATS_HELP}")
    if not has_person:
        print(f"warning: {path} has no 'person' column; the validation split is by row", file=sys.stderr)
    kp = np.array(keypoints, dtype=np.float32).reshape(-1, NUM_KEYPOINTS, 2)
    return FaceData(np.stack(images), kp, np.array(people), None, str(path))


def is_validation_person(person: str) -> bool:
    """Deterministic, order-free assignment: the same person always lands on the same side."""
    return zlib.crc32(person.encode()) % 100 < VALIDATION_PERCENT


def fold_of(person: str, folds: int) -> int:
    """The cross-validation fold a person is validated in: every person in exactly one."""
    return zlib.crc32(person.encode()) % folds


SPLITS = ("all", "validation", "train", *(f"fold-{k}" for k in range(5)))
"""Which people an evaluation sends: everyone, the fixed split's sides, or the people of fold K of five (whom
that fold's model never saw)."""


def in_split(person: str, split: str) -> bool:
    """Whether a person belongs to one of SPLITS."""
    if split.startswith("fold-"):
        return fold_of(person, 5) == int(split.removeprefix("fold-"))
    return {"all": True, "validation": is_validation_person(person), "train": not is_validation_person(person)}[split]


def split_by_person(data: FaceData, fold: int = -1, folds: int = 5) -> tuple[FaceData, FaceData]:
    """(train, validation), with no person on both sides.

    fold -1 is the fixed validation split (15 % of people); fold k of folds is k-fold
    cross-validation over people.
    """
    if fold < 0:
        val = np.array([is_validation_person(p) for p in data.people])
    else:
        val = np.array([fold_of(p, folds) == fold for p in data.people])
    return data.subset(np.flatnonzero(~val)), data.subset(np.flatnonzero(val))


def complete_rows(data: FaceData) -> np.ndarray:
    """Mask of rows whose 15 keypoints are all labelled."""
    return np.isfinite(data.keypoints).all(axis=(1, 2))
