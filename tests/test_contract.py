import sys

import numpy as np
import pytest

from facekp import dlib_baseline, evaluate, metrics
from facekp.contract import (
    FLIP_PERMUTATION,
    KEYPOINT_NAMES,
    MIRROR_X_SHIFT,
    denormalize,
    keypoints_from_68,
    normalize,
)


def test_flip_permutation_swaps_left_and_right_and_is_an_involution():
    names = [KEYPOINT_NAMES[i] for i in FLIP_PERMUTATION]
    assert names[KEYPOINT_NAMES.index("mouth_left_corner")] == "mouth_right_corner"
    assert names[KEYPOINT_NAMES.index("left_eyebrow_outer_end")] == "right_eyebrow_outer_end"
    assert names[KEYPOINT_NAMES.index("nose_tip")] == "nose_tip"
    assert [FLIP_PERMUTATION[i] for i in FLIP_PERMUTATION] == list(range(15))


def test_mirror_shift_matches_pixel_flip():
    x = np.array([0.0, 10.0, 47.5, 95.0])
    flipped_px = 95.0 - x
    assert np.allclose(-normalize(x) + MIRROR_X_SHIFT, normalize(flipped_px))


def test_normalize_round_trip_and_centre():
    px = np.array([[0.0, 48.0], [96.0, 24.0]])
    assert np.allclose(normalize(px), [[-1, 0], [1, -0.5]])
    assert np.allclose(denormalize(normalize(px)), px)


def test_score_matches_definition():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 95, (5, 15, 2))
    pred = true + 2.0  # every coordinate off by 2 px
    mse = (2.0 / 48) ** 2
    assert metrics.score(pred, true) == pytest.approx(1 / (2 * mse))
    assert metrics.rmse_px(pred, true) == pytest.approx(2.0)
    assert metrics.score(pred, true) == pytest.approx(1152 / 2.0**2)
    assert np.allclose(metrics.rmse_px_per_keypoint(pred, true), 2.0)


def test_score_is_mean_of_per_image_mse():
    true = np.zeros((2, 15, 2))
    pred = np.zeros((2, 15, 2))
    pred[0] += 4.8  # image 0: normalized error 0.1 everywhere; image 1 perfect
    assert metrics.score(pred, true) == pytest.approx(1 / (2 * (0.01 + 0) / 2))


def test_crossed_labels_finds_a_left_point_left_of_its_right_one():
    face = np.full((15, 2), 48.0)
    for i, name in enumerate(KEYPOINT_NAMES):
        if "left" in name:
            face[i, 0], face[FLIP_PERMUTATION[i], 0] = 60.0, 36.0  # the subject's left lies on the image's right
    crossed, missing = face.copy(), face.copy()
    crossed[KEYPOINT_NAMES.index("mouth_left_corner"), 0] = 20.0  # like the data set's one corrupt row
    missing[KEYPOINT_NAMES.index("left_eye_center")] = np.nan
    assert metrics.crossed_labels(np.stack([face, crossed, missing])).tolist() == [False, True, False]
    assert metrics.crossed_labels(np.stack([face]) * [-1, 1]).tolist() == [True]  # the face mirrored, unpermuted


def test_the_15_keypoints_are_the_means_of_their_ibug_points_as_the_data_set_made_them(faces):
    """keypoints_from_68 turns a 68-point answer (dlib's) into the 15 the way the data set made its labels."""
    assert np.abs(keypoints_from_68(faces.keypoints68) - faces.keypoints).max() < 1e-3
    assert keypoints_from_68(faces.keypoints68[0]).shape == (15, 2)


def test_dlib_as_a_baseline_without_dlib_is_a_clear_error_with_the_install_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dlib", None)  # as on a clone without it: `import dlib` raises ImportError
    assert evaluate.main(["--model", "dlib", "--split", "fold-0", "--points", "68"]) == 2
    assert f"dlib is not installed: {dlib_baseline.INSTALL}" in capsys.readouterr().err
