"""The video client against a real TorchServe on free loopback ports, on clips made here from the shared frames.

The clips (facekp.clips) are data set images: they are made into tmp_path at test time, never kept. Each is
1.2 s or 2 s at 25 fps, so the whole module sends about 200 frames.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests
from PIL import Image

from facekp import clips, draw, photos
from facekp.archive import FACES, KEYPOINTS
from facekp.contract import IBUG68_NAMES, KEYPOINT_NAMES
from facekp.data import REPO_ROOT
from facekp.faces_client import ServiceDown
from facekp.processes import free_port
from facekp.video import JPEG_QUALITY, TrackSmoother, track_frames
from facekp.video_files import VideoReader, VideoWriter
from facekp.video_study import score_clip
from tests.conftest import require_data, running_service

SHORT = 1.2  # seconds: 30 frames
NME_AT_MOST = 0.08  # a face answered well: the photo path's NME on whole frames is about 3 %


@pytest.fixture(scope="module")
def frames() -> list[photos.Frame]:
    require_data()
    return photos.load_frames()


@pytest.fixture(scope="module")
def url(frames, tmp_path_factory) -> str:
    """The service's address (started after the data set is found: without it, nothing starts)."""
    with running_service(tmp_path_factory.mktemp("video"), specs=(KEYPOINTS, FACES)) as service:
        yield service.inference_url


def cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facekp.video", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def frames_of(clip: clips.Clip) -> list[np.ndarray]:
    return [clip.image(k) for k in range(len(clip))]


def one_id_each(records: list[dict]) -> bool:
    return all(len(r["faces"]) == 1 for r in records) and len({r["faces"][0]["id"] for r in records}) == 1


def jitter(clip: clips.Clip, records: list[dict]) -> float:
    return score_clip(clip, records).row(clip.fps)["jitter_pct"]


def test_a_still_face_keeps_one_id_and_smoothing_steadies_it(frames, url):
    clip = clips.still(frames, seconds=SHORT)
    raw = list(track_frames(frames_of(clip), url))
    score = score_clip(clip, raw).row(clip.fps)
    assert one_id_each(raw) and score["recall"] == 1.0 and score["nme_pct"] < 100 * NME_AT_MOST, score
    smoother = TrackSmoother()  # what --smooth does to the same answers
    smoothed = [{**r, "faces": smoother.smooth(r["time"], r["faces"], [f["id"] for f in r["faces"]], {1})}
                for r in raw]
    assert jitter(clip, smoothed) < 0.7 * jitter(clip, raw)


def test_a_gliding_face_is_followed_from_the_decoded_file(frames, url, tmp_path):
    clip = clips.glide(frames, seconds=SHORT)
    with VideoReader(clip.write(tmp_path / "glide.mp4")) as reader:
        assert reader.rate == 25 and reader.size == clips.SIZE and reader.announced == len(clip)
        records = list(track_frames(((f.time, f.image) for f in reader), url))
    assert [r["frame"] for r in records] == list(range(len(clip)))
    assert [r["time"] for r in records] == pytest.approx([k / 25 for k in range(len(clip))])
    score = score_clip(clip, records).row(clip.fps)
    assert one_id_each(records) and score["recall"] == 1.0 and score["nme_pct"] < 100 * NME_AT_MOST, score


