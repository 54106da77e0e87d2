"""What counts as a correct answer of the service: one parser for every client.

The evaluation client, the Locust file and the benchmark's load generator all judge replies
here (this module must stay free of Locust: importing Locust monkey-patches gevent).
"""

from __future__ import annotations

import json
import random

import numpy as np

from facekp.contract import KEYPOINT_NAMES


class BadReply(ValueError):
    """A reply that is not HTTP 200 with the points asked for (the 15 contract keypoints) in order."""


def parse_reply(status: int, text: str | None, names: tuple[str, ...] = KEYPOINT_NAMES) -> np.ndarray:
    """(P, 3) of a good reply with the points `names` in order: x and y in the pixels of the image sent, and each
    point's confidence (NaN where the reply has none); else BadReply."""
    if status != 200:
        raise BadReply(f"HTTP {status}: {(text or '')[:200]}")
    try:
        points = json.loads(text or "")["keypoints"]
        answered = [p["name"] for p in points]
        coords = np.array([[float(p["x"]), float(p["y"]), float(p.get("confidence", "nan"))] for p in points])
    except (ValueError, KeyError, TypeError) as err:
        raise BadReply(f"not a keypoint answer ({type(err).__name__}: {err})") from None
    if answered != list(names):
        raise BadReply(f"expected the {len(names)} points in order, got {len(answered)}: {answered[:3]}...")
    if not np.isfinite(coords[:, :2]).all():
        raise BadReply("non-finite coordinate")
    return coords


def check_faces_reply(status: int, text: str | None) -> str | None:
    """None if the reply of /predictions/faces is good (200, a list of faces with the 15 contract keypoints)."""
    if status != 200:
        return f"HTTP {status}: {(text or '')[:200]}"
    try:
        faces = json.loads(text or "")["faces"]
        for face in faces:
            if [p["name"] for p in face["keypoints"]] != list(KEYPOINT_NAMES):
                return "a face without the 15 contract keypoints in order"
    except (ValueError, KeyError, TypeError) as err:
        return f"not a faces answer ({type(err).__name__}: {err})"
    return None


def check_reply(status: int, text: str | None) -> str | None:
    """None if the reply is good, else why it is not (for load tests that count failures)."""
    try:
        parse_reply(status, text)
    except BadReply as err:
        return str(err)
    return None


RETRY_STATUSES = (503, 507)
"""TorchServe's "full, retry later": 503 when the model's queue is full (its message wrongly says the model
has no worker), 507 when a worker died with the request. Both are worth retrying after a pause."""


def backoff_s(attempt: int, base: float = 0.5, cap: float = 8.0, rng: random.Random | None = None) -> float:
    """Pause before retry `attempt` (0, 1, ...): exponential with full jitter, so refused clients spread out."""
    return (rng or random).uniform(0.0, min(cap, base * 2**attempt))
