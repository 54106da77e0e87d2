"""A KServe predictor without TorchServe: the kserve package's ModelServer over the same TorchScript
file and the same handler.processing functions as the TorchServe handler.

    python -m handler.kserve_server run                       # foreground (the container's command)
    python -m handler.kserve_server start --http_port 8085    # background, waits until ready (make serve-kserve)
    python -m handler.kserve_server stop                      # (make stop-kserve)

It speaks the Open Inference Protocol v2 over REST (POST /v2/models/keypoints/infer, GET
/v2/health/ready, GET /v2/models/keypoints for metadata) and over gRPC (KServe's
GRPCInferenceService, --grpc_port, 8086 by default), and KServe v1 (POST /v1/models/keypoints:predict).
v2 inputs come as JSON (the image file in base64) or as binary tensor data (the file itself, what
tritonclient sends); outputs go back as the request asks, JSON or binary. The request checks and
answer forms are handler.kserve_protocol's. Bad input gets the same status and message as from
TorchServe over REST, and INVALID_ARGUMENT with that message over gRPC.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import torch

from facekp.contract import NUM_KEYPOINTS
from facekp.processes import port_in_use
from handler.batching import MicroBatcher
from handler.inference import choose_precision, model_runner
from handler.kserve_protocol import (
    V2_INPUT,
    V2_OUTPUTS,
    ProtocolError,
    image_from_kserve,
    kserve_answer,
    read_binary_request,
    requested_outputs,
)
from handler.processing import MAX_PIXELS, Incoming, Reply, RequestError, answer_batch

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "keypoints"
MODEL_FILE = REPO_ROOT / "model_store" / "keypoints.pt"
RUN_DIR = REPO_ROOT / ".serve-kserve"
DEFAULT_PORT = 8085
DEFAULT_GRPC_PORT = 8086


def make_model(name: str, model_file: Path, max_pixels: int = MAX_PIXELS, batch_size: int = 8,
               max_batch_delay_ms: float = 0.0):
    """The kserve Model: decoding, preprocessing and postprocessing are handler.processing's; requests
    that arrive together go through the network together (handler.batching, TorchServe's batching)."""
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class BadRequest(RequestError, InvalidInput):
        """Bad input: over REST the status and message of RequestError (serve's handler); over gRPC
        kserve's interceptor turns InvalidInput into INVALID_ARGUMENT with the same message (its
        reason, set by InvalidInput.__init__, which RequestError's super().__init__ reaches)."""

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

        def answer_batch(self, requests: list[Incoming | dict]) -> list[Reply]:
            return answer_batch(requests, self.run_model, max_pixels, None, self.name)

        async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            if isinstance(payload, InferRequest):  # v2, REST or gRPC, parsed by kserve
                return await self.infer(payload)
            return self.checked(await self.batcher.answer({"body": payload})).body  # v1: as TorchServe's answer

        async def infer(self, request: InferRequest) -> InferResponse:
            try:
                body = v2_request_of(request)
                image = image_from_kserve(body)
                asked = [output["name"] for output in requested_outputs(body, list(V2_OUTPUTS))]
            except ProtocolError as err:
                raise BadRequest(400, str(err)) from None
            plain = self.checked(await self.batcher.answer(Incoming(image))).body
            answer = {"id": request.id or "", **kserve_answer("v2", plain, {"id": request.id}, self.name)}
            answer["outputs"] = [o for o in answer["outputs"] if not asked or o["name"] in asked]
            binary = request.use_binary_outputs or any(o.binary_data for o in request.request_outputs or [])
            if not request.from_grpc and not binary:
                return answer  # JSON: the numbers exactly as TorchServe's handler writes them (kserve wants an id)
            # kserve encodes the rest: binary data (REST), typed contents or raw (gRPC). Its REST encoder
            # reads only each named output's binary_data, so the request's binary_data_output is passed down.
            for output in request.request_outputs or []:
                if output.binary_data is None:
                    output.parameters = {**(output.parameters or {}), "binary_data": request.use_binary_outputs}
            outputs = [InferOutput(o["name"], o["shape"], o["datatype"], o["data"]) for o in answer["outputs"]]
            return InferResponse(answer["id"], self.name, outputs, from_grpc=request.from_grpc,
                                 use_binary_outputs=request.use_binary_outputs,
                                 requested_outputs=request.request_outputs)

        @staticmethod
        def checked(reply: Reply) -> Reply:
            if reply.status >= 500:
                raise RuntimeError(reply.body["error"])
            if reply.status != 200:
                raise BadRequest(reply.status, reply.body["error"])
            return reply

        def get_input_types(self) -> list[dict]:
            return [{"name": V2_INPUT, "datatype": "BYTES", "shape": [1]}]

        def get_output_types(self) -> list[dict]:
            return [{"name": "keypoints", "datatype": "FP32", "shape": [1, NUM_KEYPOINTS, 2]},
                    {"name": "image_size", "datatype": "INT32", "shape": [1, 2]}]

    model = KeypointModel(name)
    model.load()
    return model


def v2_request_of(request: Any) -> dict[str, Any]:
    """kserve's parsed v2 request (REST JSON or binary, gRPC) as the JSON form handler.kserve_protocol checks:
    a BYTES input's elements are str (JSON: base64) or bytes (binary data, gRPC: the file itself); the
    outputs it names."""
    inputs = []
    for tensor in request.inputs:
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if tensor.datatype == "BYTES":
            try:
                item["data"] = tensor.as_numpy().ravel().tolist()
            except (ValueError, struct.error) as err:
                raise ProtocolError(f"v2 request: input {tensor.name!r} does not hold the shape "
                                    f"{list(tensor.shape)} it declares ({err})") from None
        inputs.append(item)
    return {"inputs": inputs, "outputs": [{"name": output.name} for output in request.request_outputs or []]}


def keep_binary_bytes_inputs() -> None:
    """Work around kserve 0.21: a REST request with binary tensor data fails with a 500 for any image.

    InferRequest.from_bytes reads each input's binary data, then re-encodes it as JSON data with
    set_data_from_numpy(..., binary_data=False), which decodes BYTES elements as UTF-8: an image file
    is not UTF-8, so it raises InferenceError ("Failed to encode"), and a file that happens to be
    UTF-8 would turn into text. Here a BYTES input that holds binary data keeps the bytes as sent
    (as_numpy() reads them). Upstream, from_bytes would skip that re-encoding for BYTES inputs.
    """
    from kserve.protocol.infer_type import InferInput

    original = InferInput.set_data_from_numpy

    def set_data_from_numpy(self, tensor, binary_data: bool = True) -> None:
        if not binary_data and self.datatype == "BYTES" and self._raw_data is not None:
            return
        original(self, tensor, binary_data)

    InferInput.set_data_from_numpy = set_data_from_numpy


def check_bodies_before_kserve_decodes_them() -> None:
    """Work around kserve 0.21's reading of v2 bodies that come as bytes (binary tensor data, or JSON
    without a Content-Type: FastAPI's strict content types hand those over unparsed):

    - a body without the Inference-Header-Content-Length header is refused (a 400), where the protocol
      says it is all JSON (tritonclient's JSON-only requests): that length is taken for the header;
    - a malformed one (a header that is no number, a BYTES element cut short, data that does not fit its
      shape, no "inputs") raises ValueError, KeyError or struct.error inside kserve: a 500. It is read
      first by the same check as TorchServe's route (read_binary_request), and anything kserve still
      cannot read is a 400 (InvalidInput) that says so.
    """
    from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
    from kserve.errors import InvalidInput
    from kserve.protocol.dataplane import DataPlane

    original = DataPlane.decode_inference_request

    def decode_inference_request(self, body, headers, model_name):
        if not isinstance(body, bytes):
            return original(self, body, headers, model_name)
        headers = {INFERENCE_CONTENT_LENGTH_HEADER: str(len(body)), **headers}
        try:
            read_binary_request(body, headers[INFERENCE_CONTENT_LENGTH_HEADER])
            return original(self, body, headers, model_name)
        except ProtocolError as err:
            raise InvalidInput(str(err)) from None
        except (ValueError, KeyError, TypeError, struct.error) as err:
            if isinstance(err, InvalidInput):
                raise
            raise InvalidInput(f"v2 request that kserve cannot read ({type(err).__name__}: {err})") from None

    DataPlane.decode_inference_request = decode_inference_request


def bind_grpc_to(host: str) -> None:
    """kserve 0.21's gRPC server always listens on [::]; locally the service stays on loopback."""
    from kserve.protocol.grpc import server as grpc_server

    aio = grpc_server.aio

    class BoundAio:
        @staticmethod
        def server(*args, **kwargs):
            server = aio.server(*args, **kwargs)
            add_port = server.add_insecure_port
            server.add_insecure_port = lambda address: add_port(address.replace("[::]", host, 1))
            return server

    grpc_server.aio = BoundAio


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
    keep_binary_bytes_inputs()
    check_bodies_before_kserve_decodes_them()
    bind_grpc_to(args.bind)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_model(args.model_name, args.model_file, args.max_pixels, args.batch_size, args.max_batch_delay_ms)
    grpc = args.grpc_port > 0
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port if grpc else DEFAULT_GRPC_PORT,
                       enable_grpc=grpc, workers=1).start([model])


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
    for port, variable in ((args.http_port, "KSERVE_PORT"), (args.grpc_port, "KSERVE_GRPC_PORT")):
        if port > 0 and port_in_use(args.bind, port):
            print(f"error: port {args.bind}:{port} is already in use by another program; free it or pick "
                  f"another (make serve-kserve {variable}=...)", file=sys.stderr)
            return 1
    cmd = [sys.executable, "-m", "handler.kserve_server", "run", "--http_port", str(args.http_port),
           "--grpc_port", str(args.grpc_port),
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
            grpc_ready = args.grpc_port <= 0 or port_in_use(args.bind, args.grpc_port)
            if requests.get(f"{url}/v2/health/ready", timeout=2).ok and grpc_ready:
                grpc = f", gRPC {args.bind}:{args.grpc_port}" if args.grpc_port > 0 else ""
                print(f"ready: kserve predictor for model '{args.model_name}' on {url}{grpc} (log {log})")
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
    parser.add_argument("--grpc_port", type=int, default=DEFAULT_GRPC_PORT, help="gRPC v2 port (0: no gRPC)")
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
