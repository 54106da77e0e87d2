"""TorchServe entry point of the `faces` model: a thin class over handler.faces.

BaseHandler loads the keypoint TorchScript file (the same keypoints.pt as the `keypoints` model)
onto the worker's GPU when it has one; the face detector runs on onnxruntime, on the GPU too
where onnxruntime-gpu is installed, else on the CPU (the log says which).
"""

from __future__ import annotations

import logging

from handler.base import ModelHandler
from handler.face_detector import FaceDetector
from handler.faces import FacesSettings, answer_photos

logger = logging.getLogger(__name__)


class FacesHandler(ModelHandler):
    settings_class = FacesSettings

    def initialize(self, context) -> None:
        super().initialize(context)
        settings = self.settings
        self.detector = FaceDetector(score_threshold=settings.score_threshold, max_side=settings.detect_max_side,
                                     threads=settings.torch_threads or 1, device=str(self.device))
        logger.info("faces: detector on %s, at most %d faces per image, %d refine step(s)",
                    self.detector.provider, settings.max_faces, settings.refine_steps)

    def handle(self, data: list[dict], context) -> list[str]:
        settings = self.settings
        replies = answer_photos(data, self.detector, self.keypoints.every_point, settings.max_pixels,
                                self.request_headers(data, context), settings.max_faces, settings.refine_steps,
                                self.model_name, self.keypoints.framing)
        faces = sum(len(r.body.get("faces", [])) for r in replies)
        logger.info("batch of %d photos: %d faces, %d refused", len(replies), faces,
                    sum(r.status != 200 for r in replies))
        return self.respond(replies, context)
