"""The load test and the benchmark's load generator against a real TorchServe on free loopback ports:
a short clean run passes and writes its reports; failed requests or a p95 over the limit fail it."""

from __future__ import annotations

import csv
import json

import pytest

from facekp.contract import KEYPOINT_NAMES
from facekp.replies import check_reply
from loadtest import run
from loadtest.images import MIX, build_mix
from loadtest.loadgen import run_load
from tests.conftest import require_data, running_service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    require_data()  # every upload of the load tests is a face of the data set
    config = ("minWorkers: 1\nmaxWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 5\nresponseTimeout: 60\n"
              "handler:\n  torch_threads: 1\n")
    with running_service(tmp_path_factory.mktemp("loadtest"), config) as svc:
        yield svc


def aggregated(stats_csv) -> dict:
    with open(stats_csv, newline="") as f:
        return next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")


def test_check_reply_wants_200_and_the_15_contract_keypoints():
    good = {"keypoints": [{"name": n, "x": 1.0, "y": 2.0} for n in KEYPOINT_NAMES]}
    assert check_reply(200, json.dumps(good)) is None
    assert "HTTP 503" in check_reply(503, "busy")
    shuffled = {"keypoints": good["keypoints"][::-1]}
    assert "in order" in check_reply(200, json.dumps(shuffled))
    assert "not a keypoint answer" in check_reply(200, "<html>")


def test_upload_mix_holds_every_kind(needs_data):
    uploads = build_mix(8)
    assert {u.kind for u in uploads} == {k.label for k in MIX}
    assert all(u.body for u in uploads)


def test_short_run_passes_and_writes_reports(service, tmp_path):
    code = run.main(["--host", service.inference_url, "--users", "3", "--spawn-rate", "3", "--duration", "5s",
                     "--p95-ms", "60000", "--reports", str(tmp_path)])
    assert code == 0
    for name in ("loadtest_stats.csv", "loadtest_failures.csv", "loadtest_stats_history.csv", "loadtest.html"):
        assert (tmp_path / name).is_file(), name
    total = aggregated(tmp_path / "loadtest_stats.csv")
    assert int(total["Request Count"]) > 0
    assert int(total["Failure Count"]) == 0


def test_failed_requests_fail_the_run(service, tmp_path):
    code = run.main(["--host", service.inference_url, "--model", "no_such_model", "--users", "2", "--spawn-rate",
                     "2", "--duration", "2s", "--reports", str(tmp_path)])
    assert code != 0
    total = aggregated(tmp_path / "loadtest_stats.csv")
    assert int(total["Failure Count"]) == int(total["Request Count"]) > 0
    assert "HTTP 404" in (tmp_path / "loadtest_failures.csv").read_text()


def test_p95_over_the_limit_fails_the_run(service, tmp_path):
    code = run.main(["--host", service.inference_url, "--users", "2", "--spawn-rate", "2", "--duration", "2s",
                     "--p95-ms", "0.5", "--reports", str(tmp_path)])
    assert code != 0
    assert int(aggregated(tmp_path / "loadtest_stats.csv")["Failure Count"]) == 0


def test_benchmark_load_generator(service):
    uploads = build_mix(8)
    good = run_load(f"{service.inference_url}/predictions/keypoints", uploads, 2, duration=1.5, warmup=0.5)
    assert good.ok > 0 and good.errors == 0
    assert good.percentile(50) > 0
    bad = run_load(f"{service.inference_url}/predictions/no_such_model", uploads, 1, duration=0.5, warmup=0.0)
    assert bad.ok == 0 and bad.errors > 0 and "HTTP 404" in bad.error_samples[0]


def test_model_comparison_counts_passes_and_flops():
    from loadtest.models_compare import gflop_per_face, passes_per_face
    from train.model import KeypointNet, ServingModel

    assert passes_per_face({"members": 2, "config": {"flip_tta": True}}) == 4  # cards from before the student
    assert passes_per_face({"network_passes_per_face": 1, "members": 2}) == 1
    net = KeypointNet((4, 8, 8, 8), (1, 1, 1, 1)).eval()
    one, two = gflop_per_face(ServingModel(net, flip=False)), gflop_per_face(ServingModel(net, flip=True))
    assert one > 0 and two == pytest.approx(2 * one, rel=0.01)
