"""Property-based fuzzing of the handler's decoding and preprocessing (hypothesis, no TorchServe).

Whatever bytes arrive, `prepare` either returns a (1, 96, 96) float32 tensor in [0, 1] or
raises RequestError with a 4xx status: no other exception, which TorchServe would turn into
a 500 for the whole batch. Examples are bounded so the file runs in a few seconds; a longer
hunt: FACEKP_FUZZ_EXAMPLES=5000 .venv/bin/python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from facekp.contract import IMAGE_SIZE
from handler import processing
from handler.processing import MIN_SIDE, RequestError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF, then copes

FUZZ_MAX_PIXELS = 4_000_000
"""A lower limit than the service's keeps each example fast; the code paths are the same."""

FUZZ = settings(max_examples=int(os.environ.get("FACEKP_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def seeds(face_pixels) -> list[bytes]:
    """Small real encodings of a face to mutate: every decoder gets its own header right."""
    face = Image.fromarray(face_pixels, mode="L").resize((40, 48))
    exif = Image.Exif()
    exif[0x0112] = 6
    return [encode(face, fmt) for fmt in FORMATS] + [
        encode(face.convert("RGBA"), "PNG"),
        encode(face.convert("P"), "PNG"),
        encode(face.convert("CMYK"), "JPEG"),
        encode(face, "JPEG", exif=exif),
        encode(Image.fromarray(np.asarray(face, np.uint16) * 257), "PNG"),
        encode(face, "GIF", save_all=True, append_images=[face.rotate(90)]),
    ]


def check(body: bytes) -> None:
    """The property: a valid model input, or a documented 4xx refusal."""
    try:
        tensor, frame = processing.prepare({"body": body}, FUZZ_MAX_PIXELS)
    except RequestError as err:
        assert 400 <= err.status < 500, err.message
        assert err.message
        return
    assert tensor.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and tensor.dtype == np.float32
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    assert frame.width >= MIN_SIDE and frame.height >= MIN_SIDE


@FUZZ
@given(body=st.binary(max_size=4096))
def test_arbitrary_bytes(body):
    check(body)


@st.composite
def mutations(draw, seed_count: int) -> tuple[int, list[tuple[str, int, bytes]]]:
    index = draw(st.integers(0, seed_count - 1))
    edits = draw(st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "truncate"]),
                                    st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)),
                          min_size=1, max_size=4))
    return index, edits


def mutate(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, position, chunk in edits:
        at = position % max(len(out), 1)
        if kind == "flip":
            out[at:at + len(chunk)] = bytes(a ^ b for a, b in zip(out[at:at + len(chunk)], chunk, strict=False))
        elif kind == "insert":
            out[at:at] = chunk
        elif kind == "delete":
            del out[at:at + len(chunk)]
        else:
            del out[at:]
    return bytes(out)


@FUZZ
@given(case=mutations(seed_count=12))
def test_mutated_real_images(seeds, case):
    index, edits = case
    check(mutate(seeds[index], edits))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def sides() -> st.SearchStrategy[int]:
    """Half small (1..64), half log-uniform over 1..2**31-1: very unequal sides come up often."""
    return st.integers(1, 64) | st.integers(1, 31).flatmap(lambda bits: st.integers(1 << (bits - 1), (1 << bits) - 1))


@FUZZ
@given(width=sides(), height=sides(), gray=st.booleans(), pixels=st.binary(max_size=512))
def test_png_headers_claiming_any_size(width, height, gray, pixels):
    """Valid PNG headers with any dimensions: the size checks run before decoding or padding.

    Within the pixel limit the PNG holds all its (zero) pixels, so a strip such as 8x400000
    decodes and reaches the padding; beyond it, a little random data stands in.
    """
    channels, color_type = (1, 0) if gray else (3, 2)
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    if width * height <= FUZZ_MAX_PIXELS:
        pixels = bytes((1 + width * channels) * height)
    check(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(pixels))
          + png_chunk(b"IEND", b""))


@FUZZ
@given(width=st.integers(1, 300), height=st.integers(1, 300),
       mode=st.sampled_from(["L", "RGB", "RGBA", "P", "LA", "1", "I;16", "CMYK"]), fmt=st.sampled_from(FORMATS),
       seed=st.integers(0, 2**32 - 1))
def test_well_formed_images_of_any_size_and_mode(width, height, mode, fmt, seed):
    """Valid files: refused only for a side under MIN_SIDE, otherwise always a model input."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    image = Image.fromarray(pixels, mode="L")
    image = Image.fromarray(pixels.astype(np.uint16) * 257) if mode == "I;16" else image.convert(mode)
    try:
        body = encode(image, fmt)
    except (OSError, ValueError, KeyError):  # a mode the format cannot store: send it as RGB
        body = encode(image.convert("RGB"), fmt)
    if min(width, height) < MIN_SIDE:
        with pytest.raises(RequestError) as err:
            processing.prepare({"body": body}, FUZZ_MAX_PIXELS)
        assert err.value.status == 422
    else:
        tensor, frame = processing.prepare({"body": body}, FUZZ_MAX_PIXELS)
        assert tensor.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and tensor.dtype == np.float32
        assert 0.0 <= tensor.min() and tensor.max() <= 1.0
        assert (frame.width, frame.height) == (width, height)


@FUZZ
@given(parts=st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(st.binary(max_size=64), st.text(max_size=16),
                                                                          st.none(), st.integers()), max_size=4),
       content_type=st.sampled_from(["", "image/png", "application/x-www-form-urlencoded", "multipart/form-data"]))
def test_any_request_dict_gives_bytes_or_a_4xx(parts, content_type):
    """read_request over any shape TorchServe could hand over, with or without per-part headers."""
    headers = {"Content-Type": content_type, **{name: {"content-type": ""} for name in list(parts)[:1]}}
    try:
        body = processing.read_request(parts, headers).image
    except RequestError as err:
        assert 400 <= err.status < 500
        return
    assert isinstance(body, bytes)
