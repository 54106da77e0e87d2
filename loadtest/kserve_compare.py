"""The KServe routes side by side, same faces, same load generators (a benchmark, not a test):

    .venv/bin/python -m loadtest.kserve_compare            # ~5 min; prints a markdown table

1. TorchServe with the shipped config, plain uploads (curl -T): the reference.
2. TorchServe with k8s/kserve/config/config.properties (kservev2 envelope, its batching): v2 JSON
   (the image in base64) and v2 binary (tritonclient's default: the file itself after the JSON).
3. The kserve predictor without TorchServe (handler/kserve_server.py): v2 JSON, v2 binary, gRPC v2.

Each gets closed-loop load at 1 and 16 clients on free loopback ports, one route at a time. HTTP
goes through loadtest.loadgen; gRPC through grpc.aio with prebuilt requests (tritonclient's
protobuf messages), each client one call at a time on a shared channel.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from facekp import data as facedata
from facekp.archive import FACES, build_archive
from facekp.data import REPO_ROOT
from facekp.evaluate import encode_face
from facekp.processes import free_port
from facekp.torchserve import Service, free_ports
from handler.kserve_protocol import BINARY_HEADER
from loadtest.images import Upload
from loadtest.loadgen import LoadResult, run_load

KSERVE_CONFIG = REPO_ROOT / "k8s" / "kserve" / "config" / "config.properties"


def faces(count: int, data: str | None) -> list[bytes]:
    """96x96 PNGs of `count` faces spread over the data set."""
    dataset = facedata.load(data)
    step = max(1, len(dataset) // count)
    return [encode_face(dataset.images[i * step], "png") for i in range(count)]


def as_v2(image: bytes) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "data": [base64.b64encode(image).decode()]}]}).encode()


def as_v2_binary(image: bytes) -> Upload:
    """The request tritonclient.http sends by default: binary input and outputs (its own request builder)."""
    import tritonclient.http as triton_http

    tensor = triton_http.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=object))
    body, json_length = triton_http.InferenceServerClient.generate_request_body([tensor])
    return Upload("v2-binary", "application/octet-stream", body, ((BINARY_HEADER, str(json_length)),))


def v2_ok(status: int, body: bytes) -> bool:
    return status == 200 and b'"name":"keypoints"' in body.replace(b" ", b"")


@contextmanager
def torchserve(root: Path, config: Path | None = None):
    archive = build_archive(export_dir=root / "store")
    build_archive(export_dir=root / "store", spec=FACES)  # the KServe config's model_snapshot names both
    extra = {"config": config, "extra_config": {"model_store": str(archive.parent)}, "models_from_config": True} \
        if config else {}
    service = Service(run_dir=root / "run", model_store=archive.parent, **free_ports(), **extra)
    service.start(archive)
    try:
        service.wait_ready(180)
        yield {"http": service.inference_url}
    finally:
        service.stop()


@contextmanager
def kserve_predictor(root: Path):
    """The predictor on free ports; yields {"http": its REST URL, "grpc": host:port of its gRPC}."""
    port, grpc_port = free_port(), free_port()
    command = [sys.executable, "-m", "handler.kserve_server"]
    subprocess.run([*command, "start", "--http_port", str(port), "--grpc_port", str(grpc_port), "--run_dir",
                    str(root)], cwd=REPO_ROOT, check=True, capture_output=True)
    try:
        yield {"http": f"http://127.0.0.1:{port}", "grpc": f"127.0.0.1:{grpc_port}"}
    finally:
        subprocess.run([*command, "stop", "--run_dir", str(root)], cwd=REPO_ROOT, capture_output=True)


def run_grpc_load(address: str, images: list[bytes], concurrency: int, duration: float,
                  warmup: float = 2.0) -> LoadResult:
    """Closed-loop gRPC ModelInfer load, as loadgen.run_load is for HTTP: stats over the window only."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    requests = []
    for image in images:  # tritonclient.grpc's form: the BYTES tensor as raw_input_contents
        tensor = service_pb2.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[1])
        raw = len(image).to_bytes(4, "little") + image
        requests.append(service_pb2.ModelInferRequest(model_name="keypoints", inputs=[tensor],
                                                      raw_input_contents=[raw]))

    async def load() -> LoadResult:
        latencies, errors = [], []
        start = time.perf_counter() + warmup
        end = start + duration
        async with grpc.aio.insecure_channel(address) as channel:
            infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer

            async def client(first: int) -> None:
                i = first
                while (sent := time.perf_counter()) < end:
                    try:
                        reply = await infer(requests[i % len(requests)], timeout=30)
                        error = None if reply.outputs[0].name == "keypoints" else f"unexpected answer {reply}"
                    except grpc.aio.AioRpcError as err:
                        error = str(err.code())
                    answered = time.perf_counter()
                    if start <= answered <= end:
                        if error is None:
                            latencies.append((answered - sent) * 1000)
                        else:
                            errors.append(error)
                    i += concurrency

            await asyncio.gather(*(client(k) for k in range(concurrency)))
        return LoadResult(concurrency, duration, np.array(latencies), len(errors), errors[:5])

    return asyncio.run(load())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--data", default=None)
    args = parser.parse_args(argv)
    pngs = faces(args.faces, args.data)
    plain = [Upload("png96", "image/png", png) for png in pngs]
    v2 = [Upload("v2", "application/json", as_v2(png)) for png in pngs]
    v2_binary = [as_v2_binary(png) for png in pngs]
    servers = [  # (server, [(route name, transport, path, uploads, check)])
        (lambda root: torchserve(root), [("TorchServe, shipped config, plain PUT", "http", "/predictions/keypoints",
                                          plain, None)]),
        (lambda root: torchserve(root, KSERVE_CONFIG), [
            ("TorchServe, KServe config (kservev2), v2 JSON", "http", "/v2/models/keypoints/infer", v2, v2_ok),
            ("TorchServe, KServe config (kservev2), v2 binary", "http", "/v2/models/keypoints/infer", v2_binary,
             v2_ok)]),
        (kserve_predictor, [
            ("kserve predictor (no TorchServe), v2 JSON", "http", "/v2/models/keypoints/infer", v2, v2_ok),
            ("kserve predictor (no TorchServe), v2 binary", "http", "/v2/models/keypoints/infer", v2_binary, v2_ok),
            ("kserve predictor (no TorchServe), gRPC v2", "grpc", None, pngs, None)]),
    ]
    rows = []
    for server, routes in servers:
        with tempfile.TemporaryDirectory() as tmp, server(Path(tmp)) as address:
            for name, transport, path, uploads, check in routes:
                for clients in args.clients:
                    if transport == "grpc":
                        result = run_grpc_load(address["grpc"], uploads, clients, args.duration)
                    else:
                        kwargs = {"check": check} if check else {}
                        result = run_load(address["http"] + path, uploads, clients, duration=args.duration,
                                          warmup=2.0, **kwargs)
                    rows.append((name, clients, result))
                    print(f"{name}, {clients} client(s): {result.throughput:.1f} faces/s, p50 "
                          f"{result.percentile(50):.0f} ms, p99 {result.percentile(99):.0f} ms, {result.errors} "
                          f"errors", flush=True)
    print("\n| route | clients | faces/s | p50 ms | p99 ms | errors |\n| --- | --- | --- | --- | --- | --- |")
    for name, clients, r in rows:
        print(f"| {name} | {clients} | {r.throughput:.1f} | {r.percentile(50):.0f} | {r.percentile(99):.0f} "
              f"| {r.errors} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
