"""Overload against a real TorchServe with a tiny queue: refusals are 503s that say "full", polite
clients back off and still get every answer, and the load generators count refusals apart from errors."""

from __future__ import annotations

import random
import re

import pytest

from facekp.data import REPO_ROOT
from facekp.evaluate import query_service
from facekp.replies import RETRY_STATUSES, backoff_s
from loadtest.images import Upload
from loadtest.loadgen import run_load, run_open_loop
from tests.conftest import running_service

FACE = (REPO_ROOT / "samples" / "astronaut_face.png").read_bytes()
TINY_QUEUE = {"job_queue_size": "2", "metrics_mode": "prometheus"}
ONE_AT_A_TIME = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\nmaxBatchDelay: 0\nresponseTimeout: 60\n" \
                "handler:\n  torch_threads: 1\n"


@pytest.fixture(scope="module")
def full_service(tmp_path_factory):
    with running_service(tmp_path_factory.mktemp("overload"), ONE_AT_A_TIME, extra_config=TINY_QUEUE) as svc:
        yield svc


def refusals_in_access_log(service) -> int:
    log = (service.log_dir / "ts_log.log").read_text(errors="replace")
    return len(re.findall(r'ACCESS_LOG - \S+ "(?:POST|PUT) /predictions/keypoints HTTP/1.1" 503', log))


def test_backoff_grows_with_jitter_and_a_cap():
    rng = random.Random(0)
    first = [backoff_s(0, rng=rng) for _ in range(200)]
    late = [backoff_s(10, rng=rng) for _ in range(200)]
    assert 0 <= min(first) and max(first) <= 0.5 and len(set(first)) > 100
    assert max(late) <= 8.0 and sum(late) / len(late) > 2.0
    assert RETRY_STATUSES == (503, 507)


def test_a_full_queue_refuses_with_503_and_the_generator_counts_it_as_refused(full_service):
    uploads = [Upload("png", "image/png", FACE)]
    result = run_load(f"{full_service.inference_url}/predictions/keypoints", uploads, 24, duration=3.0,
                      warmup=0.5, backoff_s=0.2)
    assert result.ok > 0
    assert result.refused > 0 and result.refused == result.errors, result.error_samples
    assert any("503" in sample for sample in result.error_samples)


def test_open_loop_counts_answers_and_refusals(full_service):
    uploads = [Upload("png", "image/png", FACE)]
    url = f"{full_service.inference_url}/predictions/keypoints"
    gentle = run_open_loop(url, uploads, rate=5, duration=2.0)
    assert gentle.ok == gentle.offered > 0 and gentle.refused == gentle.errors == 0
    flood = run_open_loop(url, uploads, rate=400, duration=2.0)
    assert flood.refused > 0 and flood.errors == 0, flood.error_samples
    assert flood.ok + flood.refused == flood.offered
    assert 0 < flood.answered_in_window <= flood.ok


def test_evaluation_client_backs_off_and_gets_every_answer(full_service):
    before = refusals_in_access_log(full_service)
    result = query_service(f"{full_service.inference_url}/predictions/keypoints", [FACE] * 24, concurrency=24,
                           timeout=60, content_type="image/png", progress=False)
    assert result.errors == []
    assert refusals_in_access_log(full_service) > before, "the test needs the queue to overflow"


def test_the_autoscaling_rule_reads_series_that_torchserve_exports(full_service):
    """k8s/metrics/prometheus-adapter-rules.yaml queries these counters; a real scrape must hold them."""
    import requests
    import yaml

    query(full_service)
    scrape = requests.get(f"{full_service.metrics_url}/metrics", timeout=10).text
    configmap = yaml.safe_load((REPO_ROOT / "k8s" / "metrics" / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    for series in re.findall(r"\b(ts_[a-z_]+)\{", rule["metricsQuery"]):
        assert re.search(rf"^{series}\{{model_name=\"keypoints\"", scrape, re.M), f"{series} not in the scrape"


def query(service) -> None:
    import requests

    assert requests.put(f"{service.inference_url}/predictions/keypoints", data=FACE, timeout=60).ok
