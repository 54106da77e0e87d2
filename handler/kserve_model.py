"""The keypoint model as a kserve.Model: the kserve predictor's model, without TorchServe.

The same TorchScript file, loader (handler.inference) and handler.processing functions as the
TorchServe handler; the request checks and answer forms are handler.kserve_protocol's. Bad input
gets the same status and message as from TorchServe over REST, and INVALID_ARGUMENT with that
message over gRPC. The server around it is handler.kserve_server.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from facekp.contract import NUM_KEYPOINTS
from handler.batching import MicroBatcher
from handler.inference import load_model
from handler.kserve_protocol import (
    V2_INPUT,
    V2_OUTPUTS,
    ProtocolError,
    image_from_kserve,
    kserve_answer,
    requested_outputs,
)
from handler.processing import Incoming, Reply, RequestError, answer_batch, points_asked, read_request
from handler.settings import HandlerSettings

if TYPE_CHECKING:
    import kserve

logger = logging.getLogger(__name__)


def make_model(name: str, model_file: Path, settings: HandlerSettings, batch_size: int,
               max_batch_delay_ms: float) -> kserve.Model:
    """The kserve Model, loaded: decoding, preprocessing and postprocessing are handler.processing's; requests
    that arrive together go through the network together (handler.batching, TorchServe's batching)."""
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, to_http_parameters

    class BadRequest(RequestError, InvalidInput):
        """Bad input: over REST the status and message of RequestError (serve's handler); over gRPC
        kserve's interceptor turns InvalidInput into INVALID_ARGUMENT with the same message (its
        reason, set by InvalidInput.__init__, which RequestError's super().__init__ reaches)."""

    class KeypointModel(kserve.Model):
        def load(self) -> bool:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            self.keypoints = load_model(model_file, device, settings.precision, settings.freeze,
                                        settings.views_on(device), settings.runtime)
            logger.info("%s: keypoint model %s, %d torch thread(s), batches of up to %d",
                        name, self.keypoints.describe(), torch.get_num_threads(), batch_size)
            self.batcher = MicroBatcher(self.answer_batch, batch_size, max_batch_delay_ms / 1000)
            self.ready = True
            return self.ready

        def answer_batch(self, requests: list[Incoming | dict]) -> list[Reply]:
            return answer_batch(requests, self.keypoints.every_point, settings.max_pixels, None, self.name)

        async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            if isinstance(payload, InferRequest):  # v2, REST or gRPC, parsed by kserve
                return await self.infer(payload, headers)
            try:  # v1: as TorchServe's answer, the points asked as on TorchServe's route (a Points header)
                incoming = read_request({"body": payload}, headers)
            except RequestError as err:
                raise BadRequest(err.status, err.message) from None
            return self.checked(await self.batcher.answer(incoming)).body

        async def infer(self, request: InferRequest, headers: dict[str, str] | None = None) -> InferResponse:
            try:
                body = v2_request_of(request)
                image = image_from_kserve(body)
                asked = [output["name"] for output in requested_outputs(body, list(V2_OUTPUTS))]
                # gRPC's parameters are protobuf values until converted; a Points header as on TorchServe's route
                parameters = to_http_parameters(request.parameters or {})
                points = points_asked(parameters.get("points", (headers or {}).get("points")))
            except ProtocolError as err:
                raise BadRequest(400, str(err)) from None
            except RequestError as err:
                raise BadRequest(err.status, err.message) from None
            plain = self.checked(await self.batcher.answer(Incoming(image, points=points))).body
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
                    {"name": "image_size", "datatype": "INT32", "shape": [1, 2]},
                    {"name": "confidence", "datatype": "FP32", "shape": [1, NUM_KEYPOINTS]},
                    {"name": "quality", "datatype": "FP32", "shape": [1]}]

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
