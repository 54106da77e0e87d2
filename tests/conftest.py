"""Shared fixtures: the real data set (from ../shared or $FACEKP_DATA) and a few real faces.

Without the data set, the tests that need it are skipped (one line says where it was looked
for and how to get it) and the rest run; under CI=true a missing data set fails them instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from facekp import data as facedata
from facekp.archive import FACES, KEYPOINTS, MODEL_FILE, ModelSpec, build_archive
from facekp.data import REPO_ROOT
from facekp.processes import free_port
from facekp.torchserve import Service, free_ports

REPO = Path(__file__).resolve().parent.parent
KSERVE_CONFIG = REPO / "k8s" / "kserve" / "config" / "config.properties"



@contextmanager
def running_service(root: Path, model_config: str | None = None, specs: tuple[ModelSpec, ...] = (KEYPOINTS,),
                    **service_args) -> Iterator[Service]:
    """A real TorchServe serving the committed model on free loopback ports, stopped on exit.

    model_config is the text of the keypoints archive's model-config.yaml (batching, workers), else the
    shipped one; specs are the models to archive into root/store and serve (keypoints, and faces).
    """
    config = None
    if model_config is not None:
        config = root / "model-config.yaml"
        config.write_text(model_config)
    archives = [build_archive(MODEL_FILE, root / "store", config if spec is KEYPOINTS else None, spec)
                for spec in specs]
    service_args.setdefault("models", tuple(spec.name for spec in specs))
    service = Service(run_dir=root / "run", model_store=root / "store", **{**free_ports(), **service_args})
    service.start(archives[0])
    try:
        service.wait_ready(timeout=240)
        yield service
    finally:
        service.stop()


IN_CI = os.environ.get("CI", "").lower() in ("1", "true")
DATA_PATH = facedata.data_path()
NO_DATA = (
    f"data set not found at {DATA_PATH}: the tests that need it are skipped. Get it: put ../shared beside "
    f"the checkout, or set {facedata.DATA_ENV}=PATH to the .npz or a CSV in the Kaggle layout "
    "(left_eye_center_x, ..., Image); the tools take --data PATH"
)


def pytest_report_header(config) -> str:
    return f"data set: {DATA_PATH}" if DATA_PATH.exists() else NO_DATA


def pytest_terminal_summary(terminalreporter) -> None:
    if not DATA_PATH.exists():
        terminalreporter.write_line(NO_DATA, yellow=True)


def require_data() -> None:
    """Skip the calling test without the data set; under CI=true, fail it."""
    if DATA_PATH.exists():
        return
    if IN_CI:
        pytest.fail(f"CI=true and {NO_DATA.split(':')[0]}", pytrace=False)
    pytest.skip("no data set (see the line at the end)")


@pytest.fixture
def needs_data() -> None:
    """For tests that read the data set without the `faces` fixture (subprocesses, load mixes)."""
    require_data()


@pytest.fixture(scope="session")
def faces() -> facedata.FaceData:
    require_data()
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


# --- the two KServe routes, started once for test_kserve.py and test_kserve_clients.py ---------------
@pytest.fixture(scope="session")
def torchserve_kserve(tmp_path_factory):
    """TorchServe as KServe's runtime starts it: the shipped config, models from its model_snapshot."""
    root = tmp_path_factory.mktemp("kserve-torchserve")
    with running_service(root, specs=(KEYPOINTS, FACES), config=KSERVE_CONFIG,
                         extra_config={"model_store": str(root / "store")}, models_from_config=True) as service:
        yield service


@pytest.fixture(scope="session")
def kserve_predictor_addresses(tmp_path_factory) -> Iterator[dict[str, str]]:
    """The kserve predictor started the way `make serve-kserve` starts it, on free ports: REST and gRPC."""
    run_dir = tmp_path_factory.mktemp("kserve-predictor")
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "handler.kserve_server"]
    started = subprocess.run([*command, "start", "--http_port", str(port), "--grpc_port", str(grpc_port),
                              "--run_dir", str(run_dir)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=200)
    assert started.returncode == 0, started.stdout + started.stderr
    assert (f"ready: kserve predictor for model 'keypoints' on http://127.0.0.1:{port}, gRPC 127.0.0.1:{grpc_port}"
            in started.stdout)
    try:
        yield {"http": f"http://127.0.0.1:{port}", "grpc": f"127.0.0.1:{grpc_port}", "log": str(run_dir / "kserve.log")}
    finally:
        stopped = subprocess.run([*command, "stop", "--run_dir", str(run_dir)], cwd=REPO_ROOT,
                                 capture_output=True, text=True, timeout=60)
        assert "stopped" in stopped.stdout


@pytest.fixture(scope="session")
def kserve_predictor(kserve_predictor_addresses) -> str:
    """The predictor's REST address, http://127.0.0.1:PORT."""
    return kserve_predictor_addresses["http"]


@pytest.fixture(scope="session")
def kserve_grpc(kserve_predictor_addresses) -> str:
    """The predictor's gRPC address, 127.0.0.1:PORT."""
    return kserve_predictor_addresses["grpc"]
