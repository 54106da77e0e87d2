"""Integration: build the .mar, run a real TorchServe on free loopback ports with batching on,
send real faces over HTTP, then stop it and check nothing is left running."""

from __future__ import annotations

import io
import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import requests
import torch
from PIL import Image

from facekp import evaluate, metrics
from facekp.archive import MODEL_FILE
from facekp.contract import KEYPOINT_NAMES, denormalize, view_method
from facekp.processes import port_in_use
from facekp.torchserve import Service
from handler.inference import choose_precision, load_model, model_runner
from handler.settings import HandlerSettings
from tests.conftest import running_service

BATCH = 8


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # A long batch delay so that concurrent requests of a test reliably share a batch.
    config = f"minWorkers: 1\nmaxWorkers: 1\nbatchSize: {BATCH}\nmaxBatchDelay: 300\nresponseTimeout: 60\n"
    with running_service(tmp_path_factory.mktemp("torchserve"), config) as svc:
        yield svc


def png(pixels: np.ndarray, size: int = 96, fmt: str = "PNG") -> bytes:
    image = Image.fromarray(pixels, mode="L")
    if size != 96:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def points(reply: requests.Response) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [k["name"] for k in body["keypoints"]] == list(KEYPOINT_NAMES)
    return np.array([[k["x"], k["y"]] for k in body["keypoints"]])


def url(svc: Service) -> str:
    return f"{svc.inference_url}/predictions/keypoints"


def test_raw_body_like_curl_upload(service, validation_faces):
    """curl -T sends a PUT with no Content-Type."""
    face = validation_faces.images[0]
    got = points(requests.put(url(service), data=png(face), timeout=30))
    assert got.shape == (15, 2)
    assert np.sqrt(((got - validation_faces.keypoints[0]) ** 2).mean()) < 6  # a trained model, roughly right


def test_jpeg_192_answers_in_its_own_pixels(service, validation_faces):
    face = validation_faces.images[1]
    small = points(requests.post(url(service), data=png(face), headers={"Content-Type": "image/png"}, timeout=30))
    big = points(requests.post(url(service), data=png(face, 192, "JPEG"), headers={"Content-Type": "image/jpeg"},
                               timeout=30))
    assert (big >= 0).all() and (big <= 191).all()
    assert np.abs((big + 0.5) / 2 - 0.5 - small).max() < 2.0


def test_multipart_upload(service, validation_faces):
    face = png(validation_faces.images[2])
    raw = points(requests.post(url(service), data=face, headers={"Content-Type": "image/png"}, timeout=30))
    form = points(requests.post(url(service), files={"data": ("face.png", face, "image/png")}, timeout=30))
    assert np.allclose(raw, form, atol=0.02)


def test_concurrent_requests_batch_and_a_bad_one_fails_alone(service, validation_faces):
    bodies = [png(validation_faces.images[i]) for i in range(BATCH - 1)]
    bodies.insert(3, b"this is not an image")
    pid_before = [w["pid"] for w in service.workers()]

    def send(body: bytes) -> requests.Response:
        return requests.post(url(service), data=body, headers={"Content-Type": "application/octet-stream"}, timeout=60)

    with ThreadPoolExecutor(len(bodies)) as pool:
        replies = list(pool.map(send, bodies))
    assert [r.status_code for r in replies] == [200, 200, 200, 415, 200, 200, 200, 200]
    assert "not a readable image" in replies[3].json()["error"]
    singles = [points(send(b)) for b in bodies[:2]]
    assert np.allclose(points(replies[0]), singles[0], atol=0.05)
    assert np.allclose(points(replies[1]), singles[1], atol=0.05)

    log = (service.log_dir / "model_log.log").read_text()
    sizes = [int(n) for n in re.findall(r"batch of (\d+)", log)]
    assert max(sizes) > 1, f"requests were never batched: {sizes}"
    assert [w["pid"] for w in service.workers()] == pid_before, "a bad request restarted the worker"


def test_errors_are_json_4xx(service):
    empty = requests.post(url(service), data=b"", headers={"Content-Type": "image/png"}, timeout=30)
    assert 400 <= empty.status_code < 500 and "error" in empty.json()
    tiny = requests.post(url(service), data=png(np.zeros((1, 1), np.uint8), 1), headers={"Content-Type": "image/png"},
                         timeout=30)
    assert tiny.status_code == 422 and "1x1" in tiny.json()["error"]


