"""Faults against a real TorchServe: a killed worker under load, token authorization, and the
start-up mistakes `make serve` must explain (already running, port taken, model missing or corrupt).

The recovery time is printed; docs/reliability.md records it:

    .venv/bin/python -m pytest -s tests/test_faults.py -k kill
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest
import requests

from facekp.archive import MODEL_FILE, build_archive
from facekp.data import REPO_ROOT
from facekp.evaluate import encode_face
from facekp.torchserve import Service, free_ports, main

CONNECT_TIMEOUT, READ_TIMEOUT = 3.0, 15.0
"""Every client request of the load gives up after these many seconds: an error, never a hang."""


def cli_ports(p: dict[str, int]) -> list[str]:
    return [arg for name, port in p.items() for arg in (f"--{name.replace('_', '-')}", str(port))]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-store")
    config = root / "model-config.yaml"
    config.write_text("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 5\nresponseTimeout: 30\n")
    return build_archive(MODEL_FILE, root / "store", config)


@pytest.fixture(scope="module")
def service(tmp_path_factory, archive):
    svc = Service(run_dir=tmp_path_factory.mktemp("faults") / "run", model_store=archive.parent, **free_ports())
    svc.start(archive)
    try:
        svc.wait_ready(timeout=180)
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def face_png(face_pixels) -> bytes:
    return encode_face(face_pixels)


@dataclass
class Outcome:
    started: float
    ended: float
    result: str  # an HTTP status code, or the name of the requests exception (a timeout, a reset)


def load(url: str, body: bytes, stop: threading.Event, outcomes: list[Outcome]) -> None:
    """One client: POST the face again and again, each call bounded by its timeouts."""
    with requests.Session() as session:
        while not stop.is_set():
            started = time.monotonic()
            try:
                result = str(session.post(url, data=body, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)).status_code)
            except requests.RequestException as err:
                result = type(err).__name__
            outcomes.append(Outcome(started, time.monotonic(), result))


def test_killed_worker_comes_back_and_no_client_hangs(service, face_png):
    """SIGKILL the worker under load: TorchServe restarts it, every client call ends within its timeout."""
    url = f"{service.inference_url}/predictions/keypoints"
    old_pid = service.workers()[0]["pid"]
    stops_before = service.worker_stops()
    stop, outcomes = threading.Event(), []
    clients = [threading.Thread(target=load, args=(url, face_png, stop, outcomes), daemon=True) for _ in range(3)]
    for client in clients:
        client.start()
    time.sleep(2.0)  # steady load first
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)

    ready_at = None
    while time.monotonic() - killed_at < 120:
        workers = service.workers()
        if workers and workers[0]["pid"] != old_pid and workers[0]["status"] == "READY":
            ready_at = time.monotonic()
            break
        time.sleep(0.1)
    answered_at = None
    while ready_at and time.monotonic() - killed_at < 120:
        served = [o for o in outcomes if o.started > killed_at and o.result == "200"]
        if served:
            answered_at = min(o.ended for o in served)
            break
        time.sleep(0.1)
    time.sleep(1.0)  # load on the new worker
    stop.set()
    for client in clients:
        client.join(timeout=CONNECT_TIMEOUT + READ_TIMEOUT + 5)
    assert not any(client.is_alive() for client in clients), "a client hung past its timeout"

    assert ready_at is not None, f"no READY worker 120 s after the kill\n{service.log_tail()}"
    assert answered_at is not None, "the new worker never answered"
    during = [o for o in outcomes if o.ended >= killed_at and o.started <= answered_at]
    results = sorted({o.result for o in outcomes})
    longest = max(o.ended - o.started for o in outcomes)
    print(f"\nworker {old_pid} killed: READY again (management API) after {ready_at - killed_at:.2f} s, "
          f"first answer to a request sent after the kill {answered_at - killed_at:.2f} s after it; "
          f"{len(outcomes)} requests, outcomes {[(r, sum(o.result == r for o in outcomes)) for r in results]}, "
          f"{len(during)} in flight during the outage, longest request {longest:.2f} s")
    statuses = [r for r in results if r.isdigit()]
    assert all(r == "200" or r.startswith("5") for r in statuses), results  # answers or server errors, no 4xx
    assert longest <= CONNECT_TIMEOUT + READ_TIMEOUT + 1
    assert answered_at - killed_at < 60
    assert service.worker_stops() > stops_before  # the log shows the crash and the restart
    assert requests.post(url, data=face_png, timeout=30).status_code == 200


def test_token_authorization(tmp_path, archive, face_png):
    """With TorchServe's token auth on, a request without the inference key is refused."""
    svc = Service(run_dir=tmp_path / "run", model_store=archive.parent, token_auth=True, **free_ports())
    svc.start(archive)
    try:
        assert svc.wait_ready(timeout=180)  # the management API answers with the management key
        keys = json.loads((svc.run_dir / "key_file.json").read_text())
        url = f"{svc.inference_url}/predictions/keypoints"
        anonymous = requests.post(url, data=face_png, timeout=30)
        wrong = requests.post(url, data=face_png, timeout=30,
                              headers={"Authorization": f"Bearer {keys['management']['key']}"})
        keyed = requests.post(url, data=face_png, timeout=30,
                              headers={"Authorization": f"Bearer {keys['inference']['key']}"})
        management = requests.get(f"{svc.management_url}/models", timeout=30)
        print(f"\nno key: {anonymous.status_code} {anonymous.text.strip()!r}; management key on inference: "
              f"{wrong.status_code}; inference key: {keyed.status_code}; management API without key: "
              f"{management.status_code}")
        for refused in (anonymous, wrong, management):
            assert refused.status_code in (400, 401, 403)
            assert "Token Authorization failed" in refused.json()["message"]
        assert keyed.status_code == 200 and len(keyed.json()["keypoints"]) == 15

        # Keys expire (token_expiration_min, 60 by default): the API key asks for a new inference key.
        renewed = requests.get(f"{svc.management_url}/token", params={"type": "inference"}, timeout=30,
                               headers={"Authorization": f"Bearer {keys['API']['key']}"})
        assert renewed.status_code == 200, renewed.text
        new_key = json.loads((svc.run_dir / "key_file.json").read_text())["inference"]["key"]
        assert new_key != keys["inference"]["key"]
        assert requests.post(url, data=face_png, timeout=30, headers={"Authorization": f"Bearer {new_key}"}).ok
        old = requests.post(url, data=face_png, timeout=30,
                            headers={"Authorization": f"Bearer {keys['inference']['key']}"})
        print(f"renewal: {renewed.status_code} {renewed.text.strip()[:120]!r}; old key afterwards: {old.status_code}")
        assert old.status_code == 400
    finally:
        svc.stop()
    assert svc.pid() is None


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`make serve` runs exactly this: python -m facekp.torchserve start."""
    return subprocess.run([sys.executable, "-m", "facekp.torchserve", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_start_with_a_missing_model_file(tmp_path):
    result = run_cli("start", "--run-dir", str(tmp_path / "run"), "--model-file", str(tmp_path / "nothing.pt"),
                     *cli_ports(free_ports()))
    assert result.returncode == 1
    assert f"error: model file {tmp_path / 'nothing.pt'} is missing" in result.stderr
    assert "python train/run.py" in result.stderr and "Traceback" not in result.stderr


def test_start_with_a_corrupt_model_file(tmp_path):
    corrupt = tmp_path / "keypoints.pt"
    corrupt.write_bytes(MODEL_FILE.read_bytes()[:1000])  # a truncated download
    result = run_cli("start", "--run-dir", str(tmp_path / "run"), "--model-file", str(corrupt),
                     *cli_ports(free_ports()))
    assert result.returncode == 1
    assert "is not a loadable TorchScript model" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything started


def test_start_twice(service, capsys):
    """A second start from the same run folder says the service already runs and how to stop it."""
    p = {name: getattr(service, name) for name in free_ports()}
    code = main(["start", "--run-dir", str(service.run_dir), *cli_ports(p)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"already running (pid {service.pid()})" in err and "make stop" in err
    assert service.workers()[0]["status"] == "READY"  # the running service is untouched


def test_start_on_a_port_in_use(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        p = {**free_ports(), "inference_port": busy.getsockname()[1]}
        code = main(["start", "--run-dir", str(tmp_path / "run"), *cli_ports(p)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"inference port 127.0.0.1:{p['inference_port']} is already in use" in err
    assert "INFERENCE_PORT=" in err
