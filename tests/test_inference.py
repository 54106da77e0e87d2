"""handler.inference: the precision a handler picks, and that bf16 answers what fp32 answers on real faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from facekp.archive import MODEL_FILE
from facekp.contract import VIEW_SETTINGS, view_method
from facekp.data import REPO_ROOT
from handler.inference import channels_last_on, choose_precision, cpu_flags, for_inference, load_model, model_runner

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def test_auto_picks_bf16_only_on_a_cpu_with_the_instructions():
    assert choose_precision("auto", CPU, {"avx2", "amx_bf16", "amx_tile"}) == "bf16"
    assert choose_precision("auto", CPU, {"avx2", "avx512_bf16"}) == "bf16"
    assert choose_precision("auto", CPU, {"avx2", "avx512f"}) == "fp32"  # an EPYC without BF16, say
    assert choose_precision("auto", GPU, {"amx_bf16"}) == "fp32"
    assert choose_precision("fp32", CPU, {"amx_bf16"}) == "fp32"
    assert choose_precision("bf16", CPU, set()) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        choose_precision("fp16", CPU)


def test_cpu_flags_reads_proc_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags\t\t: fpu sse2 avx512_bf16 amx_tile\n")
    assert {"avx512_bf16", "amx_tile"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == set()


def test_bf16_answers_what_fp32_answers_on_real_faces():
    """Up to a tenth of a pixel (in the 96x96 frame) on shifted crops of the committed portrait."""
    model = torch.jit.load(str(MODEL_FILE))
    portrait = Image.open(REPO_ROOT / "samples" / "astronaut.png").convert("L")
    batch = np.stack([np.asarray(portrait.crop((165 + d, 50 + d, 285 + d, 170 + d)).resize((96, 96)), np.float32)
                      for d in range(-8, 9, 2)])[:, None] / 255
    fp32 = model_runner(model, CPU, "fp32")(batch)
    bf16 = model_runner(model, CPU, "bf16")(batch)
    assert fp32.shape == bf16.shape == (9, 15, 2)
    assert np.abs(fp32 - bf16).max() * 48 < 0.25


def test_frozen_model_answers_what_the_file_answers():
    """Folding BatchNorm and oneDNN's packed convolutions change how, not what, the model computes."""
    model = torch.jit.load(str(MODEL_FILE)).eval()
    x = torch.rand(5, 1, 96, 96)
    with torch.inference_mode():
        plain = model(x)
        for precision in ("fp32", "bf16"):
            prepared = for_inference(torch.jit.load(str(MODEL_FILE)), CPU, precision)
            assert isinstance(prepared, torch.jit.ScriptModule)
            assert torch.allclose(prepared(x), plain, atol=1e-4), precision  # outside autocast: float32 both


def test_unfrozen_runner_runs_the_file_as_is():
    """freeze: false in the handler settings (the benchmark's 'as served then') runs the traced graph unchanged."""
    model = torch.jit.load(str(MODEL_FILE)).eval()
    x = np.random.default_rng(0).random((3, 1, 96, 96), dtype=np.float32)
    with torch.inference_mode():
        plain = model(torch.from_numpy(x)).numpy()
    assert np.array_equal(model_runner(model, CPU, "fp32", freeze=False)(x), plain)


def test_channels_last_is_the_layout_on_cuda_only():
    assert channels_last_on(GPU) and not channels_last_on(CPU)


@pytest.mark.parametrize("freeze", [True, False])
def test_channels_last_answers_what_the_file_answers(freeze):
    """The GPU's layout, run here on the CPU: the same answers (the conversion changes strides, not numbers)."""
    x = np.random.default_rng(1).random((6, 1, 96, 96), dtype=np.float32)
    with torch.inference_mode():
        plain = torch.jit.load(str(MODEL_FILE)).eval()(torch.from_numpy(x)).numpy()
    run = model_runner(torch.jit.load(str(MODEL_FILE)).eval(), CPU, "fp32", freeze=freeze, channels_last=True)
    assert np.abs(run(x) - plain).max() * 48 < 0.01  # under a hundredth of a pixel of the 96x96 frame


def test_load_model_is_model_runner_in_the_precision_it_chose():
    x = np.random.default_rng(0).random((3, 1, 96, 96), dtype=np.float32)
    served = load_model(MODEL_FILE, CPU, "fp32")
    assert (served.precision, served.frozen, served.device) == ("fp32", True, CPU)
    assert np.array_equal(served.run(x), model_runner(torch.jit.load(str(MODEL_FILE)).eval(), CPU, "fp32")(x))
    assert load_model(MODEL_FILE, CPU).precision == choose_precision("auto", CPU)


