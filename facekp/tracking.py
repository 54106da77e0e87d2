"""Which face is which from frame to frame: each answered face gets the id of the track it continues.

Each frame's faces are matched to the live tracks in one optimal assignment (scipy's linear_sum_assignment)
on a cost of box overlap and keypoint distance. A track is compared where it is predicted to be now, moved at
its own constant velocity since it was last seen, so two people who pass each other keep their ids, and a
track lives on unseen for a few frames (a blink of the detector, a face hidden behind another), then is found
again where its motion has taken it. A face no track claims starts a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from facekp.photos import eye_distance


@dataclass(frozen=True)
class TrackerSettings:
    max_misses: int = 12
    """Frames a track lives on unseen (about half a second at 25 fps), then it is closed."""
    max_distance: float = 1.0
    """The most a face may lie from a track seen in the frame before: its keypoints' mean distance from where the
    track is predicted, in the track's outer-eye distances."""
    distance_growth: float = 0.15
    """That limit widens by this much for each frame the track went unseen: the prediction grows uncertain."""
    miss_penalty: float = 0.05
    """Cost per frame unseen: where a track seen a moment ago and one lost for a while fit a face alike, the
    recent one gets it."""
    velocity_gain: float = 0.5
    """Weight of the newest motion in the velocity estimate (the rest: the estimate so far)."""


@dataclass
class Track:
    id: int
    box: np.ndarray  # x, y, width, height where last seen
    points: np.ndarray  # (P, 2) where last seen
    last_frame: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))  # pixels per frame, of the whole face
    hits: int = 1

    def predicted(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Box and points where the track should be in `frame`, moved at its velocity since last seen."""
        shift = self.velocity * (frame - self.last_frame)
        return self.box + [*shift, 0, 0], self.points + shift

    def misses(self, frame: int) -> int:
        """Frames unseen before `frame`."""
        return frame - self.last_frame - 1


def iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of `first` (T, 4) with every box of `second` (N, 4): (T, N); boxes as
    x, y, width, height."""
    a, b = np.asarray(first, float)[:, None], np.asarray(second, float)[None]
    width = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    height = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    overlap = width.clip(0) * height.clip(0)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - overlap
    return np.where(union > 0, overlap / np.maximum(union, 1e-9), 0.0)


class Tracker:
    """Gives each frame's faces their track ids; feed it every frame in order, with or without faces."""

    UNMATCHABLE = 1e6

    def __init__(self, settings: TrackerSettings | None = None):
        self.settings = settings or TrackerSettings()
        self.tracks: list[Track] = []
        self.next_id = 1

    def update(self, frame: int, boxes: np.ndarray, points: np.ndarray, sure: list[bool] | None = None) -> list[int]:
        """The track id of each face of `frame`: boxes (N, 4) as x, y, width, height and keypoints (N, P, 2), in
        pixels; in the order given. A face that is not sure (sure[n] False: read poorly, as a face half hidden
        is) keeps its track alive but does not move it: the track goes on as it was going."""
        s = self.settings
        self.tracks = [t for t in self.tracks if t.misses(frame) <= s.max_misses]
        boxes, points = np.asarray(boxes, float).reshape(-1, 4), np.asarray(points, float)
        ids: list[int | None] = [None] * len(boxes)
        if self.tracks and len(boxes):
            cost = self.cost(frame, boxes, points)
            for t, n in zip(*linear_sum_assignment(cost), strict=True):
                if cost[t, n] < self.UNMATCHABLE:
                    self.follow(self.tracks[t], frame, boxes[n], points[n], sure is None or sure[n])
                    ids[n] = self.tracks[t].id
        for n, found in enumerate(ids):
            if found is None:
                self.tracks.append(Track(self.next_id, boxes[n].copy(), points[n].copy(), frame))
                ids[n] = self.next_id
                self.next_id += 1
        return [int(i) for i in ids if i is not None]

    def cost(self, frame: int, boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
        """(tracks, faces): keypoint distance (in the track's eye distances) + (1 - IoU) + the miss penalty;
        UNMATCHABLE beyond the track's distance limit."""
        s = self.settings
        predicted = [t.predicted(frame) for t in self.tracks]
        eyes = np.array([max(eye_distance(t.points), 1.0) for t in self.tracks])
        misses = np.array([t.misses(frame) for t in self.tracks])
        where = np.stack([p for _, p in predicted])
        distance = np.linalg.norm(where[:, None] - points[None], axis=-1).mean(-1) / eyes[:, None]
        overlap = iou(np.stack([b for b, _ in predicted]), boxes)
        cost = distance + (1 - overlap) + s.miss_penalty * misses[:, None]
        limit = s.max_distance + s.distance_growth * misses
        return np.where(distance <= limit[:, None], cost, self.UNMATCHABLE)

    def follow(self, track: Track, frame: int, box: np.ndarray, points: np.ndarray, sure: bool = True) -> None:
        """The track seen again in `frame`: its velocity updated from the motion since it was last seen; where the
        face is not sure, moved on at its velocity instead."""
        if not sure:
            track.box, track.points = track.predicted(frame)
            track.last_frame = frame
            return
        motion = (points.mean(0) - track.points.mean(0)) / (frame - track.last_frame)
        gain = 1.0 if track.hits == 1 else self.settings.velocity_gain
        track.velocity = track.velocity + gain * (motion - track.velocity)
        track.box, track.points, track.last_frame = box.copy(), points.copy(), frame
        track.hits += 1
