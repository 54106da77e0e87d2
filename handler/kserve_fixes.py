"""Work-arounds for kserve 0.21 in the kserve predictor, each where kserve goes wrong (docs/deployment.md):
binary BYTES inputs, bodies kserve cannot read, and its servers binding every address.

Each patches kserve in the predictor's process only; handler.kserve_server applies them before it starts.
"""

from __future__ import annotations

import struct

from handler.kserve_protocol import ProtocolError, read_binary_request


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


def bind_rest_to(host: str) -> None:
    """kserve 0.21's REST server always binds 0.0.0.0; locally the service stays on loopback."""
    from kserve import model_server
    from kserve.protocol.rest.server import RESTServer

    class BoundRESTServer(RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host

    model_server.RESTServer = BoundRESTServer
