"""Shared fixtures: the real data set (from ../shared or $FACEKP_DATA) and a few real faces."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facekp import data as facedata  # noqa: E402


@pytest.fixture(scope="session")
def faces() -> facedata.FaceData:
    try:
        return facedata.load()
    except facedata.DataError as err:
        pytest.fail(f"the tests need the data set: {err}")


@pytest.fixture(scope="session")
def validation_faces(faces) -> facedata.FaceData:
    return facedata.split_by_person(faces)[1]


@pytest.fixture(scope="session")
def face_pixels(validation_faces) -> np.ndarray:
    """One real 96x96 validation face."""
    return validation_faces.images[0]
