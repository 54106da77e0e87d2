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

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from facekp.contract import KEYPOINT_NAMES, MEAN_LAYOUT, NUM_KEYPOINTS, OUTER_EYES, rescale_pixels
from handler.face_detector import MAX_SIDE, SCORE_THRESHOLD, Detection, FaceDetector
from handler.processing import (
    MAX_PIXELS,
    FaceAnswer,
    Incoming,
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
from handler.square import Square, face_square, fit_square

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
    unsure_faces = [(i, j) for i, per_image in enumerate(read) for j, (_, out) in enumerate(per_image) if unsure(out)]
    again = [(i, j, d) for i, j in unsure_faces if (d := look_again(detector, rgbs[i], found[i][j])) is not None]
    if again:
        where, outputs = reader.read([grays[i] for i, _, _ in again], [first_square(d) for _, _, d in again])
        for (i, j, d), sq, out in zip(again, where, outputs, strict=True):
            if quality(out) > quality(read[i][j][1]):
                read[i][j], found[i][j] = (sq, out), d


SAME_FACE = 0.2
"""Two faces of a photo whose keypoints lie this close (their mean distance over the outer-eye distance) are one."""


def read_twice(read: list[list[tuple[Square, np.ndarray]]]) -> set[tuple[int, int]]:
    """(image, face) of every face read again as another face of its image (two detections, or two hints, that
    framed one face): all but the surest of each such group."""
    twice = set()
    for i, per_image in enumerate(read):
        points = [sq.to_image(out[:NUM_KEYPOINTS, :2]) for sq, out in per_image]
        order = sorted(range(len(per_image)), key=lambda j: -quality(per_image[j][1]) if per_image[j][1].shape[-1] > 2
                       else 0.0)
        kept: list[int] = []
        for j in order:
            eyes = max(np.linalg.norm(points[j][OUTER_EYES[0]] - points[j][OUTER_EYES[1]]), 1.0)
            if any(np.linalg.norm(points[j] - points[k], axis=1).mean() < SAME_FACE * eyes for k in kept):
                twice.add((i, j))
            else:
                kept.append(j)
    return twice


UNSURE_BELOW = 0.4
"""A face read with a quality (its 15 points' mean confidence) under this is looked at again (second_look): upright
faces of people never seen read at 0.68 and above, a face read the wrong way up at 0.25 and below."""


def quality(out: np.ndarray) -> float:
    """The mean confidence of a model answer's 15 points."""
    return float(out[:NUM_KEYPOINTS, 2].mean())


def unsure(out: np.ndarray) -> bool:
    """Whether a model answer reads as a face under UNSURE_BELOW (never for a model without confidences)."""
    return out.shape[-1] > 2 and quality(out) < UNSURE_BELOW


def refit(square: Square, out: np.ndarray) -> Square:
    """The square that frames the face of a model answer read in `square` (face_square); `square` itself where
    the answer is no face (its points collapsed or spread far beyond it)."""
    again = face_square(square.to_image(out[:NUM_KEYPOINTS, :2]), MEAN_LAYOUT)
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


@dataclass(eq=False)
class Photo:
    """One request's photo on its way through the photo path: decoded, its faces found (or hinted), then read."""

    slot: int  # its place in the batch
    incoming: Incoming
    rgb: np.ndarray
    scale: float  # pixels of the photo as sent per pixel of rgb (decode_photo)
    found: list[Detection]
    squares: list[Square]  # where each face is read first
    read: list[tuple[Square, np.ndarray]] = field(default_factory=list)  # where each was read last, and the answer

    @property
    def gray(self) -> np.ndarray:
        return np.asarray(Image.fromarray(self.rgb).convert("L"))

    @property
    def hinted(self) -> bool:
        return self.incoming.faces_hint is not None


def answer_photos(requests: list[dict[str, Any]], detector: FaceDetector, run_model: Model,
                  max_pixels: int = MAX_PIXELS, headers: list[Mapping[str, Any]] | None = None,
                  max_faces: int = MAX_FACES, refine_steps: int = REFINE_STEPS,
                  model_name: str = "faces", frame_model: Model | None = None) -> list[Reply]:
    """Answer a server-side batch of photos: bad requests get their own 4xx; the faces of all the others
    go through the keypoint model together (run_model answers, frame_model where given frames: Reader). A photo
    with a Faces-Hint (hinted_faces) skips the detector and the framing pass, unless one of its faces reads
    poorly and is not found around its hint: then the photo is looked at anew. Each answer is in its request's
    form (plain, KServe v2/v1)."""
    replies: list[Reply | None] = [None] * len(requests)
    photos: list[Photo] = []
    for i, request in enumerate(requests):
        try:
            incoming = read_request(request, headers[i] if headers else None)
            decoded, scale = decode_photo(incoming.image, max_pixels)
            rgb = np.asarray(decoded)
            if incoming.faces_hint is None:
                found = largest_first(find_faces(detector, rgb), max_faces)
                photos.append(Photo(i, incoming, rgb, scale, found, [first_square(d) for d in found]))
            else:
                photos.append(Photo(i, incoming, rgb, scale, *hinted_faces(incoming.faces_hint, scale, max_faces)))
        except Exception as err:
            replies[i] = reply_for_failure(i, err)
    # A hinted face's square comes from its keypoints: it is read once, as a refined one; a hinted photo with a face
    # read poorly (moved otherwise than its track foretold, hidden, gone) is looked at anew, as the others are
    reader = Reader(run_model, frame_model, refine_steps)
    hinted = [photo for photo in photos if photo.hinted]
    lost = read_photos(hinted, reader)
    lost += [p for p in hinted if p not in lost and any(  # the face was elsewhere: the hint was wrong
        np.linalg.norm(where.centre - hint.centre) > HINT_OFF * hint.side for hint, (where, _) in zip(
            p.squares, p.read, strict=True))]
    for photo in lost:
        photo.found = largest_first(find_faces(detector, photo.rgb), max_faces)
        photo.squares = [first_square(d) for d in photo.found]
    read_photos([photo for photo in photos if not photo.hinted or photo in lost], reader, detector)
    for photo in photos:
        replies[photo.slot] = photo_reply(photo, model_name)
    return replies  # type: ignore[return-value]


def read_photos(photos: list[Photo], reader: Reader, detector: FaceDetector | None = None) -> list[Photo]:
    """Read every face of the photos in its square (all together) and keep each face once (read_twice), in place.
    With a detector, the faces read poorly are looked at again (second_look); without, the photos with such a
    face are returned."""
    grays = [photo.gray for photo in photos]
    for photo, per_image in zip(photos, keypoints_for(grays, [p.squares for p in photos], reader), strict=True):
        photo.read = per_image
    found, read = [p.found for p in photos], [p.read for p in photos]
    if detector is not None:
        second_look([p.rgb for p in photos], grays, found, read, detector, reader)
    for k, j in sorted(read_twice(read), reverse=True):
        del read[k][j], found[k][j], photos[k].squares[j]
    return [p for p in photos if any(unsure(out) for _, out in p.read)] if detector is None else []


def photo_reply(photo: Photo, model_name: str) -> Reply:
    """A read photo's answer in its request's form, or a 4xx where it asked for what cannot be answered."""
    try:
        answers = [face_answer(out, photo.incoming.points) for _, out in photo.read]
    except RequestError as err:
        return reply_for_failure(photo.slot, err)
    scale = photo.scale
    # the detector's boxes are in continuous coordinates (edges), the keypoints in pixel-centre ones
    found = [Detection(tuple(v * scale for v in d.box), d.score, d.landmarks * scale) for d in photo.found]
    points = [rescale(sq.to_image(a.normalized), scale) for (sq, _), a in zip(photo.read, answers, strict=True)]
    rolls = [roll_degrees(fit_square(sq.to_image(out[:NUM_KEYPOINTS, :2]), MEAN_LAYOUT, turn=True))
             for sq, out in photo.read]  # the turn of the 15 answered
    height, width = photo.rgb.shape[:2]
    plain = faces_json(found, points, round(width * scale), round(height * scale), answers, rolls)
    return reply_for(photo.slot, photo.incoming, plain, model_name)


HINT_OFF = 0.1
"""A hinted face found this far from its hint (its framing moved by this share of the square's side) was not
where the hint said (a turn, a stop): the photo is looked at anew."""

HINT_LANDMARKS = (1, 0, 10, 12, 11)
"""The detector's 5 landmarks among the 15 keypoints: the subject's right eye, left eye, nose, right and left
mouth corner."""


def hinted_faces(hint: str, scale: float, max_faces: int = MAX_FACES) -> tuple[list[Detection], list[Square]]:
    """The faces a photo's Faces-Hint says it holds, and the squares to read them in, in pixels of the photo as
    decoded. The hint is JSON, a list of {"box": [x, y, width, height], "keypoints": [[x, y], ...15], "score": s}
    in pixels of the photo as sent: a video's faces of a frame before, moved to where they should be now
    (facekp.video), so that no detector runs and each face is read once in the square its keypoints frame.
    RequestError 400 where the hint is not that."""
    try:
        faces = json.loads(hint)
        if not isinstance(faces, list) or len(faces) > max_faces:
            raise ValueError(f"a list of at most {max_faces} faces")
        detections, squares = [], []
        for face in faces:
            box = np.asarray(face["box"], np.float64) / scale
            points = rescale_pixels(np.asarray(face["keypoints"], np.float64), 1 / scale)
            score = float(face.get("score", 1.0))
            if box.shape != (4,) or points.shape != (NUM_KEYPOINTS, 2) or not (
                    np.isfinite(box).all() and np.isfinite(points).all() and np.isfinite(score)):
                raise ValueError("each face a box of 4 numbers and 15 keypoints [x, y], all finite")
            detections.append(Detection(tuple(float(v) for v in box), score, points[list(HINT_LANDMARKS)]))
            squares.append(face_square(points, MEAN_LAYOUT))
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise RequestError(400, f"Faces-Hint is not a list of faces (JSON: [{{\"box\": [x, y, width, height], "
                                f"\"keypoints\": [[x, y], ... 15], \"score\": s}}]): {err}") from None
    return detections, squares


def rescale(points: np.ndarray, scale: float) -> np.ndarray:
    """Keypoints in pixels of a JPEG decoded at 1/scale (decode_photo) -> pixels of the image as sent."""
    return rescale_pixels(points, scale)
