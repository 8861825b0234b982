"""SD3 latent walks: slerp, the four walks, compile-once, GIF/PNG export, CLI."""

import keras
import numpy as np
import pytest
from PIL import Image
from sd3_fixtures import IMAGE_SIZE, NEGATIVE_PROMPTS, NUM_STEPS, PROMPTS, SEED, tiny_setup
from sd3_fixtures import torch_single_thread  # noqa: F401 (autouse fixture)

from keras_diffusion import sd3
from keras_diffusion import cli
from keras_diffusion.sd3 import pipeline

BACKEND = keras.backend.backend()
# Every walk here uses these settings, so one program is compiled for all.
WALK = dict(num_steps=NUM_STEPS, batch_size=4, progress=False)


@pytest.fixture
def model():
    return tiny_setup().model


def noise(model, seed=SEED):
    """The initial latents a seeded walk with fixed latents uses."""
    return keras.random.normal((1,) + model.latent_shape, dtype="float32", seed=seed)


def test_slerp_keeps_the_ends_exact_and_the_norm_on_the_arc():
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    path = keras.ops.convert_to_numpy(sd3.slerp(a, b, [0.0, 0.25, 0.5, 1.0]))
    np.testing.assert_array_equal(path[0], a)
    np.testing.assert_array_equal(path[-1], b)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(path[2], [np.sqrt(0.5)] * 2, rtol=1e-6)


def test_slerp_falls_back_to_lerp_for_parallel_vectors():
    a = np.array([[1.0, 2.0]], np.float32)
    path = keras.ops.convert_to_numpy(sd3.slerp(a, 3 * a, [0.0, 0.5, 1.0]))
    assert path.shape == (3, 1, 2)
    np.testing.assert_allclose(path[:, 0], [a[0], 2 * a[0], 3 * a[0]])


def test_interpolation_end_frames_equal_the_prompts_own_images(model):
    frames = sd3.interpolate_prompts(model, PROMPTS, frames=5, seed=SEED, **WALK)
    assert frames.shape == (5, IMAGE_SIZE, IMAGE_SIZE, 3) and frames.dtype == np.uint8
    own = sd3.render(model, sd3.encode_prompts(model, PROMPTS), noise(model), **WALK)
    np.testing.assert_array_equal(frames[0], own[0])
    np.testing.assert_array_equal(frames[-1], own[1])
    assert not np.array_equal(frames[0], frames[-1])


def test_rendering_own_embeddings_matches_text_to_image(model):
    # text_to_image draws its latents as normal((N, *latent_shape), seed).
    latents = keras.random.normal((2,) + model.latent_shape, dtype="float32", seed=SEED)
    embeddings = sd3.encode_prompts(model, PROMPTS, NEGATIVE_PROMPTS)
    frames = sd3.render(model, embeddings, latents, **WALK)
    # The same math as two programs (batch 4 with the prompts encoded outside
    # the loop, batch 2 with them inside). Torch runs both eagerly: equal bit
    # for bit. XLA (JAX, TensorFlow) compiles them differently, so a float
    # may round to the neighbouring uint8 level: allow 1 level, in few pixels.
    difference = np.abs(frames.astype(int) - tiny_setup().reference_images)
    if BACKEND == "torch":
        assert difference.max() == 0
    else:
        assert difference.max() <= 1
        assert np.mean(difference > 0) < 0.01


def test_a_second_walk_with_the_same_shapes_does_not_recompile(model):
    sd3.interpolate_prompts(model, PROMPTS, frames=5, seed=SEED, **WALK)
    traces = model.frame_renderer.trace_count
    if BACKEND != "torch":  # torch runs eagerly: nothing is traced
        assert traces > 0
    frames = sd3.interpolate_prompts(model, ["a dog", "plane"], frames=7, seed=1, **WALK)
    assert frames.shape[0] == 7
    assert model.frame_renderer.trace_count == traces


