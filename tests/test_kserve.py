"""KServe, both routes, over real HTTP on free loopback ports, with JSON requests:

1. TorchServe started with k8s/kserve/config/config.properties (service_envelope=kservev2, the
   model_snapshot's batching): v2 and v1 requests, 16 concurrent distinct faces.
2. The kserve predictor without TorchServe (handler/kserve_server.py, `make serve-kserve`).

Both servers are conftest's (one each for the whole run); tests/test_kserve_clients.py sends them
what standard Open Inference Protocol clients send.

The faces are cut from the committed public-domain photo, so these tests need no data set.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from facekp.contract import KEYPOINT_NAMES
from facekp.data import REPO_ROOT

PHOTO = REPO_ROOT / "samples" / "astronaut.png"
CONCURRENT = 16


def distinct_faces(count: int = CONCURRENT) -> list[bytes]:
    """PNG crops of the astronaut's face, each framed a little differently (so each answer differs)."""
    photo = Image.open(PHOTO).convert("RGB")
    faces = []
    for i in range(count):
        dx, dy, grow = (i % 4) * 3 - 4, (i // 4) * 3 - 4, (i % 3) * 4
        box = (165 + dx - grow, 50 + dy - grow, 285 + dx + grow, 170 + dy + grow)
        buffer = io.BytesIO()
        photo.crop(box).resize((144, 144)).save(buffer, "PNG")
        faces.append(buffer.getvalue())
    return faces


def v2_request(image: bytes, request_id: str | None = None) -> dict:
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()]}]}
    return {**body, "id": request_id} if request_id else body


def v2_keypoints(reply: dict) -> np.ndarray:
    outputs = {output["name"]: output for output in reply["outputs"]}
    assert outputs["keypoints"]["shape"] == [1, 15, 2] and outputs["keypoints"]["datatype"] == "FP32"
    return np.array(outputs["keypoints"]["data"]).reshape(15, 2)


def plain_keypoints(reply: dict) -> np.ndarray:
    assert [p["name"] for p in reply["keypoints"]] == list(KEYPOINT_NAMES)
    return np.array([[p["x"], p["y"]] for p in reply["keypoints"]])


@pytest.fixture(scope="module")
def faces() -> list[bytes]:
    return distinct_faces()


# --- TorchServe behind KServe ----------------------------------------------------------------------
def test_torchserve_v2_answer_is_the_plain_answer(torchserve_kserve, faces):
    url = torchserve_kserve.inference_url
    plain = requests.put(f"{url}/predictions/keypoints", data=faces[0], timeout=60)
    v2 = requests.post(f"{url}/v2/models/keypoints/infer", json=v2_request(faces[0], "req-7"), timeout=60)
    assert plain.status_code == 200 and v2.status_code == 200, v2.text
    reply = v2.json()
    assert reply["model_name"] == "keypoints" and reply["id"] == "req-7"
    assert np.array_equal(v2_keypoints(reply), plain_keypoints(plain.json()))
    sizes = {output["name"]: output["data"] for output in reply["outputs"]}
    assert sizes["image_size"] == [144, 144]


def test_torchserve_v1_answer_wraps_the_plain_answer(torchserve_kserve, faces):
    url = torchserve_kserve.inference_url
    plain = requests.put(f"{url}/predictions/keypoints", data=faces[1], timeout=60).json()
    for instance in ({"data": base64.b64encode(faces[1]).decode()}, {"b64": base64.b64encode(faces[1]).decode()}):
        v1 = requests.post(f"{url}/v1/models/keypoints:predict", json={"instances": [instance]}, timeout=60)
        assert v1.status_code == 200, v1.text
        assert v1.json() == {"predictions": [plain]}


def test_torchserve_16_concurrent_v2_requests_each_get_their_own_face(torchserve_kserve, faces):
    url = torchserve_kserve.inference_url
    expected = [plain_keypoints(requests.put(f"{url}/predictions/keypoints", data=f, timeout=60).json())
                for f in faces]
    assert len({tuple(e.ravel()) for e in expected}) == len(faces), "the faces must answer differently"

    def send(i: int) -> tuple[int, dict]:
        reply = requests.post(f"{url}/v2/models/keypoints/infer", json=v2_request(faces[i], f"face-{i}"),
                              timeout=60)
        return reply.status_code, reply.json()

    with ThreadPoolExecutor(CONCURRENT) as pool:
        replies = list(pool.map(send, range(len(faces))))
    for i, (status, reply) in enumerate(replies):
        assert status == 200, reply
        assert reply["id"] == f"face-{i}"
        assert np.array_equal(v2_keypoints(reply), expected[i]), f"face {i} got another face's answer"
    log = (torchserve_kserve.log_dir / "model_log.log").read_text(errors="replace")
    sizes = [int(n) for n in re.findall(r"batch of (\d+):", log)]
    assert max(sizes) > 1, f"no request was batched with another: {sizes}"


