"""The command line, run as users run it: `python -m keras_diffusion ...` in a subprocess.

Each subprocess costs 5-40 s, so the tests that need a trained model share
one tiny training run (interrupted, then resumed), and the error cases that
Python can check in this process call `cli.main` directly.
"""

import json
import os
import signal
import subprocess
import sys

import keras
import pytest
from PIL import Image

from keras_diffusion import cli

TINY_TRAIN = [
    "train", "ddpm", "--dataset", "digits", "--image-size", "16", "--num-train-images", "64",
    "--widths", "8,16", "--num-res-blocks", "1", "--attention-resolutions", "", "--norm-groups", "4",
    "--batch-size", "32", "--epochs", "6", "--steps", "3", "--num-samples", "4",
]


BACKEND = keras.backend.backend()
# The resumed training run starts with KERAS_BACKEND set to another backend,
# so that `--backend` has to win over it.
OTHER_BACKEND = "torch" if BACKEND == "jax" else "jax"


def _env(backend=BACKEND):
    # Unbuffered, so that the interruption test sees each epoch as it starts.
    return {**os.environ, "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "keras_diffusion", *args],
        capture_output=True, text=True, env=_env(), timeout=timeout,
    )


def _last_line(text):
    # TensorFlow may log to stderr when Keras is imported; the error comes last.
    return text.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run interrupted during epoch 2 or later, then resumed by re-running it.

    Returns the output folder and the resumed run's stdout.
    """
    # "runs" does not exist yet: --out is created like `mkdir -p`.
    out = tmp_path_factory.mktemp("cli") / "runs" / "mnist"
    args = [*TINY_TRAIN, "--out", str(out)]
    with subprocess.Popen(
        [sys.executable, "-m", "keras_diffusion", *args],
        # One pipe, so that logs on stderr cannot fill an unread pipe and stall it.
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
        # A shell that starts the suite in the background (`cmd &`) ignores
        # SIGINT, and children inherit that; restore Ctrl+C as a user has it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as first:
        # Keras prints "Epoch 2/6" once epoch 1 has ended and been backed up.
        for line in first.stdout:
            if "Epoch 2/6" in line:
                first.send_signal(signal.SIGINT)
                break
        rest, _ = first.communicate(timeout=120)
    assert first.returncode == 130, rest
    assert "run the same command again to resume" in rest.lower()
    assert not (out / "model.keras").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "keras_diffusion", *args, "--backend", BACKEND],
        capture_output=True, text=True, env=_env(OTHER_BACKEND), timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    return out, resumed.stdout


def test_train_writes_model_grid_and_log_and_resumes(trained):
    out, stdout = trained
    for name in ("model.keras", "samples.png", "train_log.json"):
        assert (out / name).is_file()
        assert str(out / name) in stdout
    assert "images/s" in stdout
    assert not (out / "backup").exists()  # deleted once the model and the log are saved
    assert Image.open(out / "samples.png").size == (38, 38)  # 2x2 cells of 16 + padding 2.
    log = json.loads((out / "train_log.json").read_text())
    assert log["backend"] == BACKEND and f"the {BACKEND} backend" in stdout
    assert log["args"]["widths"] == [8, 16]
    # The whole run's epochs, those before the interruption too, and where it resumed.
    assert [entry["epoch"] for entry in log["epochs"]] == list(range(1, 7))
    assert log["resumed"][0]["epoch"] > 1 and "Trained 6 epoch(s)" in stdout
    assert log["train_seconds"] > 0 and log["images_per_second"] > 0
    assert not [name for name in os.listdir(out) if name.endswith(".tmp.keras")]


def test_sample_writes_grid_of_requested_size(trained, tmp_path):
    out, _ = trained
    grid = tmp_path / "grid.png"
    result = run_cli(
        "sample", "--model", str(out / "model.keras"), "--num-images", "6", "--steps", "3",
        "--sampler", "ddim", "--seed", "1", "--out", str(grid),
    )
    assert result.returncode == 0, result.stderr
    assert str(grid) in result.stdout
    assert Image.open(grid).size == (3 * 18 + 2, 2 * 18 + 2)  # 2 rows x 3 columns.


def test_sample_with_too_many_steps_is_a_one_line_error(trained, tmp_path, capsys):
    out, _ = trained
    code = cli.main(
        ["sample", "--model", str(out / "model.keras"), "--steps", "2000", "--out", str(tmp_path / "g.png")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "num_steps=2000" in err and "Traceback" not in err


def test_missing_model_file_exits_2(tmp_path):
    missing = tmp_path / "missing.keras"
    result = run_cli("sample", "--model", str(missing), "--out", str(tmp_path / "g.png"))
    assert result.returncode == 2
    assert _last_line(result.stderr).startswith("error: ") and str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_sample_fails_fast_when_out_folder_is_missing(trained, tmp_path, capsys):
    out, _ = trained
    grid = tmp_path / "missing" / "grid.png"
    code = cli.main(["sample", "--model", str(out / "model.keras"), "--out", str(grid)])
    assert code == 2
    assert capsys.readouterr().err.startswith(f"error: The folder {str(tmp_path / 'missing')!r}")


def test_train_fails_fast_when_out_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code = cli.main([*TINY_TRAIN, "--out", str(blocker / "run")])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("error: ") and str(blocker) in captured.err
    assert "Loading" not in captured.out and "Epoch" not in captured.out


def test_train_rejects_steps_over_timesteps_before_loading_data(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main([*TINY_TRAIN, "--timesteps", "10", "--steps", "50", "--out", str(out)])
    assert code == 2
    assert "num_steps=50" in capsys.readouterr().err
    assert not out.exists()


def test_unknown_sampler_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sample", "--model", "m.keras", "--out", "g.png", "--sampler", "plms"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'plms'" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "train" in err and "sample" in err


@pytest.mark.parametrize("command", ["train", "sample"])
def test_help_explains_every_flag(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    subparser = cli.build_parser()._subparsers._group_actions[0].choices[command]
    for action in subparser._actions:
        assert action.help, action.option_strings
        for flag in action.option_strings:
            assert flag in text
    expected = {
        "train": ["--dataset", "--image-size", "--num-train-images", "--network", "--widths",
                  "--num-res-blocks", "--attention-resolutions", "--norm-groups",
                  "--beta-schedule", "--timesteps", "--prediction-type", "--loss",
                  "--min-snr-gamma", "--learning-rate", "--ema", "--epochs", "--batch-size",
                  "--seed", "--sample-every", "--num-samples", "--sampler", "--steps",
                  "--backend", "--out"],
        "sample": ["--model", "--num-images", "--sampler", "--steps", "--out", "--seed",
                   "--eta", "--timestep-spacing", "--backend"],
    }[command]
    assert all(flag in text for flag in expected)


def test_choices_match_the_library():
    from keras_diffusion.datasets import DATASETS
    from keras_diffusion.models.base import LOSS_TYPES
    from keras_diffusion.parameterizations import PARAMETERIZATIONS
    from keras_diffusion.processes import BETA_SCHEDULES, TIMESTEP_SPACINGS, DiscreteVPSchedule
    from keras_diffusion.samplers import SAMPLERS, SIGMA_SCHEDULES

    assert set(cli.SAMPLERS) == set(SAMPLERS)
    assert cli.SIGMA_SCHEDULES == SIGMA_SCHEDULES
    assert cli.DATASETS == DATASETS
    assert cli.BETA_SCHEDULES == BETA_SCHEDULES
    assert cli.TIMESTEP_SPACINGS == TIMESTEP_SPACINGS
    # `train ddpm|ddim` offers the prediction types that fit a VP schedule.
    vp = DiscreteVPSchedule()
    assert cli.PREDICTION_TYPES == tuple(name for name, p in PARAMETERIZATIONS.items() if vp.kind in p.kinds)
    assert cli.LOSS_TYPES == LOSS_TYPES


def _tiny_conv_ddpm(image_shape):
    """An untrained DDPM on a 3-layer conv net (a U-Net takes tens of seconds to build on JAX)."""
    from keras_diffusion import DDPM, DiscreteVPSchedule

    x, t = keras.Input(image_shape, name="x"), keras.Input((), name="t")
    emb = keras.layers.Dense(8)(keras.layers.Reshape((1,))(t) / 20.0)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="swish")(x)
    h = h + keras.layers.Reshape((1, 1, 8))(emb)
    network = keras.Model([x, t], keras.layers.Conv2D(image_shape[-1], 3, padding="same")(h))
    return DDPM(network, DiscreteVPSchedule("cosine", num_train_timesteps=20), seed=0)


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    """A tiny untrained 16x16 DDPM saved as .keras: its samples are noise."""
    path = tmp_path_factory.mktemp("evaluate") / "tiny.keras"
    _tiny_conv_ddpm((16, 16, 1)).save(path)
    return path


def test_evaluate_prints_and_writes_metrics(untrained_model, tmp_path, capsys):
    import numpy as np

    from keras_diffusion import metrics

    out = tmp_path / "metrics.json"
    args = ["evaluate", "--model", str(untrained_model), "--num-images", "24", "--batch-size", "24",
            "--steps", "2", "--json", str(out)]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "Feature extractor: mnist_classifier" in text
    results = json.loads(out.read_text())
    assert (results["feature_extractor"], results["num_generated"], results["num_real"], results["image_size"]) == (
        "mnist_classifier", 24, 24, 16)
    for key, label in (("fid", "FID"), ("kid", "KID"), ("inception_score", "IS")):
        assert f"{label}:" in text and np.isfinite(results[key])
    # An untrained model's blobs are much further from the 24 held-out digits
    # than the next 24 held-out digits are.
    real, _ = metrics.mnist_held_out(image_size=16, num_images=48)
    features = metrics.mnist_classifier_features()(real)
    assert results["fid"] > 5 * float(metrics.fid_from_features(features[:24], features[24:]))
    assert results["kid"] > 10 * max(float(metrics.kid_from_features(features[:24], features[24:])), 0.01)
    real = real[:24]
    probabilities = metrics.mnist_classifier_probabilities()(real)
    expected = float(metrics.inception_score_from_probabilities(probabilities))
    assert results["real_inception_score"] == pytest.approx(expected, rel=1e-4)
    assert 1.0 <= results["inception_score"] < results["real_inception_score"]


def test_evaluate_errors(untrained_model, tmp_path, capsys):
    assert cli.main(["evaluate", "--model", str(tmp_path / "missing.keras")]) == 2
    assert "does not exist" in capsys.readouterr().err
    missing_folder = tmp_path / "no" / "r.json"
    assert cli.main(["evaluate", "--model", str(untrained_model), "--json", str(missing_folder)]) == 2
    assert "for --json" in capsys.readouterr().err
    rgb = tmp_path / "rgb.keras"
    _tiny_conv_ddpm((8, 8, 3)).save(rgb)
    assert cli.main(["evaluate", "--model", str(rgb), "--num-images", "2"]) == 2
    assert "square and grayscale" in capsys.readouterr().err
    from keras_diffusion.metrics import FEATURE_EXTRACTORS

    assert cli.FEATURE_EXTRACTORS == FEATURE_EXTRACTORS


def test_evaluate_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    subparser = cli.build_parser()._subparsers._group_actions[0].choices["evaluate"]
    for action in subparser._actions:
        assert action.help, action.option_strings
    for flag in ("--model", "--num-images", "--batch-size", "--feature-extractor", "--json",
                 "--sampler", "--steps", "--seed", "--backend"):
        assert flag in text
