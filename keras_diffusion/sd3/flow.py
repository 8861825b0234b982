"""SD3's MMDiT as a flow-matching `DiffusionModel`: one denoiser for every sampler and for training.

`MMDiTFlow` puts a KerasHub `StableDiffusion3Backbone`'s MMDiT
(`backbone.diffuser`) on `RectifiedFlow(shift=backbone.shift)` (3.0 for SD3)
with the `"velocity"` parameterization. So `denoise(x, sigma, condition)` is
SD3's k-diffusion denoiser, every sampler of `keras_diffusion.samplers` runs
on its latents (`sd3.text_to_image(..., sampler="dpmpp_2m")`), and
`keras_diffusion.sd3.FlowMatchingTrainer` trains it with the base's
`call()`/`compute_loss()`/`fit()`.

The conditioning is the text, a dict with the MMDiT's `"context"` and
`"pooled_projection"`; for classifier-free guidance also
`"negative_context"` and `"negative_pooled_projection"` (the negative or
empty prompt), combined as KerasHub does: `negative + scale * (positive -
negative)`.

Conventions. KerasHub's scheduler calls the flow's time `t` "sigma": the noisy
latent is `(1 - t) x + t eps`, the MMDiT gets `timestep = 1000 t`, and its
Euler step is `x_t + (t_next - t) v`. The samplers here work in
`sigma_hat = t / (1 - t)` with `x = x_t / (1 - t)`, where the Euler step is
that same step. KerasHub starts from pure noise at `t = 1`, where
`sigma_hat` is infinite; here the first level is the process's largest,
`sigma_range[1]` (`t = shift(0.9999)`, 0.99997 for shift 3), and the
samples start as that noise level's prior, `eps` in `x_t`.
"""

import secrets

import keras
import numpy as np
from keras import ops

from keras_diffusion.compile import CompiledLoop
from keras_diffusion.images import to_uint8
from keras_diffusion.models.flow import FlowMatching
from keras_diffusion.processes import RectifiedFlow
from keras_diffusion.processes.base import check_num_steps
from keras_diffusion.samplers import get_sampler


