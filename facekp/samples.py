"""Write a few faces of the validation people as image files, to try the service with.

    python -m facekp.samples --out samples --count 4
    python -m facekp.samples --out samples --if-found   # no data set: one line, exit 0 (make serve)
Images of the data set are never committed (its source's terms): samples/face_* is git-ignored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facekp import data as facedata
from facekp.evaluate import encode_face
from facekp.torchserve import TRY_IMAGE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("samples"))
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--data", default=None)
    parser.add_argument("--if-found", action="store_true",
                        help="a missing data set is not an error: say so in one line and write nothing")
    args = parser.parse_args(argv)
    if args.if_found and not facedata.data_path(args.data).exists():
        print(f"samples: no data set at {facedata.data_path(args.data)} (--data or ${facedata.DATA_ENV}): "
              f"no faces of it written; the committed {TRY_IMAGE} is there to try")
        return 0
    try:
        _, validation = facedata.split_by_person(facedata.load(args.data))
    except facedata.DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    step = max(1, len(validation) // args.count)
    for n in range(args.count):
        pixels = validation.images[n * step]
        (args.out / f"face_{n}.png").write_bytes(encode_face(pixels, "png"))
        (args.out / f"face_{n}_192.jpg").write_bytes(encode_face(pixels, "jpeg", 192))
    print(f"wrote {args.count} faces as {args.out}/face_N.png (96x96) and face_N_192.jpg (192x192)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
