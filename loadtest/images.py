"""The upload mix every load test and benchmark sends: real faces from the data set.

The Locust file, the benchmark's load generator and its in-process ceiling all draw from
`build_mix`, so the served path and the ceiling decode exactly the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekp import data as facedata
from facekp.contract import IMAGE_SIZE
from facekp.evaluate import encode_face


@dataclass(frozen=True)
class Kind:
    """One kind of upload: format, side in pixels and its weight in the mix."""

    fmt: str
    size: int
    weight: int

    @property
    def label(self) -> str:
        return f"{self.fmt}{self.size}"

    @property
    def content_type(self) -> str:
        return f"image/{self.fmt}"


MIX: tuple[Kind, ...] = (
    Kind("png", IMAGE_SIZE, 2),  # the model's own size, as a client that crops faces sends it
    Kind("jpeg", 480, 1),  # a face crop from a webcam frame
    Kind("jpeg", 1024, 1),  # a photo-sized upload (DCT-domain downscaled by the handler)
)
"""Half 96x96 PNG, half larger JPEG; the order repeats, so any 4 consecutive uploads hold the whole mix."""


@dataclass(frozen=True)
class Upload:
    kind: str
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()  # more request headers (v2 binary: Inference-Header-Content-Length)


def build_mix(faces: int = 64, data_path: str | Path | None = None) -> list[Upload]:
    """`faces` uploads of distinct faces, spread evenly over the data set, kinds in MIX proportions."""
    dataset = facedata.load(data_path)
    pattern = [kind for kind in MIX for _ in range(kind.weight)]
    rows = np.linspace(0, len(dataset) - 1, faces).round().astype(int)
    uploads = []
    for i, row in enumerate(rows):
        kind = pattern[i % len(pattern)]
        uploads.append(Upload(kind.label, kind.content_type, encode_face(dataset.images[row], kind.fmt, kind.size)))
    return uploads


def describe(uploads: list[Upload]) -> str:
    """'32 png96 (4.4 KB avg), 16 jpeg480 (...)': for logs and the docs."""
    parts = []
    for kind in dict.fromkeys(u.kind for u in uploads):
        sizes = [len(u.body) for u in uploads if u.kind == kind]
        parts.append(f"{len(sizes)} {kind} ({np.mean(sizes) / 1024:.1f} KB avg)")
    return ", ".join(parts)


def build_photo_mix(count: int = 32, frames_dir: str | Path | None = None, seed: int = 0) -> list[Upload]:
    """The photo path's mix for /predictions/faces: half whole video frames as their own JPEG files (one face,
    74 to 450 px), half 1280x960 JPEG scenes of 2 to 6 faces (facekp.photos)."""
    from facekp import photos

    frames = photos.load_frames(frames_dir, "validation")
    step = max(1, len(frames) // max(1, count // 2))
    uploads = [Upload("frame", "image/jpeg", f.path.read_bytes()) for f in frames[::step][:count // 2]]
    scenes = photos.build_scenes(frames, count - len(uploads), seed)
    return uploads + [Upload("scene1280", "image/jpeg", photos.jpeg_bytes(scene.image)) for scene in scenes]
