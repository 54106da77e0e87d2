"""The photo path, /predictions/faces, on a real TorchServe serving both models on free loopback ports.

Photos are built from the committed public-domain astronaut portrait (and, where the data set is
present, its whole frames), so most of these tests need no data set.
"""

from __future__ import annotations

import io
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from facekp import photos
from facekp.archive import FACES, KEYPOINTS
from facekp.contract import KEYPOINT_NAMES, MEAN_LAYOUT
from facekp.data import REPO_ROOT
from facekp.processes import wait_until
from facekp.warm_up import main as warm_up_main
from facekp.warm_up import tiny_image, warm_up
from handler import faces as pipeline
from handler.square import Square, fit_square
from tests.conftest import require_data, running_service

PORTRAIT = Image.open(REPO_ROOT / "samples" / "astronaut.png").convert("RGB")
FACE_BOX = (165, 50, 285, 170)  # where the astronaut's face is in the portrait
TIMEOUT = 120


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def keypoints_of(face: dict) -> np.ndarray:
    assert [p["name"] for p in face["keypoints"]] == list(KEYPOINT_NAMES)
    return np.array([[p["x"], p["y"]] for p in face["keypoints"]])


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("faces"), specs=(KEYPOINTS, FACES)) as svc:
        yield svc


def put(service, body: bytes) -> requests.Response:
    return requests.put(f"{service.inference_url}/predictions/faces", data=body, timeout=TIMEOUT)


def test_the_portrait_has_one_face_with_its_keypoints_on_it(service):
    reply = put(service, encode(PORTRAIT))
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["image"] == {"width": 512, "height": 512}
    (face,) = answer["faces"]
    assert face["score"] > 0.9
    box = face["box"]
    assert abs(box["x"] + box["width"] / 2 - 225) < 20 and abs(box["y"] + box["height"] / 2 - 115) < 25
    points = keypoints_of(face)
    left_eye, right_eye = points[0], points[1]
    assert left_eye[0] > right_eye[0], "the subject's left eye is on the image's right"
    assert np.all((points >= [FACE_BOX[0], FACE_BOX[1]]) & (points <= [FACE_BOX[2], FACE_BOX[3]]))
    # the same face answered by the crop contract from the committed 192x192 crop of that box
    crop = requests.put(f"{service.inference_url}/predictions/keypoints",
                        data=(REPO_ROOT / "samples" / "astronaut_face.png").read_bytes(), timeout=TIMEOUT).json()
    from_crop = np.array([[p["x"], p["y"]] for p in crop["keypoints"]]) * 120 / 192 + [FACE_BOX[0], FACE_BOX[1]]
    assert np.abs(points - from_crop).mean() < 3.0


def test_a_frame_of_the_data_set_gives_one_face_on_its_labels(service):
    require_data()
    frame = photos.load_frames(split="validation")[0]
    answer = put(service, frame.path.read_bytes()).json()
    matched = [keypoints_of(f) for f in answer["faces"]]
    score = photos.SceneScore()
    score.add(photos.frame_scene(frame), matched)
    assert score.found == [True] and score.nme[0] < 0.10


def test_no_face_is_an_empty_list(service):
    ramp = np.linspace(0, 255, 640)[None, :].repeat(480, 0).astype(np.uint8)
    reply = put(service, encode(Image.fromarray(ramp)))
    assert reply.status_code == 200 and reply.json() == {"faces": [], "image": {"width": 640, "height": 480}}


