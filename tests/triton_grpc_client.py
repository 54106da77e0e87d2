"""tritonclient.grpc against a gRPC v2 server, run as its own process by tests/test_kserve_clients.py.

tritonclient's protobuf messages and kserve's are both the `inference` package (grpc_service.proto
and grpc_predict_v2.proto), and protobuf refuses the second set of the same names in one process. The
test process imports kserve (tests/test_deploy_manifests.py), so the gRPC client runs here:

    python -m tests.triton_grpc_client ADDRESS answers FACE.png ...   # 16 clients; prints their answers
    python -m tests.triton_grpc_client ADDRESS typed FACE.png ...     # bytes_contents in, typed contents out
    python -m tests.triton_grpc_client ADDRESS bad FACE.png           # each bad request, then a good one
    python -m tests.triton_grpc_client ADDRESS points FACE.png        # parameters {"points": 68}

It prints one JSON object.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.triton_tensors import bytes_tensor, float_tensor

CONCURRENT = 16


def answers(address: str, faces: list[bytes]) -> dict:
    """Every face from 16 clients at once (tritonclient's defaults: raw contents both ways)."""
    clients = [triton_grpc.InferenceServerClient(address) for _ in range(CONCURRENT)]
    metadata = clients[0].get_model_metadata("keypoints", as_json=True)

    def client(k: int) -> list[tuple[int, list, list, bool, str]]:
        share = []
        for i in range(k, len(faces), CONCURRENT):
            result = clients[k].infer("keypoints", [bytes_tensor(triton_grpc, [faces[i]])], request_id=f"face-{i}")
            response = result.get_response()
            share.append((i, result.as_numpy("keypoints")[0].tolist(), result.as_numpy("image_size").tolist(),
                          bool(response.raw_output_contents), response.id))
        return share

    with ThreadPoolExecutor(CONCURRENT) as pool:
        rows = sorted(row for share in pool.map(client, range(CONCURRENT)) for row in share)
    return {"ready": clients[0].is_server_ready() and clients[0].is_model_ready("keypoints"),
            "inputs": [tensor["name"] for tensor in metadata["inputs"]],
            "keypoints": [row[1] for row in rows], "image_size": [row[2] for row in rows],
            "raw_outputs": [row[3] for row in rows], "ids": [row[4] for row in rows]}


def typed(address: str, faces: list[bytes]) -> dict:
    """The protocol's other form of a gRPC tensor: the image in bytes_contents; answers come back typed."""
    keypoints, sizes, raw = [], [], []
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for face in faces:
            contents = service_pb2.InferTensorContents(bytes_contents=[face])
            tensor = service_pb2.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1],
                                                                      contents=contents)
            reply = stub.ModelInfer(service_pb2.ModelInferRequest(model_name="keypoints", inputs=[tensor]), timeout=60)
            outputs = {output.name: output for output in reply.outputs}
            keypoints.append(np.array(outputs["keypoints"].contents.fp32_contents).reshape(15, 2).tolist())
            sizes.append(list(outputs["image_size"].contents.int_contents))
            raw.append(bool(reply.raw_output_contents))
    return {"keypoints": keypoints, "image_size": sizes, "raw_outputs": raw}


def bad(address: str, face: bytes) -> dict:
    """Each bad request's status and message, and the answer to a good request sent right after it."""
    client = triton_grpc.InferenceServerClient(address)
    cases = {
        "not an image": ([bytes_tensor(triton_grpc, [b"hello, not an image"])], None),
        "an empty tensor": ([bytes_tensor(triton_grpc, [])], None),
        "a wrong datatype": ([float_tensor(triton_grpc)], None),
        "two inputs": ([bytes_tensor(triton_grpc, [face]), bytes_tensor(triton_grpc, [face], "other")], None),
        "two images": ([bytes_tensor(triton_grpc, [face, face])], None),
        "an output the model has not": ([bytes_tensor(triton_grpc, [face])],
                                        [triton_grpc.InferRequestedOutput("nose")]),
    }
    refusals = {}
    for name, (inputs, outputs) in cases.items():
        try:
            client.infer("keypoints", inputs, outputs=outputs)
            refusal = {"status": "answered"}
        except InferenceServerException as err:
            refusal = {"status": err.status(), "message": err.message()}
        after = client.infer("keypoints", [bytes_tensor(triton_grpc, [face])])
        refusals[name] = {**refusal, "then": after.as_numpy("keypoints")[0].tolist()}
    return refusals


def points(address: str, faces: list[bytes]) -> dict:
    """The request parameter points=68 over gRPC: the 68 points, each with its confidence."""
    reply = triton_grpc.InferenceServerClient(address).infer("keypoints", [bytes_tensor(triton_grpc, faces[:1])],
                                                             parameters={"points": 68})
    return {"keypoints": list(reply.as_numpy("keypoints").shape), "confidence": reply.as_numpy("confidence").tolist()}


def main(argv: list[str]) -> int:
    address, mode, *paths = argv
    faces = [Path(path).read_bytes() for path in paths]
    modes = {"answers": answers, "typed": typed, "points": points}
    result = modes[mode](address, faces) if mode != "bad" else bad(address, faces[0])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
