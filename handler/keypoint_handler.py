"""TorchServe entry point of the `keypoints` model: a thin class over handler.processing.

BaseHandler loads the TorchScript file from the archive onto the GPU when TorchServe gives
the worker one, else the CPU; everything else is a plain function in handler.processing.

KServe: with `service_envelope=kservev2` (or `kserve`) TorchServe wraps this handler in its own
envelope, which reads only the first request of a batch and answers the batch as one
(pytorch/serve #2158, #1302). The handler reads each request's KServe JSON itself
(handler.kserve_protocol), so `initialize` turns those envelopes into pass-throughs (handler.base).
"""

from __future__ import annotations

import logging

from handler.base import ModelHandler
from handler.processing import answer_batch

logger = logging.getLogger(__name__)


class KeypointHandler(ModelHandler):
    def handle(self, data: list[dict], context) -> list[str]:
        replies = answer_batch(data, self.keypoints.every_point, self.settings.max_pixels,
                               self.request_headers(data, context), self.model_name)
        refused = sum(reply.status != 200 for reply in replies)
        logger.info("batch of %d: %d answered, %d refused", len(replies), len(replies) - refused, refused)
        return self.respond(replies, context)
