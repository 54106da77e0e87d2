"""The video client's parts without a service: the tracker, the One Euro filter, the JSON line, the study's scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facekp import clips
from facekp.contract import KEYPOINT_NAMES, MEAN_LAYOUT
from facekp.one_euro import OneEuroFilter, OneEuroSettings
from facekp.photos import Frame
from facekp.tracking import Tracker, TrackerSettings, iou
from facekp.video import TrackSmoother, frame_record
from facekp.video_study import score_clip

FACE = (MEAN_LAYOUT - MEAN_LAYOUT.mean(0)) * 0.8  # 15 points of a face about 30 px between the outer eye corners


def face_at(x: float, y: float) -> tuple[np.ndarray, np.ndarray]:
    """A box (x, y, width, height) and keypoints (15, 2) of a face centred at x, y."""
    points = FACE + [x, y]
    low, high = points.min(0) - 10, points.max(0) + 10
    return np.array([*low, *(high - low)]), points


def faces(*centres: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    made = [face_at(x, y) for x, y in centres]
    return np.array([b for b, _ in made]).reshape(-1, 4), np.array([p for _, p in made]).reshape(-1, 15, 2)


def test_iou_of_boxes():
    same, half, apart = [0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]
    assert iou(np.array([same]), np.array([same, half, apart])) == pytest.approx(np.array([[1.0, 50 / 150, 0.0]]))


def test_two_people_crossing_keep_their_ids_through_a_miss_where_they_meet():
    """A walks right, B walks left a little lower; B is hidden while they overlap and comes out on the far side,
    where its last-seen position is nearer A: only its predicted motion tells them apart."""
    tracker = Tracker()
    a_ids, b_ids, hidden = [], [], []
    for k in range(40):
        a, b = (100 + 8 * k, 200), (420 - 8 * k, 206)
        if abs(a[0] - b[0]) < 45:  # B behind A
            hidden.append(k)
            ids = tracker.update(k, *faces(a))
            a_ids.append(ids[0])
        else:
            ids = tracker.update(k, *faces(b, a))  # the order the service answers in carries no meaning
            b_ids.append(ids[0])
            a_ids.append(ids[1])
    assert len(hidden) == 5
    assert set(a_ids) == {a_ids[0]} and set(b_ids) == {b_ids[0]} and a_ids[0] != b_ids[0]
    # the scene is one that the last-seen positions alone get wrong
    last_b, back = 420 - 8 * (hidden[0] - 1), hidden[-1] + 1
    a_back, b_back = 100 + 8 * back, 420 - 8 * back
    assert abs(last_b - a_back) < abs(last_b - b_back)


def test_a_track_survives_a_short_miss_and_is_found_where_it_left():
    tracker = Tracker(TrackerSettings(max_misses=12))
    first = tracker.update(0, *faces((300, 200)))
    assert tracker.update(1, *faces((300, 200))) == first
    for k in range(2, 14):  # 12 frames unseen
        assert tracker.update(k, *faces()) == []
    assert tracker.update(14, *faces((301, 199))) == first


def test_a_moving_track_is_found_again_where_its_motion_took_it():
    tracker = Tracker()
    ids = [tracker.update(k, *faces((100 + 10 * k, 200))) for k in range(5)]
    for k in range(5, 15):  # 10 frames unseen
        tracker.update(k, *faces())
    back = faces((100 + 10 * 15, 200))  # 110 px on: more than three eye distances from where it was last seen
    assert tracker.update(15, *back) == ids[0]


def test_a_track_unseen_too_long_is_closed_and_a_new_face_gets_a_new_id():
    tracker = Tracker(TrackerSettings(max_misses=12))
    (first,) = tracker.update(0, *faces((300, 200)))
    for k in range(1, 14):  # 13 frames unseen
        tracker.update(k, *faces())
    (again,) = tracker.update(14, *faces((300, 200)))
    assert again != first
    both = tracker.update(15, *faces((300, 200), (500, 300)))
    assert both[0] == again and both[1] not in (first, again)


def test_faces_far_from_every_track_start_their_own():
    tracker = Tracker()
    one = tracker.update(0, *faces((100, 100), (400, 300)))
    two = tracker.update(1, *faces((250, 200)))  # halfway between: more than an eye distance from both
    assert len(set(one)) == 2 and two[0] not in one


# --- the One Euro filter ---------------------------------------------------------------------------------------
def test_the_first_frame_passes_unchanged():
    points = np.array([[10.0, 20.0], [30.0, 40.0]])
    assert np.array_equal(OneEuroFilter()(points, 0.04), points)


def steadied(settings: OneEuroSettings, sd: float = 0.2) -> float:
    """A still point's jitter after the filter over its raw jitter; the noise is sd px on a face of 40 px."""
    raw = 100 + np.random.default_rng(0).normal(0, sd, (200, 1, 2))
    one_euro = OneEuroFilter(settings)
    out = np.array([one_euro(p, 0.04, scale=40.0) for p in raw])
    return float(np.linalg.norm(np.diff(out[50:], axis=0), axis=-1).mean()
                 / np.linalg.norm(np.diff(raw[50:], axis=0), axis=-1).mean())


