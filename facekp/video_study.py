"""Should the video client smooth by default? Jitter against lag, measured on the test clips, both ways.

    make serve
    python -m facekp.video_study                                   # the four clips, smoothing off and on
    python -m facekp.video_study --points 68 --beta 10 --min-cutoff 0.5

Each clip of facekp.clips is made, written as H.264 into a temporary folder and decoded again (as a user's
file would be), then sent through facekp.video.track_frames once without smoothing and once with. Every frame
is scored against the clip's known keypoints:

- recall: the share of visible faces answered (an answered face counts where its keypoints' centre lies in the
  face's keypoint box grown by 25 %, as facekp.photos scores scenes);
- NME: mean point error over the outer-eye distance, of the faces answered;
- jitter: the points' frame-to-frame motion beyond the true motion, over the outer-eye distance (on a still face,
  all their motion);
- lag: how far the points trail the true position along the motion, in milliseconds (moving clips only);
- id switches: the times a person's answered id changed from one frame where it was found to the next.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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


def run(url: str, points: int, smoothing: OneEuroSettings, data: str | None, split: str) -> list[dict]:
    """One row per clip and smoothing (off, on)."""
    frames = load_frames(data, split)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, make in clips.MAKERS.items():
            clip = make(frames)
            path = clip.write(Path(folder) / f"{name}.mp4")
            for smooth in (False, True):
                with VideoReader(path) as reader:
                    decoded = ((frame.time, frame.image) for frame in reader)
                    records = track_frames(decoded, url, points, smooth=smooth, smoothing=smoothing)
                    score = score_clip(clip, records, points)
                rows.append({"clip": name, "smooth": smooth, **score.row(clip.fps)})
                print(f"  {name}, smoothing {'on' if smooth else 'off'}: done", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| clip | smoothing | recall | NME % | jitter % | lag ms | id switches |", "|---" * 7 + "|"]
    for r in rows:
        lag = "-" if np.isnan(r["lag_ms"]) else f"{r['lag_ms']:.1f}"
        lines.append(f"| {r['clip']} | {'on' if r['smooth'] else 'off'} | {r['recall']:.3f} | {r['nme_pct']:.2f} | "
                     f"{r['jitter_pct']:.2f} | {lag} | {r['id_switches']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help="the service (make serve)")
    parser.add_argument("--points", type=int, choices=(15, 68), default=15)
    parser.add_argument("--data", default=None, help="the frames folder (frames.csv, images/)")
    parser.add_argument("--split", choices=facedata.SPLITS, default="all", help="whose frames make the clips")
    defaults = OneEuroSettings()
    parser.add_argument("--min-cutoff", type=float, default=defaults.min_cutoff, help="One Euro: Hz at rest")
    parser.add_argument("--beta", type=float, default=defaults.beta, help="One Euro: Hz per eye distance a second")
    parser.add_argument("--d-cutoff", type=float, default=defaults.d_cutoff, help="One Euro: Hz of the speed")
    args = parser.parse_args(argv)
    smoothing = OneEuroSettings(args.min_cutoff, args.beta, args.d_cutoff)
    try:
        rows = run(args.url, args.points, smoothing, args.data, args.split)
    except (facedata.DataError, ServiceDown) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.points} points; smoothing: One Euro, min_cutoff {args.min_cutoff} Hz, beta {args.beta}, "
          f"d_cutoff {args.d_cutoff} Hz")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
