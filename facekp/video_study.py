"""How should the video client read a clip: every frame looked at anew, or with hints, and smoothed or not?

    make serve
    python -m facekp.video_study                                   # the four clips, each read three ways
    python -m facekp.video_study --seconds 10 --split fold-0       # 10 s clips of the people fold 0 holds out
    python -m facekp.video_study --points 68 --beta 100 --min-cutoff 0.5

Each clip of facekp.clips is made, written as H.264 into a temporary folder and decoded again (as a user's
file would be), then sent through facekp.video.track_frames three ways: every frame looked at anew (no hints),
with hints (facekp.video.faces_hint), and with hints and smoothing (the default). Every frame is scored against
the clip's known keypoints:

- recall: the share of visible faces answered (an answered face counts where its keypoints' centre lies in the
  face's keypoint box grown by 25 %, as facekp.photos scores scenes);
- NME: mean point error over the outer-eye distance, of the faces answered;
- jitter: the points' frame-to-frame motion beyond the true motion, over the outer-eye distance (on a still face,
  all their motion);
- lag: how far the points trail the true position along the motion, in milliseconds (moving clips only);
- id switches: the times a person's answered id changed from one frame where it was found to the next;
- frames/s: the clip's frames over the time to read them all (a benchmark only on a machine doing nothing else).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facekp import clips
from facekp import data as facedata
from facekp.faces_client import DEFAULT_URL, ServiceDown
from facekp.one_euro import OneEuroSettings
from facekp.photos import eye_distance, load_frames
from facekp.video import track_frames
from facekp.video_files import VideoReader


def match(truths: list[np.ndarray | None], answered: list[np.ndarray]) -> list[int | None]:
    """For each truth (None: not visible), the index of the answered face that is it, or None: the answered face
    whose keypoints' centre lies in the truth's keypoint box grown by 25 % and which is nearest, each used once."""
    used: set[int] = set()
    found: list[int | None] = []
    for truth in truths:
        best, best_error = None, np.inf
        if truth is not None:
            low, high = truth.min(0), truth.max(0)
            grow = 0.25 * (high - low)
            for k, points in enumerate(answered):
                centre = points.mean(0)
                if k not in used and np.all(centre >= low - grow) and np.all(centre <= high + grow):
                    error = float(np.linalg.norm(points - truth, axis=1).mean())
                    if error < best_error:
                        best, best_error = k, error
        if best is not None:
            used.add(best)
        found.append(best)
    return found


@dataclass
class ClipScore:
    visible: int = 0
    nme: list[float] = field(default_factory=list)  # per face found
    jitter: list[float] = field(default_factory=list)  # per face found in two frames running, per point
    lag_frames: list[float] = field(default_factory=list)  # per moving face found, per point
    id_switches: int = 0
    ids: dict[int, set[int]] = field(default_factory=dict)  # person -> the ids answered for them

    def row(self, fps: float) -> dict[str, float]:
        return {"recall": len(self.nme) / max(1, self.visible), "nme_pct": 100 * mean(self.nme),
                "jitter_pct": 100 * mean(self.jitter), "lag_ms": 1000 * mean(self.lag_frames) / fps,
                "id_switches": self.id_switches}


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def score_clip(clip: clips.Clip, records: Iterable[dict], points: int = 15) -> ClipScore:
    """Every frame's answered faces against the clip's truth."""
    score = ClipScore()
    people = len(clip.people)
    last: list[tuple[int, np.ndarray, np.ndarray, int] | None] = [None] * people  # frame, answer, truth, id
    for record in records:
        k = record["frame"]
        truths = clip.truth(k, points)
        faces = record["faces"]
        answered = [np.array([[p["x"], p["y"]] for p in f["keypoints"]]) for f in faces]
        for person, (truth, found) in enumerate(zip(truths, match(truths, answered), strict=True)):
            if truth is None:
                continue
            score.visible += 1
            if found is None:
                continue
            answer, eye, track = answered[found], eye_distance(truth), faces[found]["id"]
            score.nme.append(float(np.linalg.norm(answer - truth, axis=1).mean() / eye))
            before = last[person]
            if before is not None and before[0] == k - 1:
                moved, truly = answer - before[1], truth - before[2]
                score.jitter.extend(np.linalg.norm(moved - truly, axis=1) / eye)
                speed = float(np.linalg.norm(truly.mean(0)))
                if speed > 0:
                    along = (truth - answer) @ (truly.mean(0) / speed)
                    score.lag_frames.extend(along / speed)
            score.ids.setdefault(person, set()).add(track)
            if before is not None and before[3] != track:
                score.id_switches += 1
            last[person] = (k, answer, truth, track)
    return score


MODES = {"every frame": {"hints": False, "smooth": False}, "hints": {"hints": True, "smooth": False},
         "hints, smoothed": {"hints": True, "smooth": True}}
"""The ways a clip is read: the service looking on every frame, with hints, and smoothed too (the default)."""


def run(url: str, points: int, smoothing: OneEuroSettings, data: str | None, split: str,
        seconds: float = 2.0) -> list[dict]:
    """One row per clip and way of reading it (MODES)."""
    frames = load_frames(data, split)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, make in clips.MAKERS.items():
            clip = make(frames, seconds=seconds)
            path = clip.write(Path(folder) / f"{name}.mp4")
            for mode, how in MODES.items():
                started = time.perf_counter()
                with VideoReader(path) as reader:
                    decoded = ((frame.time, frame.image) for frame in reader)
                    records = track_frames(decoded, url, points, smoothing=smoothing, **how)
                    score = score_clip(clip, records, points)
                fps = len(clip) / (time.perf_counter() - started)
                rows.append({"clip": name, "mode": mode, **score.row(clip.fps), "frames_per_s": fps})
                print(f"  {name}, {mode}: done", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| clip | read | recall | NME % | jitter % | lag ms | id switches | frames/s |", "|---" * 8 + "|"]
    for r in rows:
        lag = "-" if np.isnan(r["lag_ms"]) else f"{r['lag_ms']:.1f}"
        lines.append(f"| {r['clip']} | {r['mode']} | {r['recall']:.3f} | {r['nme_pct']:.2f} | "
                     f"{r['jitter_pct']:.2f} | {lag} | {r['id_switches']} | {r['frames_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help="the service (make serve)")
    parser.add_argument("--points", type=int, choices=(15, 68), default=15)
    parser.add_argument("--data", default=None, help="the frames folder (frames.csv, images/)")
    parser.add_argument("--split", choices=facedata.SPLITS, default="all", help="whose frames make the clips")
    parser.add_argument("--seconds", type=float, default=2.0, help="each clip's length")
    defaults = OneEuroSettings()
    parser.add_argument("--min-cutoff", type=float, default=defaults.min_cutoff, help="One Euro: Hz at rest")
    parser.add_argument("--beta", type=float, default=defaults.beta, help="One Euro: Hz per eye distance a second")
    parser.add_argument("--d-cutoff", type=float, default=defaults.d_cutoff, help="One Euro: Hz of the speed")
    args = parser.parse_args(argv)
    smoothing = OneEuroSettings(args.min_cutoff, args.beta, args.d_cutoff)
    try:
        rows = run(args.url, args.points, smoothing, args.data, args.split, args.seconds)
    except (facedata.DataError, ServiceDown) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.points} points; smoothing: One Euro, min_cutoff {args.min_cutoff} Hz, beta {args.beta}, "
          f"d_cutoff {args.d_cutoff} Hz")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
