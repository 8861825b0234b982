"""`train consistency|meanflow` and `distill`, on a one-level U-Net and 8 digits at 8x8 (seconds each)."""

import json

import keras
import pytest
from PIL import Image

import keras_diffusion as kd
from keras_diffusion import cli

TINY = ["--dataset", "digits", "--image-size", "8", "--num-train-images", "8", "--batch-size", "8", "--epochs", "1",
        "--widths", "8", "--num-res-blocks", "1", "--attention-resolutions", "", "--norm-groups", "4"]


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    for family in ("edm", "flow"):
        assert cli.main(["train", family, *TINY, "--steps", "2", "--num-samples", "4", "--out", str(root / family)]) == 0
    return root


@pytest.mark.parametrize("family, model_class", [("consistency", kd.ConsistencyModel), ("meanflow", kd.MeanFlow)])
def test_train_few_step_models_from_scratch(family, model_class, tmp_path, capsys):
    out = tmp_path / family
    assert cli.main(["train", family, *TINY, "--num-samples", "4", "--out", str(out)]) == 0
    sampler = {"consistency": "consistency", "meanflow": "meanflow"}[family]
    assert f"Generating 4 samples ({sampler}, 1 steps)" in capsys.readouterr().out
    model = keras.saving.load_model(out / "model.keras")
    assert type(model) is model_class
    if family == "consistency":  # the level schedule spans the run: 1 epoch of 1 batch
        assert model.total_steps == 1 and float(keras.ops.convert_to_numpy(model.training_step)) == 1.0
    grid = tmp_path / "grid.png"
    assert cli.main(["sample", "--model", str(out / "model.keras"), "--steps", "2", "--num-images", "2",
                     "--out", str(grid)]) == 0
    assert Image.open(grid).size == (2 * 10 + 2, 10 + 2)


METHOD_FLAGS = {"progressive": ["--teacher-steps", "4", "--rounds", "2"], "reflow": ["--num-pairs", "8",
                                                                                    "--pair-steps", "2"]}


# Each run compiles a train step and three sampling loops (30 s on JAX and TensorFlow): the methods whose
# library paths tests/test_distill.py and tests/test_flow.py cover run with -m slow only.
@pytest.mark.parametrize("method, teacher, student", [
    ("progressive", "edm", kd.ProgressiveDistillation),
    pytest.param("ect", "edm", kd.ConsistencyModel, marks=pytest.mark.slow),
    pytest.param("consistency", "edm", kd.ConsistencyModel, marks=pytest.mark.slow),
    ("meanflow", "flow", kd.MeanFlow),
    pytest.param("reflow", "flow", kd.FlowMatching, marks=pytest.mark.slow),
])
def test_distill_writes_a_student_grids_and_a_log(method, teacher, student, teachers, tmp_path, capsys):
    out = tmp_path / method
    argv = ["distill", "--method", method, "--teacher", str(teachers / teacher / "model.keras"), "--dataset", "digits",
            "--num-train-images", "8", "--batch-size", "8", "--epochs", "2", "--num-samples", "4", "--out", str(out),
            *METHOD_FLAGS.get(method, [])]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    model = keras.saving.load_model(out / "model.keras")
    assert type(model) is student and model.image_shape == (8, 8, 1)
    # A progressive student of 4 -> 2 -> 1 steps samples in 1 step only.
    for steps in (1,) if method == "progressive" else (1, 2, 4):
        assert Image.open(out / f"samples_{steps}_steps.png").size == (22, 22)
        assert f"samples_{steps}_steps.png" in stdout
    log = json.loads((out / "train_log.json").read_text())
    assert log["args"]["method"] == method and not (out / "backup").exists()
    if method == "progressive":
        assert [r["steps"] for r in log["epochs"]] == [2, 1] and model.process.num_steps == 1
        assert (out / "round_1" / "model.keras").is_file()
    else:
        assert len(log["epochs"]) == 2
    if method == "reflow":
        assert (out / "pairs.npz").is_file() and log["num_train_images"] == 8
    if method == "consistency":  # the teacher is used, not saved: the student holds only its own weights
        assert len(model.weights) == len(model.network.weights) + 1


def test_distill_errors(teachers, tmp_path, capsys):
    edm = str(teachers / "edm" / "model.keras")
    assert cli.main(["distill", "--method", "meanflow", "--teacher", edm, "--out", str(tmp_path / "a")]) == 2
    assert "needs a flow-matching model" in capsys.readouterr().err
    flow = str(teachers / "flow" / "model.keras")
    assert cli.main(["distill", "--method", "ect", "--teacher", flow, "--out", str(tmp_path / "b")]) == 2
    assert "starts from an EDM model" in capsys.readouterr().err
    assert cli.main(["distill", "--method", "ect", "--teacher", str(tmp_path / "none.keras"),
                     "--out", str(tmp_path / "c")]) == 2
    assert "is not a file" in capsys.readouterr().err
    assert cli.main(["distill", "--method", "progressive", "--teacher", edm, "--teacher-steps", "6", "--rounds", "2",
                     "--dataset", "digits", "--num-train-images", "8", "--out", str(tmp_path / "d")]) == 2
    assert "must be a multiple of 4" in capsys.readouterr().err
    assert cli.main(["distill", "--method", "reflow", "--teacher", edm, "--dataset", "digits",
                     "--num-train-images", "8", "--out", str(tmp_path / "e")]) == 2
    assert "Reflow needs a flow-matching teacher" in capsys.readouterr().err
