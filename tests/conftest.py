"""Shared fixtures: the real data set (from ../shared or $FACEKP_DATA) and a few real faces."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facekp import data as facedata  # noqa: E402
from facekp.server import MODEL_FILE, Service, build_archive, free_ports  # noqa: E402


@contextmanager
def running_service(root: Path, model_config: str, **service_args) -> Iterator[Service]:
    """A real TorchServe serving the committed model on free loopback ports, stopped on exit.

    model_config is the text of the archive's model-config.yaml (batching, workers).
    """
    (root / "model-config.yaml").write_text(model_config)
    archive = build_archive(MODEL_FILE, root / "store", root / "model-config.yaml")
    service = Service(run_dir=root / "run", model_store=archive.parent, **{**free_ports(), **service_args})
    service.start(archive)
    try:
        service.wait_ready(timeout=180)
        yield service
    finally:
        service.stop()


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
