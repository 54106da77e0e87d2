"""Request decoding, preprocessing and postprocessing as plain functions.

Nothing here imports TorchServe, so the same code serves TorchServe, the benchmarks and
any other server the model moves to, and is unit-tested on its own.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from facekp.contract import IBUG68_NAMES, IMAGE_SIZE, KEYPOINT_NAMES, NUM_KEYPOINTS
from handler import kserve_protocol
from handler.square import Square

logger = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000
"""Images above this many pixels are refused from their header, before decoding."""

MIN_SIDE = 8
"""Smaller images cannot hold a face."""

EMPTY_BODY_MESSAGE = "empty request body: send an image, e.g. curl -T face.png URL"

FORM_POST_MESSAGE = (
    "the body was sent as an HTML form (Content-Type: application/x-www-form-urlencoded, curl --data-binary's "
    "default), not as an image: send it with curl -T face.png URL, or add -H 'Content-Type: image/png', "
    "or as a multipart file: curl -F data=@face.png URL"
)
"""TorchServe's frontend parses such a body as form fields before the handler sees it."""

_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}

POINTS = (15, 68)
"""What a request may ask for (header `Points`, form field `points`, v2 parameter `points`): the 15 named
keypoints (the default) or the 68 iBUG points."""
_POINTS_TEXT = {str(n) for n in POINTS}


class RequestError(Exception):
    """A request that cannot be answered; `status` is the HTTP code to send."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Frame:
    """An image as sent (its size) and the square of it the model sees: centred, edge pixels repeated
    on the short side (Square.around)."""

    width: int
    height: int
    square: Square


@dataclass
class Reply:
    """One request's answer: its status and JSON body, and for a v2 answer with binary outputs the bytes
    that follow the JSON (the Inference-Header-Content-Length header then says where the JSON ends)."""

    status: int
    body: dict[str, Any]
    binary: bytes | None = None


@dataclass(frozen=True)
class Incoming:
    """One request's image file, and the KServe request it came in (None: a plain upload)."""

    image: bytes
    envelope: Mapping[str, Any] | None = None
    points: int = 15
    """The points it asked for (read_request): 15 or 68."""
    faces_hint: str | None = None
    """Where its faces are already known, as the photo path reads them (handler.faces.hinted_faces); None: look."""

    def reply(self, plain: dict[str, Any], model_name: str) -> Reply:
        """The plain answer in the form this request came in: as it is, or KServe v2/v1 (model_name goes into v2),
        v2 with the outputs it asked for, as JSON or binary data."""
        if self.envelope is None:
            return Reply(200, plain)
        protocol = kserve_protocol.protocol_of(self.envelope)
        answer = kserve_protocol.kserve_answer(protocol, plain, self.envelope, model_name)
        if protocol != "v2":
            return Reply(200, answer)
        try:
            return Reply(200, *kserve_protocol.encode_v2(answer, self.envelope))
        except kserve_protocol.ProtocolError as err:
            return Reply(400, error_json(RequestError(400, str(err))))


def read_request(request: dict[str, Any], headers: Mapping[str, Any] | None = None) -> Incoming:
    """The image of one TorchServe request: a raw body, exactly one multipart file, or a KServe v2/v1 JSON body
    (v2 also with binary tensor data, when the Inference-Header-Content-Length header says so).

    `headers` are TorchServe's properties of the request (its HTTP headers, plus per form part
    {"content-type": ...}, "" for a plain form field). They tell a form field from a file and an
    HTML form post (curl --data-binary's default) from an image; without them every bytes value
    counts as a file.
    """
    headers = headers or {}
    # TorchServe 0.12 drops the query string of /predictions before the handler (pytorch/serve#989): the points
    # come as a header (-H 'Points: 68', which the frontend fix of handler/frontend/ also makes of ?points=68) or
    # a multipart form field (-F points=68)
    asked = request.get("points", _header(headers, "points") or None)
    points = points_asked(asked)
    hint = request.get(FACES_HINT.replace("-", "_"), _header(headers, FACES_HINT, lower=False) or None)
    request = {name: value for name, value in request.items() if name not in ("points", FACES_HINT.replace("-", "_"))}
    incoming = _read_image(request, headers)
    if incoming.envelope is not None:
        parameters = incoming.envelope.get("parameters") or {}
        if isinstance(parameters, Mapping) and "points" in parameters:
            points = points_asked(parameters["points"])
    if isinstance(hint, (bytes, bytearray)):
        hint = hint.decode(errors="replace")
    return Incoming(incoming.image, incoming.envelope, points, hint)


