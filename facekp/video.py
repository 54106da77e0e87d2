"""Faces followed through a video: every frame answered by /predictions/faces, every face given an id that stays.

    python -m facekp.video clip.mp4 --out clip.jsonl
    python -m facekp.video clip.mp4 --out clip.jsonl --draw clip_drawn.mp4 --points 68 --url http://127.0.0.1:8080

Frames are decoded with PyAV (any format FFmpeg reads), sent as JPEG with a few requests in flight, and written
in frame order, one JSON line each: {"frame": i, "time": s, "faces": [{"id": n, "box": ..., "keypoints": ...,
...}]}, each face as the service answered it plus its track id (facekp.tracking), its points filtered over
time (facekp.one_euro: steadier at rest, as answered in motion; --no-smooth: as answered). --draw writes the
annotated video. For frames already in memory (a webcam loop), track_frames() is the same as a library call.

Exit status: 0 every frame answered; 1 the video was cut off or damaged, or some frames got no answer (the
output holds every frame that was read; stderr says how many were lost and why); 2 nothing could be done (not a
video, no service at the address).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFont
from tqdm import tqdm

from facekp.contract import NUM_KEYPOINTS, keypoints_from_68
from facekp.draw import GREY_BELOW, draw_faces
from facekp.faces_client import DEFAULT_URL, FacesClient, ImageFailed, ServiceDown
from facekp.one_euro import OneEuroFilter, OneEuroSettings
from facekp.photos import eye_distance, jpeg_bytes
from facekp.tracking import Tracker, TrackerSettings, iou
from facekp.video_files import NotAVideo, VideoReader, VideoWriter

CONCURRENCY = 4
"""Requests in flight at once: enough to keep the service's batches full, few enough to keep frames in order
without holding many in memory."""
DETECT_EVERY = 10
"""With hints, the service looks for faces anew on every tenth frame (a new person is found within 0.4 s at 25
fps); on the others it reads the faces where the tracks say they are now (the Faces-Hint header), which skips
the detector and the framing pass: about a third of a frame's work where one face moves steadily."""
SURE_ENOUGH = 0.5
"""A face read at least this well moves its track (facekp.tracking); a frame whose faces all read so well is
followed by hints, else the next frame is looked at anew."""
HINT_BYTES = 6000
"""Hints longer than this are not sent (TorchServe takes at most 8 KB of headers): the service looks instead."""
JPEG_QUALITY = 90
DEFAULT_FPS = 25.0
"""The frame rate assumed for frames given without their times."""

Picture = np.ndarray | Image.Image
"""An RGB frame: (H, W, 3) uint8, or a PIL image."""


@dataclass
class Tracked:
    image: Image.Image  # the frame as sent
    record: dict  # its JSON line


def face_arrays(faces: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) and keypoints (N, P, 2) of answered faces."""
    boxes = np.array([[f["box"][k] for k in ("x", "y", "width", "height")] for f in faces], float).reshape(-1, 4)
    points = np.array([[[p["x"], p["y"]] for p in f["keypoints"]] for f in faces], float)
    return boxes, points


def frame_record(index: int, time: float, faces: list[dict], ids: list[int], error: str | None = None) -> dict:
    """A frame's JSON line: each face as answered (every field passed through) with its track id first."""
    tracked = [{"id": n, **face} for n, face in zip(ids, faces, strict=True)]
    record = {"frame": index, "time": round(time, 4), "faces": tracked}
    if error is not None:
        record["error"] = error
    return record


class TrackSmoother:
    """One One Euro filter per track, over all its points; a track's filter ends with the track."""

    def __init__(self, settings: OneEuroSettings | None = None):
        self.settings = settings or OneEuroSettings()
        self.filters: dict[int, tuple[OneEuroFilter, float]] = {}  # id -> filter, time it last filtered

    def smooth(self, time: float, faces: list[dict], ids: list[int], live: set[int]) -> list[dict]:
        """The faces with their points' x and y filtered (every other field as it was)."""
        self.filters = {n: kept for n, kept in self.filters.items() if n in live}
        smoothed = []
        for n, face in zip(ids, faces, strict=True):
            one_euro, last = self.filters.get(n, (OneEuroFilter(self.settings), time))
            raw = np.array([[p["x"], p["y"]] for p in face["keypoints"]], float)
            confidence = np.array([p.get("confidence", 1.0) for p in face["keypoints"]], float)
            filtered = one_euro(raw, time - last, confidence, eye_distance(raw))
            self.filters[n] = (one_euro, time)
            points = [{**p, "x": round(float(x), 2), "y": round(float(y), 2)}
                      for p, (x, y) in zip(face["keypoints"], filtered, strict=True)]
            smoothed.append({**face, "keypoints": points})
        return smoothed


