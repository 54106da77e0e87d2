"""The kserve predictor's server process: kserve's ModelServer over handler.kserve_model, in the foreground
or in the background.

    python -m handler.kserve_server run                       # foreground (the container's command)
    python -m handler.kserve_server start --http_port 8085    # background, waits until ready (make serve-kserve)
    python -m handler.kserve_server stop                      # (make stop-kserve)

It speaks the Open Inference Protocol v2 over REST (POST /v2/models/keypoints/infer, GET
/v2/health/ready, GET /v2/models/keypoints for metadata) and over gRPC (KServe's
GRPCInferenceService, --grpc_port, 8086 by default), and KServe v1 (POST /v1/models/keypoints:predict).
v2 inputs come as JSON (the image file in base64) or as binary tensor data (the file itself, what
tritonclient sends); outputs go back as the request asks, JSON or binary.

The model's settings come from the same config/model-config.yaml as TorchServe's handler (--model_config):
its `handler:` block and batchSize; its `kserve:` block overrides any of those keys for this one process.
The flags say only where it listens and where its files are.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests
import torch
import yaml

from facekp.archive import MODEL_CONFIG, MODEL_FILE
from facekp.data import REPO_ROOT
from facekp.processes import PidFile, port_in_use, wait_until
from handler.processing import RequestError
from handler.settings import HandlerSettings

MODEL_NAME = "keypoints"
RUN_DIR = REPO_ROOT / ".serve-kserve"
DEFAULT_PORT = 8085
DEFAULT_GRPC_PORT = 8086


class ExitedError(Exception):
    """The predictor started in the background exited before it was ready."""


@dataclass(frozen=True)
class PredictorConfig:
    """What the predictor takes from a model-config.yaml: the handler's settings and its batching."""

    settings: HandlerSettings
    batch_size: int
    max_batch_delay_ms: float

    @classmethod
    def read(cls, path: Path) -> PredictorConfig:
        config = yaml.safe_load(path.read_text()) or {}
        own = config.get("kserve") or {}
        return cls(HandlerSettings.from_block({**(config.get("handler") or {}), **own}),
                   int(own.get("batchSize", config.get("batchSize", 1))),
                   float(own.get("maxBatchDelay", config.get("maxBatchDelay", 0))))


def serve(args: argparse.Namespace) -> None:
    """Run the model server in the foreground until SIGTERM/SIGINT."""
    import kserve
    from fastapi.responses import JSONResponse
    from kserve import model_server

    from handler import kserve_fixes
    from handler.kserve_model import make_model

    async def request_error(_, err: RequestError) -> JSONResponse:
        return JSONResponse(status_code=err.status, content={"error": err.message, "code": err.status})

    model_server.app.add_exception_handler(RequestError, request_error)
    kserve_fixes.keep_binary_bytes_inputs()
    kserve_fixes.check_bodies_before_kserve_decodes_them()
    kserve_fixes.bind_rest_to(args.bind)
    kserve_fixes.bind_grpc_to(args.bind)
    config = PredictorConfig.read(args.model_config)
    if config.settings.torch_threads:
        torch.set_num_threads(config.settings.torch_threads)
    model = make_model(args.model_name, args.model_file, config.settings, config.batch_size,
                       config.max_batch_delay_ms)
    grpc = args.grpc_port > 0
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port if grpc else DEFAULT_GRPC_PORT,
                       enable_grpc=grpc, workers=1).start([model])


def start(args: argparse.Namespace) -> int:
    """Start `run` in the background, log to its run folder's kserve.log, return once /v2/health/ready says so."""
    run_dir = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    pid_file = PidFile(run_dir / "kserve.pid")
    if pid_file.running():
        print(f"error: the kserve predictor in {run_dir} is already running (pid {pid_file.running()}): "
              "make stop-kserve", file=sys.stderr)
        return 1
    for port, variable in ((args.http_port, "KSERVE_PORT"), (args.grpc_port, "KSERVE_GRPC_PORT")):
        if port > 0 and port_in_use(args.bind, port):
            print(f"error: port {args.bind}:{port} is already in use by another program; free it or pick "
                  f"another (make serve-kserve {variable}=...)", file=sys.stderr)
            return 1
    cmd = [sys.executable, "-m", "handler.kserve_server", "run", "--http_port", str(args.http_port),
           "--grpc_port", str(args.grpc_port), "--bind", args.bind, "--model_file", str(args.model_file),
           "--model_config", str(args.model_config), "--model_name", args.model_name]
    log = run_dir / "kserve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write(proc.pid)
    url = f"http://127.0.0.1:{args.http_port}"

    def ready() -> bool | None:
        if proc.poll() is not None:
            raise ExitedError(f"the kserve predictor exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            grpc_ready = args.grpc_port <= 0 or port_in_use(args.bind, args.grpc_port)
            return True if requests.get(f"{url}/v2/health/ready", timeout=2).ok and grpc_ready else None
        except requests.RequestException:
            return None

    try:
        if wait_until(ready, args.timeout):
            grpc = f", gRPC {args.bind}:{args.grpc_port}" if args.grpc_port > 0 else ""
            print(f"ready: kserve predictor for model '{args.model_name}' on {url}{grpc} (log {log})")
            print(f"try:  {try_command(url, args.model_name)}")
            print("stop: make stop-kserve")
            return 0
        print(f"error: not ready after {args.timeout:.0f} s; log {log}", file=sys.stderr)
    except ExitedError as err:
        print(f"error: {err}", file=sys.stderr)
    pid_file.stop()
    return 1


def try_command(url: str, model_name: str, image: str = "samples/astronaut_face.png") -> str:
    body = ('{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["\'"$(base64 -w0 ' + image
            + ')"\'"]}]}')
    return (f"curl -s -H 'Content-Type: application/json' -d '{body}' "
            f"{url}/v2/models/{model_name}/infer")


def stop(args: argparse.Namespace) -> int:
    stopped = PidFile(args.run_dir / "kserve.pid").stop()
    print("stopped" if stopped else f"no kserve predictor running from {args.run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "start", "stop"])
    parser.add_argument("--http_port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--grpc_port", type=int, default=DEFAULT_GRPC_PORT, help="gRPC v2 port (0: no gRPC)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (the container: 0.0.0.0)")
    parser.add_argument("--model_file", type=Path, default=MODEL_FILE)
    parser.add_argument("--model_config", type=Path, default=MODEL_CONFIG,
                        help="the model-config.yaml whose handler settings and batch size it takes")
    parser.add_argument("--model_name", default=MODEL_NAME)
    parser.add_argument("--run_dir", type=Path, default=RUN_DIR, help="pid file and log of `start`")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.action == "run":
        sys.argv = sys.argv[:1]  # kserve parses the command line at import; its defaults are what we want
        serve(args)
        return 0
    return start(args) if args.action == "start" else stop(args)


if __name__ == "__main__":
    sys.exit(main())
