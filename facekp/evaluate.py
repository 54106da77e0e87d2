"""Score a running keypoint service over HTTP, the way its users will see it.

Every face of a data set is encoded (PNG, or JPEG), optionally resized, sent to
/predictions/keypoints by a few concurrent clients, and the answers are scored with the
course's metric in the 96x96 frame; with --points 68, the 68 iBUG points by their NME. Where the
answers carry a confidence, how well it ranks each point's error is reported too.

    python -m facekp.evaluate --url http://127.0.0.1:8080 --split validation
    python -m facekp.evaluate --data faces.csv --format jpeg --size 192
    python -m facekp.evaluate --split fold-0 --points 68
    python -m facekp.evaluate --model faces --split fold-0 --points 68    # whole frames and scenes
    python -m facekp.evaluate --model faces --split fold-0 --roll 45      # the same turned 45 degrees clockwise
    python -m facekp.evaluate --model faces --split fold-0 --hard mask    # the lower faces covered
    python -m facekp.evaluate --model dlib --split fold-0 --points 68     # dlib on the same, for comparison
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import requests
from PIL import Image

from facekp import data as facedata
from facekp import metrics
from facekp.contract import IBUG68_NAMES, IMAGE_SIZE, KEYPOINT_NAMES, rescale_pixels
from facekp.photos import HARD_CASES
from facekp.replies import RETRY_STATUSES, backoff_s, parse_reply


def encode_face(pixels: np.ndarray, fmt: str = "png", size: int = IMAGE_SIZE, quality: int = 95) -> bytes:
    """A 96x96 uint8 face -> image file bytes, resized to size x size (Lanczos)."""
    image = Image.fromarray(pixels, mode="L")
    if size != IMAGE_SIZE:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper(), **({"quality": quality} if fmt == "jpeg" else {}))
    return buffer.getvalue()


def to_model_frame(points_px: np.ndarray, size: int) -> np.ndarray:
    """Pixel coordinates in a size x size image -> the 96x96 frame (pixel-centre convention)."""
    return rescale_pixels(points_px, IMAGE_SIZE / size)


POINT_NAMES = {15: KEYPOINT_NAMES, 68: IBUG68_NAMES}


@dataclass
class Result:
    predictions: np.ndarray  # (N, points, 3): x, y as answered, and the confidence; NaN where a request failed
    latencies_ms: np.ndarray
    errors: list[str]
    seconds: float


def query_service(url: str, bodies: list[bytes], concurrency: int = 4, timeout: float = 10.0,
                  content_type: str = "application/octet-stream", progress: bool = True, retries: int = 5,
                  points: int = 15) -> Result:
    """POST each body to url with `concurrency` clients, asking for `points` points; keypoints as returned
    (image pixels) with their confidence.

    A 503/507 (full, retry later) is retried up to `retries` times after a jittered, growing pause;
    the latency then includes the pauses.
    """
    predictions = np.full((len(bodies), points, 3), np.nan)
    headers = {"Content-Type": content_type, "Points": str(points)}
    latencies = np.full(len(bodies), np.nan)
    errors: list[str] = []
    local = threading.local()
    done = [0]
    lock = threading.Lock()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session

    def one(i: int) -> None:
        start = time.perf_counter()
        try:
            for attempt in range(retries + 1):
                reply = session().post(url, data=bodies[i], headers=headers, timeout=timeout)
                if reply.status_code not in RETRY_STATUSES or attempt == retries:
                    break
                time.sleep(backoff_s(attempt))  # the service is full: come back later, not at once
            latencies[i] = (time.perf_counter() - start) * 1000
            predictions[i] = parse_reply(reply.status_code, reply.text, POINT_NAMES[points])
        except Exception as err:  # every failure is counted and reported, none stops the run
            with lock:
                errors.append(f"image {i}: {type(err).__name__}: {err}")
        with lock:
            done[0] += 1
            if progress and (done[0] % 200 == 0 or done[0] == len(bodies)):
                print(f"  {done[0]}/{len(bodies)} answered", file=sys.stderr, flush=True)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(bodies))))
    return Result(predictions, latencies, errors, time.perf_counter() - start)


def select(faces: facedata.FaceData, split: str) -> facedata.FaceData:
    return faces.subset(np.flatnonzero([facedata.in_split(person, split) for person in faces.people]))


def report(pred_96: np.ndarray, true_96: np.ndarray) -> dict:
    ok = np.isfinite(pred_96).all(axis=(1, 2))
    pred, true = pred_96[ok], true_96[ok]
    return {
        "score": metrics.score(pred, true) if ok.any() else 0.0,
        "rmse_px": metrics.rmse_px(pred, true) if ok.any() else float("nan"),
        "rmse_px_per_keypoint": metrics.rmse_px_by_name(pred, true),
        "scored": int(ok.sum()),
    }


def report_68(pred_96: np.ndarray, true_96: np.ndarray) -> dict:
    """The 68 points' NME (mean point error over the labels' outer-eye-corner distance, iBUG 36 and 45)."""
    ok = np.isfinite(pred_96).all(axis=(1, 2))
    nme = np.nanmean(metrics.relative_errors(pred_96[ok], true_96[ok], metrics.inter_ocular(true_96[ok])), axis=1)
    return {"nme_pct": 100 * float(nme.mean()) if ok.any() else float("nan"),
            "nme_over_10pct": 100 * float((nme > 0.1).mean()) if ok.any() else float("nan"), "scored": int(ok.sum())}


def report_confidence(answers_96: np.ndarray, true_96: np.ndarray, faces: facedata.FaceData) -> dict | None:
    """How well the answers' confidence ranks their points' errors (facekp.metrics.confidence_report), the errors
    over the labels' inter-ocular distance; None where the answers carry none or the faces lack the 68 labels."""
    ok = np.isfinite(answers_96).all(axis=(1, 2))
    if not ok.any() or faces.keypoints68 is None:
        return None
    errors = metrics.relative_errors(answers_96[ok, :, :2], true_96[ok], metrics.inter_ocular(faces.keypoints68[ok]))
    result = metrics.confidence_report(answers_96[ok, :, 2], errors)
    result.pop("reliability")
    return result