def test_torchserve_v2_faces_answer_has_one_row_per_face(torchserve_kserve):
    url = torchserve_kserve.inference_url
    photo = PHOTO.read_bytes()
    plain = requests.put(f"{url}/predictions/faces", data=photo, timeout=60).json()
    reply = requests.post(f"{url}/v2/models/faces/infer", json=v2_request(photo, "p1"), timeout=60)
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    (face,) = plain["faces"]
    assert outputs["boxes"]["shape"] == [1, 4] and outputs["scores"]["data"] == [face["score"]]
    assert outputs["boxes"]["data"] == [face["box"][k] for k in ("x", "y", "width", "height")]
    assert outputs["keypoints"]["shape"] == [1, 15, 2]
    assert np.array_equal(np.array(outputs["keypoints"]["data"]).reshape(15, 2), plain_keypoints(face))
    assert outputs["image_size"]["data"] == [512, 512] and reply.json()["model_name"] == "faces"


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not base64!"]}]}, 400, "base64"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400, "BYTES"),
    ({"inputs": []}, 400, "exactly one input"),
    ({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["aGVsbG8="]}]}, 415,
     "not a readable image"),
    ({"instances": [{"data": "aGk="}, {"data": "aGk="}]}, 400, "one image"),
    ({"hello": 1}, 415, "KServe v2 JSON"),
])
def test_bad_kserve_requests_get_a_4xx_that_says_why(torchserve_kserve, kserve_predictor, body, status, says):
    for url in (torchserve_kserve.inference_url, kserve_predictor):
        path = "/v1/models/keypoints:predict" if "instances" in body else "/v2/models/keypoints/infer"
        reply = requests.post(f"{url}{path}", json=body, timeout=60)
        if "hello" in body and url == kserve_predictor:
            continue  # kserve's own request model refuses this before the predictor (422, its message)
        assert reply.status_code == status, (url, reply.text)
        assert says in reply.json()["error"], (url, reply.text)


# --- the kserve predictor without TorchServe ---------------------------------------------------------
def test_predictor_is_ready_and_describes_its_tensors(kserve_predictor):
    assert requests.get(f"{kserve_predictor}/v2/health/ready", timeout=10).status_code == 200
    meta = requests.get(f"{kserve_predictor}/v2/models/keypoints", timeout=10).json()
    assert meta["name"] == "keypoints"
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]
    assert [o["name"] for o in meta["outputs"]] == ["keypoints", "image_size", "confidence", "quality"]


@pytest.mark.parametrize("server", ["torchserve", "predictor"])
def test_v2_parameters_ask_for_the_68_points_with_their_confidence(server, torchserve_kserve, kserve_predictor):
    """{"parameters": {"points": 68}}: keypoints [1, 68, 2], confidence [1, 68], quality [1], on both routes."""
    base = torchserve_kserve.inference_url if server == "torchserve" else kserve_predictor
    face = distinct_faces(1)[0]
    reply = requests.post(f"{base}/v2/models/keypoints/infer", json={**v2_request(face), "parameters": {"points": 68}},
                          timeout=60)
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    assert outputs["keypoints"]["shape"] == [1, 68, 2] and outputs["confidence"]["shape"] == [1, 68]
    assert all(0 <= c <= 1 for c in outputs["confidence"]["data"]) and 0 < outputs["quality"]["data"][0] <= 1
    fifteen = requests.post(f"{base}/v2/models/keypoints/infer", json=v2_request(face), timeout=60).json()
    assert {o["name"]: o for o in fifteen["outputs"]}["confidence"]["shape"] == [1, 15]
    refused = requests.post(f"{base}/v2/models/keypoints/infer", json={**v2_request(face), "parameters": {"points": 5}},
                            timeout=60)
    assert refused.status_code == 400 and "points must be 15" in refused.text