FACES_HINT = "faces-hint"
"""The header (or, as faces_hint, the form field) of a photo whose faces are already known: a video's frame."""


def points_asked(value: Any) -> int:
    """15 or 68 from a header or form field (str or bytes, as TorchServe passes them) or a v2 parameter; absent:
    15."""
    if value is None:
        return 15
    text = value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)
    if text.strip() not in _POINTS_TEXT:
        raise RequestError(400, f"points must be 15 (the named keypoints) or 68 (the iBUG 300-W points), "
                                f"got {text[:20]!r}")
    return int(text)


def _read_image(request: dict[str, Any], headers: Mapping[str, Any]) -> Incoming:
    if _header(headers, "content-type").startswith("application/x-www-form-urlencoded"):
        # TorchServe has parsed the body as form fields, so the image bytes are gone.
        raise RequestError(415, FORM_POST_MESSAGE)
    if "body" in request or "data" in request:
        body = request.get("body", request.get("data"))
        json_length = _header(headers, kserve_protocol.BINARY_HEADER.lower())
        if json_length and isinstance(body, (bytes, bytearray)):  # v2 with binary tensor data (tritonclient's way)
            try:
                body = kserve_protocol.read_binary_request(bytes(body), json_length)
            except kserve_protocol.ProtocolError as err:
                raise RequestError(400, str(err)) from None
        elif isinstance(body, (bytes, bytearray)) and body[:1] == b"{":
            body = _json_or_bytes(bytes(body))  # a KServe request sent without Content-Type: application/json
        if isinstance(body, (bytes, bytearray)):
            return Incoming(bytes(body))
        if body is None or body == b"" or body == "":
            raise RequestError(400, EMPTY_BODY_MESSAGE)
        if kserve_protocol.protocol_of(body) is None:
            raise RequestError(
                415,
                f"expected image bytes, got {type(body).__name__} (the Content-Type said text or JSON) that is not "
                "a KServe request; send the image as the raw body (curl -T face.png URL), as a multipart file, "
                f"or as KServe v2 JSON: {kserve_protocol.V2_EXAMPLE}",
            )
        try:
            return Incoming(kserve_protocol.image_from_kserve(body), body)
        except kserve_protocol.ProtocolError as err:
            raise RequestError(400, str(err)) from None
    files = [name for name, value in request.items()
             if isinstance(value, (bytes, bytearray)) and not _is_form_field(headers, name)]
    if not files:
        fields = f" (only the form field(s) {', '.join(map(repr, request))})" if request else ""
        raise RequestError(400, f"multipart request holds no file{fields}: attach one image, "
                                "e.g. curl -F data=@face.png URL")
    if len(files) > 1:
        raise RequestError(400, f"multipart request holds {len(files)} files ({', '.join(map(repr, files))}): "
                                "send one image per request")
    return Incoming(bytes(request[files[0]]))


