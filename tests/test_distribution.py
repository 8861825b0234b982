"""`keras_diffusion.distribution`: data-parallel training.

On JAX, a subprocess with two simulated CPU devices trains the same model
from the same weights on the same global batches, once on one device and
once with `DataParallel`, and the per-step losses must agree. (XLA_FLAGS
must be set before JAX starts, hence the subprocess.) On TensorFlow and
PyTorch, `keras.distribution.DataParallel` is not implemented by Keras,
and the helper must say so.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from keras_diffusion import distribution

BACKEND = keras.backend.backend()

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import keras, numpy as np
    import keras_diffusion as kd
    from keras_diffusion.distribution import data_parallel

    assert len(keras.distribution.list_devices()) == 2, keras.distribution.list_devices()
    images = np.random.default_rng(0).uniform(-1, 1, (24, 8, 8, 1)).astype("float32")

    class Losses(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.seen = []
        def on_train_batch_end(self, batch, logs=None):
            self.seen.append(float(logs["loss"]))

    def train(initial=None):
        keras.utils.set_random_seed(0)
        net = kd.networks.build_unet((8, 8, 1), widths=(8, 16), num_res_blocks=1,
                                     attention_resolutions=(4,), norm_groups=4)
        if initial is not None:
            net.set_weights(initial)
        initial = net.get_weights()
        model = kd.DDPM(net, kd.DiscreteVPSchedule("cosine"), seed=1)
        model.compile(optimizer=keras.optimizers.AdamW(1e-2, use_ema=False))
        losses = Losses()
        model.fit(images, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[losses])
        return initial, losses.seen, net.get_weights()

    initial, single, single_weights = train()
    dist = data_parallel(batch_size=8)
    _, parallel, parallel_weights = train(initial)
    sharding = str(getattr(parallel_weights[0], "sharding", ""))
    print(json.dumps({
        "single": single, "parallel": parallel, "mesh": list(dist.device_mesh.shape),
        "weight_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(single_weights, parallel_weights)),
    }))
    """
)


@pytest.mark.skipif(BACKEND != "jax", reason="runs on JAX; the other backends check the error below")
def test_data_parallel_on_two_cpu_devices_matches_one_device():
    env = dict(
        os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
        XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip(),
    )
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["mesh"] == [2]
    assert len(result["single"]) == len(result["parallel"]) == 3
    # The global batch's loss, step by step, and the weights after 3 steps.
    for one, two in zip(result["single"], result["parallel"]):
        assert abs(one - two) < 1e-4 * max(1.0, abs(one)), result
    assert result["weight_diff"] < 1e-4, result
    # The loss changed: the trajectories compared are not constant.
    assert result["single"][0] != result["single"][-1]


@pytest.mark.skipif(BACKEND == "jax", reason="the JAX test above runs DataParallel itself")
def test_other_backends_get_a_clear_error():
    with pytest.raises(RuntimeError, match="JAX backend only.*KERAS_BACKEND=jax"):
        distribution.data_parallel()
    assert keras.distribution.distribution() is None


def test_batch_size_must_split_across_devices():
    if BACKEND == "jax":
        with pytest.raises(ValueError, match="does not split evenly across 2 devices.*multiple of 2"):
            distribution.data_parallel(devices=["cpu:0", "cpu:1"], batch_size=7)
    else:
        # The backend check comes first: no distribution exists to check the batch against.
        with pytest.raises(RuntimeError, match="JAX backend only"):
            distribution.data_parallel(devices=["cpu:0", "cpu:1"], batch_size=7)
    assert keras.distribution.distribution() is None
