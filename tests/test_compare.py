"""train/studies/compare.py: two cross-validation runs compared on the same people."""

import json

import numpy as np

from train import cv
from train.studies.compare import compare, main


def _fold(cv_dir, fold, people, truth, pred):
    (cv_dir / f"fold_{fold}").mkdir(parents=True)
    np.savez(cv_dir / f"fold_{fold}" / "predictions.npz", pred=pred, truth=truth, people=people, minutes=1.0)


def test_a_better_recipe_is_better_on_the_same_people_and_its_interval_says_so(tmp_path):
    rng = np.random.default_rng(0)
    for fold in (0, 1):
        people = np.repeat([f"p{fold}_{k}" for k in range(40)], 10)
        truth = rng.uniform(20, 76, size=(400, 15, 2))
        person_noise = rng.normal(0, 1.0, size=(40, 1, 1, 1)).repeat(10, 1).reshape(400, 1, 1) * np.ones((1, 15, 2))
        error = person_noise + rng.normal(0, 1.0, size=truth.shape)  # people differ, as they do
        _fold(tmp_path / "a", fold, people, truth, truth + error)
        _fold(tmp_path / "b", fold, people, truth, truth + 0.9 * error)  # 10 % smaller errors, same faces
    _fold(tmp_path / "a", 2, people, truth, truth + 1)  # a fold only A has is left out
    result = compare(tmp_path / "a", tmp_path / "b")
    assert result["folds"] == [0, 1] and result["people"] == 80 and result["faces"] == 800
    assert abs(result["ratio"] - 1 / 0.81) < 1e-9  # score ~ 1 / mse
    low, high = result["ratio_95"]
    assert low < result["ratio"] < high and 1 < low  # paired: every resampling keeps B ahead
    assert compare(tmp_path / "a", tmp_path / "a")["ratio_95"] == [1.0, 1.0]
    low_b, high_b = result["pooled_b_95"]
    assert low_b < result["pooled_b"] < high_b and result["pooled_a_95"][1] < high_b  # each score's own, wider interval


def test_runs_of_different_splits_are_refused(tmp_path, capsys):
    truth = np.full((20, 15, 2), 48.0)
    _fold(tmp_path / "a", 0, np.repeat(["x", "y"], 10), truth, truth + 1)
    _fold(tmp_path / "b", 0, np.repeat(["x", "z"], 10), truth, truth + 1)
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "not the same split" in capsys.readouterr().err
    assert main([str(tmp_path / "a"), str(tmp_path / "empty")]) == 2


def test_a_plus_between_runs_scores_their_ensemble_on_the_folds_they_share(tmp_path):
    rng = np.random.default_rng(1)
    people = np.repeat([f"p{k}" for k in range(20)], 5)
    truth = rng.uniform(20, 76, size=(100, 15, 2))
    error = rng.normal(0, 1.0, size=truth.shape)
    for fold in (0, 1):
        _fold(tmp_path / "a", fold, people, truth, truth + error)
        _fold(tmp_path / "b", fold, people, truth, truth - 0.5 * error)
    _fold(tmp_path / "c", 0, people, truth, truth + 2 * error)
    both = compare(tmp_path / "a", f"{tmp_path / 'a'}+{tmp_path / 'b'}")
    assert both["folds"] == [0, 1] and abs(both["ratio"] / 16 - 1) < 1e-5  # the average error is a quarter of A's
    three = compare(tmp_path / "a", f"{tmp_path / 'a'}+{tmp_path / 'b'}+{tmp_path / 'c'}")
    assert three["folds"] == [0]  # only the fold every run has
    assert abs(three["ratio"] / (3 / 2.5) ** 2 - 1) < 1e-5  # (1 - 0.5 + 2) / 3 of A's error
    _fold(tmp_path / "d", 0, people[::-1], truth, truth)
    assert main([str(tmp_path / "a"), f"{tmp_path / 'a'}+{tmp_path / 'd'}"]) == 2


def test_an_ensemble_saved_as_a_run_is_summarized_by_cv_like_any_run(tmp_path):
    rng = np.random.default_rng(2)
    people = np.repeat([f"p{k}" for k in range(10)], 4)
    truth = rng.uniform(20, 76, size=(40, 15, 2))
    error = rng.normal(0, 1.0, size=truth.shape)
    for fold in (0, 1):
        _fold(tmp_path / "a", fold, people, truth, truth + error)
        _fold(tmp_path / "b", fold, people, truth, truth + 3 * error)
    both = f"{tmp_path / 'a'}+{tmp_path / 'b'}"
    assert main([str(tmp_path / "a"), both, "--save", str(tmp_path / "ab")]) == 0
    assert cv.main(["--folds", "2", "--out", str(tmp_path / "ab"), "--summary"]) == 0
    summary = json.loads((tmp_path / "ab" / "cv.json").read_text())
    assert abs(summary["pooled_score"] / compare(tmp_path / "a", both)["pooled_b"] - 1) < 1e-9
    assert abs(summary["pooled_score"] * 2 * np.mean((2 * error / 48) ** 2) - 1) < 1e-9  # the two errors averaged
    assert summary["training_minutes"] == [2.0, 2.0]  # the networks trained one after another
    assert all(recipe.endswith("no model card") for recipe in summary["fold_commands"])  # nothing claimed for it
