"""Video files in and out, through PyAV (its wheel carries FFmpeg, so any format FFmpeg reads is read).

Frames are read upright (a phone's rotation flag applied) as RGB arrays with their time in seconds; a file cut
short or damaged yields the frames that decode, and says how many the file announced. Annotated frames are
written as H.264 (MPEG-4 part 2 where this FFmpeg lacks an H.264 encoder) at the input's rate.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

ENCODERS = ("libx264", "mpeg4")
"""The encoders tried for written video, in order."""
DEFAULT_RATE = Fraction(25)
"""Frames per second where a file does not say."""


class NotAVideo(ValueError):
    """The file cannot be read as a video; the message says which file and why."""


@dataclass
class VideoFrame:
    index: int
    time: float  # seconds since the first frame
    image: np.ndarray  # (H, W, 3) uint8 RGB, upright


class VideoReader:
    """The frames of a video file, in order. The first frame is decoded on opening, so a file that is no video
    fails here (NotAVideo), before anything is sent."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.container = av.open(str(self.path))
        except FileNotFoundError:
            raise NotAVideo(f"{self.path}: no such file") from None
        except (av.FFmpegError, OSError, ValueError) as err:
            raise NotAVideo(f"{self.path} is not a video FFmpeg can read ({err})") from None
        if not self.container.streams.video:
            self.close()
            raise NotAVideo(f"{self.path} has no video stream (streams: "
                            f"{', '.join(s.type for s in self.container.streams) or 'none'})")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.rate = Fraction(self.stream.average_rate or self.stream.guessed_rate or DEFAULT_RATE)
        self.announced = self.stream.frames or None  # the header's frame count, where the container keeps one
        self.decoded = 0
        self.error: str | None = None  # why decoding stopped before the end, if it did
        self.start: float | None = None
        self.frames = self.decode()
        try:
            self.first = next(self.frames)
        except StopIteration:
            self.close()
            raise NotAVideo(f"{self.path}: no frame of its video decodes ({self.error or 'empty stream'})") from None

    def decode(self) -> Iterator[VideoFrame]:
        try:
            for frame in self.container.decode(self.stream):
                image = frame.to_ndarray(format="rgb24")
                turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise, as the display matrix says
                if self.start is None:
                    self.start = frame.time or 0.0
                time = (frame.time - self.start) if frame.time is not None else self.decoded / float(self.rate)
                yield VideoFrame(self.decoded, time, np.ascontiguousarray(np.rot90(image, turns)))
                self.decoded += 1
        except av.FFmpegError as err:  # cut off or damaged: what decoded so far stands
            self.error = str(err)

    def __iter__(self) -> Iterator[VideoFrame]:
        yield self.first
        yield from self.frames

    @property
    def size(self) -> tuple[int, int]:
        """Width and height of the upright frames."""
        height, width = self.first.image.shape[:2]
        return width, height

    @property
    def lost(self) -> int:
        """Frames the header announced that did not decode (after iterating); 0 where it announced none."""
        return max(0, (self.announced or 0) - self.decoded)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def encoder() -> str:
    """The first of ENCODERS this FFmpeg can encode with."""
    for name in ENCODERS:
        try:
            av.Codec(name, "w")
            return name
        except av.FFmpegError:
            continue
    raise RuntimeError(f"this FFmpeg has none of the encoders {', '.join(ENCODERS)}")


class VideoWriter:
    """Frames of one size into a video file at a constant rate (odd sides padded by one black pixel: the 4:2:0
    colour the players expect needs even ones)."""

    def __init__(self, path: str | Path, rate: Fraction, width: int, height: int, crf: int = 20):
        self.path = Path(path)
        index_first = {"movflags": "+faststart"} if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.path), "w", options=index_first)
            codec = encoder()
            self.stream = self.container.add_stream(codec, rate=rate)
        except (av.FFmpegError, OSError, ValueError) as err:
            raise NotAVideo(f"cannot write the video {self.path} ({err})") from None
        self.width, self.height = width, height
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self.stream.options = {"crf": str(crf), "preset": "veryfast"}
        else:
            self.stream.bit_rate = 8_000_000

    def write(self, image: Image.Image | np.ndarray) -> None:
        pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
        if pixels.shape[:2] != (self.stream.height, self.stream.width):
            padded = np.zeros((self.stream.height, self.stream.width, 3), np.uint8)
            padded[:pixels.shape[0], :pixels.shape[1]] = pixels[:self.stream.height, :self.stream.width]
            pixels = padded
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
