"""TorchServe entry point of the `faces` model: a thin class over handler.faces.

BaseHandler loads the keypoint TorchScript file (the same keypoints.pt as the `keypoints` model)
onto the worker's GPU when it has one; the face detector runs on onnxruntime, on the GPU too
where onnxruntime-gpu is installed, else on the CPU (the log says which).
"""

from __future__ import annotations

import logging

from handler.base import ModelHandler
from handler.face_detector import FaceDetector
from handler.faces import MAX_FACES, REFINE_STEPS, answer_photos

logger = logging.getLogger(__name__)


class FacesHandler(ModelHandler):
    def initialize(self, context) -> None:
        super().initialize(context)
        self.max_faces = int(self.settings.get("max_faces", MAX_FACES))
        self.refine_steps = int(self.settings.get("refine_steps", REFINE_STEPS))
        self.detector = FaceDetector(score_threshold=float(self.settings.get("score_threshold", 0.5)),
                                     max_side=int(self.settings.get("detect_max_side", 1280)),
                                     threads=self.threads or 1, device=str(self.device))
        logger.info("faces: detector on %s, at most %d faces per image, %d refine step(s)",
                    self.detector.provider, self.max_faces, self.refine_steps)

    def handle(self, data: list[dict], context) -> list[str]:
        replies = answer_photos(data, self.detector, self.run_model, self.max_pixels,
                                self.request_headers(data, context), self.max_faces, self.refine_steps,
                                self.model_name)
        faces = sum(len(r.body.get("faces", [])) for r in replies)
        logger.info("batch of %d photos: %d faces, %d refused", len(replies), faces,
                    sum(r.status != 200 for r in replies))
        return self.respond(replies, context)
