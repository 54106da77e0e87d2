"""Where one photo's time goes: the photo path's stages in-process, then the same photo over HTTP, one at a time.

    python -m loadtest.photo_latency                  # a ~170x210 video frame and a 1280x960 scene, ~1 min

In-process, with the faces worker's threads (config/faces-config.yaml): decoding, finding the faces, reading
them (the keypoint model's passes), and the JSON answer. Over HTTP, against a TorchServe with both models on
free loopback ports: the client's time (a new connection per request, as curl makes), and what TorchServe logs
of it: the time in the queue (waiting for a batch) and the handler's own. Medians of --repeats requests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from facekp import photos
from facekp.archive import FACES, FACES_CONFIG, MODEL_FILE, build_archive
from facekp.contract import NUM_KEYPOINTS
from facekp.torchserve import Service, free_ports
from handler.face_detector import FaceDetector
from handler.faces import FacesSettings, Reader, answer_photos, faces_json, keypoints_for, second_look
from handler.inference import load_model
from handler.processing import decode_photo
from handler.roll import find_faces, first_square
from loadtest.cpu import log, wait_for_quiet

FRAME_SIZE = (170, 210)


def photos_to_time(frames_dir: str | None = None) -> dict[str, bytes]:
    """The video frame of the shared set nearest 170x210 (its own JPEG) and a 1280x960 scene of 2-6 faces."""
    frames = photos.load_frames(frames_dir)
    frame = min(frames, key=lambda f: np.abs(np.subtract(Image.open(f.path).size, FRAME_SIZE)).sum())
    (scene,) = photos.build_scenes(frames, 1, seed=1)
    return {f"frame {Image.open(frame.path).size[0]}x{Image.open(frame.path).size[1]}": frame.path.read_bytes(),
            "scene 1280x960": photos.jpeg_bytes(scene.image)}


def median_ms(work: Callable[[], object], repeats: int) -> float:
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def in_process(body: bytes, repeats: int) -> dict[str, float]:
    """Median ms of each stage of the photo path, and of the whole, with the faces worker's settings."""
    settings = FacesSettings.from_block(yaml.safe_load(FACES_CONFIG.read_text()).get("handler"))
    torch.set_num_threads(settings.torch_threads or torch.get_num_threads())
    detector = FaceDetector(settings.score_threshold, max_side=settings.detect_max_side,
                            threads=settings.torch_threads or 1)
    served = load_model(MODEL_FILE, torch.device("cpu"), settings.precision, views=settings.views_cpu,
                        runtime=settings.runtime)
    reader = Reader(served.every_point, served.framing, settings.refine_steps)
    photo, _ = decode_photo(body)
    rgb, gray = np.asarray(photo), np.asarray(photo.convert("L"))
    found = find_faces(detector, rgb)

    def read() -> list:
        read = keypoints_for([gray], [[first_square(d) for d in found]], reader)
        second_look([rgb], [gray], [list(found)], read, detector, reader)
        return read

    answered = read()
    points = [sq.to_image(out[:NUM_KEYPOINTS, :2]) for sq, out in answered[0]]
    return {"faces": len(found),
            "decode": median_ms(lambda: decode_photo(body), repeats),
            "find faces": median_ms(lambda: find_faces(detector, rgb), repeats),
            "read faces": median_ms(read, repeats),
            "answer JSON": median_ms(lambda: json.dumps(faces_json(found, points, *photo.size)), repeats),
            "whole": median_ms(lambda: answer_photos([{"body": body}], detector, served.every_point,
                                                     refine_steps=settings.refine_steps, frame_model=served.framing),
                               repeats)}


def metric_ms(log_text: str, name: str) -> list[float]:
    """Every value of one TorchServe metric for the faces model in its metrics log, in ms."""
    found = re.findall(rf"{name}\.(\w+):([0-9.]+)\|#(?:ModelName|model_name):faces", log_text)
    return [float(v) / (1000 if unit == "Microseconds" else 1) for unit, v in found]


def over_http(service: Service, body: bytes, repeats: int) -> dict[str, float]:
    """Median client ms (a new connection per request), and TorchServe's queue and handler ms, of one photo."""
    logs = service.log_dir
    before = {f: (logs / f).read_text() if (logs / f).exists() else "" for f in ("ts_metrics.log", "model_metrics.log")}
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        connection = http.client.HTTPConnection(service.host, service.inference_port, timeout=60)
        connection.request("PUT", "/predictions/faces", body, {"Content-Type": "application/octet-stream"})
        reply = connection.getresponse()
        answer = reply.read()
        connection.close()
        times.append(time.perf_counter() - start)
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}: {answer[:200]!r}")
    time.sleep(1.5)  # the metrics logs are written asynchronously
    new = {f: (logs / f).read_text()[len(text):] for f, text in before.items()}
    return {"client": 1000 * float(np.median(times[1:])),
            "frontend (TorchServe)": float(np.median(metric_ms(new["ts_metrics.log"],
                                                               "ts_inference_latency_microseconds"))),
            "queue (TorchServe)": float(np.median(metric_ms(new["ts_metrics.log"], "ts_queue_latency_microseconds"))),
            "handler (TorchServe)": float(np.median(metric_ms(new["model_metrics.log"], "PredictionTime")))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--data", default=None, help="the frames folder (default ../shared/data/frames)")
    args = parser.parse_args(argv)
    try:
        bodies = photos_to_time(args.data)
    except photos.facedata.DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    wait_for_quiet(120)
    rows = {name: in_process(body, args.repeats) for name, body in bodies.items()}
    with tempfile.TemporaryDirectory(prefix="facekp-latency-") as tmp:
        store = Path(tmp) / "store"
        archive = build_archive(export_dir=store)
        build_archive(export_dir=store, spec=FACES)
        service = Service(run_dir=Path(tmp) / "run", model_store=store, models=("keypoints", "faces"), **free_ports())
        service.start(archive)
        try:
            service.wait_ready(240)
            for name, body in bodies.items():
                wait_for_quiet(60, [service.pid()])
                rows[name].update(over_http(service, body, args.repeats))
        finally:
            service.stop()
    stages = list(next(iter(rows.values())))
    print("| stage, ms (median) | " + " | ".join(rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    for stage in stages:
        print(f"| {stage} | " + " | ".join(f"{row[stage]:.1f}" for row in rows.values()) + " |")
    log(f"{torch.get_num_threads()} torch thread(s) in-process; {args.repeats} repeats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