class MMDiTFlow(FlowMatching):
    """SD3's MMDiT on SD3's rectified flow, with text conditioning: `denoise(x, sigma, condition)`.

    Building one changes nothing in the backbone (no trainable flags), so
    generation can use it freely; `FlowMatchingTrainer` adds the training.

    Args:
        backbone: a `keras_hub.models.StableDiffusion3Backbone`, shared.
        process: a `RectifiedFlow`; default `RectifiedFlow(shift=backbone.shift,
            t_min=1 / backbone.num_train_timesteps)`, so that the smallest
            noise level is that of KerasHub's 1000-entry table.
        label_dropout: the probability of training an example on the empty
            caption (the trainer's `caption_dropout`).
        seed: seed of the training draws.
        **kwargs: passed to `FlowMatching` / `keras.Model` (`dtype`
            defaults to the backbone's policy).

    Example:
    >>> model = keras_diffusion.sd3.from_preset("tiny")  # doctest: +SKIP
    >>> flow = MMDiTFlow(model.backbone)  # doctest: +SKIP
    >>> x0 = flow.denoise(x, 1.0, {"context": context, "pooled_projection": pooled})  # doctest: +SKIP
    """

    def __init__(self, backbone, process=None, label_dropout=0.0, seed=None, **kwargs):
        kwargs.setdefault("dtype", backbone.dtype_policy)
        if process is None:
            process = RectifiedFlow(shift=backbone.shift, t_min=1.0 / backbone.num_train_timesteps)
        super().__init__(
            backbone.diffuser,
            process=process,
            label_dropout=label_dropout,
            image_shape=tuple(backbone.latent_shape[1:]),
            seed=seed,
            **kwargs,
        )
        self.num_train_timesteps = int(backbone.num_train_timesteps)

    def _predict(self, x, t, condition, training):
        if condition is None:
            raise ValueError(
                "SD3's MMDiT needs text conditioning: a dict with 'context' and 'pooled_projection'. "
                "Generate with keras_diffusion.sd3.text_to_image(model, prompts, sampler=...)."
            )
        dtype = self.network.compute_dtype
        # KerasHub's MMDiT takes its scheduler's timestep, 1000 t.
        timestep = ops.reshape(self.process.network_time(t) * self.num_train_timesteps, (-1, 1))
        inputs = {
            "latent": x,
            "context": condition["context"],
            "pooled_projection": condition["pooled_projection"],
            "timestep": timestep,
        }
        outputs = self.network({name: ops.cast(value, dtype) for name, value in inputs.items()}, training=training)
        return ops.cast(outputs, "float32")

    def _with_unconditional(self, condition):
        return {
            "context": ops.concatenate([condition["context"], condition["negative_context"]]),
            "pooled_projection": ops.concatenate(
                [condition["pooled_projection"], condition["negative_pooled_projection"]]
            ),
        }

    def scheduler_sigmas(self, num_steps):
        """SD3's inference noise levels, in sampler space (`sigma_hat = t / (1 - t)`), ending with 0.

        The times of KerasHub's (and diffusers') `FlowMatchEulerDiscreteScheduler`:
        `shift(linspace(1, shift(1 / N), num_steps))` for `N` training
        timesteps, then 0. The first (`t = 1`, infinite `sigma_hat`) becomes
        the process's largest level, `sigma_range[1]`.

        Args:
            num_steps: denoising steps.

        Returns:
            float32 numpy `(num_steps + 1,)`, descending.

        Example:
        >>> flow.scheduler_sigmas(2)  # doctest: +SKIP
        array([2.9999e+04, 9.0094e-03, 0.0000e+00], dtype=float32)
        """
        check_num_steps(num_steps)
        shift = self.process.shift_time
        t = shift(np.linspace(1.0, shift(1.0 / self.num_train_timesteps), num_steps))
        with np.errstate(divide="ignore"):
            sigmas = np.minimum(t / (1.0 - t), self.process.sigma_range[1])
        return np.append(sigmas, 0.0).astype("float32")

    def sample_latents(self, noise, condition, *, sampler="euler", num_steps=28, guidance_scale=None, seed=0,
                       verbose=False):
        """Runs a sampler on the MMDiT from noise down to clean latents.

        Args:
            noise: standard normal `(batch, *latent_shape)`: the latents at
                `t = 1` (KerasHub's initial latents).
            condition: the text conditioning (see the module docstring);
                with `guidance_scale`, the negative entries too.
            sampler: a name of `keras_diffusion.samplers.SAMPLERS`.
            num_steps: steps over `scheduler_sigmas(num_steps)`.
            guidance_scale: classifier-free guidance scale, or None for none.
            seed: int seed of stochastic samplers' per-step noise.
            verbose: show a progress bar.

        Returns:
            float32 latents `(batch, *latent_shape)`, for `backbone.decode_step`.

        Example:
        >>> latents = flow.sample_latents(noise, condition, sampler="heun", num_steps=8)  # doctest: +SKIP
        """
        spec = get_sampler(sampler)
        options, clip_x0 = self._sampler_options(spec, None, False, None)
        sigmas = self.scheduler_sigmas(num_steps)
        x = ops.convert_to_tensor(noise, "float32") * self.process.prior_std(sigmas[0])
        return self._run_sampler(x, sigmas, spec, options, clip_x0, condition, guidance_scale, seed, True, verbose)


def text_to_image_with_sampler(model, prompts, negative_prompts, sampler, num_steps, guidance_scale, seed):
    """`sd3.text_to_image` with one of our samplers (arguments already checked there).

    The prompts are encoded by the walks' compiled encoder, the loop runs on
    the model's cached `MMDiTFlow` (compiled once per sampler and shapes by
    `keras_diffusion.compile.CompiledLoop`, rebuilt with the model's other
    programs when LoRA or a textual-inversion token changes it), and the
    VAE decodes. The initial latents are KerasHub's for the same seed.

    Returns:
        uint8 images `(len(prompts), H, W, 3)`.
    """
    from keras_diffusion.sd3.walks import encode_prompts

    get_sampler(sampler)  # an unknown name fails before any work
    flow = model.compiled("mmdit_flow", lambda: MMDiTFlow(model.backbone))
    embeddings = encode_prompts(model, prompts, negative_prompts)
    condition = {"context": embeddings.positive, "pooled_projection": embeddings.pooled_positive}
    guided = guidance_scale > 1.0  # KerasHub's rule
    if guided:
        condition["negative_context"] = embeddings.negative
        condition["negative_pooled_projection"] = embeddings.pooled_negative
    if seed is None:
        seed = secrets.randbelow(2**31 - 1)
    noise = keras.random.normal((len(prompts),) + model.latent_shape, dtype="float32", seed=seed)
    latents = flow.sample_latents(
        noise, condition, sampler=sampler, num_steps=num_steps,
        guidance_scale=guidance_scale if guided else None, seed=seed,
    )
    decode = model.compiled("decode", lambda: CompiledLoop(model.backbone.decode_step, model))
    return to_uint8(decode(latents))