def test_many_faces_answer_the_50_largest_largest_first(service):
    grid = Image.new("RGB", (1280, 960), (128, 128, 128))
    face = PORTRAIT.crop((150, 30, 300, 190))
    for row in range(8):
        for col in range(8):
            side = 100 + 2 * ((row * 8 + col) % 10)  # 64 faces of slightly different sizes
            grid.paste(face.resize((side * 150 // 160, side)), (col * 158 + 4, row * 118 + 2))
    answer = put(service, encode(grid, "JPEG", quality=92)).json()
    areas = [f["box"]["width"] * f["box"]["height"] for f in answer["faces"]]
    assert len(areas) == pipeline.MAX_FACES
    assert all(a >= 0.99 * b for a, b in zip(areas, areas[1:], strict=False)), "largest first (boxes rounded)"


def test_a_40_megapixel_photo_is_answered_and_a_bigger_one_refused(service):
    big = Image.new("RGB", (8000, 5000), (90, 90, 100))  # 40,000,000 pixels: the limit
    big.paste(PORTRAIT.resize((2048, 2048)), (3000, 1500))
    reply = put(service, encode(big, "JPEG", quality=85))
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["image"] == {"width": 8000, "height": 5000}
    (face,) = answer["faces"]
    centre = keypoints_of(face).mean(0)  # the face sits at 3000 + 4 x (225, 115) in the big photo
    assert np.abs(centre - [3000 + 4 * 225, 1500 + 4 * 115]).max() < 60
    too_big = put(service, encode(Image.new("L", (8000, 5001)), "PNG"))
    assert too_big.status_code == 413 and "at most 40,000,000 pixels" in too_big.json()["error"]


def test_tiny_and_border_cut_faces_are_answered_without_error(service):
    tiny = Image.new("RGB", (640, 480), (120, 120, 120))
    tiny.paste(PORTRAIT.resize((48, 48)), (300, 200))  # a face about 10 px wide
    assert put(service, encode(tiny)).status_code == 200
    cut = PORTRAIT.crop((200, 0, 512, 512))  # the left third of the face is outside the image
    reply = put(service, encode(cut))
    assert reply.status_code == 200
    for face in reply.json()["faces"]:
        assert face["box"]["x"] < cut.width and face["box"]["x"] + face["box"]["width"] > 0
        assert np.isfinite(keypoints_of(face)).all()


def test_exif_rotation_answers_in_the_displayed_image(service):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    stored = PORTRAIT.transpose(Image.Transpose.ROTATE_90)
    rotated = put(service, encode(stored, "JPEG", quality=95, exif=exif)).json()
    upright = put(service, encode(PORTRAIT, "JPEG", quality=95)).json()
    assert rotated["image"] == {"width": 512, "height": 512}
    assert np.abs(keypoints_of(rotated["faces"][0]) - keypoints_of(upright["faces"][0])).max() < 2.0


def test_multipart_and_bad_input(service):
    url = f"{service.inference_url}/predictions/faces"
    form = requests.post(url, files={"data": ("p.png", encode(PORTRAIT), "image/png")}, timeout=TIMEOUT)
    assert form.status_code == 200 and len(form.json()["faces"]) == 1
    text = requests.put(url, data=b"not an image", timeout=TIMEOUT)
    assert text.status_code == 415 and "not a readable image" in text.json()["error"]
    empty = requests.put(url, data=b"", timeout=TIMEOUT)
    assert empty.status_code == 400


def test_concurrent_photos_share_batches_and_each_gets_its_own_faces(service):
    shifts = [(0, 0), (60, 0), (0, 60), (60, 60), (30, 30), (90, 10)]
    bodies = [encode(PORTRAIT.crop((dx, dy, dx + 400, dy + 400))) for dx, dy in shifts]
    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(lambda b: put(service, b).json(), bodies))
    for (dx, dy), answer in zip(shifts, answers, strict=True):
        (face,) = answer["faces"]
        centre = keypoints_of(face).mean(0) + [dx, dy]  # back in portrait pixels: the same face every time
        assert np.abs(centre - [225, 115]).max() < 15
    log = (service.log_dir / "model_log.log").read_text(errors="replace")
    assert max(int(n) for n in re.findall(r"batch of (\d+) photos", log)) > 1


def test_fit_square_recovers_the_framing_of_the_mean_layout():
    from facekp.contract import MEAN_LAYOUT

    square = Square(x0=100.0, y0=40.0, side=192.0)
    points = (MEAN_LAYOUT + 0.5) * square.side / 96 - 0.5 + [square.x0, square.y0]
    fitted = fit_square(points, MEAN_LAYOUT)
    assert np.allclose([fitted.x0, fitted.y0, fitted.side], [100.0, 40.0, 192.0], atol=1e-6)
    normalized = (MEAN_LAYOUT - 48) / 48
    assert np.allclose(fitted.to_image(normalized), points, atol=1e-4)


def test_crop_repeats_edge_pixels_outside_the_image():
    gray = np.full((50, 50), 200, np.uint8)
    gray[:, :5] = 10
    out = Square(-50.0, 0.0, 100.0).crop(gray)
    assert out.shape == (96, 96) and out[:, :40].max() < 0.1 and out[:, -10:].min() > 0.7


def test_68_points_and_their_confidence_through_both_routes(service):
    """A Points: 68 header (or a points form field) answers the iBUG 300-W points on the photo path and the crop
    path, each with a confidence; the 15 named keypoints carry one too, and each face a quality."""
    from facekp.contract import IBUG68_NAMES

    (face,) = requests.put(f"{service.inference_url}/predictions/faces", data=encode(PORTRAIT),
                           headers={"Points": "68"}, timeout=TIMEOUT).json()["faces"]
    assert [p["name"] for p in face["keypoints"]] == list(IBUG68_NAMES)
    points = np.array([[p["x"], p["y"]] for p in face["keypoints"]])
    assert np.all((points >= [FACE_BOX[0] - 10, FACE_BOX[1] - 10]) & (points <= [FACE_BOX[2] + 10, FACE_BOX[3] + 30]))
    assert points[45, 0] > points[36, 0], "iBUG 45, the subject's left eye's outer corner, is on the image's right"
    assert all(0 <= p["confidence"] <= 1 for p in face["keypoints"]) and 0 < face["quality"] <= 1
    fifteen = put(service, encode(PORTRAIT)).json()["faces"][0]
    assert [p["name"] for p in fifteen["keypoints"]] == list(KEYPOINT_NAMES) and fifteen["quality"] == face["quality"]
    crop = requests.post(f"{service.inference_url}/predictions/keypoints", data={"points": "68"},
                         files={"data": (REPO_ROOT / "samples" / "astronaut_face.png").read_bytes()}, timeout=TIMEOUT)
    assert crop.status_code == 200 and len(crop.json()["keypoints"]) == 68
    refused = requests.put(f"{service.inference_url}/predictions/faces", data=encode(PORTRAIT),
                           headers={"Points": "5"}, timeout=TIMEOUT)
    assert refused.status_code == 400 and "points must be 15" in refused.json()["error"]


def test_draw_greys_out_the_points_the_service_is_not_confident_of():
    from facekp import draw

    answer = {"faces": [{"box": {"x": 10, "y": 10, "width": 80, "height": 80}, "score": 0.99, "keypoints": [
        {"name": "left_eye_center", "x": 30, "y": 30, "confidence": 0.9},
        {"name": "jaw_1", "x": 70, "y": 70, "confidence": 0.2}]}]}
    canvas = draw.draw(Image.new("RGB", (100, 100)), answer)
    assert canvas.getpixel((30, 30)) == draw.COLOURS["left"] and canvas.getpixel((70, 70)) == draw.UNSURE
    assert draw.draw(Image.new("RGB", (100, 100)), answer, grey_below=0.1).getpixel((70, 70)) == draw.COLOURS["mid"]


def test_a_frame_of_the_data_set_gives_one_face_on_its_68_labels(service):
    """facekp.photos scores the 68 points too: iBUG labels of frames.csv, NME over iBUG points 36 and 45."""
    require_data()
    frame = photos.load_frames(split="fold-0")[0]
    assert frame.labels(68).shape == (68, 2) and photos.eye_distance(frame.labels(68)) > 0
    reply = requests.put(f"{service.inference_url}/predictions/faces", data=frame.path.read_bytes(),
                         headers={"Points": "68"}, timeout=TIMEOUT)
    score = photos.SceneScore()
    score.add(photos.frame_scene(frame, 68), photos.answered_keypoints(reply.json()))
    assert score.found == [True] and score.nme[0] < 0.10
    assert score.summary()["confidence"]["points"] == 68  # each point's confidence against its error


def test_faces_at_any_roll_are_found_once_upright_and_answer_their_roll(service):
    """Rotated copies of frames of the data set, their labels rotated alongside (facekp.photos.rotate_scene): each
    face is found once at every roll, read as well as upright, and answers its roll (clockwise as seen)."""
    require_data()
    frames = photos.load_frames(split="validation")[:6]
    for degrees in (0, 30, 60, 90, 135, 180, -45):
        score = photos.SceneScore()
        for frame in frames:
            scene = photos.rotate_scene(photos.frame_scene(frame), degrees)
            answer = put(service, photos.jpeg_bytes(scene.image, 95)).json()
            score.add(scene, photos.answered_keypoints(answer))
            truth_roll = fit_square(scene.faces[0], MEAN_LAYOUT, turn=True).roll_deg
            for face in answer["faces"]:
                if np.abs(keypoints_of(face).mean(0) - scene.faces[0].mean(0)).max() < 20:
                    assert abs((face["roll"] - truth_roll + 180) % 360 - 180) < 8, (frame.path.name, degrees)
        summary = score.summary()
        assert summary["recall"] == 1.0 and summary["false_faces_per_image"] == 0, degrees
        assert max(score.nme) < 0.10, (degrees, score.nme)


def test_a_turned_square_cuts_and_maps_back_the_same_pixels():
    """A bright spot at a known place lands where to_crop says, for upright, turned and upside-down squares; and
    from_cut maps a cut of any size back onto it."""
    height, width = 400, 500
    ys, xs = np.mgrid[0:height, 0:width]
    squares = [(Square(100.0, 40.0, 240.0, np.radians(30)), 7.0), (Square(200.3, 150.7, 80.0, np.radians(-100)), 2.5),
               (Square(100.0, 40.0, 240.0), 7.0), (Square(180.0, 120.0, 60.0, np.radians(180)), 1.5)]
    for square, sigma in squares:
        spot = np.array([square.x0 + 0.3 * square.side, square.y0 + 0.6 * square.side])
        gray = (255 * np.exp(-((xs - spot[0]) ** 2 + (ys - spot[1]) ** 2) / (2 * sigma**2))).astype(np.uint8)
        for size in (96, 160):
            cut = square.cut(gray, size).astype(float)
            cut[cut < 0.05 * cut.max()] = 0
            found = np.array([(cut.sum(0) * np.arange(size)).sum(), (cut.sum(1) * np.arange(size)).sum()]) / cut.sum()
            assert np.abs(square.from_cut(found, size) - spot).max() < 0.1 * square.side / size + 0.05
        assert np.allclose(square.to_crop(square.to_image((square.to_crop(spot) - 48) / 48)), square.to_crop(spot))


def test_fit_square_with_turn_recovers_the_roll_and_framing():
    from facekp.contract import MEAN_LAYOUT as layout

    for degrees in (0.0, 12.0, -75.0, 170.0):
        square = Square(60.0, 30.0, 150.0, np.radians(degrees))
        points = square.to_image((layout - 48) / 48)
        fitted = fit_square(points, layout, turn=True)
        assert np.allclose([fitted.x0, fitted.y0, fitted.side], [60.0, 30.0, 150.0], atol=1e-4)
        assert abs(fitted.roll_deg - degrees) < 1e-4
    upright = fit_square(Square(60.0, 30.0, 150.0, np.radians(20)).to_image((layout - 48) / 48), layout)
    assert upright.angle == 0.0, "without turn, the training crops' rule: scale and shift only"


def test_turned_images_and_points_agree():
    from handler.square import turn_image, turned_points

    image = np.zeros((50, 80), np.uint8)
    image[12, 60] = 255  # x 60, y 12
    for degrees in (90, -90, 180, 270, 30):
        turned = turn_image(image, degrees)
        expected = turned_points(np.array([60.0, 12.0]), degrees, (80, 50), (turned.shape[1], turned.shape[0]))
        ys, xs = np.nonzero(turned > 0.25 * turned.max())
        weights = turned[ys, xs].astype(float)
        assert np.abs([(xs * weights).sum() / weights.sum() - expected[0],
                       (ys * weights).sum() / weights.sum() - expected[1]]).max() < 0.3
        back = turned_points(expected, -degrees, (turned.shape[1], turned.shape[0]), (80, 50))
        assert np.allclose(back, [60.0, 12.0])


def test_a_file_sent_as_a_form_is_answered_and_points_come_from_the_query(service):
    """curl --data-binary @face.png sends Content-Type application/x-www-form-urlencoded: both routes answer it
    (handler/frontend/HttpRequestHandler.java), and ?points=68 asks for the 68 points on both."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    photo = requests.post(f"{service.inference_url}/predictions/faces?points=68", data=encode(PORTRAIT),
                          headers=form, timeout=TIMEOUT)
    assert photo.status_code == 200, photo.text
    assert len(photo.json()["faces"][0]["keypoints"]) == 68
    face = (REPO_ROOT / "samples" / "astronaut_face.png").read_bytes()
    crop = requests.post(f"{service.inference_url}/predictions/keypoints", data=face, headers=form, timeout=TIMEOUT)
    assert crop.status_code == 200 and len(crop.json()["keypoints"]) == 15
    header_wins = requests.put(f"{service.inference_url}/predictions/keypoints?points=68", headers={"Points": "15"},
                               data=face, timeout=TIMEOUT)
    assert len(header_wins.json()["keypoints"]) == 15
    broken = requests.post(f"{service.inference_url}/predictions/keypoints", data=b"a=%zz", headers=form,
                           timeout=TIMEOUT)
    assert broken.status_code == 400 and "curl -T face.png" in broken.json()["message"]


def test_without_javac_the_frontend_is_left_as_shipped_with_a_reason(tmp_path, monkeypatch):
    from facekp import frontend

    monkeypatch.setattr(frontend.shutil, "which", lambda name: None)
    assert "javac (a Java 17 JDK) not found" in frontend.compile_frontend(tmp_path)
    assert "javac could not run" in frontend.compile_frontend(tmp_path, javac="/nonexistent/javac")
    assert not (tmp_path / frontend.CLASS).exists()


def test_a_faces_hint_reads_the_faces_where_it_says_and_a_wrong_one_is_looked_at_anew(service):
    """Faces-Hint (a video's faces of a frame before, moved on): no detector, the same answer; a hint off the face
    or onto nothing is looked at anew, so the answer is the photo's own; a hint that is not a list of faces is a 400."""
    import json

    body = encode(PORTRAIT)
    (face,) = put(service, body).json()["faces"]
    points = keypoints_of(face)

    def hinted(moved: list[float]) -> dict:
        hint = [{"box": [face["box"][k] + (moved[0] if k == "x" else moved[1] if k == "y" else 0)
                         for k in ("x", "y", "width", "height")],
                 "keypoints": (points + moved).tolist(), "score": face["score"]}]
        reply = requests.put(f"{service.inference_url}/predictions/faces", data=body,
                             headers={"Faces-Hint": json.dumps(hint)}, timeout=TIMEOUT)
        assert reply.status_code == 200, reply.text
        return reply.json()

    for moved in ([1.5, -1.0], [40.0, 25.0], [-200.0, 300.0]):
        (again,) = hinted(moved)["faces"]
        assert np.abs(keypoints_of(again) - points).max() < 2.0, moved
    bad = requests.put(f"{service.inference_url}/predictions/faces", data=body,
                       headers={"Faces-Hint": '[{"box": [1, 2]}]'}, timeout=TIMEOUT)
    assert bad.status_code == 400 and "Faces-Hint is not a list of faces" in bad.json()["error"]


def test_a_cpu_worker_serves_the_int8_twins_of_the_shipped_file(service):
    """config/*.yaml's runtime onnx-int8: both models' workers answer with model_store's int8 ONNX files, which
    the archives carry beside keypoints.pt (the answers are checked in tests/test_inference.py)."""
    log = (service.log_dir / "model_log.log").read_text(errors="replace")
    for model in ("keypoints", "faces"):
        assert f"{model}: keypoint model 2 views, onnx-int8 on ONNX Runtime's CPU" in log, model


def test_the_warm_up_sends_each_route_its_tiny_requests_and_each_is_answered(service):
    """make serve warms the frontend's request path (facekp.warm_up): every tiny request reaches its route and is
    answered 200 (no face on the photo route, a crop's points on the keypoint route)."""
    access_log = service.log_dir / "access_log.log"

    def answered() -> dict[str, int]:
        lines = access_log.read_text(errors="replace").splitlines() if access_log.exists() else []
        return {route: sum(f"PUT /predictions/{route} HTTP/1.1\" 200" in line for line in lines)
                for route in ("keypoints", "faces")}

    before = answered()
    seconds = warm_up(service.inference_url, ("keypoints", "faces"), requests_per_route=10, concurrency=3)

    def all_in() -> dict[str, int] | None:  # the access log is written asynchronously
        now = answered()
        return now if all(now[route] - before[route] == 10 for route in now) else None

    assert wait_until(all_in, 10.0) is not None, (before, answered())
    assert seconds > 0 and tiny_image().startswith(b"\x89PNG")


def test_the_containers_warm_up_waits_for_every_route_then_warms_it(service, capsys):
    assert warm_up_main([service.inference_url, "--requests", "4", "--wait", "30"]) == 0
    assert "warmed up: 4 tiny requests to each of keypoints, faces" in capsys.readouterr().out
    # a route that never answers: it gives up after --wait, says so, and warms nothing
    assert warm_up_main([service.inference_url, "--routes", "nosuchmodel", "--wait", "2"]) == 1
    assert "did not all answer within 2 s" in capsys.readouterr().err
