"""Writes the "old files still load" fixtures of tests/test_legacy_files.py.

Run from the repository root with the code whose files should keep loading
(these were written on main before issue 12's redesign of processes):

    python tools/make_legacy_fixtures.py

It trains three tiny models for two steps under the JAX backend and saves them
(with their optimizer and EMA state) as `tests/fixtures/legacy_*.keras`, with
the fixed noise and labels in `legacy_inputs.npz`. Then, once per backend (in a
subprocess), it loads the files and writes what they sample from that noise to
`tests/fixtures/legacy_samples_<backend>.npz`: deterministic samplers from the
fixed noise, and one seeded stochastic sampler (seeds reproduce per backend).
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, ROOT)  # this checkout's keras_diffusion, not an installed one
BACKENDS = ("jax", "tensorflow", "torch")
NUM_IMAGES = 3


def sample_calls():
    """`{model_name: {key: generate kwargs}}`: what the test samples from each file."""
    return {
        "ddpm": {
            "ddim": dict(sampler="ddim", num_steps=5),
            "euler_karras": dict(sampler="euler", num_steps=5, sigma_schedule="karras", clip_sample=False),
            "ddpm_seeded_trailing": dict(sampler="ddpm", num_steps=5, timestep_spacing="trailing", seed=0, noise=False),
        },
        "ddim": {
            "default": dict(num_steps=5),
        },
        "ddpm_conditional": {
            "ddim_guided": dict(sampler="ddim", num_steps=5, labels=True, guidance_scale=2.0),
        },
    }


def write_models():
    import keras
    import numpy as np

    import keras_diffusion as kd
    from keras_diffusion.networks import build_ddim_unet
    from keras_diffusion.networks import build_unet

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    shape = (8, 8, 1)
    images = rng.uniform(-1, 1, (8,) + shape).astype("float32")
    labels = rng.integers(0, 3, 8).astype("int32")

    def unet(num_classes=None):
        return build_unet(shape, widths=(8,), num_res_blocks=1, attention_resolutions=(), norm_groups=4,
                          num_classes=num_classes)

    ddpm = kd.DDPM(unet(), kd.DiscreteVPSchedule("cosine"), prediction_type="v_prediction", seed=0)
    ddpm.compile(optimizer=keras.optimizers.AdamW(1e-3, use_ema=True, ema_momentum=0.5))
    ddpm.fit(images, batch_size=4, epochs=1, verbose=0)
    ddpm.save(os.path.join(FIXTURES, "legacy_ddpm.keras"))

    cond = kd.DDPM(unet(3), kd.DiscreteVPSchedule("linear"), num_classes=3, seed=0)
    cond.compile(optimizer=keras.optimizers.AdamW(1e-3, use_ema=True, ema_momentum=0.5))
    cond.fit({"images": images, "labels": labels}, batch_size=4, epochs=1, verbose=0)
    cond.save(os.path.join(FIXTURES, "legacy_ddpm_conditional.keras"))

    rgb = rng.uniform(-1, 1, (8, 8, 8, 3)).astype("float32")
    ddim = kd.DDIM(build_ddim_unet((8, 8, 3), widths=(8, 16), block_depth=1), kid_feature_extractor=None, seed=0)
    ddim.adapt(rgb)
    ddim.compile(optimizer=keras.optimizers.AdamW(1e-3, use_ema=True, ema_momentum=0.5))
    ddim.fit(rgb, batch_size=4, epochs=1, verbose=0)
    ddim.save(os.path.join(FIXTURES, "legacy_ddim.keras"))

    np.savez(
        os.path.join(FIXTURES, "legacy_inputs.npz"),
        noise_gray=rng.standard_normal((NUM_IMAGES,) + shape).astype("float32"),
        noise_rgb=rng.standard_normal((NUM_IMAGES, 8, 8, 3)).astype("float32"),
        labels=np.array([0, 1, 2], "int32"),
    )


def generate_all(models, inputs):
    """`{"model/key": float32 images}` for every call of `sample_calls()`."""
    out = {}
    for name, calls in sample_calls().items():
        model = models[name]
        noise = inputs["noise_rgb"] if name == "ddim" else inputs["noise_gray"]
        for key, call in calls.items():
            call = dict(call)
            if call.pop("noise", True):
                call["initial_noise"] = noise
            if call.pop("labels", False):
                call["labels"] = inputs["labels"]
            out[f"{name}/{key}"] = model.generate(NUM_IMAGES, verbose=False, return_float=True, **call)
    return out


def load_all():
    import keras

    import keras_diffusion  # noqa: F401 -- registers the classes

    return {
        name: keras.saving.load_model(os.path.join(FIXTURES, f"legacy_{name}.keras"))
        for name in sample_calls()
    }


def write_samples():
    import keras
    import numpy as np

    inputs = dict(np.load(os.path.join(FIXTURES, "legacy_inputs.npz")))
    samples = generate_all(load_all(), inputs)
    np.savez(os.path.join(FIXTURES, f"legacy_samples_{keras.backend.backend()}.npz"), **samples)


def main():
    if sys.argv[1:] == ["models"]:
        return write_models()
    if sys.argv[1:] == ["samples"]:
        return write_samples()
    os.makedirs(FIXTURES, exist_ok=True)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, __file__, "models"], env=dict(env, KERAS_BACKEND="jax"), check=True)
    for backend in BACKENDS:
        subprocess.run([sys.executable, __file__, "samples"], env=dict(env, KERAS_BACKEND=backend), check=True)


if __name__ == "__main__":
    main()