def test_circular_walk_ends_where_it_starts(model):
    frames = sd3.circular_walk(model, "a cat", frames=6, seed=SEED, **WALK)
    assert frames.shape == (6, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_array_equal(frames[0], frames[-1])
    assert not np.array_equal(frames[0], frames[2])


def test_walk_around_prompt_starts_at_the_prompt_and_moves(model):
    frames = sd3.walk_around_prompt(model, "a cat", frames=3, step_size=1.0, seed=SEED, **WALK)
    own = sd3.render(model, sd3.encode_prompts(model, "a cat"), noise(model), **WALK)
    np.testing.assert_array_equal(frames[0], own[0])
    assert not np.array_equal(frames[0], frames[2])
    random_walk = dict(frames=3, step_size=1.0, direction="random", seed=SEED, **WALK)
    first = sd3.walk_around_prompt(model, "a cat", **random_walk)
    np.testing.assert_array_equal(first, sd3.walk_around_prompt(model, "a cat", **random_walk))
    np.testing.assert_array_equal(first[0], own[0])


def test_grid_corners_are_the_four_prompts(model):
    prompts = ["a cat", "a dog", "plane", "air"]
    cells = sd3.interpolation_grid(model, prompts, size=2, seed=SEED, **WALK)
    own = sd3.render(model, sd3.encode_prompts(model, prompts), noise(model), **WALK)
    np.testing.assert_array_equal(cells, own)
    assert sd3.interpolation_grid(model, prompts, size=3, seed=SEED, **WALK).shape[0] == 9


def test_gif_has_the_requested_frames_size_and_timing(model, tmp_path):
    # Varying latents make consecutive frames differ; GIF writers merge
    # identical consecutive frames.
    frames = sd3.interpolate_prompts(model, PROMPTS, frames=5, vary_latents=True, seed=SEED, **WALK)
    assert all(not np.array_equal(a, b) for a, b in zip(frames, frames[1:]))
    path = sd3.save_gif(tmp_path / "walk.gif", frames, fps=4, loop=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.size == (IMAGE_SIZE, IMAGE_SIZE)
        assert gif.info["duration"] == 250
        assert gif.info["loop"] == 2
    with Image.open(sd3.save_gif(tmp_path / "band.gif", frames, rubber_band=True)) as gif:
        assert gif.n_frames == 8  # 0 1 2 3 4 3 2 1


def test_png_grid_has_the_cells(model, tmp_path):
    cells = np.zeros((4, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    with Image.open(sd3.save_grid(tmp_path / "grid.png", cells)) as grid:
        assert grid.size == (2 * (IMAGE_SIZE + 2) + 2,) * 2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: sd3.interpolate_prompts(m, PROMPTS, frames=1), "frames. must be an int >= 2"),
        (lambda m: sd3.circular_walk(m, "a", frames=0), "frames. must be an int >= 2"),
        (lambda m: sd3.walk_around_prompt(m, "a", frames=1.5), "frames"),
        (lambda m: sd3.interpolate_prompts(m, []), "empty"),
        (lambda m: sd3.interpolate_prompts(m, ["a"]), "at least 2 prompts"),
        (lambda m: sd3.interpolation_grid(m, PROMPTS), "exactly 4 prompts"),
        (lambda m: sd3.interpolation_grid(m, ["a", "b", "c", "d"], size=1), "size"),
        (lambda m: sd3.walk_around_prompt(m, "a", direction="up"), "direction"),
        (lambda m: sd3.walk_around_prompt(m, ["a", "b"]), "one string"),
        (lambda m: sd3.render(m, sd3.encode_prompts(m, "a"), np.zeros((1, 8, 8, 16))),
         "latents. must have shape"),
        (lambda m: sd3.interpolate_prompts(m, PROMPTS, batch_size=0), "batch_size"),
    ],
)
def test_bad_walk_input_is_refused_with_a_clear_error(model, call, message):
    with pytest.raises(ValueError, match=message):
        call(model)


def test_saving_into_a_missing_folder_is_refused(tmp_path):
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sd3.save_gif(tmp_path / "missing" / "walk.gif", frames)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sd3.save_grid(tmp_path / "missing" / "grid.png", frames)


def _run_cli(argv):
    # The command's own run(), so that its errors reach the test as exceptions.
    args = cli.build_parser().parse_args(argv)
    return cli.COMMANDS[args.command].run(args)


@pytest.fixture
def session_model_for_cli(monkeypatch):
    # Reuse the session's model: the CLI's own loading is plain
    # `from_preset`, tested in test_sd3_pipeline.py.
    monkeypatch.setattr(pipeline, "from_preset", lambda preset, **kwargs: tiny_setup().model)


def test_cli_walk_writes_a_gif_and_a_grid(session_model_for_cli, tmp_path):
    common = ["--preset", "tiny", "--steps", str(NUM_STEPS), "--seed", str(SEED)]
    gif = tmp_path / "walk.gif"
    argv = ["walk", *common, "--prompts", *PROMPTS, "--frames", "4", "--vary-latents",
            "--fps", "5", "--out", str(gif)]
    assert _run_cli(argv) == 0
    with Image.open(gif) as image:
        assert (image.n_frames, image.size) == (4, (IMAGE_SIZE, IMAGE_SIZE))
        assert image.info["duration"] == 200
    grid = tmp_path / "grid.png"
    argv = ["walk", *common, "--kind", "grid", "--grid-size", "2",
            "--prompts", "a", "b", "c", "d", "--out", str(grid)]
    assert _run_cli(argv) == 0
    assert Image.open(grid).size == (2 * (IMAGE_SIZE + 2) + 2,) * 2


def test_cli_walk_errors(session_model_for_cli, tmp_path):
    with pytest.raises(ValueError, match="takes one prompt"):
        _run_cli(["walk", "--preset", "tiny", "--kind", "circle", "--prompts", "a", "b",
                  "--steps", str(NUM_STEPS), "--out", str(tmp_path / "w.gif")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _run_cli(["walk", "--preset", "tiny", "--prompts", "a", "b",
                  "--out", str(tmp_path / "missing" / "w.gif")])


def test_cli_takes_the_main_cli_shared_options():
    args = cli.build_parser().parse_args(
        ["walk", "--backend", "jax", "--preset", "tiny", "--prompts", "a", "b", "--out", "w.gif"]
    )
    assert (args.command, args.backend, args.seed, args.kind) == ("walk", "jax", 0, "interpolate")
