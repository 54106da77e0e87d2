"""Short video clips with every face's keypoints known in every frame, made from the shared whole frames.

    python -m facekp.clips /tmp/clips       # still.mp4, glide.mp4, crossing.mp4, small.mp4: keep them out of git

The tests and the video study (facekp.video_study) make them at run time, into a temporary folder: they are
data set images and are never committed. Each clip is 640x480 at 25 fps: faces cut from frames of
../shared/data/frames (an oval around the labelled face, feathered, so no other person of the frame comes
along) pasted at whole-pixel positions onto a still background, with fresh sensor noise in every frame. A
pasted face's keypoints are its frame's labels moved by the paste (facekp.contract.rescale_pixels).

- still: one face that does not move (jitter is all the answers' own);
- glide: one face moving sideways at constant speed (lag);
- crossing: two people passing each other, one behind the other: the one behind is hidden for a few frames
  while they overlap and comes out on its path (ids must not swap);
- small: one still face with 20 px between the outer eye corners, in heavier noise.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from facekp import data as facedata
from facekp.contract import KEYPOINT_NAMES, rescale_pixels
from facekp.photos import Frame, eye_distance, load_frames
from facekp.video_files import VideoWriter

SIZE = (640, 480)
FPS = 25
COVERED = 0.25
"""A face with more than this share of its keypoints under another pasted face is not expected to be found."""
NOSE, LEFT_EYE, RIGHT_EYE = (KEYPOINT_NAMES.index(n) for n in ("nose_tip", "left_eye_center", "right_eye_center"))


@dataclass
class Person:
    """One face pasted into a clip: its cut-out, and where its top-left corner is in each frame (None: hidden)."""

    frame: Frame
    cutout: Image.Image  # RGBA: the frame resized, alpha the feathered oval around the face
    scale: tuple[float, float]  # the resize, per axis
    path: list[tuple[int, int] | None]

    def keypoints(self, k: int, points: int = 15) -> np.ndarray | None:
        """(points, 2) in clip pixels in frame k, None where hidden."""
        where = self.path[k]
        return None if where is None else rescale_pixels(self.frame.labels(points), self.scale, where)


@dataclass
class Clip:
    name: str
    people: list[Person]  # pasted in this order: later ones in front
    noise: float  # sensor noise, standard deviation in 8-bit levels
    seed: int = 0
    fps: int = FPS
    background: np.ndarray = field(default_factory=lambda: background(SIZE))

    def __len__(self) -> int:
        return len(self.people[0].path)

    def image(self, k: int) -> np.ndarray:
        """Frame k, (480, 640, 3) uint8 RGB: the same for the same clip and k."""
        canvas = Image.fromarray(self.background)
        for person in self.people:
            if person.path[k] is not None:
                canvas.paste(person.cutout, person.path[k], person.cutout)
        noise = np.random.default_rng([self.seed, k]).normal(0, self.noise, self.background.shape)
        return (np.asarray(canvas, np.float32) + noise).clip(0, 255).astype(np.uint8)

    def truth(self, k: int, points: int = 15) -> list[np.ndarray | None]:
        """Each person's keypoints in frame k, None where hidden or more than COVERED under a face in front."""
        labels = [person.keypoints(k, points) for person in self.people]
        seen: list[np.ndarray | None] = []
        for i, points_i in enumerate(labels):
            if points_i is not None and any(covered_share(points_i, front, front.path[k]) > COVERED
                                            for front in self.people[i + 1:] if front.path[k] is not None):
                points_i = None
            seen.append(points_i)
        return seen

    def write(self, path: str | Path) -> Path:
        """The clip as an H.264 MP4 (facekp.video_files.VideoWriter)."""
        with VideoWriter(path, Fraction(self.fps), *SIZE) as writer:
            for k in range(len(self)):
                writer.write(self.image(k))
        return Path(path)


def covered_share(points: np.ndarray, front: Person, where: tuple[int, int]) -> float:
    """The share of `points` (clip pixels) under the opaque part of the face pasted in front at `where`."""
    alpha = np.asarray(front.cutout)[..., 3]
    x, y = np.round(points - where).astype(int).T
    inside = (x >= 0) & (y >= 0) & (x < alpha.shape[1]) & (y < alpha.shape[0])
    return float((alpha[y[inside], x[inside]] > 127).sum() / len(points))


def background(size: tuple[int, int], seed: int = 7) -> np.ndarray:
    """A still backdrop: a soft diagonal gradient with a fixed texture."""
    width, height = size
    ramp = np.add.outer(np.linspace(50, 120, height), np.linspace(0, 80, width))[..., None] + [20, 10, 0]
    texture = np.random.default_rng(seed).normal(0, 6, (height, width, 3))
    return (ramp + texture).clip(0, 255).astype(np.uint8)


def cut_out(frame: Frame, eye_px: float) -> tuple[Image.Image, tuple[float, float]]:
    """The frame resized so its face's outer eye corners lie eye_px apart, with an oval alpha around the face
    (wide enough for the forehead and chin), feathered; and the resize per axis."""
    photo = Image.open(frame.path).convert("RGB")
    scale = eye_px / eye_distance(frame.keypoints)
    width, height = max(1, round(photo.width * scale)), max(1, round(photo.height * scale))
    resized = photo.resize((width, height), Image.Resampling.LANCZOS)
    per_axis = (width / photo.width, height / photo.height)
    cx, cy = rescale_pixels(frame.keypoints, per_axis).mean(0) - [0, 0.1 * eye_px]
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).ellipse([cx - 1.25 * eye_px, cy - 1.6 * eye_px, cx + 1.25 * eye_px, cy + 1.6 * eye_px],
                                 fill=255)
    resized.putalpha(mask.filter(ImageFilter.GaussianBlur(0.08 * eye_px)))
    return resized, per_axis