def print_summary(summary: dict) -> None:
    """The report as people read it."""
    if summary["points"] == 15:
        print(f"score {summary['score']:.1f}  (1 / (2 * MSE), normalized coordinates; mean face ~70, pass mark 100)")
        print(f"rmse  {summary['rmse_px']:.3f} px in the 96x96 frame, over {summary['scored']}/{summary['faces']} "
              f"faces ({summary['failed']} failed)")
        per_keypoint = summary["rmse_px_per_keypoint"].items()
        print("per keypoint rmse (px): " + ", ".join(f"{k} {v:.2f}" for k, v in per_keypoint))
    else:
        print(f"68-point NME {summary['nme_pct']:.2f} % of the inter-ocular distance over {summary['scored']}/"
              f"{summary['faces']} faces ({summary['failed']} failed); over 10 %: {summary['nme_over_10pct']:.1f} %")
    if summary["confidence"]:
        print(f"confidence of the {summary['points']} points: {metrics.describe_confidence(summary['confidence'])}")
    print("latency ms: " + "  ".join(f"{k} {v}" for k, v in summary["latency_ms"].items())
          + f"   throughput {summary['throughput_per_s']} images/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inference address of the service")
    parser.add_argument("--model", default="keypoints",
                        help="keypoints (crops), faces (whole frames and scenes), or dlib: its HOG detector and "
                             "68-point predictor on the frames and scenes, in-process (facekp.dlib_baseline)")
    parser.add_argument("--data", default=None, help="npz or Kaggle CSV (default: the shared data set)")
    parser.add_argument("--split", choices=facedata.SPLITS,
                        default="all", help="which people to send; 'validation' = the people training held out; "
                                            "fold-K: the people of fold K, whom that fold's model never saw")
    parser.add_argument("--format", choices=["png", "jpeg"], default="png")
    parser.add_argument("--size", type=int, default=IMAGE_SIZE, help="side of the image sent (keypoints scaled back)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="clients at once (default 4; 1 for --model faces, whose latency is single-client)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--limit", type=int, default=0, help="send only the first N faces")
    parser.add_argument("--json", dest="json_out", help="also write the report as JSON here")
    parser.add_argument("--scenes", type=int, default=50, help="--model faces: multi-face scenes to build and send")
    parser.add_argument("--points", type=int, choices=(15, 68), default=15,
                        help="score the 15 named keypoints or the 68 iBUG points (NME)")
    parser.add_argument("--hard", choices=HARD_CASES, default=None,
                        help="--model faces/dlib: every frame and scene made hard first: blurred, dark, JPEG "
                             "quality 8, the lower face covered, or 0.35x the size (facekp.photos.hardened)")
    parser.add_argument("--roll", type=float, default=0.0,
                        help="--model faces/dlib: turn every frame and scene this many degrees clockwise first (a head "
                             "rolled that way), on a canvas grown to hold it, its labels turned alongside")
    args = parser.parse_args(argv)
    if args.model in ("faces", "dlib"):  # the photo path: whole frames and multi-face scenes (facekp.photos)
        from facekp import dlib_baseline, photos

        try:
            if args.model == "dlib":
                target, scorer = "dlib (HOG, 68-point predictor), in-process", dlib_baseline.DlibLandmarks().score
            else:
                url, concurrency = f"{args.url.rstrip('/')}/predictions/faces", args.concurrency or 1
                target = f"{url}, {concurrency} concurrent"
                scorer = functools.partial(photos.score_over_http, url, concurrency=concurrency)
            return photos.evaluate_main(target, scorer, args.data, args.split, args.scenes, points=args.points,
                                        roll=args.roll, hard=args.hard)
        except (facedata.DataError, dlib_baseline.DlibMissing) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    try:
        faces = select(facedata.load(args.data), args.split)
    except facedata.DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    faces = faces.subset(np.flatnonzero(facedata.complete_rows(faces)))
    if args.points == 68:
        if faces.keypoints68 is None:
            print("error: --points 68 needs faces with the 68 iBUG labels (the shared data set has them)",
                  file=sys.stderr)
            return 2
        faces = faces.subset(np.flatnonzero(np.isfinite(faces.keypoints68).all(axis=(1, 2))))
    if args.limit:
        faces = faces.subset(np.arange(min(args.limit, len(faces))))
    args.concurrency = args.concurrency or 4
    url = f"{args.url.rstrip('/')}/predictions/{args.model}"
    print(f"sending {len(faces)} faces of {len(set(faces.people))} people ({args.split}) as {args.size}x{args.size} "
          f"{args.format.upper()} to {url}, {args.concurrency} concurrent, asking for {args.points} points",
          file=sys.stderr)
    bodies = [encode_face(img, args.format, args.size) for img in faces.images]
    result = query_service(url, bodies, args.concurrency, args.timeout, f"image/{args.format}", points=args.points)
    answers = np.concatenate([to_model_frame(result.predictions[..., :2], args.size), result.predictions[..., 2:]], -1)
    truth = faces.keypoints if args.points == 15 else faces.keypoints68
    summary = report(answers[..., :2], truth) if args.points == 15 else report_68(answers[..., :2], truth)
    confidence = report_confidence(answers, truth, faces)
    lat = result.latencies_ms[np.isfinite(result.latencies_ms)]
    summary.update({
        "faces": len(faces), "failed": len(result.errors), "format": args.format, "size": args.size,
        "points": args.points, "confidence": confidence,
        "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 2) for q in (50, 90, 95, 99)} if len(lat) else {},
        "throughput_per_s": round(len(faces) / result.seconds, 1),
    })
    for line in result.errors[:5]:
        print(f"  failed: {line}", file=sys.stderr)
    print_summary(summary)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
