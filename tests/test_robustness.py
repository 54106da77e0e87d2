"""Bad input over HTTP against a real TorchServe: each bad request gets its own clear answer.

Every case is sent in one concurrent burst with good faces, so that (with a 250 ms batch delay)
they share a server-side batch: the good faces must still be answered 200, and the worker
must neither die nor restart (same pid in the management API, no new WORKER_STOPPED in the
log). The table in docs/reliability.md comes from this file:

    FACEKP_CASES_MD=cases.md .venv/bin/python -m pytest tests/test_robustness.py
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from facekp.contract import KEYPOINT_NAMES
from facekp.torchserve import SHIPPED_CONFIG, Service
from tests.conftest import running_service

TIMEOUT = 60
MAX_REQUEST_SIZE = 6_553_500  # config/config.properties
OBSERVED: list[tuple[str, int, str, str]] = []
"""(case, status, message, answered by) for the docs table."""


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    # A long batch delay so that a burst of concurrent requests shares one batch.
    config = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 250\nresponseTimeout: 60\n"
    try:
        with running_service(tmp_path_factory.mktemp("robustness"), config) as svc:
            yield svc
    finally:
        _write_table()


def _write_table() -> None:
    out = os.environ.get("FACEKP_CASES_MD")
    if not out or not OBSERVED:
        return
    rows = ["| input | status | message (response body) | answered by |", "|---|---|---|---|"]
    for name, status, message, source in OBSERVED:
        cell = message.replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {name} | {status} | {cell} | {source} |")
    Path(out).write_text("\n".join(rows) + "\n")


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def url(svc: Service) -> str:
    return f"{svc.inference_url}/predictions/keypoints"


Send = Callable[[str], requests.Response]


def post(body: bytes, content_type: str | None = "application/octet-stream", method: str = "POST") -> Send:
    """A raw-body request; content_type None sends no Content-Type header at all (like curl -T)."""
    def send(target: str) -> requests.Response:
        request = requests.Request(method, target, data=body).prepare()
        request.headers.pop("Content-Type", None)
        if content_type is not None:
            request.headers["Content-Type"] = content_type
        with requests.Session() as session:
            return session.send(request, timeout=TIMEOUT)
    return send


def multipart(files: dict) -> Send:
    return lambda target: requests.post(target, files=files, timeout=TIMEOUT)


@dataclass
class Case:
    send: Send
    status: int
    words: str  # in the response body
    source: str = "handler"  # or "frontend": TorchServe answers before the handler sees the request
    reference: bytes | None = None  # for 200s: a plain PNG of the displayed image, keypoints must agree
    tolerance: float = 0.05  # pixels


def keypoints(reply: requests.Response) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [k["name"] for k in body["keypoints"]] == list(KEYPOINT_NAMES)
    return np.array([[k["x"], k["y"]] for k in body["keypoints"]])


@pytest.fixture(scope="module")
def faces96(validation_faces) -> list[Image.Image]:
    return [Image.fromarray(validation_faces.images[i], mode="L") for i in range(8)]


@pytest.fixture(scope="module")
def cases(faces96) -> dict[str, Case]:
    face = faces96[5]
    png = encode(face, "PNG")
    big = encode(face.resize((400, 400), Image.Resampling.LANCZOS), "PNG")
    big_jpeg = encode(face.resize((400, 400), Image.Resampling.LANCZOS), "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed after a 90-degree clockwise turn
    rotated = face.transpose(Image.Transpose.ROTATE_90)
    return {
        "empty body": Case(post(b"", "image/png"), 400, "empty request body"),
        "empty body, no Content-Type": Case(post(b"", None), 400, "empty request body"),
        "text, Content-Type text/plain": Case(post(b"hello, this is text", "text/plain"), 415, "expected image bytes"),
        "text, Content-Type application/octet-stream": Case(post(b"hello, this is text"), 415, "not a readable image"),
        "JSON, Content-Type application/json": Case(post(b'{"image": "face.png"}', "application/json"), 415,
                                                    "got dict"),
        "random bytes (4 KB)": Case(post(np.random.default_rng(0).bytes(4096)), 415, "not a readable image"),
        "truncated PNG (first half of a 400x400)": Case(post(big[: len(big) // 2], "image/png"), 400,
                                                        "image data is damaged"),
        "truncated JPEG (first half of a 400x400)": Case(post(big_jpeg[: len(big_jpeg) // 2], "image/jpeg"), 400,
                                                         "image data is damaged"),
        "1x1 PNG": Case(post(encode(Image.new("L", (1, 1)), "PNG"), "image/png"), 422, "1x1"),
        "decompression bomb: 30000x30000 PNG": Case(
            post(encode(Image.new("1", (30000, 30000)), "PNG"), "image/png"), 413, "900000000 pixels"),
        "9000x9000 PNG (81 MP, under Pillow's own bomb limit)": Case(
            post(encode(Image.new("1", (9000, 9000)), "PNG"), "image/png"), 413, "9000x9000"),
        "5000000x8 PNG strip (40 MP)": Case(post(encode(Image.new("L", (5_000_000, 8)), "PNG"), "image/png"), 413,
                                            "too elongated"),
        "animated GIF (2 frames)": Case(
            post(encode(face, "GIF", save_all=True, append_images=[face.rotate(90)]), "image/gif"), 200,
            "keypoints", reference=png),
        "16-bit grayscale PNG": Case(post(encode(Image.fromarray(np.asarray(face, np.uint16) * 257), "PNG")), 200,
                                     "keypoints", reference=png),
        "CMYK JPEG": Case(post(encode(face.convert("CMYK"), "JPEG", quality=95), "image/jpeg"), 200, "keypoints",
                          reference=png, tolerance=1.5),
        "RGBA PNG (half-transparent)": Case(post(encode(_with_alpha(face), "PNG"), "image/png"), 200, "keypoints",
                                            reference=png),
        "palette PNG (256 colours)": Case(post(encode(face.convert("RGB").quantize(256), "PNG"), "image/png"), 200,
                                          "keypoints", reference=png, tolerance=1.0),
        "JPEG with EXIF orientation 6 (rotated 90)": Case(
            post(encode(rotated, "JPEG", exif=exif, quality=95), "image/jpeg"), 200, "keypoints",
            reference=encode(face, "JPEG", quality=95), tolerance=1.5),
        "non-square PNG 192x160": Case(post(encode(face.resize((192, 192)).crop((0, 16, 192, 176)), "PNG")), 200,
                                       "keypoints"),
        "PNG, no Content-Type (POST)": Case(post(png, None), 200, "keypoints", reference=png),
        "PNG, no Content-Type (PUT, like curl -T)": Case(post(png, None, "PUT"), 200, "keypoints", reference=png),
        "PNG, Content-Type text/plain": Case(post(png, "text/plain"), 200, "keypoints", reference=png),
        "PNG, Content-Type application/json": Case(post(png, "application/json"), 200, "keypoints", reference=png),
        "PNG, Content-Type application/x-www-form-urlencoded (curl --data-binary's default)": Case(
            post(png, "application/x-www-form-urlencoded"), 200, "keypoints", reference=png),
        "a form that does not decode (a=%zz), Content-Type application/x-www-form-urlencoded": Case(
            post(b"a=%zz", "application/x-www-form-urlencoded"), 400, "and is not one: send an image", "frontend"),
        "form fields a=1&b=2, Content-Type application/x-www-form-urlencoded": Case(
            post(b"a=1&b=2", "application/x-www-form-urlencoded"), 415, "sent as an HTML form"),
        "multipart, one file (curl -F data=@face.png)": Case(multipart({"data": ("face.png", png, "image/png")}), 200,
                                                            "keypoints", reference=png),
        "multipart, one file and a text field": Case(
            multipart({"image": ("face.png", png, "image/png"), "note": (None, "hello")}), 200, "keypoints",
            reference=png),
        "multipart, no file (a text field only)": Case(multipart({"note": (None, "hello")}), 400, "holds no file"),
        "multipart, two files": Case(multipart({"a": ("a.png", png, "image/png"), "b": ("b.png", png, "image/png")}),
                                     400, "holds 2 files"),
        "multipart, one empty file": Case(multipart({"data": ("face.png", b"", "image/png")}), 400,
                                          "empty request body"),
        f"body over max_request_size ({MAX_REQUEST_SIZE + 1:,} bytes)": Case(
            post(png + b"\0" * (MAX_REQUEST_SIZE + 1 - len(png)), "image/png"), 413, "", "frontend"),
    }


def _with_alpha(face: Image.Image) -> Image.Image:
    image = face.convert("RGBA")
    image.putalpha(128)
    return image


CASE_NAMES = [
    "empty body", "empty body, no Content-Type", "text, Content-Type text/plain",
    "text, Content-Type application/octet-stream", "JSON, Content-Type application/json", "random bytes (4 KB)",
    "truncated PNG (first half of a 400x400)", "truncated JPEG (first half of a 400x400)", "1x1 PNG",
    "decompression bomb: 30000x30000 PNG", "9000x9000 PNG (81 MP, under Pillow's own bomb limit)",
    "5000000x8 PNG strip (40 MP)", "animated GIF (2 frames)", "16-bit grayscale PNG", "CMYK JPEG",
    "RGBA PNG (half-transparent)", "palette PNG (256 colours)", "JPEG with EXIF orientation 6 (rotated 90)",
    "non-square PNG 192x160", "PNG, no Content-Type (POST)", "PNG, no Content-Type (PUT, like curl -T)",
    "PNG, Content-Type text/plain", "PNG, Content-Type application/json",
    "PNG, Content-Type application/x-www-form-urlencoded (curl --data-binary's default)",
    "a form that does not decode (a=%zz), Content-Type application/x-www-form-urlencoded",
    "form fields a=1&b=2, Content-Type application/x-www-form-urlencoded",
    "multipart, one file (curl -F data=@face.png)", "multipart, one file and a text field",
    "multipart, no file (a text field only)", "multipart, two files", "multipart, one empty file",
    f"body over max_request_size ({MAX_REQUEST_SIZE + 1:,} bytes)",
]


def test_the_table_covers_every_case(cases):
    assert sorted(CASE_NAMES) == sorted(cases)


def worker_state(svc: Service) -> tuple[list[int], int]:
    workers = svc.workers()
    assert workers and all(w["status"] == "READY" for w in workers), workers
    return [w["pid"] for w in workers], svc.worker_stops()


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_in_a_batch_with_good_faces(service, cases, faces96, name):
    case = cases[name]
    before = worker_state(service)
    goods = [post(encode(faces96[i], "PNG"), "image/png") for i in range(3)]
    if case.reference is not None:
        goods[1] = post(case.reference, "image/png")
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(send, url(service)) for send in (goods[0], case.send, goods[1], goods[2])]
        replies = [f.result() for f in futures]
    reply = replies[1]
    message = reply.text if reply.status_code != 200 else "keypoints (15 named points)"
    if case.source == "handler" and reply.status_code != 200:
        body = reply.json()
        assert body["code"] == reply.status_code, body
        message = body["error"]
    elif case.source == "frontend" and reply.text:
        body = reply.json()
        message = f'{body["type"]}: {body["message"]}'[:160]
    OBSERVED.append((name, reply.status_code, message or "(empty body)", case.source))

    assert reply.status_code == case.status, reply.text[:300]
    assert case.words in reply.text
    assert all(r.status_code == 200 for r in (replies[0], replies[2], replies[3])), [r.text[:200] for r in replies]
    if case.reference is not None:
        assert np.abs(keypoints(reply) - keypoints(replies[2])).max() <= case.tolerance
    assert worker_state(service) == before, "the worker died or restarted"


@pytest.mark.usefixtures("faces96")  # the bursts above send the data set's faces
def test_bad_and_good_requests_really_shared_batches(service):
    """The bursts above were batched together: some batch holds both an answer and a refusal."""
    log = (service.log_dir / "model_log.log").read_text(errors="replace")
    batches = [tuple(map(int, m)) for m in re.findall(r"batch of (\d+): (\d+) answered, (\d+) refused", log)]
    assert any(size > 1 and answered > 0 and refused > 0 for size, answered, refused in batches), batches


def test_exif_orientation_gives_keypoints_in_the_displayed_image(service, faces96):
    """The answer for the EXIF-rotated file matches the upright face, not the stored pixels."""
    face = faces96[6]
    rotated = face.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    with_exif = keypoints(post(encode(rotated, "JPEG", exif=exif, quality=95))(url(service)))
    upright = keypoints(post(encode(face, "JPEG", quality=95))(url(service)))
    stored = keypoints(post(encode(rotated, "JPEG", quality=95))(url(service)))
    assert np.abs(with_exif - upright).max() < 1.5
    assert np.abs(with_exif - stored).mean() > 5  # the rotation matters: ignoring EXIF would be far off


def test_non_square_maps_back_to_the_image_as_sent(service, faces96, validation_faces):
    """A 192x160 image is padded (edge pixels) to a centred 192x192 square: same answer minus the pad."""
    square = faces96[7].resize((192, 192), Image.Resampling.LANCZOS)
    wide = square.crop((0, 16, 192, 176))  # 192x160: pad_y = 16
    padded = np.pad(np.asarray(wide), ((16, 16), (0, 0)), mode="edge")
    got = keypoints(post(encode(wide, "PNG"))(url(service)))
    via_square = keypoints(post(encode(Image.fromarray(padded), "PNG"))(url(service)))
    assert np.abs(got - (via_square - [0, 16])).max() < 0.05
    truth = (validation_faces.keypoints[7] + 0.5) * 2 - 0.5 - [0, 16]  # the 96 frame -> 192x160 pixels
    assert np.sqrt(((got - truth) ** 2).mean()) < 10  # a trained model, roughly right


def _memory_kb(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(value.split()[0]) for key, value in re.findall(r"^(VmRSS|VmHWM):\s+(.+)$", status, re.M)}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_bombs_are_refused_without_a_memory_spike(service):
    """The worker's peak RSS (VmHWM, reset through clear_refs) barely moves for 900-MP and 40-MP bombs."""
    pid = service.workers()[0]["pid"]
    bombs = [encode(Image.new("1", (30000, 30000)), "PNG"), encode(Image.new("L", (5_000_000, 8)), "PNG"),
             encode(Image.new("1", (9000, 9000)), "PNG")]
    before = _memory_kb(pid)
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
        baseline = _memory_kb(pid)["VmRSS"]
    except OSError:
        baseline = before["VmHWM"]  # cannot reset: any spike must then exceed the old peak
    for bomb in bombs:
        assert post(bomb, "image/png")(url(service)).status_code == 413
    peak_mb = (_memory_kb(pid)["VmHWM"] - baseline) / 1024
    print(f"worker peak RSS growth over 3 bombs: {peak_mb:.1f} MB (RSS before {before['VmRSS'] / 1024:.0f} MB)")
    assert peak_mb < 50
    assert psutil.pid_exists(pid) and service.workers()[0]["pid"] == pid


