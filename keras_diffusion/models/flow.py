"""`FlowMatching`: rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2023), as SD3 trains."""

import keras

from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.processes import RectifiedFlow


@keras.saving.register_keras_serializable(package="keras_diffusion")
class FlowMatching(DiffusionModel):
    """Flow matching: a network learns the velocity `eps - x0` of `x_t = (1 - t) x0 + t eps`.

    The network maps `[x_t, t]` (plus `labels`) to the velocity, with `t` a
    float in [0, 1] and the noise at `t = 1` (SD3's convention). Training
    draws `t` by the process's `time_sampling` (logit-normal by default) and
    minimizes the mean squared error of the velocity; `generate()` integrates
    the flow ODE from noise with Euler steps uniform in `t` by default
    (`RectifiedFlow.sigmas`). Every sampler of `keras_diffusion.samplers`
    works, through `denoise` (`x0_hat = x_t - t * v`).

    Args:
        network: a Keras model mapping `[x_t, t]` (plus `labels`) to a
            velocity shaped like `x_t`.
        process: a `RectifiedFlow` (default `RectifiedFlow()`; SD3 uses
            `RectifiedFlow(shift=3.0)`).
        time_sampling: `"logit_normal"`, `"uniform"` or `"mode"`: a short
            way to say `process=RectifiedFlow(time_sampling=...)`.
        prediction_type: `"velocity"` (default), or `"epsilon"`/`"sample"`.
        **kwargs: `loss_type`, `min_snr_gamma`, `num_classes`,
            `label_dropout`, `image_shape`, `seed`: see `DiffusionModel`.

    Example:
    >>> import numpy as np
    >>> x = keras.Input((2,)); t = keras.Input(())
    >>> h = keras.layers.Dense(32, activation="silu")(
    ...     keras.layers.Concatenate()([x, keras.layers.Reshape((1,))(t)]))
    >>> model = FlowMatching(keras.Model([x, t], keras.layers.Dense(2)(h)), seed=0)
    >>> model.compile()
    >>> data = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
    >>> _ = model.fit(data, epochs=1, batch_size=16, verbose=0)
    >>> model.generate(4, num_steps=10, seed=0, verbose=0, return_float=True).shape
    (4, 2)
    """

    default_sampler = "euler"
    default_clip_sample = False

    def __init__(self, network, process=None, time_sampling=None, prediction_type="velocity", **kwargs):
        if process is None:
            process = RectifiedFlow(time_sampling=time_sampling or "logit_normal")
        elif time_sampling is not None and time_sampling != getattr(process, "time_sampling", None):
            raise ValueError(
                f"time_sampling={time_sampling!r} differs from the process's "
                f"({getattr(process, 'time_sampling', None)!r}). Pass it once: "
                f"FlowMatching(network, process=RectifiedFlow(..., time_sampling={time_sampling!r}))."
            )
        super().__init__(network, process, prediction_type=prediction_type, **kwargs)

    @property
    def time_sampling(self):
        """How training times are drawn (the process's `time_sampling`)."""
        return self.process.time_sampling
