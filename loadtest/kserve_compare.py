"""The KServe routes side by side, same faces, same load generator (a benchmark, not a test):

    .venv/bin/python -m loadtest.kserve_compare            # ~2 min; prints a markdown table

1. TorchServe with the shipped config, plain uploads (curl -T): the reference.
2. TorchServe with k8s/kserve/config/config.properties (kservev2 envelope, its batching), v2 JSON.
3. The kserve predictor without TorchServe (handler/kserve_server.py), v2 JSON.

Each gets closed-loop load at 1 and 16 clients on free loopback ports, one route at a time.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from facekp import data as facedata
from facekp.evaluate import encode_face
from facekp.server import FACES, REPO_ROOT, Service, build_archive, free_port, free_ports
from loadtest.images import Upload
from loadtest.loadgen import run_load

KSERVE_CONFIG = REPO_ROOT / "k8s" / "kserve" / "config" / "config.properties"


def faces(count: int, data: str | None) -> list[bytes]:
    """96x96 PNGs of `count` faces spread over the data set."""
    dataset = facedata.load(data)
    step = max(1, len(dataset) // count)
    return [encode_face(dataset.images[i * step], "png") for i in range(count)]


def as_v2(image: bytes) -> bytes:
    return json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "data": [base64.b64encode(image).decode()]}]}).encode()


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
        yield service.inference_url
    finally:
        service.stop()


@contextmanager
def kserve_predictor(root: Path):
    port = free_port()
    command = [sys.executable, "-m", "handler.kserve_server"]
    subprocess.run([*command, "start", "--http_port", str(port), "--run_dir", str(root)], cwd=REPO_ROOT,
                   check=True, capture_output=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        subprocess.run([*command, "stop", "--run_dir", str(root)], cwd=REPO_ROOT, capture_output=True)


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
    routes = [
        ("TorchServe, shipped config, plain PUT", lambda root: torchserve(root), "/predictions/keypoints", plain, None),
        ("TorchServe, KServe config (kservev2), v2", lambda root: torchserve(root, KSERVE_CONFIG),
         "/v2/models/keypoints/infer", v2, v2_ok),
        ("kserve predictor (no TorchServe), v2", kserve_predictor, "/v2/models/keypoints/infer", v2, v2_ok),
    ]
    rows = []
    for name, server, path, uploads, check in routes:
        with tempfile.TemporaryDirectory() as tmp, server(Path(tmp)) as url:
            for clients in args.clients:
                kwargs = {"check": check} if check else {}
                result = run_load(url + path, uploads, clients, duration=args.duration, warmup=2.0, **kwargs)
                rows.append((name, clients, result))
                print(f"{name}, {clients} client(s): {result.throughput:.1f} faces/s, p50 "
                      f"{result.percentile(50):.0f} ms, p99 {result.percentile(99):.0f} ms, {result.errors} errors",
                      flush=True)
    print("\n| route | clients | faces/s | p50 ms | p99 ms | errors |\n| --- | --- | --- | --- | --- | --- |")
    for name, clients, r in rows:
        print(f"| {name} | {clients} | {r.throughput:.1f} | {r.percentile(50):.0f} | {r.percentile(99):.0f} "
              f"| {r.errors} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