def test_exposure_defaults(service):
    """Management and metrics on 127.0.0.1 only, model registration over HTTP off."""
    shipped = dict(line.split("=", 1) for line in SHIPPED_CONFIG.read_text().splitlines()
                   if "=" in line and not line.startswith("#"))
    assert shipped["management_address"].startswith("http://127.0.0.1:")
    assert shipped["metrics_address"].startswith("http://127.0.0.1:")
    assert shipped["enable_model_api"] == "false"
    frontend = psutil.Process(service.pid())
    connections = getattr(frontend, "net_connections", frontend.connections)  # psutil >= 6 / 5.9 (kserve's pin)
    listening = {c.laddr.port: c.laddr.ip for c in connections("tcp") if c.status == psutil.CONN_LISTEN}
    for port in (service.management_port, service.metrics_port):
        address = ipaddress.ip_address(listening[port])
        assert (getattr(address, "ipv4_mapped", None) or address).is_loopback, listening[port]
    register = requests.post(f"{service.management_url}/models", params={"url": "keypoints.mar"}, timeout=TIMEOUT)
    assert register.status_code >= 400, register.text
    OBSERVED.append(("POST /models?url=... on the management API (registration)", register.status_code,
                     f'{register.json()["type"]}: {register.json()["message"]}', "frontend"))
    assert json.loads(requests.get(f"{service.management_url}/models", timeout=TIMEOUT).text)["models"]
