"""TorchServe entry point of the `faces` model: a thin class over handler.faces.

BaseHandler loads the keypoint TorchScript file (the same keypoints.pt as the `keypoints` model)
onto the worker's GPU when it has one; the face detector runs on onnxruntime, on the GPU too
where onnxruntime-gpu is installed, else on the CPU (the log says which).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

import torch
from ts.torch_handler.base_handler import BaseHandler

from handler.face_detector import FaceDetector
from handler.faces import MAX_FACES, REFINE_STEPS, answer_photos
from handler.inference import choose_precision, model_runner
from handler.kserve_protocol import pass_torchserve_envelopes_through
from handler.processing import MAX_PIXELS

logger = logging.getLogger(__name__)


class FacesHandler(BaseHandler):
    def initialize(self, context) -> None:
        super().initialize(context)
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        self.max_pixels = int(settings.get("max_pixels", MAX_PIXELS))
        self.max_faces = int(settings.get("max_faces", MAX_FACES))
        self.refine_steps = int(settings.get("refine_steps", REFINE_STEPS))
        threads = int(settings.get("torch_threads", 0))
        if threads:
            torch.set_num_threads(threads)
        self.precision = choose_precision(str(settings.get("precision", "auto")), self.device)
        self.run_model = model_runner(self.model, self.device, self.precision)
        self.detector = FaceDetector(score_threshold=float(settings.get("score_threshold", 0.5)),
                                     max_side=int(settings.get("detect_max_side", 1280)), threads=threads or 1,
                                     device=str(self.device))
        pass_torchserve_envelopes_through()
        logger.info("faces: detector on %s, keypoints %s on %s, at most %d faces per image, %d refine step(s)",
                    self.detector.provider, self.precision, self.device, self.max_faces, self.refine_steps)

    def handle(self, data: list[dict], context) -> list[str]:
        headers = [context.get_all_request_header(i) for i in range(len(data))]
        replies = answer_photos(data, self.detector, self.run_model, self.max_pixels, headers, self.max_faces,
                                self.refine_steps, context.manifest["model"]["modelName"])
        faces = sum(len(r.body.get("faces", [])) for r in replies)
        logger.info("batch of %d photos: %d faces, %d refused", len(replies), faces,
                    sum(r.status != 200 for r in replies))
        for i, reply in enumerate(replies):
            context.set_response_content_type(i, "application/json")
            if reply.status != 200:
                context.set_response_status(reply.status, HTTPStatus(reply.status).phrase, i)
        return [json.dumps(reply.body, separators=(",", ":")) for reply in replies]
