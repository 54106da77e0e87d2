"""KServe's request and answer forms, as plain functions: Open Inference Protocol v2 and KServe v1.

Every server of the model (TorchServe's handler, the kserve predictor in handler/kserve_model.py)
reads a JSON request through `image_from_kserve` and wraps the plain answer with `kserve_answer`, so
the protocols' numbers are exactly the plain answer's. One image per request:

    v2  {"id": "..", "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["<base64>"]}]}
        -> {"model_name": .., "id": .., "outputs": [{"name": "keypoints", "shape": [1, 15, 2],
            "datatype": "FP32", "data": [x, y, ...]}, {"name": "image_size", "shape": [1, 2],
            "datatype": "INT32", "data": [width, height]}]}
    v1  {"instances": [{"data": "<base64>"}]}  (or {"b64": ..} or {"image": {"b64": ..}})
        -> {"predictions": [<the plain answer>]}

The `faces` model answers v2 with one row per face: "boxes" [N, 4] (x, y, width, height), "scores"
[N], "rolls" [N] (degrees, clockwise as seen) and "keypoints" [N, 15, 2], largest face first, plus
"image_size"; N may be 0.

v2's binary tensor data extension (what tritonclient sends by default) is read too: the header
`Inference-Header-Content-Length: N`, then N bytes of JSON whose input says
`"parameters": {"binary_data_size": M}` instead of `"data"`, then those M bytes: the BYTES tensor,
each element a 4-byte little-endian length and then the image file itself (not base64). The
answer honours the request's output choices: only the outputs it names, each as JSON `data` or,
with `binary_data` (per output, else the request's `binary_data_output`), as raw little-endian
bytes after the JSON, with the same header giving the JSON's length.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from facekp.contract import NUM_KEYPOINTS

V2_INPUT = "image"
V2_OUTPUTS = ("keypoints", "image_size", "confidence", "quality")
BINARY_HEADER = "Inference-Header-Content-Length"
"""The binary tensor data extension's header: how many bytes of the body are the JSON part."""

WIRE_TYPES = {"FP32": "<f4", "INT32": "<i4"}
"""How each output datatype is laid out as binary data (the protocol's: little-endian, row-major)."""

V2_EXAMPLE = ('{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["<base64 of the image '
              'file>"]}]}')
V1_EXAMPLE = '{"instances": [{"data": "<base64 of the image file>"}]}'


class ProtocolError(ValueError):
    """A JSON body that is not a request of either protocol; the caller answers 400 with it."""


def protocol_of(body: Any) -> str | None:
    """'v2' or 'v1' for a JSON request of KServe's protocols, None for anything else."""
    if isinstance(body, Mapping):
        if "inputs" in body:
            return "v2"
        if "instances" in body:
            return "v1"
    return None


def image_from_kserve(body: Mapping[str, Any]) -> bytes:
    """The image file inside a v2 or v1 request; ProtocolError says what is wrong and how it should look."""
    protocol = protocol_of(body)
    if protocol == "v2":
        requested_outputs(body)  # malformed output choices are refused before the model runs
        return _decode_base64(_only_value_of_v2(body))
    if protocol == "v1":
        return _decode_base64(_only_value_of_v1(body))
    raise ProtocolError(f"a JSON body must be a KServe request: v2 {V2_EXAMPLE}, or v1 {V1_EXAMPLE}")


