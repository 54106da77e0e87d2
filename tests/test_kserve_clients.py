"""What standard Open Inference Protocol clients send, against both KServe routes, over real sockets.

NVIDIA's tritonclient over HTTP (binary tensor data, its default, and JSON; binary and JSON outputs)
against the kserve predictor (`make serve-kserve`) and TorchServe's v2 route, and over gRPC (raw
contents, its default, and typed contents) against the predictor: TorchServe's own gRPC API is not
the v2 protocol. Every answer must be the plain endpoint's for the same image; bad input gets a 4xx
or INVALID_ARGUMENT that says what is wrong, and the server goes on answering.

tritonclient.grpc runs in a process of its own (tests/triton_grpc_client.py says why).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.utils import InferenceServerException

from facekp.data import REPO_ROOT
from tests.test_kserve import plain_keypoints
from tests.triton_tensors import bytes_tensor, float_tensor

FACES = 40
CONCURRENT = 16
TOLERANCE_PX = 0.01


def png_of(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def real_faces(validation_faces) -> list[bytes]:
    """40 real faces of the validation people as 96x96 PNG files, as a client sends them."""
    return [png_of(pixels) for pixels in validation_faces.images[:FACES]]


@pytest.fixture(scope="module")
def face_files(real_faces, tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("faces")
    for i, face in enumerate(real_faces):
        (folder / f"face_{i:02d}.png").write_bytes(face)
    return sorted(str(path) for path in folder.glob("*.png"))


@pytest.fixture(scope="module")
def plain_answers(torchserve_kserve, real_faces) -> np.ndarray:
    """(40, 15, 2) keypoints of `curl -T face.png .../predictions/keypoints` for each face."""
    url = f"{torchserve_kserve.inference_url}/predictions/keypoints"
    return np.stack([plain_keypoints(requests.put(url, data=face, timeout=60).json()) for face in real_faces])


@pytest.fixture(scope="module")
def http_routes(torchserve_kserve, kserve_predictor) -> dict[str, str]:
    """host:port of each HTTP route, as tritonclient takes it."""
    return {"predictor": kserve_predictor.removeprefix("http://"),
            "torchserve": torchserve_kserve.inference_url.removeprefix("http://")}


def triton_grpc(address: str, mode: str, files: list[str]) -> dict:
    """tests/triton_grpc_client.py's answer for `mode`, run in its own process."""
    done = subprocess.run([sys.executable, "-m", "tests.triton_grpc_client", address, mode, *files], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def answer_all(ask, faces: list[bytes]) -> list:
    """ask(client_index, face) for every face, from CONCURRENT clients at once, each with its share."""
    def client(k: int) -> list:
        return [(i, ask(k, faces[i])) for i in range(k, len(faces), CONCURRENT)]

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = dict(pair for share in pool.map(client, range(CONCURRENT)) for pair in share)
    return [answers[i] for i in range(len(faces))]


@pytest.mark.parametrize("route", ["predictor", "torchserve"])
@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (True, False), (False, True), (False, False)],
                         ids=["binary-in-binary-out", "binary-in-json-out", "json-in-binary-out", "json-in-json-out"])
def test_tritonclient_http_answers_every_face_as_the_plain_endpoint(route, binary_in, binary_out, http_routes,
                                                                    real_faces, plain_answers):
    clients = [triton_http.InferenceServerClient(http_routes[route]) for _ in range(CONCURRENT)]
    # no outputs named: tritonclient's default, every output as binary data
    outputs = None if binary_out else [triton_http.InferRequestedOutput(name, binary_data=False)
                                       for name in ("keypoints", "image_size")]

    def ask(k: int, face: bytes):
        return clients[k].infer("keypoints", [bytes_tensor(triton_http, [face], binary=binary_in)], outputs=outputs)

    results = answer_all(ask, real_faces)
    for i, result in enumerate(results):
        keypoints = result.get_output("keypoints")
        assert ("data" not in keypoints) == binary_out, keypoints
        assert result.as_numpy("keypoints").shape == (1, 15, 2)
        np.testing.assert_allclose(result.as_numpy("keypoints")[0], plain_answers[i], atol=TOLERANCE_PX,
                                   err_msg=f"face {i}")
        assert result.as_numpy("image_size").tolist() == [[96, 96]]
    assert len(results) == FACES


