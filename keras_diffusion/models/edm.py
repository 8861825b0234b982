"""`EDM`: Karras et al. 2022's preconditioned denoiser, training and Heun sampler."""

import keras

from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.processes import EDMProcess


@keras.saving.register_keras_serializable(package="keras_diffusion")
class EDM(DiffusionModel):
    """EDM: `D(x, sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4)`, trained on lognormal noise levels.

    Training draws `log(sigma) ~ N(p_mean, p_std**2)` (`EDMProcess`) and
    minimizes Karras et al.'s weighted loss `lambda(sigma) |D - x0|^2`, with
    `lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`; written for
    the network's output `F`, that is the plain squared error against
    `(x0 - c_skip x) / c_out` (`keras_diffusion.parameterizations`).
    `generate()` runs Heun's second-order method (Algorithm 2) on 18 Karras
    levels (rho=7) by default; pass `sampler_options={"s_churn": 40.0,
    "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}` for its stochastic
    churn (the paper's ImageNet-64 values). Every other sampler works too.

    Args:
        network: a Keras model mapping `[c_in * x, c_noise]` (plus `labels`)
            to `F`, shaped like `x`.
        process: an `EDMProcess` (default `EDMProcess()`: sigma_min=0.002,
            sigma_max=80, sigma_data=0.5, p_mean=-1.2, p_std=1.2).
        prediction_type: `"edm"` (default), or `"epsilon"`/`"sample"`.
        **kwargs: `loss_type`, `num_classes`, `label_dropout`,
            `image_shape`, `seed`: see `DiffusionModel`.

    Reference: Karras, Aittala, Aila & Laine 2022, "Elucidating the Design
    Space of Diffusion-Based Generative Models".

    Example:
    >>> import numpy as np
    >>> x = keras.Input((2,)); t = keras.Input(())
    >>> h = keras.layers.Dense(32, activation="silu")(
    ...     keras.layers.Concatenate()([x, keras.layers.Reshape((1,))(t)]))
    >>> model = EDM(keras.Model([x, t], keras.layers.Dense(2)(h)), seed=0)
    >>> model.compile()
    >>> data = np.random.default_rng(0).normal(0, 0.5, (64, 2)).astype("float32")
    >>> _ = model.fit(data, epochs=1, batch_size=16, verbose=0)
    >>> model.generate(4, num_steps=8, seed=0, verbose=0, return_float=True).shape
    (4, 2)
    """

    default_sampler = "heun"
    default_clip_sample = False

    def __init__(self, network, process=None, prediction_type="edm", **kwargs):
        super().__init__(network, process if process is not None else EDMProcess(), prediction_type=prediction_type,
                         **kwargs)
