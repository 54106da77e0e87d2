import csv

import numpy as np
import pytest

from facekp import data as facedata
from facekp.contract import KEYPOINT_NAMES


def test_split_is_by_person_and_deterministic(faces):
    train, val = facedata.split_by_person(faces)
    assert set(train.people).isdisjoint(val.people)
    assert len(train) + len(val) == len(faces)
    assert 0.08 < len(val) / len(faces) < 0.25
    again = facedata.split_by_person(faces)[1]
    assert list(again.people) == list(val.people)


def test_person_of_strips_frame_number():
    assert facedata.person_of("training/Luis_Fonsi_21.jpg") == "Luis_Fonsi"
    assert facedata.person_of("test/Kristen_Breitweiser_0.jpg") == "Kristen_Breitweiser"


def test_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(facedata.DataError, match="shared/data/facial_keypoints"):
        facedata.load(tmp_path / "nope.npz")


def write_kaggle_csv(path, faces, rows, blank=()):
    columns = [f"{n}_{a}" for n in KEYPOINT_NAMES for a in "xy"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, "Image"])
        for i in range(rows):
            values = [f"{v:.3f}" for v in faces.keypoints[i].reshape(-1)]
            for col in blank if i == 0 else ():
                values[col] = ""
            writer.writerow([*values, " ".join(map(str, faces.images[i].reshape(-1)))])


def test_kaggle_csv_layout_with_missing_keypoints(tmp_path, faces):
    path = tmp_path / "training.csv"
    write_kaggle_csv(path, faces, rows=5, blank=(0, 1))
    loaded = facedata.load(path)
    assert loaded.images.shape == (5, 96, 96)
    assert np.array_equal(loaded.images, faces.images[:5])
    assert np.isnan(loaded.keypoints[0, 0]).all()
    assert np.allclose(loaded.keypoints[1:], faces.keypoints[1:5], atol=1e-3)
    assert facedata.complete_rows(loaded).tolist() == [False, True, True, True, True]


def test_csv_without_required_columns_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(facedata.DataError, match="left_eye_center_x"):
        facedata.load(path)
