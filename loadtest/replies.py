"""What counts as a correct answer, in a module free of Locust (importing Locust monkey-patches gevent)."""

from __future__ import annotations

import json
import math

from facekp.contract import KEYPOINT_NAMES


def check_reply(status: int, text: str | None) -> str | None:
    """None if the reply is HTTP 200 with the 15 contract keypoints in order, else why it is not."""
    if status != 200:
        return f"HTTP {status}: {(text or '')[:200]}"
    try:
        points = json.loads(text or "")["keypoints"]
        names = [p["name"] for p in points]
        coords = [float(v) for p in points for v in (p["x"], p["y"])]
    except (ValueError, KeyError, TypeError) as err:
        return f"not a keypoint answer ({type(err).__name__}: {err})"
    if names != list(KEYPOINT_NAMES):
        return f"expected the 15 contract keypoints in order, got {len(names)}: {names[:3]}..."
    if not all(math.isfinite(c) for c in coords):
        return "non-finite coordinate"
    return None