def test_a_still_noisy_point_is_steadied():
    """0.5 % of the face's eye distance, as a small face's answers: the default (beta 400, which follows motion
    without lag) steadies it some, a lower beta more, and less noise is taken for less motion."""
    default = steadied(OneEuroSettings())
    assert default < 0.8 and steadied(OneEuroSettings(), sd=0.05) < 0.7 * default
    assert steadied(OneEuroSettings(beta=20.0)) < 0.3


def trail(settings: OneEuroSettings, speed: float = 4.0, frames: int = 60) -> float:
    """How far the filtered point trails a point moving `speed` px a frame, once settled (px)."""
    one_euro = OneEuroFilter(settings)
    for k in range(frames):
        out = one_euro(np.array([[speed * k, 0.0]]), 0.04, scale=40.0)
    return speed * (frames - 1) - float(out[0, 0])


def test_speed_opens_the_filter():
    still_cutoff = trail(OneEuroSettings(beta=0.0))
    with_beta = trail(OneEuroSettings(beta=5.0))
    assert 0 < with_beta < 0.5 * still_cutoff


def test_an_unsure_point_is_smoothed_more():
    one_euro = OneEuroFilter()
    one_euro(np.zeros((2, 2)), 0.04, np.array([0.9, 0.2]), scale=40.0)
    out = one_euro(np.full((2, 2), 4.0), 0.04, np.array([0.9, 0.2]), scale=40.0)
    assert 0 < out[1, 0] < out[0, 0] < 4.0


def test_the_filter_is_the_same_for_a_face_of_any_size():
    rng = np.random.default_rng(1)
    path = np.cumsum(rng.normal(0, 1, (30, 3, 2)), axis=0)
    small, large = OneEuroFilter(), OneEuroFilter()
    for points in path:
        a, b = small(points, 0.04, scale=20.0), large(points * 3, 0.04, scale=60.0)
    assert np.allclose(a * 3, b)


# --- the JSON line ----------------------------------------------------------------------------------------------
POINTS = [{"name": name, "x": 20.0 + i, "y": 30.0, "confidence": 0.9} for i, name in enumerate(KEYPOINT_NAMES)]
ANSWERED = {"box": {"x": 10.0, "y": 20.0, "width": 50.0, "height": 60.0}, "score": 0.99, "roll": -3.5,
            "keypoints": POINTS, "quality": 0.9, "something_new": {"kept": True}}


def test_a_frame_line_is_each_answered_face_as_it_came_with_its_id_first():
    record = frame_record(3, 0.12, [ANSWERED], [7])
    assert list(record) == ["frame", "time", "faces"] and record["frame"] == 3 and record["time"] == 0.12
    (face,) = record["faces"]
    assert list(face)[0] == "id" and face["id"] == 7
    assert {k: v for k, v in face.items() if k != "id"} == ANSWERED
    failed = frame_record(4, 0.16, [], [], error="HTTP 500: boom")
    assert failed == {"frame": 4, "time": 0.16, "faces": [], "error": "HTTP 500: boom"}


def test_smoothing_moves_only_the_points():
    smoother = TrackSmoother(OneEuroSettings(beta=20.0))  # strong enough to hold a 5 px step back
    first = smoother.smooth(0.0, [ANSWERED], [1], {1})
    assert first == [ANSWERED]
    moved = {**ANSWERED, "keypoints": [{**p, "x": p["x"] + 5.0} for p in ANSWERED["keypoints"]]}
    (second,) = smoother.smooth(0.04, [moved], [1], {1})
    assert {k: v for k, v in second.items() if k != "keypoints"} == {k: v for k, v in moved.items() if k != "keypoints"}
    for got, answered, before in zip(second["keypoints"], moved["keypoints"], ANSWERED["keypoints"], strict=True):
        assert got["name"] == answered["name"] and got["confidence"] == answered["confidence"]
        assert before["x"] < got["x"] < answered["x"] and got["y"] == answered["y"] and got["x"] == round(got["x"], 2)
    assert smoother.smooth(0.08, [], [], set()) == [] and not smoother.filters


