"""Locust load test: real faces (96x96 PNG and photo-sized JPEG) POSTed to /predictions/keypoints, or with
--model faces the photo mix (whole frames and 1280x960 multi-face scenes) to /predictions/faces.

A response counts as a success only if it is HTTP 200 with the 15 keypoints named in the
contract's order. A refusal (503/507: full, retry later) counts as a failure, and that user then
backs off (exponential, full jitter: facekp.replies.backoff_s) before its next request, as a polite
client does. Run it through `make loadtest` (loadtest/run.py), or directly:

    locust --headless -f loadtest/locustfile.py --host http://127.0.0.1:8080 -u 16 -r 16 -t 60s --p95-ms 500
"""

from __future__ import annotations

import logging
import random

import gevent
from locust import FastHttpUser, constant, events, task

from facekp.replies import RETRY_STATUSES, backoff_s, check_faces_reply, check_reply
from loadtest.images import Upload, build_mix, build_photo_mix, describe

logger = logging.getLogger(__name__)
UPLOADS: list[Upload] = []


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--model", default="keypoints", help="model name in /predictions/MODEL")
    parser.add_argument("--faces", type=int, default=64, help="distinct faces in the upload mix")
    parser.add_argument("--p95-ms", type=float, default=0.0,
                        help="exit non-zero if the overall p95 latency is above this (0: no limit)")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="seconds before a request fails")


@events.init.add_listener
def _timeouts(environment, **_kwargs) -> None:
    """FastHttpUser reads its timeout when the user is created: set it before any is."""
    if environment.parsed_options is not None:
        KeypointClient.network_timeout = environment.parsed_options.request_timeout


@events.test_start.add_listener
def _build_uploads(environment, **_kwargs) -> None:
    """Encode the mix once, before any user starts, so encoding never shows up as latency."""
    if not UPLOADS:
        options = environment.parsed_options
        UPLOADS.extend(build_photo_mix(options.faces) if options.model == "faces" else build_mix(options.faces))
        logger.info("upload mix: %s", describe(UPLOADS))


class KeypointClient(FastHttpUser):
    """A client that uploads faces back to back (closed loop, no think time)."""

    wait_time = constant(0)
    connection_timeout = 10.0

    def on_start(self) -> None:
        self.path = f"/predictions/{self.environment.parsed_options.model}"
        self.next = random.randrange(len(UPLOADS))  # users walk the mix from different places
        self.refusals_in_a_row = 0

    @task
    def predict(self) -> None:
        upload = UPLOADS[self.next % len(UPLOADS)]
        self.next += 1
        with self.client.post(self.path, data=upload.body, headers={"Content-Type": upload.content_type},
                              name=f"{self.path} [{upload.kind}]", catch_response=True) as reply:
            check = check_faces_reply if self.environment.parsed_options.model == "faces" else check_reply
            problem = check(reply.status_code, reply.text)
            if problem:
                reply.failure(problem)
            else:
                reply.success()
        if reply.status_code in RETRY_STATUSES:
            gevent.sleep(backoff_s(self.refusals_in_a_row))
            self.refusals_in_a_row += 1
        else:
            self.refusals_in_a_row = 0


@events.quitting.add_listener
def _verdict(environment, **_kwargs) -> None:
    """Exit code 1 on no requests, any failure, or overall p95 above --p95-ms."""
    total = environment.stats.total
    limit = environment.parsed_options.p95_ms
    p95 = total.get_response_time_percentile(0.95) if total.num_requests else 0
    if total.num_requests == 0:
        logger.error("no request was made")
        environment.process_exit_code = 1
    elif total.num_failures:
        logger.error("%d of %d requests failed", total.num_failures, total.num_requests)
        environment.process_exit_code = 1
    elif limit and p95 > limit:
        logger.error("p95 latency %d ms is above the %g ms limit", p95, limit)
        environment.process_exit_code = 1
