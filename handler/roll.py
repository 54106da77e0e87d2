"""Faces at any roll: RetinaFace finds most faces up to about 45 degrees of roll, fewer beyond, and places the
landmarks of a strongly rolled face poorly, some a quarter or half turn off (docs/photos.md). Three ways around
it, each paid only where needed:
- a photo in which it finds no face is searched again turned by quarter and eighth turns;
- a face found rolled past UPRIGHT_AGAIN_DEG is detected again in its surroundings turned upright, where the
  detector places its landmarks as well as an upright face's;
- a face the keypoint model reads poorly is detected again in its surroundings turned every eighth turn
  (look_again), and read again from the detection it finds surest.
"""

from __future__ import annotations

import numpy as np

from handler.face_detector import Detection, FaceDetector, nms
from handler.square import Square, face_square, turn_image, turned_points

DETECTOR_LAYOUT = np.array([[31.07, 37.99], [63.30, 37.31], [47.17, 56.34], [34.46, 73.30], [60.72, 72.75]])
"""Mean position, in a training-framed 96x96 crop, of the detector's 5 landmarks (image-left eye,
image-right eye, nose, image-left and image-right mouth corner); `python -m facekp.photos calibrate`."""

TURNS_WHEN_NONE = ((90, -90), (45, -45), (180,))
"""Where the detector finds no face in a photo, it looks again in the photo turned by these (degrees, clockwise),
a group at a time until one finds a face."""
UPRIGHT_AGAIN_DEG = 25.0
"""A face whose landmarks are rolled more than this is detected again in its surroundings turned upright."""
LOOK_AGAIN_TURNS = tuple(range(0, 360, 45))
"""The turns of a poorly read face's surroundings that look_again detects in: within 22.5 degrees of upright in
one of them, where the detector is surest."""
SURROUNDINGS = 2.0
"""The surroundings detected again: a square this many times the detector's box..."""
SURROUNDINGS_PX = 160
"""... cut at this many pixels a side (the face then spans about 80 of them)."""


def first_square(detection: Detection) -> Square:
    """The square, turned with the face, that frames a detection like the training crops."""
    return face_square(detection.landmarks, DETECTOR_LAYOUT)


def find_faces(detector: FaceDetector, rgb: np.ndarray) -> list[Detection]:
    """Every face of an (H, W, 3) uint8 RGB image once, at any roll, best first."""
    found = detector.detect(rgb)
    for turns in TURNS_WHEN_NONE:
        if found:
            break
        found = merged([d for degrees in turns for d in detect_turned(detector, rgb, degrees)], detector.nms_threshold)
    upright = []
    for detection in found:
        roll = first_square(detection).roll_deg
        again = detect_again(detector, rgb, detection, (roll,)) if abs(roll) > UPRIGHT_AGAIN_DEG else None
        upright.append(again or detection)
    return upright


def look_again(detector: FaceDetector, rgb: np.ndarray, detection: Detection) -> Detection | None:
    """The face of a detection the keypoint model read poorly, detected again in its surroundings turned each of
    LOOK_AGAIN_TURNS: the surest detection near their centre (None: none)."""
    return detect_again(detector, rgb, detection, LOOK_AGAIN_TURNS)


def detect_again(detector: FaceDetector, rgb: np.ndarray, detection: Detection, turns: tuple[float, ...]
                 ) -> Detection | None:
    """The surest detection near the centre of the detection's surroundings turned each of `turns` (degrees,
    clockwise), in pixels of the image; None where none is found there."""
    x, y, w, h = detection.box
    side = SURROUNDINGS * max(w, h)
    centre = np.array([SURROUNDINGS_PX / 2 - 0.5] * 2)
    best: Detection | None = None
    for degrees in turns:
        around = Square(x + w / 2 - side / 2, y + h / 2 - side / 2, side, np.radians(degrees))
        for d in detector.detect(around.cut(rgb, SURROUNDINGS_PX)):
            if np.linalg.norm(d.landmarks.mean(0) - centre) < SURROUNDINGS_PX / 4 and (best is None
                                                                                       or d.score > best.score):
                best = moved(d, lambda points, around=around: around.from_cut(points, SURROUNDINGS_PX))
    return best


def detect_turned(detector: FaceDetector, rgb: np.ndarray, degrees: float) -> list[Detection]:
    """The detections of the image turned clockwise by `degrees`, in pixels of the image as given."""
    turned = turn_image(rgb, degrees)
    size, turned_size = (rgb.shape[1], rgb.shape[0]), (turned.shape[1], turned.shape[0])
    return [moved(d, lambda points: turned_points(points, -degrees, turned_size, size))
            for d in detector.detect(turned)]


def moved(detection: Detection, to_image) -> Detection:
    """A detection made in another raster, its landmarks mapped by to_image and its box the upright box around
    its mapped corners."""
    x, y, w, h = detection.box
    corners = to_image(np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]]) - 0.5) + 0.5  # box edges
    low, high = corners.min(0), corners.max(0)
    return Detection((float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])),
                     detection.score, to_image(detection.landmarks))


def merged(detections: list[Detection], iou: float) -> list[Detection]:
    """Detections of the same photo from several turns, each face once (the best of its overlapping boxes)."""
    if not detections:
        return []
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (d.box for d in detections)])
    return [detections[i] for i in nms(boxes, np.array([d.score for d in detections]), iou)]


def roll_degrees(square: Square) -> float:
    """A face's roll as answered: degrees in [-180, 180), positive when turned clockwise as seen in the image (the
    subject's left eye lower than their right)."""
    return round((square.roll_deg + 180) % 360 - 180, 1)
