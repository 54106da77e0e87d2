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
from handler.roll import find_faces, first_square, look_again, roll_degrees
from handler.settings import HandlerSettings
from handler.square import Square, fit_square

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


Model = Callable[[np.ndarray], np.ndarray]
"""(N, 1, 96, 96) crops -> (N, points, 2 or 3): the keypoint model's normalized answers (handler.inference)."""


@dataclass(frozen=True)
class Reader:
    """How a face is read: in its square, then refine_steps times re-framed from what was read and read again.
    The reads that only frame the next go through `frame` where given (one view: ServedModel.framing), the last
    through `answer`."""

    answer: Model
    frame: Model | None = None
    refine_steps: int = REFINE_STEPS

    def read(self, images: list[np.ndarray], squares: list[Square]) -> tuple[list[Square], list[np.ndarray]]:
        """The squares last read in and the answers there, for faces in the given squares of the given images,
        all of them in one model call per step."""
        if not squares:
            return [], []
        current = list(squares)
        for step in range(self.refine_steps + 1):
            model = self.answer if step == self.refine_steps or self.frame is None else self.frame
            outputs = model(np.stack([sq.crop(g) for g, sq in zip(images, current, strict=True)])[:, None])
            if step < self.refine_steps:
                current = [refit(sq, out) for sq, out in zip(current, outputs, strict=True)]
        return current, list(outputs)


def keypoints_for(grays: list[np.ndarray], squares: list[list[Square]], reader: Reader
                  ) -> list[list[tuple[Square, np.ndarray]]]:
    """For each square of each image, the square the face was last read in and the model's answer there (its
    normalized points, with confidences where the model gives them): every face of every image read together."""
    flat = [(i, j) for i, per_image in enumerate(squares) for j in range(len(per_image))]
    where, outputs = reader.read([grays[i] for i, _ in flat], [squares[i][j] for i, j in flat])
    result: list[list[tuple[Square, np.ndarray]]] = [[] for _ in squares]
    for (i, _), sq, out in zip(flat, where, outputs, strict=True):
        result[i].append((sq, out))
    return result


def second_look(rgbs: list[np.ndarray], grays: list[np.ndarray], found: list[list[Detection]],
                read: list[list[tuple[Square, np.ndarray]]], detector: FaceDetector, reader: Reader) -> None:
    """The faces read with a quality under UNSURE_BELOW detected again at every eighth turn (handler.roll's
    look_again) and read again from there, all together; each keeps whichever reading is surer (in place): the
    detector places some strongly rolled faces' landmarks a quarter or half turn off, and a face read the wrong
    way up reads as no face."""
    again = [(i, j, d) for i, per_image in enumerate(read) for j, (_, out) in enumerate(per_image)
             if out.shape[-1] > 2 and quality(out) < UNSURE_BELOW
             and (d := look_again(detector, rgbs[i], found[i][j])) is not None]
    if not again:
        return
    where, outputs = reader.read([grays[i] for i, _, _ in again], [first_square(d) for _, _, d in again])
    for (i, j, d), sq, out in zip(again, where, outputs, strict=True):
        if quality(out) > quality(read[i][j][1]):
            read[i][j], found[i][j] = (sq, out), d


UNSURE_BELOW = 0.4
"""A face read with a quality (its 15 points' mean confidence) under this is looked at again (second_look): upright
faces of people never seen read at 0.68 and above, a face read the wrong way up at 0.25 and below."""


def quality(out: np.ndarray) -> float:
    """The mean confidence of a model answer's 15 points."""
    return float(out[:NUM_KEYPOINTS, 2].mean())


def refit(square: Square, out: np.ndarray) -> Square:
    """The square that frames the face of a model answer read in `square`, turned with it; `square` itself where
    the answer is no face (its points collapsed or spread far beyond it)."""
    again = fit_square(square.to_image(out[:NUM_KEYPOINTS, :2]), MEAN_LAYOUT, turn=True)
    return again if square.side / 4 < again.side < square.side * 4 else square


def largest_first(detections: list[Detection], max_faces: int = MAX_FACES) -> list[Detection]:
    return sorted(detections, key=lambda d: -d.box[2] * d.box[3])[:max_faces]


def faces_json(detections: list[Detection], points: list[np.ndarray], width: int, height: int,
               answers: list[FaceAnswer] | None = None, rolls: list[float] | None = None) -> dict[str, Any]:
    """The answer: every face, largest first, box and keypoints in pixels of the image as sent (named as
    answers say, with their confidences and the face's quality where the model gives them), and its roll where
    given (handler.roll.roll_degrees)."""
    faces = []
    for k, (d, p) in enumerate(zip(detections, points, strict=True)):
        answer = answers[k] if answers else None
        face: dict[str, Any] = {"box": {"x": round(d.box[0], 1), "y": round(d.box[1], 1),
                                        "width": round(d.box[2], 1), "height": round(d.box[3], 1)},
                                "score": round(d.score, 3)}
        if rolls is not None:
            face["roll"] = rolls[k]
        face["keypoints"] = point_objects(p, answer.confidence if answer else None,
                                          answer.names if answer else KEYPOINT_NAMES)
        if answer is not None and answer.quality is not None:
            face["quality"] = round(answer.quality, 3)
        faces.append(face)
    return {"faces": faces, "image": {"width": width, "height": height}}


def answer_photos(requests: list[dict[str, Any]], detector: FaceDetector, run_model: Model,
                  max_pixels: int = MAX_PIXELS, headers: list[Mapping[str, Any]] | None = None,
                  max_faces: int = MAX_FACES, refine_steps: int = REFINE_STEPS,
                  model_name: str = "faces", frame_model: Model | None = None) -> list[Reply]:
    """Answer a server-side batch of photos: bad requests get their own 4xx; the faces of all the others
    go through the keypoint model together (run_model answers, frame_model where given frames: Reader). Each
    answer is in its request's form (plain, KServe v2/v1)."""
    reader = Reader(run_model, frame_model, refine_steps)
    replies: list[Reply | None] = [None] * len(requests)
    rgbs, grays, squares, found, sizes, slots, scales, incomings = [], [], [], [], [], [], [], []
    for i, request in enumerate(requests):
        try:
            incoming = read_request(request, headers[i] if headers else None)
            photo, scale = decode_photo(incoming.image, max_pixels)
            detections = largest_first(find_faces(detector, np.asarray(photo)), max_faces)
        except Exception as err:
            replies[i] = reply_for_failure(i, err)
            continue
        rgbs.append(np.asarray(photo))
        grays.append(np.asarray(photo.convert("L")))
        squares.append([first_square(d) for d in detections])
        found.append(detections)
        sizes.append((round(photo.width * scale), round(photo.height * scale)))
        scales.append(scale)
        slots.append(i)
        incomings.append(incoming)
    read = keypoints_for(grays, squares, reader)
    second_look(rgbs, grays, found, read, detector, reader)
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
        rolls = [roll_degrees(refit(sq, out)) for sq, out in per_face]  # the turn of the 15 answered
        plain = faces_json(detections, points, width, height, answers, rolls)
        replies[slot] = reply_for(slot, incoming, plain, model_name)
    return replies  # type: ignore[return-value]


def rescale(points: np.ndarray, scale: float) -> np.ndarray:
    """Keypoints in pixels of a JPEG decoded at 1/scale (decode_photo) -> pixels of the image as sent."""
    return rescale_pixels(points, scale)
