"""train/studies/learning_curve.py: a power law of score against training people, fitted and extrapolated."""

import json

import numpy as np
import pytest

from train.studies.learning_curve import fit, main


def _fold(run, fold, people, truth, pred, train_people):
    (run / f"fold_{fold}").mkdir(parents=True)
    np.savez(run / f"fold_{fold}" / "predictions.npz", pred=pred, truth=truth, people=people, minutes=1.0)
    (run / f"fold_{fold}" / "model_card.json").write_text(json.dumps({"data": {"train_people": train_people}}))


def _power_law_runs(tmp_path, alpha, trained=160, shares=(0.5, 0.7, 1.0)):
    """Two folds of 40 people never seen, whose error shrinks exactly as score ∝ people^alpha."""
    rng = np.random.default_rng(0)
    for fold in (0, 1):
        people = np.repeat([f"p{fold}_{k}" for k in range(40)], 10)
        truth = rng.uniform(20, 76, size=(400, 15, 2))
        error = rng.normal(0, 1.0, size=truth.shape) * rng.uniform(0.5, 2, size=(400, 1, 1))  # people differ
        for share in shares:
            n = round(share * trained)
            _fold(tmp_path / f"s{share}", fold, people, truth, truth + error * (n / trained) ** (-alpha / 2), n)
    return [tmp_path / f"s{share}" for share in shares]


def test_an_exact_power_law_is_recovered_and_extrapolated_to_every_person(tmp_path):
    runs = _power_law_runs(tmp_path, alpha=0.4)
    result = fit(runs)
    assert abs(result["alpha"] - 0.4) < 1e-9
    assert [row["everyone"] for row in result["per_fold"]] == [200, 200]  # training + validation people
    assert abs(result["gain"] - (200 / 160) ** 0.4) < 1e-9
    low, high = result["gain_95"]
    assert abs(low - result["gain"]) < 1e-9 and abs(high - result["gain"]) < 1e-9  # exact: every resample agrees
    assert abs(fit(runs, target=320)["gain"] - 2 ** 0.4) < 1e-9


def test_a_noisy_curve_has_an_interval_about_its_fit(tmp_path):
    runs = _power_law_runs(tmp_path, alpha=0.3)
    predictions_file = runs[1] / "fold_0" / "predictions.npz"
    saved = dict(np.load(predictions_file))
    saved["pred"] = saved["pred"] + np.random.default_rng(1).normal(0, 0.3, size=saved["pred"].shape)
    np.savez(predictions_file, **saved)
    result = fit(runs)
    low, high = result["alpha_95"]
    assert low < result["alpha"] < high and result["alpha"] != pytest.approx(0.3, abs=1e-6)


def test_runs_of_one_share_or_other_faces_are_refused(tmp_path, capsys):
    truth = np.full((20, 15, 2), 48.0)
    people = np.repeat(["x", "y"], 10)
    _fold(tmp_path / "a", 0, people, truth, truth + 1, 100)
    _fold(tmp_path / "b", 0, people, truth, truth + 2, 100)
    _fold(tmp_path / "c", 0, np.repeat(["x", "z"], 10), truth, truth + 2, 50)
    with pytest.raises(ValueError, match="other shares"):
        fit([tmp_path / "a", tmp_path / "b"])
    assert main([str(tmp_path / "a"), str(tmp_path / "c")]) == 2
    assert "not the same split" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a")])