# --- the study's scores -------------------------------------------------------------------------------------------
def synthetic_clip() -> clips.Clip:
    """Two faces crossing with no image behind them: only their keypoints and paths count for scoring."""
    blank = Image.new("RGBA", (60, 60))

    def person(name: str, path: list[tuple[int, int]]) -> clips.Person:
        return clips.Person(Frame(Path(f"{name}.jpg"), name, FACE + 30), blank, (1.0, 1.0), path)

    people = [person("a", [(100 + 5 * k, 100) for k in range(10)]),
              person("b", [(300 - 5 * k, 150) for k in range(10)])]
    return clips.Clip("synthetic", people, noise=0.0, background=np.zeros((480, 640, 3), np.uint8))


def answers(clip: clips.Clip, ids: list[int], shift: float = 0.0) -> list[dict]:
    faces = [[{"id": n, "keypoints": [{"x": x + shift, "y": y} for x, y in truth]}
              for n, truth in zip(ids, clip.truth(k), strict=True)] for k in range(len(clip))]
    return [{"frame": k, "faces": f} for k, f in enumerate(faces)]


def test_the_study_scores_perfect_answers_as_perfect():
    clip = synthetic_clip()
    row = score_clip(clip, answers(clip, [1, 2])).row(clip.fps)
    assert row == {"recall": 1.0, "nme_pct": 0.0, "jitter_pct": 0.0, "lag_ms": 0.0, "id_switches": 0}


def test_the_study_counts_lag_and_id_switches():
    clip = synthetic_clip()
    behind = answers(clip, [1, 2], shift=-2.5)  # A moves right 5 px a frame: 2.5 px behind is half a frame
    swapped = behind[:5] + answers(clip, [2, 1], shift=-2.5)[5:]
    row = score_clip(clip, swapped).row(clip.fps)
    assert row["id_switches"] == 2 and row["jitter_pct"] == pytest.approx(0.0)
    assert row["lag_ms"] == pytest.approx(0.0, abs=1e-9)  # half a frame behind the one, half ahead of the other
    alone = [{"frame": r["frame"], "faces": r["faces"][:1]} for r in behind]
    row = score_clip(clip, alone).row(clip.fps)
    assert row["recall"] == 0.5 and row["lag_ms"] == pytest.approx(1000 / clip.fps / 2)


def test_an_unsure_face_keeps_its_track_alive_but_does_not_move_it():
    """A half-hidden face, read poorly, near a moving track: the track stays on its course (a phantom answer where
    two people meet does not drag a track off its path)."""
    tracker = Tracker()
    for frame, x in enumerate((100, 110, 120)):
        tracker.update(frame, *faces((x, 100)))
    (track,) = tracker.tracks
    tracker.update(3, *faces((95, 100)), sure=[False])  # read poorly, somewhere behind
    assert track.last_frame == 3 and np.allclose(track.points.mean(0), [130, 100])
    assert np.allclose(track.velocity, [10, 0])
    assert tracker.update(4, *faces((140, 100))) == [track.id]


def answered(x: float, y: float, quality: float = 0.9) -> dict:
    box, points = face_at(x, y)
    return {"box": dict(zip(("x", "y", "width", "height"), box.tolist(), strict=True)), "score": 0.99,
            "keypoints": [{"name": n, "x": float(px), "y": float(py), "confidence": 0.9}
                          for n, (px, py) in zip(KEYPOINT_NAMES, points, strict=True)], "quality": quality}


def test_hints_carry_each_face_moved_on_at_its_velocity_and_look_anew_when_unsure():
    import json

    from facekp.video import faces_hint

    tracker = Tracker()
    ids = [tracker.update(k, *faces((100 + 10 * k, 100))) for k in range(3)][-1]
    latest = (2, [answered(120, 100)], ids)
    (hint,) = json.loads(faces_hint(5, latest, tracker))
    assert np.allclose(np.mean(hint["keypoints"], axis=0), [150, 100]) and len(hint["keypoints"]) == 15
    assert hint["box"][0] == pytest.approx(answered(120, 100)["box"]["x"] + 30, abs=0.05)
    assert faces_hint(10, latest, tracker) is None, "every tenth frame is looked at anew"
    assert faces_hint(5, (2, [answered(120, 100, quality=0.3)], ids), tracker) is None, "a face read poorly"
    assert faces_hint(5, (2, [], []), tracker) is None, "no face to hint"
    assert faces_hint(5, None, tracker) is None
    two = Tracker()
    both = [two.update(k, *faces((100 + k, 100), (130 + k, 100))) for k in range(2)][-1]
    assert faces_hint(3, (1, [answered(101, 100), answered(131, 100)], both), two) is None, "their boxes overlap"
    two.update(2, *faces((102, 100)))  # the second is not seen: a track is missing
    assert faces_hint(3, (2, [answered(102, 100)], [both[0]]), two) is None
