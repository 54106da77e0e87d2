"""train/studies/record.py: cross-validation folds kept in git without the data set, and restored from it."""

import json
import zipfile

import numpy as np
import pytest

from facekp import data as facedata
from facekp import metrics
from train import cv
from train.studies import record


def _run_fold(run_dir, faces, fold, noise_px, seed=0):
    """A train/cv.py fold as it would be saved: predictions for the fold's people, and a card."""
    _, val = facedata.split_by_person(faces, fold, 5)
    pred = val.keypoints + np.random.default_rng(seed).normal(0, noise_px, val.keypoints.shape).astype(np.float32)
    fold_dir = run_dir / f"fold_{fold}"
    fold_dir.mkdir(parents=True)
    np.savez(fold_dir / cv.PREDICTIONS, pred=pred, truth=val.keypoints, people=val.people, minutes=12.5)
    (fold_dir / "model_card.json").write_text(json.dumps({"config": {"fold": fold, "folds": 5}, "command": "x"}))
    return val, pred


def test_a_restored_record_is_the_run_it_was_saved_from_without_the_data_set_in_it(tmp_path, faces):
    val, pred = _run_fold(tmp_path / "run", faces, 3, noise_px=1.3)
    assert record.main(["save", str(tmp_path / "run"), "--to", str(tmp_path / "rec")]) == 0

    saved = tmp_path / "rec" / "fold_3" / record.RECORD_FILE
    with zipfile.ZipFile(saved) as archive:  # no image, label or name of the data set in what is committed
        assert sorted(archive.namelist()) == ["faces.npy", "fold.npy", "folds.npy", "minutes.npy", "people.npy",
                                              "pred.npy", "score.npy"]
    with np.load(saved) as kept:
        assert kept["pred"].dtype == np.int16 and not any(name in str(kept["people"]) for name in set(val.people))

    assert record.main(["restore", str(tmp_path / "rec"), "--to", str(tmp_path / "back")]) == 0
    with np.load(tmp_path / "back" / "fold_3" / cv.PREDICTIONS) as back:
        assert np.array_equal(back["people"], val.people) and np.array_equal(back["truth"], val.keypoints)
        assert np.abs(back["pred"] - pred).max() <= 0.005 + 1e-5  # 0.01 px steps (float32 at 96 px: 1e-5)
        assert float(back["minutes"]) == 12.5
        assert metrics.score(back["pred"], back["truth"]) == pytest.approx(metrics.score(pred, val.keypoints), rel=1e-3)
    assert (tmp_path / "back" / "fold_3" / "model_card.json").read_text() == (
        tmp_path / "run" / "fold_3" / "model_card.json").read_text()
    assert cv.main(["--folds", "5", "--out", str(tmp_path / "back"), "--summary"]) == 0  # read as a run trained here


def test_folds_saved_at_different_times_add_up_in_one_record(tmp_path, faces):
    _run_fold(tmp_path / "monday", faces, 4, noise_px=1.0)
    _run_fold(tmp_path / "tuesday", faces, 0, noise_px=1.0, seed=1)
    for day in ("monday", "tuesday"):
        record.main(["save", str(tmp_path / day), "--to", str(tmp_path / "rec")])
    record.main(["restore", str(tmp_path / "rec"), "--to", str(tmp_path / "both")])
    assert sorted(path.name for path in (tmp_path / "both").glob("fold_*")) == ["fold_0", "fold_4"]


def test_a_record_of_other_faces_is_refused(tmp_path, faces, capsys):
    _run_fold(tmp_path / "run", faces, 1, noise_px=1.0)
    record.main(["save", str(tmp_path / "run"), "--to", str(tmp_path / "rec")])
    kept = dict(np.load(tmp_path / "rec" / "fold_1" / record.RECORD_FILE))
    np.savez_compressed(tmp_path / "rec" / "fold_1" / record.RECORD_FILE, **{**kept, "fold": 2})
    with pytest.raises(SystemExit) as refused:
        record.main(["restore", str(tmp_path / "rec"), "--to", str(tmp_path / "back")])
    assert refused.value.code == 2 and "recorded on other faces" in capsys.readouterr().err
    assert not (tmp_path / "back").exists()


COMMITTED = sorted(record.RECORDS.glob(f"*/fold_*/{record.RECORD_FILE}"))


@pytest.mark.parametrize("fold_dir", COMMITTED or [None],
                         ids=lambda path: f"{path.parent.parent.name}/{path.parent.name}" if path else "none yet")
def test_every_committed_record_restores_to_the_score_it_was_saved_with(tmp_path, faces, fold_dir):
    if fold_dir is None:
        pytest.skip("no record committed yet")
    score = record.restore_fold(fold_dir.parent, tmp_path / "fold")  # raises if the score or the faces differ
    assert 300 < score < 2000