def frontal(frame: Frame, eye_px: float) -> bool:
    """Whether the frame's face is upright and facing the camera, and at least eye_px wide (so it is shrunk,
    never blown up)."""
    left, right, nose = frame.keypoints[LEFT_EYE], frame.keypoints[RIGHT_EYE], frame.keypoints[NOSE]
    roll = np.degrees(np.arctan2(left[1] - right[1], left[0] - right[0]))
    across = (nose[0] - right[0]) / max(left[0] - right[0], 1e-6)  # 0.5: the nose halfway between the eyes
    return abs(roll) < 8 and 0.35 < across < 0.65 and eye_distance(frame.keypoints) >= eye_px


def pick(frames: list[Frame], count: int, eye_px: float, seed: int = 0) -> list[Frame]:
    """`count` frames of different people with frontal faces of at least eye_px, drawn with `seed`."""
    people: dict[str, Frame] = {}
    for frame in frames:
        if frontal(frame, eye_px):
            people.setdefault(frame.person, frame)
    if len(people) < count:
        raise ValueError(f"only {len(people)} people have a frontal face of at least {eye_px} px between the eyes")
    names = sorted(people)
    chosen = np.random.default_rng(seed).choice(len(names), count, replace=False)
    return [people[names[i]] for i in chosen]


def placed(frame: Frame, eye_px: float, centres: list[tuple[float, float] | None]) -> Person:
    """The frame's face cut out and pasted so that its keypoints' centre lies at each given centre."""
    cutout, scale = cut_out(frame, eye_px)
    middle = rescale_pixels(frame.keypoints, scale).mean(0)
    path = [None if c is None else (round(c[0] - middle[0]), round(c[1] - middle[1])) for c in centres]
    return Person(frame, cutout, scale, path)


def sweep(count: int, speed: float, reach: float = 240.0) -> list[float]:
    """Offsets from the frame's middle of something moving `speed` pixels a frame for `count` frames: one pass
    across the middle where it fits within +-reach, else back and forth between -reach and +reach."""
    half = speed * (count - 1) / 2
    if half <= reach:
        return [-half + speed * k for k in range(count)]
    travelled = [(speed * k) % (4 * reach) for k in range(count)]
    return [-reach + d if d <= 2 * reach else 3 * reach - d for d in travelled]


def still(frames: list[Frame], seconds: float = 2.0, eye_px: float = 48, noise: float = 4.0, seed: int = 0) -> Clip:
    """One face that does not move, in sensor noise."""
    count = round(seconds * FPS)
    (frame,) = pick(frames, 1, eye_px, seed)
    return Clip("still", [placed(frame, eye_px, [(320, 240)] * count)], noise, seed)


def glide(frames: list[Frame], seconds: float = 2.0, eye_px: float = 48, speed: int = 4, noise: float = 4.0,
          seed: int = 1) -> Clip:
    """One face moving sideways, `speed` pixels a frame (back and forth in a long clip)."""
    count = round(seconds * FPS)
    (frame,) = pick(frames, 1, eye_px, seed)
    return Clip("glide", [placed(frame, eye_px, [(320 + x, 240) for x in sweep(count, speed)])], noise, seed)


def crossing(frames: list[Frame], seconds: float = 2.0, eye_px: float = 48, speed: int = 8, noise: float = 4.0,
             hidden: int = 8, seed: int = 2) -> Clip:
    """Two people passing each other at `speed` pixels a frame each (again and again in a long clip), the second
    a little lower and in front; the first is hidden for `hidden` frames where they first meet, then comes out
    on its path."""
    count = round(seconds * FPS)
    behind, front = pick(frames, 2, eye_px, seed)
    offsets = sweep(count, speed)
    meet = next((k - 0.5 for k in range(1, count) if offsets[k - 1] < 0 <= offsets[k]), (count - 1) / 2)
    gone = range(round(meet - hidden / 2 + 0.5), round(meet - hidden / 2 + 0.5) + hidden)
    back = [None if k in gone else (320 - x, 230) for k, x in enumerate(offsets)]
    ahead = [(320 + x, 230 + 0.6 * eye_px) for x in offsets]
    return Clip("crossing", [placed(behind, eye_px, back), placed(front, eye_px, ahead)], noise, seed)


def small(frames: list[Frame], seconds: float = 2.0, eye_px: float = 20, noise: float = 10.0, seed: int = 3) -> Clip:
    """One still face with eye_px between the outer eye corners, in heavier noise."""
    count = round(seconds * FPS)
    (frame,) = pick(frames, 1, 48, seed)  # a face big enough to shrink well
    return Clip("small", [placed(frame, eye_px, [(320, 240)] * count)], noise, seed)


MAKERS: dict[str, Callable[..., Clip]] = {"still": still, "glide": glide, "crossing": crossing, "small": small}
"""Every kind of clip, by name."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder to write the clips into (outside the repository)")
    parser.add_argument("--data", default=None, help="the frames folder (frames.csv, images/)")
    parser.add_argument("--split", choices=facedata.SPLITS, default="all", help="whose frames make the clips")
    parser.add_argument("--seconds", type=float, default=2.0, help="each clip's length (moving faces turn back "
                                                                  "at the frame's sides)")
    args = parser.parse_args(argv)
    try:
        frames = load_frames(args.data, args.split)
    except facedata.DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name, make in MAKERS.items():
        clip = make(frames, seconds=args.seconds)
        print(f"wrote {clip.write(args.out / f'{name}.mp4')}: {len(clip)} frames, {len(clip.people)} "
              f"{'person' if len(clip.people) == 1 else 'people'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
