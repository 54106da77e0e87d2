"""The handler's plain functions, without TorchServe: decoding, preprocessing, mapping back."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from facekp.contract import IMAGE_SIZE, KEYPOINT_NAMES, normalize
from handler import processing
from handler.processing import RequestError


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


@pytest.fixture
def face(face_pixels) -> Image.Image:
    return Image.fromarray(face_pixels, mode="L")


def test_png_96_is_passed_through_exactly(face, face_pixels):
    tensor, frame = processing.prepare({"body": encode(face, "PNG")})
    assert tensor.shape == (1, IMAGE_SIZE, IMAGE_SIZE) and tensor.dtype == np.float32
    assert np.array_equal((tensor[0] * 255).round().astype(np.uint8), face_pixels)
    assert frame.square.scale == 1.0


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA", "CMYK", "I;16", "1"])
def test_any_mode_decodes_to_gray_in_range(face, mode):
    image = face.convert(mode) if mode != "I;16" else Image.fromarray(np.asarray(face, np.uint16) * 257)
    fmt = "JPEG" if mode == "CMYK" else "PNG" if mode != "1" else "BMP"
    tensor, _ = processing.prepare({"body": encode(image, fmt)})
    assert tensor.shape == (1, 96, 96)
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    if mode in ("RGB", "RGBA", "I;16", "LA"):
        assert np.abs(tensor[0] - np.asarray(face) / 255).max() < 2 / 255


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_common_formats(face, fmt):
    tensor, _ = processing.prepare({"body": encode(face, fmt)})
    assert tensor.shape == (1, 96, 96)


def test_coordinates_scale_back_to_the_image_as_sent(face):
    big = face.resize((192, 192), Image.Resampling.LANCZOS)
    _, frame = processing.prepare({"body": encode(big, "PNG")})
    assert frame.square.scale == 2.0
    # the model's pixel 10 covers pixels 20..21 of the 192 image: centre 20.5
    pts = frame.square.to_image(normalize(np.full((15, 2), 10.0)))
    assert np.allclose(pts, 20.5)


def test_non_square_is_padded_centred(face):
    wide = Image.new("L", (192, 96))
    wide.paste(face.resize((96, 96)), (48, 0))
    tensor, frame = processing.prepare({"body": encode(wide, "PNG")})
    assert (frame.width, frame.height, frame.square.scale, -frame.square.x0, -frame.square.y0) == (192, 96, 2.0, 0, 48)
    pts = frame.square.to_image(normalize(np.full((15, 2), 47.75)))
    assert np.allclose(pts, [96.0, 48.0])


def test_exif_rotation_is_applied(face):
    rotated = face.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display" undoes ROTATE_90 (counter-clockwise)
    tensor, _ = processing.prepare({"body": encode(rotated, "JPEG", exif=exif, quality=95)})
    assert np.abs(tensor[0] * 255 - np.asarray(face, np.float32)).mean() < 6


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"", 400, "empty"),
        (b"hello, this is text", 415, "not a readable image"),
        (bytes(range(256)) * 4, 415, "not a readable image"),
    ],
)
def test_unreadable_bodies(body, status, words):
    with pytest.raises(RequestError) as err:
        processing.prepare({"body": body})
    assert err.value.status == status and words in err.value.message


def test_truncated_png_and_jpeg(face):
    for fmt in ("PNG", "JPEG"):
        data = encode(face.resize((400, 400)), fmt)
        with pytest.raises(RequestError) as err:
            processing.prepare({"body": data[: len(data) // 2]})
        assert 400 <= err.value.status < 500


def test_large_image_refused_from_header_before_decoding():
    big = encode(Image.new("1", (9000, 9000)), "PNG")  # 81 MP: under Pillow's own bomb limit
    with pytest.raises(RequestError) as err:
        processing.decode_image(big, max_pixels=40_000_000)
    assert err.value.status == 413 and "9000x9000" in err.value.message


def test_tiny_image_is_refused():
    with pytest.raises(RequestError) as err:
        processing.prepare({"body": encode(Image.new("L", (1, 1)), "PNG")})
    assert err.value.status == 422 and "1x1" in err.value.message


def test_decompression_bomb_refused_from_header():
    bomb = encode(Image.new("1", (30000, 30000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(RequestError) as err:
        processing.prepare({"body": bomb})
    assert err.value.status == 413 and "900000000 pixels" in err.value.message


def test_multipart_needs_exactly_one_file(face):
    png = encode(face, "PNG")
    assert processing.read_request({"file": png, "note": "hi"}).image == png
    with pytest.raises(RequestError, match="no file"):
        processing.read_request({"note": "hi"})
    with pytest.raises(RequestError, match="2 files"):
        processing.read_request({"a": png, "b": png})


def test_json_body_is_refused_clearly():
    with pytest.raises(RequestError) as err:
        processing.read_request({"body": {"x": 1}})
    assert err.value.status == 415


def test_batch_answers_good_and_bad_requests_separately(face):
    good = {"body": encode(face, "PNG")}
    calls = []

    def model(batch):
        calls.append(batch.shape)
        return np.zeros((len(batch), 15, 2), np.float32)

    replies = processing.answer_batch([good, {"body": b"junk"}, good], model)
    assert calls == [(2, 1, 96, 96)]
    assert [r.status for r in replies] == [200, 415, 200]
    assert [k["name"] for k in replies[0].body["keypoints"]] == list(KEYPOINT_NAMES)
    assert replies[0].body["keypoints"][0]["x"] == pytest.approx(48.0)  # normalized 0 -> pixel 48
    assert "error" in replies[1].body


def test_all_bad_batch_does_not_call_model():
    replies = processing.answer_batch([{"body": b""}], lambda b: pytest.fail("model called"))
    assert replies[0].status == 400


def test_elongated_image_is_refused_before_padding():
    """Padding 500000x8 to a square would allocate 233 GiB: refused from the header instead."""
    strip = encode(Image.new("L", (500_000, 8)), "PNG")
    assert len(strip) < 10_000
    with pytest.raises(RequestError) as err:
        processing.prepare({"body": strip})
    assert err.value.status == 413 and "too elongated" in err.value.message


def test_two_to_one_image_under_the_pixel_limit_is_accepted():
    tensor, frame = processing.prepare({"body": encode(Image.new("L", (400, 200)), "PNG")}, max_pixels=80_000)
    assert tensor.shape == (1, 96, 96) and (frame.width, frame.height) == (400, 200)


def test_animated_gif_serves_its_first_frame(face, face_pixels):
    gif = encode(face, "GIF", save_all=True, append_images=[face.transpose(Image.Transpose.ROTATE_90)], duration=100)
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    tensor, _ = processing.prepare({"body": gif})
    assert np.array_equal((tensor[0] * 255).round().astype(np.uint8), face_pixels)


def test_form_post_is_refused_with_the_fix():
    """curl --data-binary sends application/x-www-form-urlencoded; TorchServe parses it as fields."""
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    with pytest.raises(RequestError) as err:
        processing.read_request({"a": b"1"}, headers)
    assert err.value.status == 415 and "curl -T" in err.value.message


def test_form_fields_are_not_files(face):
    png = encode(face, "PNG")
    headers = {"Content-Type": "multipart/form-data; boundary=x", "a": {"content-type": "image/png"},
               "note": {"content-type": ""}}
    assert processing.read_request({"a": png, "note": b"hi"}, headers).image == png
    with pytest.raises(RequestError, match="no file .*'note'"):
        processing.read_request({"note": b"hi"}, {"note": {"content-type": ""}})
    with pytest.raises(RequestError, match="2 files"):
        processing.read_request({"a": png, "b": png}, {"a": {"content-type": "image/png"},
                                                       "b": {"content-type": "application/octet-stream"}})


def test_an_unexpected_error_fails_only_its_own_request(face, monkeypatch):
    good = {"body": encode(face, "PNG")}
    real = processing.to_model_input

    def flaky(image):
        if image.size == (97, 97):
            raise ValueError("a bug")
        return real(image)

    monkeypatch.setattr(processing, "to_model_input", flaky)
    odd = {"body": encode(face.resize((97, 97)), "PNG")}
    replies = processing.answer_batch([good, odd, good], lambda b: np.zeros((len(b), 15, 2), np.float32))
    assert [r.status for r in replies] == [200, 500, 200]
    assert replies[1].body == {"error": "internal error while reading the image", "code": 500}


def every_point_model(batch: np.ndarray) -> np.ndarray:
    """A stand-in for a file's view setting: 83 points (the 15, then the 68), each with a confidence."""
    out = np.zeros((len(batch), 83, 3), np.float32)
    out[..., 0] = np.linspace(-0.5, 0.5, 83)
    out[..., 2] = np.linspace(0.2, 0.9, 83)
    return out