def test_http_score_equals_in_process_score(service, validation_faces, tmp_path):
    n = 64
    report = tmp_path / "report.json"
    code = evaluate.main(["--url", service.inference_url, "--split", "validation", "--limit", str(n),
                          "--concurrency", "4", "--json", str(report)])
    assert code == 0
    over_http = json.loads(report.read_text())
    # In-process the way the handler runs it: frozen, in the precision it picks on this machine, with its views.
    run = load_model(MODEL_FILE, torch.device("cpu"), views=HandlerSettings().views_cpu).run
    pred = run(validation_faces.images[:n, None].astype(np.float32) / 255)
    in_process = metrics.score(denormalize(pred), validation_faces.keypoints[:n])
    assert over_http["faces"] == n and over_http["failed"] == 0
    # bf16 kernels differ a little with the batch's size, which TorchServe's batching decides.
    assert over_http["score"] == pytest.approx(in_process, rel=3e-3)
    assert over_http["confidence"]["points"] == 15 * n
    assert over_http["confidence"]["spearman_confidence_error"] < 0  # the surer, the closer


def test_http_68_point_nme_equals_in_process(service, validation_faces, tmp_path):
    """--points 68 asks each crop for the 68 iBUG points and scores them by their NME, as the file answers them."""
    n = 48
    report = tmp_path / "report68.json"
    assert evaluate.main(["--url", service.inference_url, "--split", "validation", "--limit", str(n),
                          "--points", "68", "--json", str(report)]) == 0
    over_http = json.loads(report.read_text())
    model = torch.jit.load(str(MODEL_FILE))
    with torch.inference_mode():
        answers = getattr(model, view_method(HandlerSettings().views_cpu))(
            torch.from_numpy(validation_faces.images[:n, None].astype(np.float32) / 255))
    truth = validation_faces.keypoints68[:n]
    pred = denormalize(answers[:, len(KEYPOINT_NAMES):, :2].numpy())
    in_process = 100 * metrics.relative_errors(pred, truth, metrics.inter_ocular(truth)).mean()
    assert over_http["points"] == 68 and over_http["scored"] == n and over_http["failed"] == 0
    assert over_http["nme_pct"] == pytest.approx(in_process, rel=2e-2)  # bf16 over HTTP, fp32 here
    assert over_http["confidence"]["points"] == 68 * n


def test_stop_leaves_nothing_running(service):
    pid = service.pid()
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    assert len(family) >= 2  # frontend and at least one worker
    assert service.stop()
    assert service.pid() is None
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family)
    for port in (service.inference_port, service.management_port, service.metrics_port):
        assert not port_in_use(service.host, port)


def test_the_views_are_a_serving_setting_of_the_same_file(tmp_path, validation_faces):
    """views_cpu: 1 in the model-config serves the file's one-view method: no other model file, no retraining.
    (The TorchScript runtime, to compare with the file itself; the int8 twins' agreement is test_inference's.)"""
    config = ("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\nmaxBatchDelay: 1\n"
              "handler:\n  views_cpu: 1\n  runtime: torchscript\n")
    faces = validation_faces.images[:6]
    with running_service(tmp_path, config) as svc:
        served = np.stack([points(requests.put(url(svc), data=png(face), timeout=30)) for face in faces])
        log = (svc.log_dir / "model_log.log").read_text(errors="replace")
    cpu = torch.device("cpu")
    model = torch.jit.load(str(MODEL_FILE)).eval()
    batch = faces[:, None].astype(np.float32) / 255
    one_view = model_runner(model, cpu, choose_precision("auto", cpu), method="views_1")(batch)
    six_views = model_runner(model, cpu, choose_precision("auto", cpu))(batch)
    assert np.abs(served - denormalize(one_view)).max() < 0.05  # bf16 kernels vary a little with batch size
    assert np.abs(served - denormalize(six_views)).max() > 0.1  # not the file's forward(): other answers
    assert "keypoints: keypoint model 1 view," in log
