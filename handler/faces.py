"""The photo path as plain functions: find every face, frame each like the training crops, predict.

The training crops were framed from each face's own keypoints: the square (scale and shift, no
rotation) that best maps the 15 points onto the mean layout (facekp.contract.MEAN_LAYOUT). Here:
1. the detector's 5 landmarks are fitted the same way onto DETECTOR_LAYOUT, where those landmarks
   fall in a training crop on average (calibrated on the frames of the training people, see
   docs/photos.md), which gives a first square;
2. the keypoint model predicts the 15 points in that crop;
3. `refine_steps` times: the square is re-fitted from the predicted 15 points with the data
   set's own rule, and the model predicts again.
Every face of every image in a call goes through the model together, once per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from facekp.contract import KEYPOINT_NAMES, MEAN_LAYOUT, NUM_KEYPOINTS, rescale_pixels
from handler.face_detector import MAX_SIDE, SCORE_THRESHOLD, Detection, FaceDetector
from handler.processing import (
    MAX_PIXELS,
    FaceAnswer,
    Reply,
    RequestError,
    decode_photo,
    face_answer,
    point_objects,
    read_request,
    reply_for,
    reply_for_failure,
)
from handler.settings import HandlerSettings
from handler.square import Square, fit_square

DETECTOR_LAYOUT = np.array([[31.07, 37.99], [63.30, 37.31], [47.17, 56.34], [34.46, 73.30], [60.72, 72.75]])
"""Mean position, in a training-framed 96x96 crop, of the detector's 5 landmarks (image-left eye,
image-right eye, nose, image-left and image-right mouth corner); `python -m facekp.photos calibrate`."""

MAX_FACES = 50
"""Faces answered per image (the largest); handler setting max_faces."""

REFINE_STEPS = 1


@dataclass(frozen=True)
class FacesSettings(HandlerSettings):
    """The `handler:` block of faces-config.yaml: the keypoint model's settings and the photo path's."""

    max_faces: int = MAX_FACES
    refine_steps: int = REFINE_STEPS
    """Re-frame each face from its predicted keypoints and predict again, this many times."""
    score_threshold: float = SCORE_THRESHOLD
    detect_max_side: int = MAX_SIDE


def first_square(detection: Detection) -> Square:
    return fit_square(detection.landmarks, DETECTOR_LAYOUT)


def keypoints_for(grays: list[np.ndarray], squares: list[list[Square]],
                  run_model: Callable[[np.ndarray], np.ndarray], refine_steps: int = REFINE_STEPS
                  ) -> list[list[tuple[Square, np.ndarray]]]:
    """For each square of each image, the square the face was last read in and the model's answer there (its
    normalized points, with confidences where the model gives them); all faces in one model call per step.
    Each step re-frames a face from its 15 keypoints."""
    flat = [(i, j) for i, per_image in enumerate(squares) for j in range(len(per_image))]
    current = [squares[i][j] for i, j in flat]
    outputs: np.ndarray = np.empty((0,))
    for step in range(refine_steps + 1):
        if not flat:
            break
        batch = np.stack([sq.crop(grays[i]) for (i, _), sq in zip(flat, current, strict=True)])[:, None]
        outputs = run_model(batch)
        if step < refine_steps:
            current = [fit_square(sq.to_image(out[:NUM_KEYPOINTS, :2]), MEAN_LAYOUT)
                       for out, sq in zip(outputs, current, strict=True)]
    result: list[list[tuple[Square, np.ndarray]]] = [[] for _ in squares]
    for (i, _), sq, out in zip(flat, current, outputs, strict=True):
        result[i].append((sq, out))
    return result


def largest_first(detections: list[Detection], max_faces: int = MAX_FACES) -> list[Detection]:
    return sorted(detections, key=lambda d: -d.box[2] * d.box[3])[:max_faces]


def faces_json(detections: list[Detection], points: list[np.ndarray], width: int, height: int,
               answers: list[FaceAnswer] | None = None) -> dict[str, Any]:
    """The answer: every face, largest first, box and keypoints in pixels of the image as sent (named as
    answers say, with their confidences and the face's quality where the model gives them)."""
    faces = []
    for k, (d, p) in enumerate(zip(detections, points, strict=True)):
        answer = answers[k] if answers else None
        face = {"box": {"x": round(d.box[0], 1), "y": round(d.box[1], 1), "width": round(d.box[2], 1),
                        "height": round(d.box[3], 1)},
                "score": round(d.score, 3),
                "keypoints": point_objects(p, answer.confidence if answer else None,
                                           answer.names if answer else KEYPOINT_NAMES)}
        if answer is not None and answer.quality is not None:
            face["quality"] = round(answer.quality, 3)
        faces.append(face)
    return {"faces": faces, "image": {"width": width, "height": height}}


def answer_photos(requests: list[dict[str, Any]], detector: FaceDetector, run_model: Callable[[np.ndarray], np.ndarray],
                  max_pixels: int = MAX_PIXELS, headers: list[Mapping[str, Any]] | None = None,
                  max_faces: int = MAX_FACES, refine_steps: int = REFINE_STEPS,
                  model_name: str = "faces") -> list[Reply]:
    """Answer a server-side batch of photos: bad requests get their own 4xx; the faces of all the others
    go through the keypoint model together. Each answer is in its request's form (plain, KServe v2/v1)."""
    replies: list[Reply | None] = [None] * len(requests)
    grays, squares, found, sizes, slots, scales, incomings = [], [], [], [], [], [], []
    for i, request in enumerate(requests):
        try:
            incoming = read_request(request, headers[i] if headers else None)
            photo, scale = decode_photo(incoming.image, max_pixels)
            detections = largest_first(detector.detect(np.asarray(photo)), max_faces)
        except Exception as err:
            replies[i] = reply_for_failure(i, err)
            continue
        grays.append(np.asarray(photo.convert("L")))
        squares.append([first_square(d) for d in detections])
        found.append(detections)
        sizes.append((round(photo.width * scale), round(photo.height * scale)))
        scales.append(scale)
        slots.append(i)
        incomings.append(incoming)
    read = keypoints_for(grays, squares, run_model, refine_steps)
    for slot, detections, per_face, (width, height), scale, incoming in zip(
            slots, found, read, sizes, scales, incomings, strict=True):
        try:
            answers = [face_answer(out, incoming.points) for _, out in per_face]
        except RequestError as err:
            replies[slot] = reply_for_failure(slot, err)
            continue
        # the detector's boxes are in continuous coordinates (edges), the keypoints in pixel-centre ones
        detections = [Detection(tuple(v * scale for v in d.box), d.score, d.landmarks * scale) for d in detections]
        points = [rescale(sq.to_image(a.normalized), scale) for (sq, _), a in zip(per_face, answers, strict=True)]
        plain = faces_json(detections, points, width, height, answers)
        replies[slot] = reply_for(slot, incoming, plain, model_name)
    return replies  # type: ignore[return-value]


def rescale(points: np.ndarray, scale: float) -> np.ndarray:
    """Keypoints in pixels of a JPEG decoded at 1/scale (decode_photo) -> pixels of the image as sent."""
    return rescale_pixels(points, scale)