def test_the_points_asked_for_are_15_or_68_from_the_query_string_or_v2_parameters(face):
    png = encode(face, "PNG")
    assert processing.read_request({"body": png}).points == 15
    assert processing.read_request({"body": png}, {"Points": "68"}).points == 68  # curl -H 'Points: 68'
    assert processing.read_request({"data": png, "points": b"68"}).points == 68  # curl -F data=@face.png -F points=68
    v2 = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                      "data": [base64.b64encode(png).decode()]}], "parameters": {"points": 68}}
    assert processing.read_request({"body": v2}).points == 68
    for bad in (b"7", "all", ""):
        with pytest.raises(RequestError, match="points must be 15 .* or 68") as err:
            processing.read_request({"body": png, "points": bad})
        assert err.value.status == 400


def test_68_points_in_ibug_order_and_a_confidence_for_every_point(face):
    from facekp.contract import IBUG68_NAMES

    png = encode(face, "PNG")
    plain, sixty_eight, refused = processing.answer_batch(
        [{"body": png}, {"body": png, "points": b"68"}, {"body": png, "points": b"5"}], every_point_model)
    assert [k["name"] for k in plain.body["keypoints"]] == list(KEYPOINT_NAMES)
    assert [k["name"] for k in sixty_eight.body["keypoints"]] == list(IBUG68_NAMES)
    confidences = [k["confidence"] for k in sixty_eight.body["keypoints"]]
    assert confidences == sorted(confidences) and 0.2 < confidences[0] < confidences[-1] <= 0.9  # points 15-82
    assert plain.body["quality"] == pytest.approx(np.linspace(0.2, 0.9, 83)[:15].mean(), abs=1e-3)
    assert sixty_eight.body["quality"] == plain.body["quality"]  # the face's, whatever points it was asked
    assert refused.status == 400 and "points must be 15" in refused.body["error"]


def test_a_model_of_15_points_answers_them_without_confidence_and_refuses_68(face):
    png = encode(face, "PNG")
    fifteen, refused = processing.answer_batch([{"body": png}, {"body": png, "points": "68"}],
                                               lambda batch: np.zeros((len(batch), 15, 2), np.float32))
    assert fifteen.status == 200 and "confidence" not in fifteen.body["keypoints"][0]
    assert "quality" not in fifteen.body
    assert refused.status == 400 and "15 named keypoints only" in refused.body["error"]