def _only_value_of_v2(body: Mapping[str, Any]) -> Any:
    inputs = body["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], Mapping):
        raise ProtocolError(f"v2 request: 'inputs' must hold exactly one input, e.g. {V2_EXAMPLE}")
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise ProtocolError(f"v2 request: input {tensor.get('name')!r} has datatype {tensor.get('datatype')!r}; "
                            "send the image file as BYTES (base64 in JSON, the file itself as binary data): "
                            f"{V2_EXAMPLE}")
    data = tensor.get("data")
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    elif isinstance(data, list):
        raise ProtocolError(f"v2 request: input holds {len(data)} elements; send one image per request")
    return data


def _only_value_of_v1(body: Mapping[str, Any]) -> Any:
    instances = body["instances"]
    if not isinstance(instances, list) or len(instances) != 1:
        count = len(instances) if isinstance(instances, list) else type(instances).__name__
        raise ProtocolError(f"v1 request: 'instances' must hold one image, got {count}; e.g. {V1_EXAMPLE}")
    instance = instances[0]
    if isinstance(instance, Mapping):
        for key in ("data", "b64", "image"):
            if key in instance:
                value = instance[key]
                return value["b64"] if isinstance(value, Mapping) and "b64" in value else value
        raise ProtocolError(f"v1 request: the instance has no 'data' or 'b64' field; e.g. {V1_EXAMPLE}")
    return instance


def read_binary_request(body: bytes, json_length: Any) -> dict[str, Any]:
    """A v2 request in the binary tensor data extension -> its JSON form, each binary input's elements
    in its "data" as bytes (BYTES: the files themselves); ProtocolError says what does not add up."""
    try:
        length = int(json_length)
    except (TypeError, ValueError):
        length = -1
    if not 0 < length <= len(body):
        raise ProtocolError(f"{BINARY_HEADER} is {json_length!r}: it must be the length of the JSON part of the "
                            f"{len(body)}-byte body")
    try:
        request = json.loads(body[:length])
    except ValueError:
        raise ProtocolError(f"the first {length} bytes of the body ({BINARY_HEADER}) are not JSON") from None
    if protocol_of(request) != "v2" or not isinstance(request["inputs"], list):
        raise ProtocolError("the JSON part of a binary request must be a v2 request with a list of 'inputs'")
    offset = length
    for tensor in request["inputs"]:
        parameters = tensor.get("parameters") if isinstance(tensor, Mapping) else None
        size = parameters.get("binary_data_size") if isinstance(parameters, Mapping) else None
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(body):
            raise ProtocolError(f"input {tensor.get('name')!r} has binary_data_size {size!r}, but "
                                f"{len(body) - offset} bytes of binary data are left")
        raw = body[offset:offset + size]
        offset += size
        tensor["data"] = bytes_elements(raw) if tensor.get("datatype") == "BYTES" else raw
    return request


def bytes_elements(raw: bytes) -> list[bytes]:
    """A BYTES tensor's binary form (each element: its length as 4 bytes little-endian, then its bytes) -> elements."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ProtocolError("the BYTES tensor's binary data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise ProtocolError(f"the BYTES tensor's element of {size} bytes is cut short at {len(raw) - offset}")
        elements.append(raw[offset:offset + size])
        offset += size
    return elements


def _decode_base64(value: Any) -> bytes:
    """A JSON element is the image file in base64; a binary element (bytes) is the file itself."""
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise ProtocolError("the image element is empty: send the image file's bytes")
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"the image must be a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("the image is not valid base64 (standard alphabet, with padding)") from None


def kserve_answer(protocol: str, answer: Mapping[str, Any], request: Mapping[str, Any],
                  model_name: str) -> dict[str, Any]:
    """The plain answer (keypoints_json, or faces_json of the photo path) in the request's protocol."""
    if protocol == "v1":
        return {"predictions": [dict(answer)]}
    image = answer["image"]
    reply: dict[str, Any] = {"model_name": model_name}
    if isinstance(request.get("id"), str) and request["id"]:
        reply["id"] = request["id"]
    if "faces" in answer:
        faces = answer["faces"]
        boxes = [f["box"][k] for f in faces for k in ("x", "y", "width", "height")]
        per_face = [f["keypoints"] for f in faces]
        outputs = [
            {"name": "boxes", "shape": [len(faces), 4], "datatype": "FP32", "data": boxes},
            {"name": "scores", "shape": [len(faces)], "datatype": "FP32", "data": [f["score"] for f in faces]},
            {"name": "rolls", "shape": [len(faces)], "datatype": "FP32", "data": [f["roll"] for f in faces]},
        ]
    else:
        faces, per_face, outputs = [answer], [answer["keypoints"]], []
    count = len(per_face[0]) if per_face else NUM_KEYPOINTS
    outputs.append({"name": "keypoints", "shape": [len(per_face), count, 2], "datatype": "FP32",
                    "data": [v for points in per_face for p in points for v in (p["x"], p["y"])]})
    outputs.append({"name": "image_size", "shape": [1, 2], "datatype": "INT32",
                    "data": [image["width"], image["height"]]})
    if per_face and per_face[0] and "confidence" in per_face[0][0]:  # a model that gives them
        outputs.append({"name": "confidence", "shape": [len(per_face), count], "datatype": "FP32",
                        "data": [p["confidence"] for points in per_face for p in points]})
        outputs.append({"name": "quality", "shape": [len(faces)], "datatype": "FP32",
                        "data": [f["quality"] for f in faces]})
    reply["outputs"] = outputs
    return reply


def encode_v2(reply: Mapping[str, Any], request: Mapping[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """A v2 answer as the request asked for it: (its JSON part, the binary data to send after it or None).

    Only the outputs the request names (all when it names none), in its order; each one binary when its
    `binary_data` parameter says so, else when the request's `binary_data_output` does. ProtocolError
    for an output the model does not have.
    """
    outputs = {output["name"]: output for output in reply["outputs"]}
    default_binary = _parameter(request, "binary_data_output")
    asked = requested_outputs(request, list(outputs)) or [{"name": name} for name in outputs]
    chosen, binary = [], []
    for output in asked:
        tensor = dict(outputs[output["name"]])
        wanted = _parameter(output, "binary_data")
        if default_binary if wanted is None else wanted:
            data = np.asarray(tensor.pop("data"), WIRE_TYPES[tensor["datatype"]]).tobytes()
            tensor["parameters"] = {"binary_data_size": len(data)}
            binary.append(data)
        chosen.append(tensor)
    return {**reply, "outputs": chosen}, (b"".join(binary) if binary else None)


def requested_outputs(request: Mapping[str, Any], available: list[str] | None = None) -> list[Mapping[str, Any]]:
    """The outputs a v2 request names ([] for all), checked: a list of objects with a string name, each one
    the model answers (when `available` is given); ProtocolError otherwise."""
    asked = request.get("outputs") or []
    if not isinstance(asked, list) or not all(isinstance(o, Mapping) and isinstance(o.get("name"), str)
                                              for o in asked):
        raise ProtocolError('v2 request: \'outputs\' must be a list of {"name": "<output>"} objects')
    unknown = [o["name"] for o in asked if available is not None and o["name"] not in available]
    if unknown:
        raise ProtocolError(f"v2 request asks for output {unknown[0]!r}; this model answers "
                            f"{', '.join(map(repr, available))}")
    return asked


def _parameter(item: Mapping[str, Any], name: str) -> Any:
    parameters = item.get("parameters")
    return parameters.get(name) if isinstance(parameters, Mapping) else None


def pass_torchserve_envelopes_through() -> None:
    """Make TorchServe's KServe envelopes hand the whole batch over unchanged and take the answers as they are.

    With service_envelope=kservev2 (or kserve) TorchServe wraps the handler in an envelope that reads
    only the first request of a batch and answers the batch as one (pytorch/serve #2158, #1302). The
    handlers read each request's KServe JSON themselves (image_from_kserve), so they call this when
    they start. Imported here, not at module level: this module stays free of TorchServe.
    """
    from ts.torch_handler.request_envelope.kserve import KServeEnvelope
    from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

    for envelope in (KServeEnvelope, KServev2Envelope):
        envelope.parse_input = lambda self, data: data
        envelope.format_output = lambda self, data: data