def _json_or_bytes(body: bytes) -> Any:
    """The parsed JSON of a body that is a KServe request, else the body unchanged (an image never starts with {)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    return parsed if kserve_protocol.protocol_of(parsed) else body


def _header(headers: Mapping[str, Any], name: str, lower: bool = True) -> str:
    """An HTTP header of the request, case-insensitively, lower-cased unless asked not to; "" if absent."""
    for key, value in headers.items():
        if key.lower() == name and isinstance(value, str):
            return value.lower() if lower else value
    return ""


def _is_form_field(headers: Mapping[str, Any], name: str) -> bool:
    """TorchServe gives a plain form field (no filename) an empty content type, a file its own."""
    part = headers.get(name)
    return isinstance(part, Mapping) and part.get("content-type") == ""


def open_image(body: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes -> a PIL image whose header passed the size checks, pixels not decoded yet; or RequestError.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb costs a few KB of reading, not gigabytes of memory.
    """
    if not body:
        raise RequestError(400, EMPTY_BODY_MESSAGE)
    try:
        image = Image.open(io.BytesIO(body))  # reads the header only; our own limit is checked below
    except Image.DecompressionBombError as err:
        raise RequestError(413, f"image too large ({err}); at most {max_pixels:,} pixels are accepted") from None
    except Image.UnidentifiedImageError:
        raise RequestError(415, "body is not a readable image: not a PNG, JPEG, GIF, WebP, BMP, TIFF or other "
                                "format Pillow reads") from None
    except Exception as err:  # Pillow raises several types for unreadable data
        raise RequestError(415, f"body is not a readable image ({type(err).__name__}: {err})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(413, f"image is {width}x{height} pixels; at most {max_pixels:,} pixels are accepted")
    if min(width, height) < MIN_SIDE:
        raise RequestError(422, f"image is {width}x{height} pixels; each side must be at least {MIN_SIDE}")
    return image


def decode_image(body: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes -> 8-bit grayscale PIL image in its displayed orientation, or RequestError (a face crop)."""
    image = open_image(body, max_pixels)
    width, height = image.size
    side = max(width, height)
    if side * side > 2 * max_pixels:
        # to_model_input pads to a square: a 8x5,000,000 strip would need a 25-terapixel array.
        raise RequestError(413, f"image is {width}x{height} pixels, too elongated: padded to a square it would be "
                                f"{side * side:,} pixels, at most {2 * max_pixels:,} are accepted; crop it to the face")
    if image.format == "JPEG":
        # DCT-domain downscaling: a large JPEG decodes at a fraction of the cost, still >= 2x the model size.
        image.draft("L", (2 * IMAGE_SIZE, 2 * IMAGE_SIZE))
    try:
        image = ImageOps.exif_transpose(image)
        return _to_grayscale(image)
    except Exception as err:
        raise RequestError(400, f"image data is damaged ({type(err).__name__}: {err})") from None


def decode_photo(body: bytes, max_pixels: int = MAX_PIXELS, work_side: int = 2048) -> tuple[Image.Image, float]:
    """Bytes -> (RGB image in its displayed orientation, image-as-sent pixels per pixel of it), or RequestError.

    A large JPEG is decoded at a reduced scale (DCT domain) while its long side stays >= work_side:
    the photo path detects on at most 1280 px and crops faces to 96 px, so full resolution buys
    nothing and would cost seconds for a 40 MP photo.
    """
    image = open_image(body, max_pixels)
    sent = image.size
    if image.format == "JPEG":
        image.draft("RGB", (work_side, work_side))
    try:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("P", "PA", "LA", "RGBA", "RGBa", "La") or "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
            image = _to_grayscale(image)
        image = image.convert("RGB")
    except Exception as err:
        raise RequestError(400, f"image data is damaged ({type(err).__name__}: {err})") from None
    # exif_transpose may swap the sides: compare the long sides to get the decoding scale.
    return image, max(sent) / max(image.size)


def _to_grayscale(image: Image.Image) -> Image.Image:
    """Any mode (16-bit, RGBA, palette, CMYK, float) -> mode L; first frame of an animation."""
    if image.mode == "L":
        image.load()
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float32) * (255.0 / 65535.0)
        return Image.fromarray(pixels.clip(0, 255).round().astype(np.uint8), mode="L")
    if image.mode == "F":
        return Image.fromarray(np.asarray(image).clip(0, 255).round().astype(np.uint8), mode="L")
    if image.mode in ("P", "PA", "LA", "RGBA", "RGBa", "La") or "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB").convert("L")


def to_model_input(image: Image.Image) -> tuple[np.ndarray, Frame]:
    """Grayscale image -> ((1, 96, 96) float32 in [0, 1], the Frame to map keypoints back)."""
    frame = Frame(image.width, image.height, Square.around(image.width, image.height))
    return frame.square.crop(np.asarray(image, dtype=np.uint8))[None], frame


def keypoints_json(image_px: np.ndarray, frame: Frame, confidence: np.ndarray | None = None,
                   names: tuple[str, ...] = KEYPOINT_NAMES, quality: float | None = None) -> dict[str, Any]:
    """The response body: each keypoint named, in the contract's order (or iBUG's), in image pixels, with its
    confidence and the face's quality where the model gives them."""
    body = {"keypoints": point_objects(image_px, confidence, names),
            "image": {"width": frame.width, "height": frame.height}}
    if quality is not None:
        body["quality"] = round(quality, 3)
    return body


def point_objects(image_px: np.ndarray, confidence: np.ndarray | None = None,
                  names: tuple[str, ...] = KEYPOINT_NAMES) -> list[dict[str, Any]]:
    """[{name, x, y[, confidence]}] for points in image pixels."""
    objects = [{"name": name, "x": round(float(x), 2), "y": round(float(y), 2)}
               for name, (x, y) in zip(names, image_px, strict=True)]
    if confidence is not None:
        for point, value in zip(objects, confidence, strict=True):
            point["confidence"] = round(float(value), 3)
    return objects


@dataclass(frozen=True)
class FaceAnswer:
    """The model's answer for one face, cut to the points a request asked for."""

    normalized: np.ndarray  # (points, 2) in the model's coordinates
    confidence: np.ndarray | None
    names: tuple[str, ...]
    quality: float | None  # the mean confidence of the 15 named keypoints


def face_answer(output: np.ndarray, points: int = 15) -> FaceAnswer:
    """One face's model output, (15, 2) from a file's forward() or (points, 3) from a view setting, as the 15
    named keypoints or the 68 iBUG points (RequestError where the model has no 68)."""
    with_confidence = output.shape[-1] == 3
    quality = float(output[:NUM_KEYPOINTS, 2].mean()) if with_confidence else None
    if points == 68:
        if output.shape[0] < NUM_KEYPOINTS + 68:
            raise RequestError(400, "this model answers the 15 named keypoints only: ask without points=68")
        part, names = output[NUM_KEYPOINTS:NUM_KEYPOINTS + 68], IBUG68_NAMES
    else:
        part, names = output[:NUM_KEYPOINTS], KEYPOINT_NAMES
    return FaceAnswer(part[:, :2], part[:, 2] if with_confidence else None, names, quality)


def error_json(error: RequestError) -> dict[str, Any]:
    return {"error": error.message, "code": error.status}


def reply_for_failure(index: int, err: Exception) -> Reply:
    """The Reply for request `index` of a batch whose reading raised `err`: its own 4xx for bad input;
    for anything else (a bug, not bad input) a logged 500 for that request alone, never the whole batch."""
    if isinstance(err, RequestError):
        return Reply(err.status, error_json(err))
    logger.error("unexpected error while reading request %d of the batch", index, exc_info=err)
    return Reply(500, error_json(RequestError(500, "internal error while reading the image")))


def prepare(request: dict[str, Any], max_pixels: int = MAX_PIXELS,
            headers: Mapping[str, Any] | None = None) -> tuple[np.ndarray, Frame]:
    """One TorchServe request -> model input and frame, or RequestError."""
    return to_model_input(decode_image(read_request(request, headers).image, max_pixels))


def answer_batch(
    requests: list[dict[str, Any] | Incoming],
    run_model: Callable[[np.ndarray], np.ndarray],
    max_pixels: int = MAX_PIXELS,
    headers: list[Mapping[str, Any]] | None = None,
    model_name: str = "keypoints",
) -> list[Reply]:
    """Answer a server-side batch: bad requests get their own 4xx, the rest one model call.

    run_model answers (N, 15, 2), or (N, points, 3) with every point and its confidence (ServedModel.answer);
    each request gets the points it asked for (?points=15 or 68).

    Each answer is in its own request's form: plain JSON, or KServe v2/v1 (model_name goes into v2's).
    A request already read (an Incoming, as the kserve predictor hands over) is not read again.

    An unexpected error while reading one request (a bug, not bad input) fails that request
    alone with a 500, not the whole batch.
    """
    replies: list[Reply | None] = [None] * len(requests)
    inputs, frames, slots, incomings = [], [], [], []
    for i, request in enumerate(requests):
        try:
            incoming = (request if isinstance(request, Incoming)
                        else read_request(request, headers[i] if headers else None))
            tensor, frame = to_model_input(decode_image(incoming.image, max_pixels))
        except Exception as err:
            replies[i] = reply_for_failure(i, err)
            continue
        inputs.append(tensor)
        frames.append(frame)
        slots.append(i)
        incomings.append(incoming)
    if inputs:
        outputs = run_model(np.stack(inputs))
        for slot, output, frame, incoming in zip(slots, outputs, frames, incomings, strict=True):
            try:
                face = face_answer(output, incoming.points)
            except RequestError as err:
                replies[slot] = reply_for_failure(slot, err)
                continue
            plain = keypoints_json(frame.square.to_image(face.normalized), frame, face.confidence, face.names,
                                   face.quality)
            replies[slot] = reply_for(slot, incoming, plain, model_name)
    return replies  # type: ignore[return-value]


def reply_for(index: int, incoming: Incoming, plain: dict[str, Any], model_name: str) -> Reply:
    """incoming.reply, with an unexpected error failing request `index` alone (reply_for_failure), not its batch."""
    try:
        return incoming.reply(plain, model_name)
    except Exception as err:
        return reply_for_failure(index, err)
