"""What the two TorchServe handlers (keypoints, faces) share, so each is only its own answer.

Settings come from the `handler:` section of the archive's model-config.yaml; the model runs in
the precision the machine does best (handler.inference); TorchServe's KServe envelopes are made
pass-throughs (handler.kserve_protocol); replies go back with their own status, compact JSON.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from pathlib import Path

import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.inference import prepare_model
from handler.kserve_protocol import BINARY_HEADER, pass_torchserve_envelopes_through
from handler.processing import Reply
from handler.settings import HandlerSettings

logger = logging.getLogger(__name__)


class ModelHandler(BaseHandler):
    settings_class: type[HandlerSettings] = HandlerSettings
    """What the `handler:` block of this model's model-config.yaml holds."""

    def initialize(self, context) -> None:
        super().initialize(context)
        model_config = getattr(context, "model_yaml_config", None) or {}
        self.settings = self.settings_class.from_block(model_config.get("handler"))
        if self.settings.torch_threads:  # intra-op threads per worker; see docs/performance.md
            torch.set_num_threads(self.settings.torch_threads)
        self.model_name = context.manifest["model"]["modelName"]
        self.keypoints = prepare_model(self.model, self.device, self.settings.precision, self.settings.freeze,
                                       self.settings.views_on(self.device), Path(self.model_pt_path),
                                       self.settings.runtime)
        logger.info("%s: keypoint model %s, %d torch thread(s)", self.model_name, self.keypoints.describe(),
                    torch.get_num_threads())
        pass_torchserve_envelopes_through()

    @staticmethod
    def request_headers(data: list[dict], context) -> list[dict]:
        return [context.get_all_request_header(i) for i in range(len(data))]

    @staticmethod
    def respond(replies: list[Reply], context) -> list[str | bytes]:
        answers: list[str | bytes] = []
        for i, reply in enumerate(replies):
            if reply.status != 200:
                context.set_response_status(reply.status, HTTPStatus(reply.status).phrase, i)
            # Serialized here, compact: TorchServe would otherwise pretty-print dicts with indent=2.
            text = json.dumps(reply.body, separators=(",", ":"))
            if reply.binary is None:
                context.set_response_content_type(i, "application/json")
                answers.append(text)
            else:  # v2 binary outputs: the JSON part, then the tensors' bytes
                context.set_response_content_type(i, "application/octet-stream")
                context.set_response_header(i, BINARY_HEADER, str(len(text.encode())))
                answers.append(text.encode() + reply.binary)
        return answers