def faces_hint(frame: int, latest: tuple[int, list[dict], list[int]] | None, tracker: Tracker,
               detect_every: int = DETECT_EVERY) -> str | None:
    """The Faces-Hint for `frame`: the faces of the latest answered frame, each moved on at its track's velocity,
    as JSON; None where the service should look for faces anew: every detect_every frames, after a frame without
    faces, with one read poorly or with two that overlap (people passing each other), and while a track is
    missing (a face hidden or lost)."""
    if latest is None or frame % detect_every == 0:
        return None
    seen, faces, ids = latest
    tracks = {t.id: t for t in tracker.tracks}
    boxes, _ = face_arrays(faces)
    overlap = iou(boxes, boxes) - np.eye(len(boxes))
    if not faces or any(t.last_frame != seen for t in tracker.tracks) or (overlap > 0).any() \
            or any(face.get("quality", 1.0) < SURE_ENOUGH for face in faces):
        return None
    hinted = []
    for face, n in zip(faces, ids, strict=True):
        move = tracks[n].velocity * (frame - seen)
        points = np.array([[p["x"], p["y"]] for p in face["keypoints"]], float)
        if len(points) != NUM_KEYPOINTS:
            points = keypoints_from_68(points)
        box = [face["box"][k] for k in ("x", "y", "width", "height")]
        hinted.append({"box": [round(box[0] + move[0], 1), round(box[1] + move[1], 1), *box[2:]],
                       "keypoints": np.round(points + move, 2).tolist(), "score": face["score"]})
    text = json.dumps(hinted, separators=(",", ":"))
    return text if len(text) <= HINT_BYTES else None


def as_image(picture: Picture) -> Image.Image:
    if isinstance(picture, Image.Image):
        return picture.convert("RGB")
    return Image.fromarray(np.asarray(picture, np.uint8)).convert("RGB")


def track_images(frames: Iterable[Picture | tuple[float, Picture]], url: str = DEFAULT_URL, points: int = 15,
                 smooth: bool = True, fps: float = DEFAULT_FPS, concurrency: int = CONCURRENCY,
                 tracking: TrackerSettings | None = None, smoothing: OneEuroSettings | None = None,
                 client: FacesClient | None = None, hints: bool = True) -> Iterator[Tracked]:
    """Each frame, in order, with its JSON line; what track_frames yields, with the images for drawing. With
    hints, most frames are read where the tracks say the faces are (faces_hint)."""
    client = client or FacesClient(url, points)
    tracker = Tracker(tracking)
    smoother = TrackSmoother(smoothing) if smooth else None
    items = iter(enumerate(frames))
    pending: deque[tuple[int, float, Image.Image, Future]] = deque()
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="faces")
    latest: tuple[int, list[dict], list[int]] | None = None  # the last frame answered: its faces and their ids

    def ask(image: Image.Image, hint: str | None) -> dict:  # in a pool thread: the JPEG is made there too
        return client.ask(jpeg_bytes(image, JPEG_QUALITY), "image/jpeg", hint)

    def send_next() -> None:
        for index, item in items:
            time, picture = item if isinstance(item, tuple) else (None, item)
            time = index / fps if time is None else time
            image = as_image(picture)
            hint = faces_hint(index, latest, tracker) if hints else None
            pending.append((index, time, image, pool.submit(ask, image, hint)))
            if len(pending) >= concurrency:
                return

    try:
        send_next()
        while pending:
            index, time, image, answer = pending.popleft()
            error = None
            try:
                faces = answer.result()["faces"]
            except ImageFailed as err:
                faces, error = [], str(err)
            ids = tracker.update(index, *face_arrays(faces), [f.get("quality", 1.0) >= SURE_ENOUGH for f in faces])
            latest = (index, faces, ids)
            send_next()  # this frame's faces hint the next one sent
            if smoother is not None:
                faces = smoother.smooth(time, faces, ids, {t.id for t in tracker.tracks})
            yield Tracked(image, frame_record(index, time, faces, ids, error))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def track_frames(frames: Iterable[Picture | tuple[float, Picture]], url: str = DEFAULT_URL, points: int = 15,
                 smooth: bool = True, fps: float = DEFAULT_FPS, concurrency: int = CONCURRENCY,
                 tracking: TrackerSettings | None = None, smoothing: OneEuroSettings | None = None,
                 hints: bool = True) -> Iterator[dict]:
    """The JSON line of every frame, in order, as the frames come (a webcam loop can feed a generator).

    frames: RGB arrays (H, W, 3) or PIL images, or (seconds, frame) pairs where the source knows its times
    (else frame i is at i / fps). Raises facekp.faces_client.ServiceDown where no service answers at url; a
    frame the service fails gets "faces": [] and an "error"."""
    for tracked in track_images(frames, url, points, smooth, fps, concurrency, tracking, smoothing, hints=hints):
        yield tracked.record


