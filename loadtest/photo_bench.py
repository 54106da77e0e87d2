"""The photo mix beside the crop mix: /predictions/faces served, at 1 and 4 clients (part of `make bench`).

    python -m loadtest.photo_bench            # alone, ~1.5 min; writes docs/performance/bench_photos.csv

A TorchServe with both models (the shipped config/*.yaml) on free loopback ports; the photo mix is
half whole video frames (one face each) and half 1280x960 scenes of 2 to 6 faces
(loadtest.images.build_photo_mix). Reported: photos/s, faces/s, p50/p95/p99 per photo.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import requests

from facekp.archive import FACES, build_archive
from facekp.data import REPO_ROOT
from facekp.torchserve import Service, free_ports
from loadtest.cpu import log, wait_for_quiet
from loadtest.images import build_photo_mix, describe
from loadtest.loadgen import run_load

OUT = REPO_ROOT / "docs" / "performance" / "bench_photos.csv"


def faces_ok(status: int, body: bytes) -> bool:
    return status == 200 and body.startswith(b'{"faces":')


def photo_points(concurrencies: tuple[int, ...] = (1, 4), duration: float = 15.0, photos: int = 32) -> list[dict]:
    uploads = build_photo_mix(photos)
    faces_per_photo = {}
    log(f"photo mix: {describe(uploads)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="facekp-photos-") as tmp:
        archive = build_archive(export_dir=Path(tmp) / "store")
        build_archive(export_dir=Path(tmp) / "store", spec=FACES)
        service = Service(run_dir=Path(tmp) / "run", model_store=archive.parent, models=("keypoints", "faces"),
                          **free_ports())
        service.start(archive)
        try:
            service.wait_ready(240)
            url = f"{service.inference_url}/predictions/faces"
            for upload in uploads:  # warm-up, and how many faces each photo holds
                faces_per_photo[upload.body] = len(requests.put(url, data=upload.body, timeout=120).json()["faces"])
            mean_faces = sum(faces_per_photo.values()) / len(faces_per_photo)
            for clients in concurrencies:
                wait_for_quiet(60, [service.pid()])
                result = run_load(url, uploads, clients, duration=duration, warmup=2.0, check=faces_ok)
                row = {"model": "faces", "mix": describe(uploads), "clients": clients, "photos": result.ok,
                       "errors": result.errors, "photos_per_s": round(result.throughput, 2),
                       "faces_per_s": round(result.throughput * mean_faces, 1),
                       "p50_ms": round(result.percentile(50), 1), "p95_ms": round(result.percentile(95), 1),
                       "p99_ms": round(result.percentile(99), 1), "faces_per_photo": round(mean_faces, 2)}
                rows.append(row)
                log(f"  faces, {clients} client(s): {row['photos_per_s']} photos/s ({row['faces_per_s']} faces/s), "
                    f"p50 {row['p50_ms']} p95 {row['p95_ms']} p99 {row['p99_ms']} ms, errors {row['errors']}")
        finally:
            service.stop()
    return rows


def write(rows: list[dict], path: Path = OUT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    write(photo_points(duration=args.duration), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
