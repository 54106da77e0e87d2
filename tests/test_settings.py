"""The servers' settings: one default each, read from the same model-config.yaml by TorchServe's handlers
and by the kserve predictor."""

from __future__ import annotations

import inspect

import torch
import yaml

from facekp.archive import FACES_CONFIG, MODEL_CONFIG
from handler.face_detector import FaceDetector
from handler.faces import FacesSettings
from handler.kserve_server import PredictorConfig
from handler.processing import MAX_PIXELS
from handler.settings import HandlerSettings


def test_an_absent_key_takes_its_default_and_values_take_the_defaults_type():
    assert HandlerSettings.from_block(None) == HandlerSettings(MAX_PIXELS, 0, "auto", True, 2, 6)
    settings = HandlerSettings.from_block({"max_pixels": "1000", "torch_threads": 2.0, "max_faces": 3})
    assert (settings.max_pixels, settings.torch_threads) == (1000, 2)


def test_the_photo_path_ships_its_code_defaults():
    """faces-config.yaml says what the handler would use without it, and the detector's own defaults agree."""
    shipped = FacesSettings.from_block(yaml.safe_load(FACES_CONFIG.read_text())["handler"])
    defaults = FacesSettings(torch_threads=2)  # the one worker's two threads are the file's own choice
    assert shipped == defaults == FacesSettings(max_pixels=MAX_PIXELS, torch_threads=2)
    assert (defaults.score_threshold, defaults.detect_max_side, defaults.max_faces, defaults.refine_steps) == (
        0.5, 1280, 50, 1)
    detector = inspect.signature(FaceDetector).parameters
    assert detector["score_threshold"].default == defaults.score_threshold
    assert detector["max_side"].default == defaults.detect_max_side


def test_the_kserve_predictor_reads_the_handlers_model_config():
    shipped = yaml.safe_load(MODEL_CONFIG.read_text())
    config = PredictorConfig.read(MODEL_CONFIG)
    assert config.settings.max_pixels == shipped["handler"]["max_pixels"]
    assert config.settings.precision == shipped["handler"]["precision"]
    assert config.batch_size == shipped["batchSize"]
    # one process instead of TorchServe's workers: every core, greedy batches (the kserve block)
    assert (config.settings.torch_threads, config.max_batch_delay_ms) == (0, 0.0)


def test_the_views_are_set_per_device():
    settings = HandlerSettings.from_block({"views_cpu": 2, "views_gpu": 6})
    assert settings.views_on(torch.device("cpu")) == 2 and settings.views_on(torch.device("cuda")) == 6
    shipped = HandlerSettings.from_block(yaml.safe_load(MODEL_CONFIG.read_text())["handler"])
    assert (shipped.views_cpu, shipped.views_gpu) == (HandlerSettings.views_cpu, HandlerSettings.views_gpu)
