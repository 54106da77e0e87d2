"""TorchServe entry point: a thin class over handler.processing.

BaseHandler loads the TorchScript file from the archive onto the GPU when TorchServe gives
the worker one, else the CPU; everything else is a plain function in handler.processing.

KServe: with `service_envelope=kservev2` (or `kserve`) TorchServe wraps this handler in its own
envelope, which reads only the first request of a batch and answers the batch as one
(pytorch/serve #2158, #1302). The handler reads each request's KServe JSON itself
(handler.kserve_protocol), so `initialize` turns those envelopes into pass-throughs.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.inference import choose_precision, model_runner
from handler.kserve_protocol import pass_torchserve_envelopes_through
from handler.processing import MAX_PIXELS, answer_batch

logger = logging.getLogger(__name__)


class KeypointHandler(BaseHandler):
    def initialize(self, context) -> None:
        super().initialize(context)
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        self.max_pixels = int(settings.get("max_pixels", MAX_PIXELS))
        if settings.get("torch_threads"):  # intra-op threads per worker; see docs/performance.md
            torch.set_num_threads(int(settings["torch_threads"]))
        self.model_name = context.manifest["model"]["modelName"]
        self.precision = choose_precision(str(settings.get("precision", "auto")), self.device)
        self.run_model = model_runner(self.model, self.device, self.precision)
        logger.info("keypoints: %s on %s, %d torch thread(s)", self.precision, self.device, torch.get_num_threads())
        pass_torchserve_envelopes_through()

    def handle(self, data: list[dict], context) -> list[str]:
        headers = [context.get_all_request_header(i) for i in range(len(data))]
        replies = answer_batch(data, self.run_model, self.max_pixels, headers, self.model_name)
        refused = sum(reply.status != 200 for reply in replies)
        logger.info("batch of %d: %d answered, %d refused", len(replies), len(replies) - refused, refused)
        for i, reply in enumerate(replies):
            context.set_response_content_type(i, "application/json")
            if reply.status != 200:
                context.set_response_status(reply.status, HTTPStatus(reply.status).phrase, i)
        # Serialized here, compact: TorchServe would otherwise pretty-print dicts with indent=2.
        return [json.dumps(reply.body, separators=(",", ":")) for reply in replies]
