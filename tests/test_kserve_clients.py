"""What standard Open Inference Protocol clients send, against both KServe routes, over real sockets.

NVIDIA's tritonclient over HTTP (binary tensor data, its default, and JSON; binary and JSON outputs)
against the kserve predictor (`make serve-kserve`) and TorchServe's v2 route, and over gRPC (raw
contents, its default, and typed contents) against the predictor: TorchServe's own gRPC API is not
the v2 protocol. Every answer must be the plain endpoint's for the same image; bad input gets a 4xx
or INVALID_ARGUMENT that says what is wrong, and the server goes on answering.
"""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.test_kserve import plain_keypoints

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
def plain_answers(torchserve_kserve, real_faces) -> np.ndarray:
    """(40, 15, 2) keypoints of `curl -T face.png .../predictions/keypoints` for each face."""
    url = f"{torchserve_kserve.inference_url}/predictions/keypoints"
    return np.stack([plain_keypoints(requests.put(url, data=face, timeout=60).json()) for face in real_faces])


@pytest.fixture(scope="module")
def http_routes(torchserve_kserve, kserve_predictor) -> dict[str, str]:
    """host:port of each HTTP route, as tritonclient takes it."""
    return {"predictor": kserve_predictor.removeprefix("http://"),
            "torchserve": torchserve_kserve.inference_url.removeprefix("http://")}


def http_input(image: bytes, binary: bool = True) -> triton_http.InferInput:
    """The image as tritonclient sends BYTES: the file itself as binary data, or base64 text in the JSON."""
    tensor = triton_http.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image if binary else base64.b64encode(image)], dtype=object),
                               binary_data=binary)
    return tensor


def grpc_input(image: bytes) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=object))
    return tensor


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
        return clients[k].infer("keypoints", [http_input(face, binary_in)], outputs=outputs)

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
        result = client.infer("keypoints", [http_input(real_faces[0])], request_id="one-output",
                              outputs=[triton_http.InferRequestedOutput("keypoints")])
        assert [o["name"] for o in result.get_response()["outputs"]] == ["keypoints"], route
        assert result.get_response()["id"] == "one-output"
        np.testing.assert_allclose(result.as_numpy("keypoints")[0], plain_answers[0], atol=TOLERANCE_PX)


def test_tritonclient_grpc_answers_every_face_as_the_plain_endpoint(kserve_grpc, real_faces, plain_answers):
    clients = [triton_grpc.InferenceServerClient(kserve_grpc) for _ in range(CONCURRENT)]
    assert clients[0].is_server_ready() and clients[0].is_model_ready("keypoints")
    metadata = clients[0].get_model_metadata("keypoints", as_json=True)
    assert [t["name"] for t in metadata["inputs"]] == ["image"]

    def ask(k: int, face: bytes):
        return clients[k].infer("keypoints", [grpc_input(face)], request_id=f"grpc-{k}")

    results = answer_all(ask, real_faces)
    for i, result in enumerate(results):
        assert result.get_response().raw_output_contents, "raw inputs get raw outputs"
        np.testing.assert_allclose(result.as_numpy("keypoints")[0], plain_answers[i], atol=TOLERANCE_PX,
                                   err_msg=f"face {i}")
        assert result.as_numpy("image_size").tolist() == [[96, 96]]


def test_grpc_typed_contents_in_and_out(kserve_grpc, real_faces, plain_answers):
    """The protocol's other form of a gRPC tensor: the image in bytes_contents, answers in fp32_contents."""
    with grpc.insecure_channel(kserve_grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for i in range(4):
            tensor = service_pb2.ModelInferRequest().InferInputTensor(
                name="image", datatype="BYTES", shape=[1],
                contents=service_pb2.InferTensorContents(bytes_contents=[real_faces[i]]))
            reply = stub.ModelInfer(service_pb2.ModelInferRequest(model_name="keypoints", inputs=[tensor]), timeout=60)
            assert not reply.raw_output_contents
            outputs = {output.name: output for output in reply.outputs}
            keypoints = np.array(outputs["keypoints"].contents.fp32_contents).reshape(15, 2)
            np.testing.assert_allclose(keypoints, plain_answers[i], atol=TOLERANCE_PX)
            assert list(outputs["image_size"].contents.int_contents) == [96, 96]


def bytes_tensor(module, elements: list[bytes], name: str = "image"):
    tensor = module.InferInput(name, [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=object))
    return tensor


def float_tensor(module):
    tensor = module.InferInput("image", [1, 96, 96], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 96, 96), np.float32))
    return tensor


BAD_INPUTS = {  # what is sent -> what the refusal must say
    "not an image": (lambda m, face: [bytes_tensor(m, [b"hello, not an image"])], "not a readable image"),
    "an empty tensor": (lambda m, face: [bytes_tensor(m, [])], "holds 0 elements"),
    "a wrong datatype": (lambda m, face: [float_tensor(m)], "datatype 'FP32'"),
    "two inputs": (lambda m, face: [bytes_tensor(m, [face]), bytes_tensor(m, [face], "other")], "exactly one input"),
    "two images": (lambda m, face: [bytes_tensor(m, [face, face])], "holds 2 elements"),
}


@pytest.mark.parametrize("bad", list(BAD_INPUTS) + ["an output the model has not"])
@pytest.mark.parametrize("route", ["predictor-http", "torchserve-http", "predictor-grpc"])
def test_bad_input_is_refused_with_a_reason_and_the_server_goes_on(route, bad, http_routes, kserve_grpc, real_faces,
                                                                   plain_answers):
    grpc_route = route.endswith("grpc")
    module = triton_grpc if grpc_route else triton_http
    client = module.InferenceServerClient(kserve_grpc if grpc_route else http_routes[route.split("-")[0]])
    if bad in BAD_INPUTS:
        make, says = BAD_INPUTS[bad]
        inputs, outputs = make(module, real_faces[0]), None
    else:
        inputs, outputs, says = [bytes_tensor(module, [real_faces[0]])], [module.InferRequestedOutput("nose")], "nose"
    with pytest.raises(InferenceServerException) as refused:
        client.infer("keypoints", inputs, outputs=outputs)
    status = refused.value.status()
    if grpc_route:
        assert status == "StatusCode.INVALID_ARGUMENT", refused.value
    else:
        assert status is not None and 400 <= int(status) < 500, refused.value
    assert says in refused.value.message(), refused.value
    result = client.infer("keypoints", [bytes_tensor(module, [real_faces[1]])])
    np.testing.assert_allclose(result.as_numpy("keypoints")[0], plain_answers[1], atol=TOLERANCE_PX)
