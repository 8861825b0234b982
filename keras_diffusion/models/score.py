"""`ScoreModel`: a noise-conditional score network on a score SDE, trained by denoising score matching."""

import keras
from keras import ops

from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.processes.sde import get_sde

WEIGHTINGS = ("sigma2", "likelihood")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ScoreModel(DiffusionModel):
    """Score-based generative modelling through SDEs (Song et al. 2021), on `VESDE`, `VPSDE` or `subVPSDE`.

    The network predicts the noise `eps` of `x_t = alpha(t) x0 + std(t) eps`
    (`prediction_type="epsilon"`), that is the scaled score
    `-std(t) * score(x_t, t)`: score_sde's VE networks divide their output
    by `sigma` and its VP networks by `-std` (`models/utils.py::get_score_fn`),
    which is the same thing. Training draws `t ~ U[eps, 1]` (`eps = 1e-5`) and
    minimizes denoising score matching (score_sde's `losses.py`):

    - `weighting="sigma2"` (default): `lambda(t) = std(t)^2` on the score
      error, the plain squared error of `eps`;
    - `weighting="likelihood"`: `lambda(t) = g(t)^2`, which makes the loss
      a bound on the negative log-likelihood (Song et al. 2021b); on the
      `eps` error that is `g(t)^2 / std(t)^2`.

    `generate()` runs the predictor-corrector sampler by default
    (`sampler="pc"`, reverse diffusion + Langevin, score_sde's settings);
    `"ode_rk45"`, `"langevin"` and every other sampler work too.

    Args:
        network: a Keras model `[x_t, network_time]` -> `eps`, shaped like `x_t`;
            the time input is `log(sigma)` for VE and `999 t` for VP/sub-VP.
        sde: `"ve"`, `"vp"`, `"subvp"` or an SDE object (`keras_diffusion.processes`).
        weighting: `"sigma2"` or `"likelihood"`.
        **kwargs: `loss_type`, `num_classes`, `label_dropout`, `image_shape`,
            `seed`: see `DiffusionModel`.

    Reference: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021,
    "Score-Based Generative Modeling through Stochastic Differential
    Equations"; Song, Durkan, Murray & Ermon 2021, "Maximum Likelihood
    Training of Score-Based Diffusion Models" (the likelihood weighting).

    Example:
    >>> import numpy as np
    >>> x = keras.Input((2,)); t = keras.Input(())
    >>> h = keras.layers.Dense(32, activation="silu")(
    ...     keras.layers.Concatenate()([x, keras.layers.Reshape((1,))(t)]))
    >>> model = ScoreModel(keras.Model([x, t], keras.layers.Dense(2)(h)), sde="ve", seed=0)
    >>> model.compile()
    >>> data = np.random.default_rng(0).normal(0, 0.5, (64, 2)).astype("float32")
    >>> _ = model.fit(data, epochs=1, batch_size=16, verbose=0)
    >>> model.generate(4, num_steps=10, seed=0, return_float=True).shape
    (4, 2)
    """

    default_sampler = "pc"
    default_clip_sample = False

    def __init__(self, network, sde="ve", weighting="sigma2", process=None, prediction_type="epsilon", **kwargs):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"Unknown weighting: {weighting!r}. Use one of {WEIGHTINGS}.")
        if prediction_type != "epsilon":
            raise ValueError(
                f"ScoreModel's network predicts the scaled score -std * score, i.e. prediction_type='epsilon'. "
                f"Received: {prediction_type!r}. Use DDPM/EDM/FlowMatching for other prediction types."
            )
        if kwargs.get("min_snr_gamma") is not None:
            raise ValueError("ScoreModel weights its loss with weighting='sigma2'|'likelihood'; drop min_snr_gamma.")
        kwargs.pop("min_snr_gamma", None)
        # `process` is what get_config() saves; `sde` is the friendlier name.
        super().__init__(network, get_sde(process if process is not None else sde), prediction_type="epsilon",
                         **kwargs)
        self.weighting = weighting

    def _loss_weight(self, alpha, sigma):
        """1 (`"sigma2"`), or `g(t)^2 / std(t)^2` (`"likelihood"`), on the error of `eps`."""
        if self.weighting == "sigma2":
            return ops.ones_like(alpha)
        t = self.process.sigma_to_t(sigma / alpha)
        return ops.square(self.process.diffusion(t)) / ops.square(sigma)

    def get_config(self):
        config = super().get_config()
        config.pop("min_snr_gamma", None)
        config["weighting"] = self.weighting
        return config
