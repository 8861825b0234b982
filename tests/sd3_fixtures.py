"""One tiny SD3 per test session, shared by the three test_sd3_*.py files.

Building the model and compiling its programs dominate the SD3 tests' time
(seconds each on JAX and TensorFlow), so the model is built and saved once
per process and every test uses the same shapes (32x32 images, 2 steps,
batch 4 for walks) so compiled programs are reused. A cached function rather
than a session fixture: fixtures imported into several test modules are
instantiated once per module.
"""

import functools
import tempfile

import keras
import pytest

from keras_diffusion import sd3

IMAGE_SIZE = 32
NUM_STEPS = 2
SEED = 7
PROMPTS = ["airplane", "a cat"]
NEGATIVE_PROMPTS = ["", "blue"]


class TinySetup:
    """The tiny model, its saved preset folder and a reference output."""

    def __init__(self):
        # Deleted when the test process exits.
        self._folder = tempfile.TemporaryDirectory(prefix="sd3_tiny_")
        self.preset_dir = f"{self._folder.name}/preset"
        self.model = sd3.build_tiny(IMAGE_SIZE, seed=0)
        self.model.save_to_preset(self.preset_dir)

    @functools.cached_property
    def reference_images(self):
        """`text_to_image` of PROMPTS with NEGATIVE_PROMPTS, NUM_STEPS, SEED."""
        return sd3.text_to_image(
            self.model, PROMPTS, NEGATIVE_PROMPTS, num_steps=NUM_STEPS, seed=SEED
        )


@functools.cache
def tiny_setup():
    return TinySetup()


@pytest.fixture(autouse=True, scope="module")
def torch_single_thread():
    """Runs torch on one thread in the SD3 tests' modules, then restores it.

    The tiny model's tensors are so small that torch's per-op OpenMP
    synchronisation costs more than the work: with 2 threads on a busy
    2-core machine each op waits ~9 ms (a layer norm on a (4, 4, 32)
    tensor: 9.8 ms with 2 threads, 0.002 ms with 1), which made these tests
    5x slower. Results do not depend on it. Import this fixture into a test
    module to apply it there.
    """
    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