def positive(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {number}")
    return number


def id_label(face: dict) -> str:
    return str(face["id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path, help="any video FFmpeg reads")
    parser.add_argument("--out", type=Path, required=True, help="the JSON lines to write, one per frame")
    parser.add_argument("--draw", type=Path, help="also write the annotated video here (.mp4)")
    parser.add_argument("--url", default=DEFAULT_URL, help="the service (make serve)")
    parser.add_argument("--points", type=int, choices=(15, 68), default=15, help="the 15 named keypoints or the 68")
    parser.add_argument("--smooth", action=argparse.BooleanOptionalAction, default=True,
                        help="filter each face's points over time (One Euro: steadier at rest; --no-smooth: the "
                             "points as answered)")
    parser.add_argument("--concurrency", type=positive, default=CONCURRENCY, help="requests in flight")
    parser.add_argument("--hints", action=argparse.BooleanOptionalAction, default=True,
                        help=f"read most frames' faces where the tracks say they are, looking anew every "
                             f"{DETECT_EVERY}th frame (--no-hints: look on every frame)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="the progress bar on stderr (default: when stderr is a terminal)")
    args = parser.parse_args(argv)

    try:
        reader = VideoReader(args.video)
    except NotAVideo as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    client = FacesClient(args.url, args.points)
    written = failed = 0
    with reader:
        try:
            client.check()
            writer = VideoWriter(args.draw, reader.rate, *reader.size) if args.draw else None
        except (ServiceDown, NotAVideo) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        font = ImageFont.load_default(size=max(12, reader.size[1] // 25))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frames = ((frame.time, frame.image) for frame in reader)
        tracked = track_images(frames, points=args.points, smooth=args.smooth, concurrency=args.concurrency,
                               client=client, hints=args.hints)
        bar = tqdm(tracked, total=reader.announced, unit="frame", file=sys.stderr,
                   disable=None if args.progress is None else not args.progress)
        try:
            with open(args.out, "w") as lines:
                for item in bar:
                    lines.write(json.dumps(item.record, separators=(",", ":")) + "\n")
                    written += 1
                    failed += "error" in item.record
                    if writer is not None:
                        writer.write(draw_faces(item.image, item.record["faces"], GREY_BELOW, id_label, font))
        except ServiceDown as err:
            print(f"error: {err}; {written} frames written to {args.out}", file=sys.stderr)
            return 2
        finally:
            bar.close()
            if writer is not None:
                writer.close()
    print(f"wrote {args.out}: {written} frames" + (f", and {args.draw}" if args.draw else ""), file=sys.stderr)
    return report_losses(reader, args.video, failed)


def report_losses(reader: VideoReader, video: Path, failed: int) -> int:
    """1, with a warning on stderr, where frames were lost (cut off or damaged, or not answered); else 0."""
    status = 0
    if reader.error or reader.lost:
        announced = f"{reader.lost} of the {reader.announced} frames its header announces did not decode" \
            if reader.announced else "its header announces no frame count, so what is missing is unknown"
        print(f"warning: {video} is cut off or damaged: decoding stopped after frame {reader.decoded - 1}; "
              f"{announced}" + (f" ({reader.error})" if reader.error else ""), file=sys.stderr)
        status = 1
    if failed:
        print(f"warning: {failed} frames got no answer from the service (their lines have an \"error\")",
              file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