def test_tritonclient_http_asks_for_one_output_and_gets_only_it(http_routes, real_faces, plain_answers):
    for route in ("predictor", "torchserve"):
        client = triton_http.InferenceServerClient(http_routes[route])
        result = client.infer("keypoints", [bytes_tensor(triton_http, [real_faces[0]])], request_id="one-output",
                              outputs=[triton_http.InferRequestedOutput("keypoints")])
        assert [o["name"] for o in result.get_response()["outputs"]] == ["keypoints"], route
        assert result.get_response()["id"] == "one-output"
        np.testing.assert_allclose(result.as_numpy("keypoints")[0], plain_answers[0], atol=TOLERANCE_PX)


def test_tritonclient_grpc_answers_every_face_as_the_plain_endpoint(kserve_grpc, face_files, plain_answers):
    result = triton_grpc(kserve_grpc, "answers", face_files)
    assert result["ready"] and result["inputs"] == ["image"]
    assert result["ids"] == [f"face-{i}" for i in range(FACES)]
    assert all(result["raw_outputs"]), "raw inputs get raw outputs"
    np.testing.assert_allclose(np.array(result["keypoints"]), plain_answers, atol=TOLERANCE_PX)
    assert result["image_size"] == [[[96, 96]]] * FACES


def test_grpc_typed_contents_in_and_out(kserve_grpc, face_files, plain_answers):
    """The protocol's other form of a gRPC tensor: the image in bytes_contents, answers in fp32_contents."""
    result = triton_grpc(kserve_grpc, "typed", face_files[:4])
    assert not any(result["raw_outputs"])
    np.testing.assert_allclose(np.array(result["keypoints"]), plain_answers[:4], atol=TOLERANCE_PX)
    assert result["image_size"] == [[96, 96]] * 4


BAD_INPUTS = {  # what is sent (tests/triton_grpc_client.py sends the same over gRPC) -> what the refusal says
    "not an image": (lambda face: [bytes_tensor(triton_http, [b"hello, not an image"])], "not a readable image"),
    "an empty tensor": (lambda face: [bytes_tensor(triton_http, [])], "holds 0 elements"),
    "a wrong datatype": (lambda face: [float_tensor(triton_http)], "datatype 'FP32'"),
    "two inputs": (lambda face: [bytes_tensor(triton_http, [face]), bytes_tensor(triton_http, [face], "other")],
                   "exactly one input"),
    "two images": (lambda face: [bytes_tensor(triton_http, [face, face])], "holds 2 elements"),
}


@pytest.mark.parametrize("bad", [*BAD_INPUTS, "an output the model has not"])
@pytest.mark.parametrize("route", ["predictor", "torchserve"])
def test_bad_input_over_http_is_refused_with_a_reason_and_the_server_goes_on(route, bad, http_routes, real_faces,
                                                                             plain_answers):
    client = triton_http.InferenceServerClient(http_routes[route])
    if bad in BAD_INPUTS:
        make, says = BAD_INPUTS[bad]
        inputs, outputs = make(real_faces[0]), None
    else:
        inputs, says = [bytes_tensor(triton_http, [real_faces[0]])], "nose"
        outputs = [triton_http.InferRequestedOutput("nose")]
    with pytest.raises(InferenceServerException) as refused:
        client.infer("keypoints", inputs, outputs=outputs)
    assert refused.value.status() is not None and 400 <= int(refused.value.status()) < 500, refused.value
    assert says in refused.value.message(), refused.value
    result = client.infer("keypoints", [bytes_tensor(triton_http, [real_faces[1]])])
    np.testing.assert_allclose(result.as_numpy("keypoints")[0], plain_answers[1], atol=TOLERANCE_PX)


def test_bad_input_over_grpc_is_invalid_argument_with_a_reason_and_the_server_goes_on(kserve_grpc, face_files,
                                                                                      plain_answers):
    refusals = triton_grpc(kserve_grpc, "bad", face_files[:1])
    says = {name: says for name, (_, says) in BAD_INPUTS.items()} | {"an output the model has not": "nose"}
    assert set(refusals) == set(says)
    for name, refusal in refusals.items():
        assert refusal["status"] == "StatusCode.INVALID_ARGUMENT", (name, refusal)
        assert says[name] in refusal["message"], (name, refusal)
        np.testing.assert_allclose(refusal["then"], plain_answers[0], atol=TOLERANCE_PX)


def test_grpc_parameters_ask_for_the_68_points(kserve_grpc, face_files):
    """gRPC's request parameters reach the predictor as protobuf values: points=68 is read from them."""
    result = triton_grpc(kserve_grpc, "points", face_files[:1])
    assert result["keypoints"] == [1, 68, 2] and len(result["confidence"][0]) == 68
    assert all(0 <= c <= 1 for c in result["confidence"][0])
