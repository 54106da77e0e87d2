"""handler.kserve_protocol and its use in answer_batch, without a server."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from handler import kserve_protocol
from handler.kserve_protocol import ProtocolError, image_from_kserve, kserve_answer, protocol_of
from handler.processing import answer_batch


def png(side: int = 96, shade: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side), shade).save(buffer, "PNG")
    return buffer.getvalue()


def v2(image: bytes, **extra) -> dict:
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()]}], **extra}


def fixed_model(batch: np.ndarray) -> np.ndarray:
    return np.zeros((len(batch), 15, 2), np.float32)  # every point at the centre


def test_protocol_is_told_by_the_top_level_key():
    assert protocol_of(v2(b"x")) == "v2"
    assert protocol_of({"instances": []}) == "v1"
    assert protocol_of({"data": "x"}) is None and protocol_of(b"{") is None


@pytest.mark.parametrize("instance", [lambda b: {"data": b}, lambda b: {"b64": b}, lambda b: {"image": {"b64": b}},
                                      lambda b: b])
def test_v1_instances_in_every_documented_form(instance):
    image = png()
    assert image_from_kserve({"instances": [instance(base64.b64encode(image).decode())]}) == image


@pytest.mark.parametrize(("body", "says"), [
    ({"inputs": "image"}, "exactly one input"),
    ({"inputs": [{"datatype": "BYTES", "data": ["a", "b"]}]}, "one image per request"),
    ({"inputs": [{"datatype": "UINT8", "data": [1]}]}, "BYTES"),
    ({"inputs": [{"datatype": "BYTES", "data": [""]}]}, "base64 string"),
    ({"inputs": [{"datatype": "BYTES", "data": ["abc"]}]}, "not valid base64"),
    ({"instances": [{"url": "x"}]}, "no 'data' or 'b64'"),
    ({"other": 1}, "KServe request"),
])
def test_malformed_requests_say_what_is_wrong(body, says):
    with pytest.raises(ProtocolError, match=says):
        image_from_kserve(body)


PLAIN = {"keypoints": [{"name": f"p{i}", "x": i + 0.25, "y": -i} for i in range(15)],
         "image": {"width": 40, "height": 30}}


def test_v2_answer_carries_the_plain_numbers_and_the_request_id():
    plain = PLAIN
    reply = kserve_answer("v2", plain, {"id": "r1"}, "keypoints")
    assert reply["model_name"] == "keypoints" and reply["id"] == "r1"
    keypoints, size = reply["outputs"]
    assert keypoints["data"][:4] == [0.25, 0, 1.25, -1] and len(keypoints["data"]) == 30
    assert size == {"name": "image_size", "shape": [1, 2], "datatype": "INT32", "data": [40, 30]}
    assert kserve_answer("v1", plain, {}, "keypoints") == {"predictions": [plain]}


def test_a_batch_mixes_protocols_and_answers_each_in_its_own():
    image = png(192)
    requests = [{"body": image}, {"body": v2(image, id="a")}, {"body": {"instances": [{"b64": "!!"}]}},
                {"body": json.dumps(v2(image)).encode()}]  # the last: v2 JSON sent without a JSON Content-Type
    replies = answer_batch(requests, fixed_model)
    assert [r.status for r in replies] == [200, 200, 400, 200]
    assert replies[0].body["keypoints"][0] == {"name": "left_eye_center", "x": 96.5, "y": 96.5}  # centre of 192 px
    assert replies[1].body["id"] == "a" and replies[1].body["outputs"][0]["data"][:2] == [96.5, 96.5]
    assert "base64" in replies[2].body["error"]
    assert replies[3].body["outputs"][1]["data"] == [192, 192]


def test_examples_in_messages_are_valid_json_shapes():
    assert protocol_of(json.loads(kserve_protocol.V2_EXAMPLE)) == "v2"
    assert protocol_of(json.loads(kserve_protocol.V1_EXAMPLE)) == "v1"


def test_v2_faces_answer_with_and_without_faces():
    point = [{"name": n, "x": 1.0, "y": 2.0} for n in range(15)]
    answer = {"faces": [{"box": {"x": 1, "y": 2, "width": 3, "height": 4}, "score": 0.9, "roll": -30.5,
                         "keypoints": point}] * 2,
              "image": {"width": 10, "height": 20}}
    outputs = {o["name"]: o for o in kserve_answer("v2", answer, {}, "faces")["outputs"]}
    assert outputs["boxes"] == {"name": "boxes", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4] * 2}
    assert outputs["rolls"] == {"name": "rolls", "shape": [2], "datatype": "FP32", "data": [-30.5, -30.5]}
    assert outputs["keypoints"]["shape"] == [2, 15, 2] and len(outputs["keypoints"]["data"]) == 60
    empty = {o["name"]: o for o in kserve_answer("v2", {"faces": [], "image": answer["image"]}, {}, "faces")["outputs"]}
    assert empty["boxes"]["shape"] == [0, 4] and empty["keypoints"]["data"] == [] and empty["rolls"]["shape"] == [0]
    assert empty["image_size"]["data"] == [10, 20]


def binary_request(image: bytes, **request) -> tuple[bytes, int]:
    """A v2 request with binary tensor data, laid out as tritonclient lays it out."""
    header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(image) + 4}}], **request}).encode()
    return header + len(image).to_bytes(4, "little") + image, len(header)


def test_binary_tensor_data_gives_the_image_file_itself():
    image = png()
    body, json_length = binary_request(image, id="b1")
    request = kserve_protocol.read_binary_request(body, str(json_length))
    assert request["id"] == "b1" and request["inputs"][0]["data"] == [image]
    assert image_from_kserve(request) == image


@pytest.mark.parametrize(("cut", "says"), [
    (lambda body, n: (body, "x"), "Inference-Header-Content-Length is 'x'"),
    (lambda body, n: (body, len(body) + 1), "must be the length of the JSON part"),
    (lambda body, n: (body, n - 1), "are not JSON"),
    (lambda body, n: (body[:-10], n), "binary_data_size"),
])
def test_broken_binary_requests_say_what_does_not_add_up(cut, says):
    body, json_length = cut(*binary_request(png()))
    with pytest.raises(ProtocolError, match=says):
        kserve_protocol.read_binary_request(body, json_length)


def test_bytes_elements_reads_each_length_prefixed_element():
    raw = b"".join(len(e).to_bytes(4, "little") + e for e in (b"ab", b"", b"xyz"))
    assert kserve_protocol.bytes_elements(raw) == [b"ab", b"", b"xyz"]
    with pytest.raises(ProtocolError, match="cut short"):
        kserve_protocol.bytes_elements(raw[:-1])
    with pytest.raises(ProtocolError, match="ends inside an element's 4-byte length"):
        kserve_protocol.bytes_elements(b"\x05\x00")


def test_a_binary_element_that_is_empty_is_refused():
    with pytest.raises(ProtocolError, match="empty"):
        image_from_kserve({"inputs": [{"datatype": "BYTES", "data": [b""]}]})


def test_encode_v2_answers_json_unless_binary_is_asked_for():
    reply = kserve_answer("v2", PLAIN, {}, "keypoints")
    assert kserve_protocol.encode_v2(reply, {}) == (reply, None)
    body, binary = kserve_protocol.encode_v2(reply, {"parameters": {"binary_data_output": True}})
    keypoints, size = body["outputs"]
    assert "data" not in keypoints and keypoints["parameters"] == {"binary_data_size": 120}
    assert size["parameters"] == {"binary_data_size": 8}
    assert np.frombuffer(binary[:120], "<f4").reshape(15, 2)[1].tolist() == [1.25, -1.0]
    assert np.frombuffer(binary[120:], "<i4").tolist() == [40, 30]


def test_encode_v2_gives_only_the_outputs_asked_for_each_in_its_own_form():
    reply = kserve_answer("v2", PLAIN, {}, "keypoints")
    asked = {"outputs": [{"name": "image_size", "parameters": {"binary_data": False}}, {"name": "keypoints"}],
             "parameters": {"binary_data_output": True}}
    body, binary = kserve_protocol.encode_v2(reply, asked)
    assert [o["name"] for o in body["outputs"]] == ["image_size", "keypoints"]
    assert body["outputs"][0]["data"] == [40, 30] and len(binary) == 120
    with pytest.raises(ProtocolError, match="output 'nose'; this model answers 'keypoints', 'image_size'"):
        kserve_protocol.encode_v2(reply, {"outputs": [{"name": "nose"}]})


def test_a_batch_answers_a_binary_request_in_binary_and_a_bad_output_with_a_400():
    body, json_length = binary_request(png(192), parameters={"binary_data_output": True})
    headers = [{"Inference-Header-Content-Length": str(json_length)}, {}]
    nose = {"body": v2(png(), outputs=[{"name": "nose"}])}
    replies = answer_batch([{"body": body}, nose], fixed_model, headers=headers)
    assert replies[0].status == 200 and len(replies[0].binary) == 128
    assert replies[0].body["outputs"][0]["parameters"] == {"binary_data_size": 120}
    assert replies[1].status == 400 and "nose" in replies[1].body["error"]


@pytest.mark.parametrize("outputs", [[{"name": ["keypoints"]}], "keypoints", [{"binary_data": True}]])
def test_malformed_output_choices_fail_their_own_request_before_the_model(outputs):
    replies = answer_batch([{"body": v2(png(), outputs=outputs)}, {"body": png()}], fixed_model)
    assert [r.status for r in replies] == [400, 200]
    assert "'outputs' must be a list" in replies[0].body["error"]
