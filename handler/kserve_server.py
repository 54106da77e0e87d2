"""A KServe predictor without TorchServe: the kserve package's ModelServer over the same TorchScript
file and the same handler.processing functions as the TorchServe handler.

    python -m handler.kserve_server run                       # foreground (the container's command)
    python -m handler.kserve_server start --http_port 8085    # background, waits until ready (make serve-kserve)
    python -m handler.kserve_server stop                      # (make stop-kserve)

It speaks the Open Inference Protocol v2 over REST (POST /v2/models/keypoints/infer, GET
/v2/health/ready, GET /v2/models/keypoints for metadata) and KServe v1
(POST /v1/models/keypoints:predict); the request and answer forms are handler.kserve_protocol's.
Bad input gets the same status and message as from TorchServe.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekp.contract import NUM_KEYPOINTS  # noqa: E402
from facekp.server import port_in_use  # noqa: E402
from handler.batching import MicroBatcher  # noqa: E402
from handler.inference import choose_precision, model_runner  # noqa: E402
from handler.kserve_protocol import V2_INPUT  # noqa: E402
from handler.processing import MAX_PIXELS, Reply, RequestError, answer_batch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "keypoints"
MODEL_FILE = REPO_ROOT / "model_store" / "keypoints.pt"
RUN_DIR = REPO_ROOT / ".serve-kserve"
DEFAULT_PORT = 8085


def make_model(name: str, model_file: Path, max_pixels: int = MAX_PIXELS, batch_size: int = 8,
               max_batch_delay_ms: float = 0.0):
    """The kserve Model: decoding, preprocessing and postprocessing are handler.processing's; requests
    that arrive together go through the network together (handler.batching, TorchServe's batching)."""
    import kserve
    from kserve.protocol.infer_type import InferRequest

    class KeypointModel(kserve.Model):
        def load(self) -> bool:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.device = torch.device(device)
            self.net = torch.jit.load(str(model_file), map_location=self.device).eval()
            self.precision = choose_precision("auto", self.device)
            self.run_model = model_runner(self.net, self.device, self.precision)
            self.batcher = MicroBatcher(self.answer_batch, batch_size, max_batch_delay_ms / 1000)
            self.ready = True
            return self.ready

        def answer_batch(self, bodies: list[Any]) -> list[Reply]:
            return answer_batch([{"body": body} for body in bodies], self.run_model, max_pixels, None, self.name)

        async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            body = payload.to_rest()[0] if isinstance(payload, InferRequest) else payload
            reply = await self.batcher.answer(body)
            if reply.status != 200:
                raise RequestError(reply.status, reply.body["error"])
            return reply.body  # the same JSON as TorchServe's handler answers

        def get_input_types(self) -> list[dict]:
            return [{"name": V2_INPUT, "datatype": "BYTES", "shape": [1]}]

        def get_output_types(self) -> list[dict]:
            return [{"name": "keypoints", "datatype": "FP32", "shape": [1, NUM_KEYPOINTS, 2]},
                    {"name": "image_size", "datatype": "INT32", "shape": [1, 2]}]

    model = KeypointModel(name)
    model.load()
    return model


def serve(args: argparse.Namespace) -> None:
    """Run the model server in the foreground until SIGTERM/SIGINT."""
    import kserve
    from fastapi.responses import JSONResponse
    from kserve import model_server
    from kserve.protocol.rest.server import RESTServer

    class BoundRESTServer(RESTServer):
        """kserve's REST server always binds 0.0.0.0; locally the service stays on loopback."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.config.host = args.bind

    model_server.RESTServer = BoundRESTServer

    async def request_error(_, err: RequestError) -> JSONResponse:
        return JSONResponse(status_code=err.status, content={"error": err.message, "code": err.status})

    model_server.app.add_exception_handler(RequestError, request_error)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model(args.model_name, args.model_file, args.max_pixels, args.batch_size, args.max_batch_delay_ms)
    kserve.ModelServer(http_port=args.http_port, enable_grpc=False, workers=1).start([model])


def _pid_file(run_dir: Path) -> Path:
    return run_dir / "kserve.pid"


def running_pid(run_dir: Path) -> int | None:
    try:
        pid = int(_pid_file(run_dir).read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start(args: argparse.Namespace) -> int:
    """Start `run` in the background, log to RUN_DIR/kserve.log, return once /v2/health/ready says so."""
    run_dir = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if running_pid(run_dir):
        print(f"error: the kserve predictor in {run_dir} is already running (pid {running_pid(run_dir)}): "
              "make stop-kserve", file=sys.stderr)
        return 1
    if port_in_use(args.bind, args.http_port):
        print(f"error: port {args.bind}:{args.http_port} is already in use by another program; free it or pick "
              "another (make serve-kserve KSERVE_PORT=...)", file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "handler.kserve_server", "run", "--http_port", str(args.http_port),
           "--bind", args.bind, "--model_file", str(args.model_file), "--model_name", args.model_name,
           "--threads", str(args.threads), "--batch_size", str(args.batch_size),
           "--max_batch_delay_ms", str(args.max_batch_delay_ms)]
    log = run_dir / "kserve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _pid_file(run_dir).write_text(str(proc.pid))
    url = f"http://127.0.0.1:{args.http_port}"
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"error: the kserve predictor exited ({proc.returncode}):\n{log.read_text()[-3000:]}",
                  file=sys.stderr)
            return 1
        try:
            if requests.get(f"{url}/v2/health/ready", timeout=2).ok:
                print(f"ready: kserve predictor for model '{args.model_name}' on {url} (log {log})")
                print(f"try:  {try_command(url, args.model_name)}")
                print("stop: make stop-kserve")
                return 0
        except requests.RequestException:
            pass
        time.sleep(0.5)
    print(f"error: not ready after {args.timeout:.0f} s; log {log}", file=sys.stderr)
    stop(args)
    return 1


def try_command(url: str, model_name: str, image: str = "samples/astronaut_face.png") -> str:
    body = ('{"inputs":[{"name":"image","shape":[1],"datatype":"BYTES","data":["\'"$(base64 -w0 ' + image
            + ')"\'"]}]}')
    return (f"curl -s -H 'Content-Type: application/json' -d '{body}' "
            f"{url}/v2/models/{model_name}/infer")


def stop(args: argparse.Namespace) -> int:
    pid = running_pid(args.run_dir)
    if pid is None:
        print(f"no kserve predictor running from {args.run_dir}")
        return 0
    os.killpg(pid, signal.SIGTERM)
    for _ in range(100):
        if running_pid(args.run_dir) is None:
            break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
    _pid_file(args.run_dir).unlink(missing_ok=True)
    print("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "start", "stop"])
    parser.add_argument("--http_port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on (the container: 0.0.0.0)")
    parser.add_argument("--model_file", type=Path, default=MODEL_FILE)
    parser.add_argument("--model_name", default=MODEL_NAME)
    parser.add_argument("--max_pixels", type=int, default=MAX_PIXELS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--batch_size", type=int, default=8, help="at most this many requests per network call")
    parser.add_argument("--max_batch_delay_ms", type=float, default=0.0,
                        help="how long the first request of a batch waits for others")
    parser.add_argument("--run_dir", type=Path, default=RUN_DIR)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.action == "run":
        sys.argv = sys.argv[:1]  # kserve parses the command line at import; its defaults are what we want
        serve(args)
        return 0
    return start(args) if args.action == "start" else stop(args)


if __name__ == "__main__":
    sys.exit(main())