def test_predictor_answers_what_torchserve_answers(kserve_predictor, torchserve_kserve, faces):
    plain = requests.put(f"{torchserve_kserve.inference_url}/predictions/keypoints", data=faces[2], timeout=60)
    v2 = requests.post(f"{kserve_predictor}/v2/models/keypoints/infer", json=v2_request(faces[2], "x"), timeout=60)
    assert v2.status_code == 200, v2.text
    assert v2.json()["id"] == "x"
    assert np.array_equal(v2_keypoints(v2.json()), plain_keypoints(plain.json()))
    v1 = requests.post(f"{kserve_predictor}/v1/models/keypoints:predict",
                       json={"instances": [{"data": base64.b64encode(faces[2]).decode()}]}, timeout=60)
    assert v1.json() == {"predictions": [plain.json()]}


def test_predictor_16_concurrent_v2_requests_each_get_their_own_face(kserve_predictor, torchserve_kserve, faces):
    expected = [plain_keypoints(requests.put(f"{torchserve_kserve.inference_url}/predictions/keypoints", data=f,
                                             timeout=60).json()) for f in faces]

    def send(i: int) -> dict:
        reply = requests.post(f"{kserve_predictor}/v2/models/keypoints/infer", json=v2_request(faces[i]),
                              timeout=60)
        assert reply.status_code == 200, reply.text
        return reply.json()

    with ThreadPoolExecutor(CONCURRENT) as pool:
        replies = list(pool.map(send, range(len(faces))))
    for i, reply in enumerate(replies):
        assert np.array_equal(v2_keypoints(reply), expected[i]), f"face {i} got another face's answer"


def binary_body(elements: list[bytes], shape: list[int], json_extra: dict | None = None) -> tuple[bytes, int]:
    """A v2 request with binary tensor data, written out by hand (tritonclient would refuse to send these)."""
    raw = b"".join(len(e).to_bytes(4, "little") + e for e in elements)
    header = json.dumps({"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}], **(json_extra or {})}).encode()
    return header + raw, len(header)


@pytest.mark.parametrize(("case", "says"), [
    ("header not a number", ("Inference-Header-Content-Length is",)),
    ("element cut short", ("binary_data_size",)),
    ("two elements in a shape of one", ("holds 2 elements", "cannot reshape array of size 2")),  # TorchServe, kserve
    ("no inputs", ("'inputs'",)),
    ("JSON where the image goes", ("not an image", "not a readable image")),
])
def test_malformed_binary_requests_get_a_400_on_both_routes(case, says, kserve_predictor, torchserve_kserve, faces):
    body, length = binary_body([faces[0]], [1])
    header = str(length)
    if case == "header not a number":
        header = "twelve"
    elif case == "element cut short":
        body = body[:-10]
    elif case == "two elements in a shape of one":
        body, length = binary_body([faces[0], faces[1]], [1])
        header = str(length)
    elif case == "no inputs":
        body, header = b'{"id": "x"}', "11"
    else:
        body, length = binary_body([json.dumps(v2_request(faces[0])).encode()], [1])
        header = str(length)
    for url in (kserve_predictor, torchserve_kserve.inference_url):
        reply = requests.post(f"{url}/v2/models/keypoints/infer", data=body, timeout=60,
                              headers={"Inference-Header-Content-Length": header,
                                       "Content-Type": "application/octet-stream"})
        assert 400 <= reply.status_code < 500, (case, url, reply.status_code, reply.text)
        assert any(words in reply.json()["error"] for words in says), (case, url, reply.text)
    good = requests.post(f"{kserve_predictor}/v2/models/keypoints/infer", json=v2_request(faces[0]), timeout=60)
    assert good.status_code == 200


def test_predictor_refuses_a_second_start_and_a_huge_image(kserve_predictor, tmp_path):
    big = io.BytesIO()
    Image.new("L", (8000, 6000)).save(big, "PNG")  # 48 MP: over the 40 MP limit, refused from the header
    reply = requests.post(f"{kserve_predictor}/v2/models/keypoints/infer", json=v2_request(big.getvalue()),
                          timeout=60)
    assert reply.status_code == 413 and "at most 40,000,000 pixels" in reply.json()["error"]
    port = kserve_predictor.rsplit(":", 1)[1]
    clash = subprocess.run([sys.executable, "-m", "handler.kserve_server", "start", "--http_port", port,
                            "--run_dir", str(tmp_path), "--timeout", "20"], cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=120)
    assert clash.returncode == 1 and "already in use" in clash.stderr
