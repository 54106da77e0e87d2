"""One-command headless load test: run the Locust file, write CSV + HTML reports, judge the result.

    python -m loadtest.run --host http://127.0.0.1:8080 --users 16 --spawn-rate 16 --duration 60s --p95-ms 500

Exits 0 only if requests were made, none failed and the overall p95 latency is within --p95-ms.
Locust stops by itself after --duration; a run that overstays it by a minute is killed.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

LOADTEST_DIR = Path(__file__).resolve().parent
LOCUSTFILE = LOADTEST_DIR / "locustfile.py"
REPORTS = LOADTEST_DIR / "reports"
GRACE_S = 60
"""Seconds past --duration (plus start-up) after which a hung Locust is killed."""


def parse_timespan(text: str) -> int:
    """Locust's run-time syntax ('90', '60s', '5m', '1h30m') -> seconds, without importing Locust."""
    if text.strip().isdigit():
        return int(text)
    parts = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?\s*", text)
    if not parts or not any(parts.groups()):
        raise ValueError(f"not a duration: {text!r} (use e.g. 60s, 5m, 1h30m)")
    hours, minutes, seconds = (int(g or 0) for g in parts.groups())
    return 3600 * hours + 60 * minutes + seconds


@dataclass
class Verdict:
    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rps: float
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(stats_csv: Path, p95_limit_ms: float) -> Verdict:
    """Read Locust's Aggregated row and list what makes the run a failure."""
    if not stats_csv.is_file():
        return Verdict(0, 0, 0, 0, 0, 0, [f"Locust wrote no statistics ({stats_csv} is missing)"])
    with open(stats_csv, newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows.get("Aggregated")
    if total is None:
        return Verdict(0, 0, 0, 0, 0, 0, [f"{stats_csv} has no Aggregated row"])

    def number(column: str) -> float:
        value = total.get(column, "")
        return float(value) if value not in ("", "N/A") else 0.0

    verdict = Verdict(int(number("Request Count")), int(number("Failure Count")), number("50%"), number("95%"),
                      number("99%"), number("Requests/s"), [])
    if verdict.requests == 0:
        verdict.problems.append("no request was made")
    if verdict.failures:
        verdict.problems.append(f"{verdict.failures} of {verdict.requests} requests failed "
                                f"(see {stats_csv.name.replace('_stats.csv', '_failures.csv')})")
    if p95_limit_ms and verdict.p95_ms > p95_limit_ms:
        verdict.problems.append(f"p95 latency {verdict.p95_ms:.0f} ms is above the {p95_limit_ms:g} ms limit")
    return verdict


def locust_command(host: str, users: int, spawn_rate: float, duration: str, prefix: Path, p95_ms: float,
                   model: str) -> list[str]:
    return [sys.executable, "-m", "locust", "--headless", "-f", str(LOCUSTFILE), "--host", host,
            "-u", str(users), "-r", str(spawn_rate), "-t", duration, "--csv", str(prefix),
            "--html", f"{prefix}.html", "--only-summary", "--p95-ms", str(p95_ms),
            "--model", model, "--exit-code-on-error", "1"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="http://127.0.0.1:8080", help="inference address; all traffic goes here")
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--spawn-rate", type=float, default=16, help="users started per second")
    parser.add_argument("--duration", default="60s", help="run time, e.g. 60s, 5m")
    parser.add_argument("--p95-ms", type=float, default=500, help="fail if the overall p95 is above this (0: off)")
    parser.add_argument("--model", default="keypoints")
    parser.add_argument("--reports", type=Path, default=REPORTS, help="folder for the CSV and HTML reports")
    parser.add_argument("--name", default="loadtest", help="report file prefix")
    args = parser.parse_args(argv)

    if urlparse(args.host).scheme not in ("http", "https") or not urlparse(args.host).hostname:
        parser.error(f"--host must be a URL like http://127.0.0.1:8080, not {args.host!r}")
    try:
        seconds = parse_timespan(args.duration)
    except ValueError as err:
        parser.error(str(err))
    args.reports.mkdir(parents=True, exist_ok=True)
    prefix = args.reports / args.name
    for old in args.reports.glob(f"{args.name}_*.csv"):
        old.unlink()  # a stale CSV must never pass for this run's result
    cmd = locust_command(args.host, args.users, args.spawn_rate, args.duration, prefix, args.p95_ms, args.model)
    print(f"load test: {args.users} users (+{args.spawn_rate:g}/s) for {seconds} s against {args.host}, "
          f"p95 limit {args.p95_ms:g} ms", flush=True)
    try:
        code = subprocess.run(cmd, cwd=LOADTEST_DIR.parent, timeout=seconds + GRACE_S).returncode
    except subprocess.TimeoutExpired:
        print(f"error: Locust did not stop within {seconds + GRACE_S} s; killed", file=sys.stderr)
        return 1
    verdict = judge(Path(f"{prefix}_stats.csv"), args.p95_ms)
    print(f"{verdict.requests} requests, {verdict.failures} failed, {verdict.rps:.1f} req/s, "
          f"latency ms p50 {verdict.p50_ms:.0f} p95 {verdict.p95_ms:.0f} p99 {verdict.p99_ms:.0f}")
    print(f"reports: {prefix}_stats.csv, {prefix}_failures.csv, {prefix}.html")
    for problem in verdict.problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    if code and verdict.ok:
        print(f"FAILED: Locust exited with code {code}", file=sys.stderr)
    return 0 if verdict.ok and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
