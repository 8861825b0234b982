"""The command line: `python -m keras_diffusion ...`, as users run it, and `cli.main`.

A subprocess costs 5-40 s, so one tiny `train ddpm` run (interrupted, then
resumed with `--backend`) is the only one; the tests that need a trained
model share it, and everything else calls `cli.main` in this process.
`train flow` and `train edm` run on a 3-layer conv net in place of the U-Net
(the U-Net path is the DDPM run's), so that they cost seconds.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys

import keras
import pytest
from PIL import Image

import keras_diffusion as kd
from keras_diffusion import cli

# One U-Net level (the middle block still has attention) and 4 epochs of 2 batches:
# the interruption lands after epoch 1 and leaves epochs to resume.
TINY_TRAIN = [
    "train", "ddpm", "--dataset", "digits", "--image-size", "16", "--num-train-images", "64",
    "--widths", "8", "--num-res-blocks", "1", "--attention-resolutions", "", "--norm-groups", "4",
    "--batch-size", "32", "--epochs", "4", "--steps", "3", "--num-samples", "4",
]


BACKEND = keras.backend.backend()
# The resumed training run starts with KERAS_BACKEND set to another backend,
# so that `--backend` has to win over it.
OTHER_BACKEND = "torch" if BACKEND == "jax" else "jax"


def _env(backend=BACKEND):
    # Unbuffered, so that the interruption test sees each epoch as it starts.
    return {**os.environ, "KERAS_BACKEND": backend, "PYTHONUNBUFFERED": "1"}


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
        # Keras prints "Epoch 2/4" once epoch 1 has ended and been backed up.
        for line in first.stdout:
            if "Epoch 2/4" in line:
                first.send_signal(signal.SIGINT)
                break
        rest, _ = first.communicate(timeout=120)
    assert first.returncode == 130, rest
    assert "run the same command again to resume" in rest.lower()
    assert not (out / "model.keras").exists()
    # Ctrl+C came after epoch 1's checkpoint (step 2 of the run): the step it ended is
    # checkpointed too, so the rerun resumes there and repeats no step.
    position = re.search(r"checkpoint is at (epoch \d+, step \d+ \(step (\d+) of the run\))", rest)
    assert position and int(position[2]) > 2, rest

    resumed = subprocess.run(
        [sys.executable, "-m", "keras_diffusion", *args, "--backend", BACKEND],
        capture_output=True, text=True, env=_env(OTHER_BACKEND), timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"at {position[1]}." in resumed.stdout
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
    assert log["args"]["widths"] == [8]
    assert (log["args"]["sampler"], log["args"]["steps"]) == ("ddpm", 3)  # a DDPM's own sampler
    # The whole run's epochs, those before the interruption too, and where it resumed.
    assert [entry["epoch"] for entry in log["epochs"]] == list(range(1, 5))
    assert log["resumed"][0]["epoch"] > 1 and "Trained 4 epoch(s)" in stdout
    assert log["train_seconds"] > 0 and log["images_per_second"] > 0
    assert not [name for name in os.listdir(out) if name.endswith(".tmp.keras")]


def test_sample_writes_grid_of_requested_size(trained, tmp_path, capsys):
    out, _ = trained
    grid = tmp_path / "grid.png"
    argv = ["sample", "--model", str(out / "model.keras"), "--num-images", "6", "--steps", "3",
            "--sampler", "ddim", "--seed", "1", "--out", str(grid)]
    assert cli.main(argv) == 0
    assert str(grid) in capsys.readouterr().out
    assert Image.open(grid).size == (3 * 18 + 2, 2 * 18 + 2)  # 2 rows x 3 columns.


def test_sample_with_too_many_steps_is_a_one_line_error(trained, tmp_path, capsys):
    out, _ = trained
    code = cli.main(
        ["sample", "--model", str(out / "model.keras"), "--steps", "2000", "--out", str(tmp_path / "g.png")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "num_steps=2000" in err and "Traceback" not in err


def test_missing_model_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "missing.keras"
    assert cli.main(["sample", "--model", str(missing), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and "Traceback" not in err


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


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "train" in err and "sample" in err


def _subparser(parser, path):
    for name in path:
        parser = parser._subparsers._group_actions[0].choices[name]
    return parser


COMMANDS = [["train"], ["train", "ddpm"], ["train", "ddim"], ["train", "flow"], ["train", "edm"],
            ["train", "score"], ["train", "consistency"], ["train", "meanflow"], ["distill"], ["sample"], ["evaluate"],
            ["walk"], ["generate"], ["finetune"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_explains_every_flag(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m keras_diffusion {' '.join(command)}")
    for action in _subparser(cli.build_parser(), command)._actions:
        if isinstance(action, argparse._SubParsersAction):  # `train`'s models: listed with their help
            # A long name gets its help on the next line.
            assert all(f"\n    {name} " in text or f"\n    {name}\n" in text for name in action.choices)
            continue
        assert action.help, action.option_strings
        for flag in action.option_strings:
            assert flag in text


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert all(f"\n    {name} " in text for name in cli.COMMANDS)


def _typos():
    from keras_diffusion.cli.train import FAMILIES
    from keras_diffusion.compile import BACKENDS
    from keras_diffusion.metrics import FEATURE_EXTRACTORS
    from keras_diffusion.networks import UNET_PRESETS
    from keras_diffusion.parameterizations import prediction_types
    from keras_diffusion.processes import BETA_SCHEDULES, TIME_SAMPLINGS, EDMProcess
    from keras_diffusion.samplers import SAMPLERS, SIGMA_SCHEDULES
    from keras_diffusion.sd3.finetune import WEIGHTING_SCHEMES
    from keras_diffusion.sd3.lora import LAYOUTS
    from keras_diffusion.sd3.walks import DIRECTIONS

    train = ["--out", "runs/x"]
    sample = ["sample", "--model", "m.keras", "--out", "g.png"]
    sd3 = ["--preset", "tiny", "--out", "x"]
    finetune = ["finetune", *sd3, "--data", "d", "--method", "lora"]
    return [
        (["train", "gan"], FAMILIES),
        (["train", "ddpm", *train, "--network", "mnist_smal"], UNET_PRESETS),
        (["train", "ddpm", *train, "--beta-schedule", "quadratic"], BETA_SCHEDULES),
        (["train", "flow", *train, "--time-sampling", "logitnormal"], TIME_SAMPLINGS),
        (["train", "edm", *train, "--prediction-type", "velocity"], prediction_types(EDMProcess())),
        ([*sample, "--sampler", "plms"], SAMPLERS),
        ([*sample, "--sigma-schedule", "cosine"], SIGMA_SCHEDULES),
        ([*sample, "--backend", "numpy"], BACKENDS),
        (["evaluate", "--model", "m.keras", "--feature-extractor", "clip"], FEATURE_EXTRACTORS),
        (["walk", *sd3, "--prompts", "a", "--direction", "up"], DIRECTIONS),
        ([*finetune, "--weighting-scheme", "cosine"], WEIGHTING_SCHEMES),
        ([*finetune, "--lora-layout", "peft"], LAYOUTS),
    ]


@pytest.mark.parametrize("argv, names", _typos(), ids=[argv[-1] for argv, _ in _typos()])
def test_a_typo_in_a_choice_lists_the_registry(argv, names, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: {argv[-1]!r}" in err
    assert all(repr(name) in err for name in names), err


def test_the_flags_of_earlier_releases_still_parse():
    parser = cli.build_parser()
    args = parser.parse_args([
        "train", "ddpm", "--out", "o", "--backend", "jax", "--seed", "1", "--dataset", "digits",
        "--image-size", "16", "--channels", "1", "--num-train-images", "8", "--exclude-held-out",
        "--network", "mnist_small", "--widths", "8,16", "--num-res-blocks", "1", "--attention-resolutions", "",
        "--norm-groups", "4", "--beta-schedule", "linear", "--timesteps", "100", "--prediction-type",
        "v_prediction", "--loss", "mae", "--min-snr-gamma", "5", "--epochs", "2", "--batch-size", "4",
        "--learning-rate", "1e-3", "--ema", "0.9", "--sample-every", "1", "--sampler", "ddpm", "--steps", "10",
        "--eta", "0", "--sigma-schedule", "karras", "--timestep-spacing", "trailing", "--no-clip-sample",
        "--num-samples", "4",
    ])
    assert (args.model, args.widths, args.attention_resolutions, args.clip_sample) == ("ddpm", (8, 16), (), False)
    args = parser.parse_args(["train", "ddim", "--out", "o", "--network", "ddim_keras_io", "--widths", "8,16",
                              "--num-res-blocks", "1", "--prediction-type", "sample"])
    assert args.num_res_blocks == 1


def test_flow_and_edm_flags_keep_the_library_defaults():
    from keras_diffusion.cli.args import resolve_sampling
    from keras_diffusion.processes import EDMProcess, RectifiedFlow

    parser = cli.build_parser()
    flow = parser.parse_args(["train", "flow", "--out", "x"])
    assert RectifiedFlow(shift=flow.shift, time_sampling=flow.time_sampling).get_config() == RectifiedFlow().get_config()
    assert (flow.prediction_type, flow.loss, flow.network) == ("velocity", "mse", "mnist_small")
    edm = parser.parse_args(["train", "edm", "--out", "x"])
    process = EDMProcess(sigma_min=edm.sigma_min, sigma_max=edm.sigma_max, sigma_data=edm.sigma_data,
                         p_mean=edm.p_mean, p_std=edm.p_std)
    assert process.get_config() == EDMProcess().get_config()
    # Left out, the sampler and steps are the family's: Heun on 18 Karras levels.
    resolve_sampling(edm, kd.EDM, process)
    assert (edm.sampler, edm.steps) == ("heun", 18)
    ddpm = parser.parse_args(["train", "ddpm", "--out", "x"])
    resolve_sampling(ddpm, kd.DDPM, kd.DiscreteVPSchedule())
    assert (ddpm.sampler, ddpm.steps, ddpm.loss) == ("ddpm", 50, "mse")
    # One set of defaults: the command line samples as generate() does when left out.
    assert (ddpm.sampler, ddpm.steps) == (kd.DDPM.default_sampler, kd.DiscreteVPSchedule().default_num_steps("ddpm"))
    assert ddpm.eta is None and (ddpm.ema, round(ddpm.ema_warmup_power, 3)) == (0.999, 0.667)
    assert parser.parse_args(["train", "ddim", "--out", "x"]).loss == "mae"  # keras.io


def test_flags_of_another_family_are_refused(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "flow", "--out", "x", "--beta-schedule", "linear"])
    assert "unrecognized arguments: --beta-schedule" in capsys.readouterr().err
    assert cli.main(["train", "edm", "--out", "x", "--sigma-min", "90"]) == 2
    assert "sigma_min < sigma_max" in capsys.readouterr().err
    assert cli.main(["train", "edm", "--out", "x", "--timestep-spacing", "leading"]) == 2
    assert "timestep_spacing='leading' does not apply" in capsys.readouterr().err


def _tiny_conv_net(image_shape, **unused):
    """A 3-layer conv net `[x, t] -> x` (a U-Net takes tens of seconds to build on JAX)."""
    x, t = keras.Input(image_shape, name="x"), keras.Input((), name="t")
    emb = keras.layers.Dense(8)(keras.layers.Reshape((1,))(t) / 20.0)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="swish")(x)
    h = h + keras.layers.Reshape((1, 1, 8))(emb)
    return keras.Model([x, t], keras.layers.Conv2D(image_shape[-1], 3, padding="same")(h))


def _tiny_conv_ddpm(image_shape):
    """An untrained DDPM on `_tiny_conv_net`."""
    return kd.DDPM(_tiny_conv_net(image_shape), kd.DiscreteVPSchedule("cosine", num_train_timesteps=20), seed=0)


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory):
    """A tiny untrained 16x16 DDPM saved as .keras: its samples are noise."""
    path = tmp_path_factory.mktemp("evaluate") / "tiny.keras"
    _tiny_conv_ddpm((16, 16, 1)).save(path)
    return path


def test_evaluate_prints_and_writes_metrics(untrained_model, tmp_path, capsys, monkeypatch):
    import numpy as np

    from keras_diffusion import metrics
    from keras_diffusion.cli import evaluate

    # The command's model object, so that the bits/dim check below reuses its compiled solver.
    model = keras.saving.load_model(untrained_model)
    monkeypatch.setattr(evaluate, "load_diffusion_model", lambda path: model)
    out = tmp_path / "metrics.json"
    bpd_flags = ["--bpd", "--bpd-images", "3", "--rtol", "0.1", "--atol", "0.1"]
    args = ["evaluate", "--model", str(untrained_model), "--num-images", "24", "--batch-size", "24",
            "--steps", "2", *bpd_flags, "--json", str(out)]
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

    assert f"Bits/dim: {results['bpd']:.4f} +- {results['bpd_std_error']:.4f} (standard error) on 3" in text
    assert "rtol 0.1, atol 0.1" in text and "batch of 3" in text
    assert results["bpd_num_images"] == 3 and results["bpd_nfe"] > 6 and results["args"]["probes"] == 1
    # The held-out digits as uint8 pixels, with the command's seed.
    digits, _ = metrics.mnist_held_out(image_size=16, num_images=3)
    bpd = model.log_likelihood(np.round(digits * 255).astype("uint8"), rtol=0.1, atol=0.1, seed=0)
    assert results["bpd"] == pytest.approx(bpd.mean(), rel=1e-6)
    assert results["bpd_std_error"] == pytest.approx(bpd.std(ddof=1) / np.sqrt(3), rel=1e-6)


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
    assert cli.main(["evaluate", "--model", str(untrained_model), "--bpd", "--bpd-images", "1"]) == 2
    assert "--bpd-images must be at least 2" in capsys.readouterr().err
    x, t, labels = keras.Input((8, 8, 1)), keras.Input(()), keras.Input((), dtype="int32")
    label_bias = keras.layers.Reshape((1, 1, 1))(keras.layers.Embedding(3, 1)(labels))
    conditional = tmp_path / "conditional.keras"
    kd.DDPM(keras.Model([x, t, labels], keras.layers.Conv2D(1, 1)(x) + label_bias), num_classes=2).save(conditional)
    assert cli.main(["evaluate", "--model", str(conditional), "--bpd"]) == 2
    assert "is class-conditional. Leave out --bpd" in capsys.readouterr().err


FAMILY_FLAGS = {
    "flow": (["--time-sampling", "uniform", "--shift", "2"], {"time_sampling": "uniform", "shift": 2.0}, "euler"),
    "edm": (["--sigma-data", "0.6", "--p-mean", "-1"], {"sigma_data": 0.6, "p_mean": -1.0}, "heun"),
    "score": (["--sde", "vp", "--weighting", "likelihood"], {"beta_min": 0.1, "beta_max": 20.0}, "pc"),
}


@pytest.mark.parametrize("family", sorted(FAMILY_FLAGS))
def test_train_flow_edm_and_score_then_sample_and_evaluate(family, tmp_path, monkeypatch, capsys):
    import keras_diffusion.networks

    flags, process_config, sampler = FAMILY_FLAGS[family]
    monkeypatch.setattr(keras_diffusion.networks, "unet_from_preset", lambda name, **kw: _tiny_conv_net(**kw))
    out = tmp_path / family
    argv = ["train", family, "--dataset", "digits", "--image-size", "8", "--num-train-images", "8", "--batch-size", "8",
            "--epochs", "1", "--steps", "2", "--num-samples", "4", "--out", str(out), *flags]
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert f"Generating 4 samples ({sampler}, 2 steps)" in stdout  # the family's default sampler
    log = json.loads((out / "train_log.json").read_text())
    assert (log["args"]["model"], log["args"]["sampler"], len(log["epochs"])) == (family, sampler, 1)
    assert Image.open(out / "samples.png").size == (2 * 10 + 2, 2 * 10 + 2)  # 2x2 cells of 8 + padding 2.
    model = keras.saving.load_model(out / "model.keras")
    assert type(model) is {"flow": kd.FlowMatching, "edm": kd.EDM, "score": kd.ScoreModel}[family]
    assert model.process.get_config().items() >= process_config.items()

    grid = tmp_path / "grid.png"
    assert cli.main(["sample", "--model", str(out / "model.keras"), "--steps", "2", "--num-images", "2",
                     "--out", str(grid)]) == 0
    assert Image.open(grid).size == (2 * 10 + 2, 10 + 2)
    assert cli.main(["evaluate", "--model", str(out / "model.keras"), "--steps", "2", "--num-images", "4",
                     "--batch-size", "4", "--json", str(tmp_path / "m.json")]) == 0
    assert f"({sampler}, 2 steps)" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["num_generated"] == 4