def test_each_view_setting_is_a_method_of_the_shipped_file_and_six_views_are_its_forward():
    """No retraining to serve one, two or six views: each is a traced method of the same weights."""
    model = torch.jit.load(str(MODEL_FILE)).eval()
    portrait = Image.open(REPO_ROOT / "samples" / "astronaut.png").convert("L")
    x = torch.from_numpy(np.stack([np.asarray(portrait.crop((165 + d, 50 + d, 285 + d, 170 + d)).resize((96, 96)),
                                              np.float32) for d in (-6, 0, 3, 6)])[:, None] / 255)
    with torch.inference_mode():
        forward = model(x)
        answers = {n: getattr(model, view_method(n))(x) for n in VIEW_SETTINGS}
    assert all(answer.shape == (4, 15 + 68, 3) for answer in answers.values())  # x, y, uncertainty of every point
    assert torch.equal(answers[6][:, :15, :2], forward)
    for n in (1, 2):  # fewer views, other answers on a real face: within a pixel of the six, not equal to them
        assert 0 < (answers[n][:, :15, :2] - forward).abs().max() * 48 < 1
    assert all((answer[..., 2] > 0).all() for answer in answers.values())


@pytest.mark.parametrize("views", VIEW_SETTINGS)
def test_a_served_view_setting_answers_its_methods_15_keypoints(views):
    x = np.random.default_rng(2).random((3, 1, 96, 96), dtype=np.float32)
    served = load_model(MODEL_FILE, CPU, "fp32", views=views)
    assert served.views == views and served.describe().startswith(f"{views} view")
    with torch.inference_mode():
        expected = getattr(torch.jit.load(str(MODEL_FILE)).eval(), view_method(views))(torch.from_numpy(x))
    assert np.abs(served.run(x) - expected[:, :15, :2].numpy()).max() * 48 < 0.01


class ForwardOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def test_a_view_setting_the_file_lacks_is_refused_and_an_older_file_answers_with_its_forward(tmp_path):
    with pytest.raises(ValueError, match=r"views must be one of \[1, 2, 6\] for this model file, got 3"):
        load_model(MODEL_FILE, CPU, "fp32", views=3)
    older = tmp_path / "older.pt"  # forward() alone, as files were traced before the view settings
    torch.jit.trace(ForwardOnly(torch.jit.load(str(MODEL_FILE)).eval()), torch.rand(2, 1, 96, 96)).save(str(older))
    served = load_model(older, CPU, "fp32", views=2)
    assert served.views is None and served.describe().startswith("the file's own views")
    x = np.random.default_rng(3).random((2, 1, 96, 96), dtype=np.float32)
    assert np.abs(served.run(x) - load_model(MODEL_FILE, CPU, "fp32").run(x)).max() * 48 < 0.01


def test_the_committed_int8_files_answer_what_the_committed_file_answers(validation_faces):
    """model_store's int8 ONNX twins (train/quantized.py) belong to model_store/keypoints.pt: on real faces their
    points lie 0.1 px from the file's float32 answers on average, their confidences 0.01 (a retrained file whose
    twins were not written again fails here)."""
    from facekp.contract import denormalize
    from train.exported import to_tensors

    images = to_tensors(validation_faces.subset(np.arange(128)))[0].numpy()
    for views in (1, 2):
        exact = load_model(MODEL_FILE, CPU, "fp32", views=views).answer(images)
        int8 = load_model(MODEL_FILE, CPU, views=views, runtime="onnx-int8")
        assert int8.runtime == "onnx-int8" and "onnx-int8" in int8.describe()
        answered = int8.answer(images)
        distance = np.linalg.norm(denormalize(answered[..., :2]) - denormalize(exact[..., :2]), axis=-1)
        assert distance.mean() < 0.1 and distance.max() < 2.0, (views, distance.mean(), distance.max())
        assert np.abs(answered[..., 2] - exact[..., 2]).mean() < 0.01
        assert (int8.glance is None) == (views == 1)


def test_int8_without_its_files_serves_the_torchscript_file_and_says_so(tmp_path, caplog):
    import shutil

    shutil.copy(MODEL_FILE, tmp_path / "keypoints.pt")
    with caplog.at_level("WARNING"):
        served = load_model(tmp_path / "keypoints.pt", CPU, views=2, runtime="onnx-int8")
    assert served.runtime == "torchscript" and "python train/quantized.py" in caplog.text
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_model(MODEL_FILE, CPU, views=2, runtime="tensorrt")