def test_two_people_passing_keep_their_ids_in_the_cli_lines_and_the_drawn_video(frames, url, tmp_path):
    """The CLI end to end, --smooth and --draw: one line per frame in order, each face as answered with its
    id; the person hidden behind the other comes back under its own id; the drawn video has every frame."""
    clip = clips.crossing(frames)
    video = clip.write(tmp_path / "crossing.mp4")
    done = cli(video, "--out", tmp_path / "lines.jsonl", "--draw", tmp_path / "drawn.mp4", "--smooth", "--url", url)
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'lines.jsonl'}: {len(clip)} frames, and {tmp_path / 'drawn.mp4'}" in done.stderr
    lines = [json.loads(line) for line in (tmp_path / "lines.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(len(clip)))
    assert [line["time"] for line in lines] == pytest.approx([k / 25 for k in range(len(clip))])
    for line in lines:
        assert set(line) == {"frame", "time", "faces"}
        for face in line["faces"]:
            assert list(face)[0] == "id" and {"box", "score", "keypoints", "quality"} <= set(face)
            assert [p["name"] for p in face["keypoints"]] == list(KEYPOINT_NAMES)
            assert all(set(p) == {"name", "x", "y", "confidence"} for p in face["keypoints"])
    score = score_clip(clip, lines)
    assert score.id_switches == 0 and score.row(clip.fps)["recall"] >= 0.95, score.row(clip.fps)
    (behind,), (front,) = score.ids[0], score.ids[1]
    assert behind != front
    hidden = [k for k in range(len(clip)) if clip.truth(k)[0] is None]
    assert len(hidden) >= 8 and any(behind in {f["id"] for f in line["faces"]} for line in lines[hidden[-1] + 1:])

    with VideoReader(tmp_path / "drawn.mp4") as drawn:
        assert drawn.rate == Fraction(25) and drawn.size == clips.SIZE
        images = [f.image for f in drawn]
    assert len(images) == len(clip)
    x, y, w, h = (round(v) for v in lines[0]["faces"][0]["box"].values())
    top_edge = images[0][y - 1:y + 2, x + 3:x + w - 3].astype(int).mean(1)  # three rows' mean colours
    assert np.abs(top_edge - draw.LABEL).max(1).min() < 40, "the box is drawn in facekp.draw's colour"


def test_a_small_noisy_face_is_found_as_one_person(frames, url):
    clip = clips.small(frames, seconds=SHORT)
    records = list(track_frames([Image.fromarray(image) for image in frames_of(clip)], url))
    score = score_clip(clip, records)
    assert score.row(clip.fps)["recall"] >= 0.9 and len(score.ids[0]) == 1, score.row(clip.fps)


def test_68_points_pass_through_as_the_service_answers_them(frames, url):
    clip = clips.still(frames, seconds=0.2)
    images = frames_of(clip)
    records = list(track_frames(images, url, points=68))
    direct = requests.post(f"{url}/predictions/faces", headers={"Points": "68"}, timeout=60,
                           data=photos.jpeg_bytes(Image.fromarray(images[0]), JPEG_QUALITY)).json()["faces"]
    (tracked,), (answered,) = records[0]["faces"], direct
    assert [p["name"] for p in tracked["keypoints"]] == list(IBUG68_NAMES)
    assert set(tracked) - {"id"} == set(answered)  # every field passed through, unknown ones too
    assert tracked["box"] == pytest.approx(answered["box"], abs=0.2)  # batched with other frames, or alone
    for got, want in zip(tracked["keypoints"], answered["keypoints"], strict=True):
        assert got["name"] == want["name"] and got["x"] == pytest.approx(want["x"], abs=0.1)
        assert got["y"] == pytest.approx(want["y"], abs=0.1) and got["confidence"] == pytest.approx(want["confidence"],
                                                                                                 abs=0.01)


def test_a_cut_off_video_answers_the_frames_that_decode_and_counts_the_rest(frames, url, tmp_path):
    whole = clips.glide(frames, seconds=SHORT).write(tmp_path / "whole.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    with VideoReader(cut) as reader:
        decodable = sum(1 for _ in reader)
    assert 0 < decodable < 30
    done = cli(cut, "--out", tmp_path / "cut.jsonl", "--url", url)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert len((tmp_path / "cut.jsonl").read_text().splitlines()) == decodable
    assert f"warning: {cut} is cut off or damaged: decoding stopped after frame {decodable - 1}; " \
           f"{30 - decodable} of the 30 frames its header announces did not decode" in done.stderr


# --- bad input: no service and no data set needed ------------------------------------------------------------------
def plain_video(path, count: int = 5):
    with VideoWriter(path, Fraction(25), 64, 48) as writer:
        for k in range(count):
            writer.write(np.full((48, 64, 3), 10 * k, np.uint8))
    return path


def test_a_file_that_is_no_video_is_refused_with_exit_2(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n" * 50)
    done = cli(text, "--out", tmp_path / "out.jsonl", "--url", "http://127.0.0.1:9")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: {text} is not a video FFmpeg can read")
    missing = cli(tmp_path / "absent.mp4", "--out", tmp_path / "out.jsonl")
    assert missing.returncode == 2 and missing.stderr == f"error: {tmp_path / 'absent.mp4'}: no such file\n"
    assert not (tmp_path / "out.jsonl").exists()


def test_no_service_is_refused_with_exit_2_saying_where_and_how_to_start_one(tmp_path):
    video = plain_video(tmp_path / "plain.mp4")
    nobody = f"http://127.0.0.1:{free_port()}"
    done = cli(video, "--out", tmp_path / "out.jsonl", "--url", nobody)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == (f"error: no service answers at {nobody} (connection refused): start one with "
                           "`make serve`, or pass --url\n")
    assert not (tmp_path / "out.jsonl").exists()
    with pytest.raises(ServiceDown, match="connection refused"):
        next(track_frames([np.zeros((48, 64, 3), np.uint8)], nobody))


class Failing(BaseHTTPRequestHandler):
    """A server that is up (/ping) but answers every image with HTTP 500."""

    def do_GET(self):
        self.reply(200, b'{"status": "Healthy"}')

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.reply(500, b'{"error": "worker died", "code": 500}')

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_frames_the_service_fails_get_an_error_in_their_line_and_exit_1(tmp_path):
    video = plain_video(tmp_path / "plain.mp4", count=3)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = cli(video, "--out", tmp_path / "out.jsonl", "--url", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines == [{"frame": k, "time": k / 25, "faces": [],
                      "error": 'HTTP 500: {"error": "worker died", "code": 500}'} for k in range(3)]
    assert 'warning: 3 frames got no answer from the service (their lines have an "error")' in done.stderr


def test_a_rotation_flag_is_applied_as_players_apply_it(tmp_path):
    """A phone stores a portrait video as landscape frames with a display rotation (counter-clockwise, here a
    quarter turn): the frames are read upright, so the band on the stored frames' left ends up at the bottom."""
    import av

    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:, :8] = 255
    with av.open(str(tmp_path / "phone.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")), *stream.encode()]:
            container.mux(packet)
    with VideoReader(tmp_path / "phone.mp4") as reader:
        upright = reader.first.image
    assert reader.size == (32, 64) and upright.shape == (64, 32, 3)
    assert upright[-8:].mean() > 200 and upright[:-8].mean() < 50
