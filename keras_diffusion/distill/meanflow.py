"""MeanFlow (Geng, Deng, Bai, Kolter & He 2025): one-step generation by average velocities.

On the rectified flow `z_t = (1 - t) x0 + t eps` (noise at `t = 1`), the
average velocity over `[r, t]` is `u(z_t, r, t) = (z_t - z_r) / (t - r)`, so
one evaluation jumps `z_r = z_t - (t - r) u`: from noise, `x0 = z_1 - u(z_1,
0, 1)`. Differentiating `(t - r) u = z_t - z_r` in `t` gives the MeanFlow
identity `u = v - (t - r) du/dt`, with `du/dt = v . d_z u + d_t u` (the
total derivative along the flow). Training regresses `u` on the
stop-gradient target `v - (t - r) du/dt`, where `v = eps - x0` is the
conditional velocity and `du/dt` is one `keras.ops.jvp` of the network with
tangents `(v, 1)` for `(z, t)`.

As the paper: `t` and `r` are two logit-normal draws (mean -0.4, std 1.0),
sorted; a fraction of examples (75%) has `r = t`, where the loss is plain
flow matching; the loss is adaptively weighted, `|e|^2 / sg(|e|^2 + c)^p`
(`p = 1`, `c = 1e-3`). The network sees `t` and `t - r`
(`keras_diffusion.networks.build_unet(..., interval_input=True)`).
"""

import keras
from keras import ops

from keras_diffusion.models.base import DiffusionModel
from keras_diffusion.networks.attention import explicit_attention
from keras_diffusion.processes import RectifiedFlow
from keras_diffusion.processes import append_dims


# The backends whose keras.ops.jvp works (numpy and openvino raise NotImplementedError).
JVP_BACKENDS = ("jax", "tensorflow", "torch")


def _has_interval_input(network):
    return "h" in [getattr(i, "name", "") for i in getattr(network, "inputs", None) or []]


@keras.saving.register_keras_serializable(package="keras_diffusion")
class MeanFlow(DiffusionModel):
    """A MeanFlow model: a network of the average velocity `u(z, r, t)`, trained with `fit()`.

    `generate()` takes one step by default (`"meanflow"` sampler:
    `z_r = z_t - (t - r) u` between uniform times); `num_steps=2` goes
    through `t = 0.5`. Every other sampler works too: with `r = t` the
    network is the flow's instantaneous velocity `v(z, t)`.

    Args:
        network: a Keras model mapping `[z_t, t, t - r]` (plus `labels`) to
            `u`, shaped like `z_t`; the times go through the process's
            `network_time`. `build_unet(..., interval_input=True)` is one.
        process: a `RectifiedFlow`; default `RectifiedFlow(logit_mean=-0.4,
            logit_std=1.0)`, the paper's time distribution.
        interval_fraction: the fraction of examples with `r < t` (the paper's
            best: 0.25); the others train with `r = t`.
        adaptive_power: `p` of the adaptive loss weight (0 is plain MSE).
        adaptive_eps: `c` of the adaptive loss weight.
        **kwargs: `num_classes`, `label_dropout`, `image_shape`, `seed`: see
            `DiffusionModel`.

    Reference: Geng et al. 2025, "Mean Flows for One-step Generative
    Modeling", eq. 6-10, Algorithm 1 and 2, Table 1.

    Example:
    >>> import numpy as np
    >>> x = keras.Input((2,)); t = keras.Input((), name="t"); h = keras.Input((), name="h")
    >>> th = keras.layers.Concatenate()([x, keras.layers.Reshape((1,))(t), keras.layers.Reshape((1,))(h)])
    >>> net = keras.Model([x, t, h], keras.layers.Dense(2)(keras.layers.Dense(32, activation="silu")(th)))
    >>> model = MeanFlow(net, seed=0)
    >>> model.compile()
    >>> data = np.random.default_rng(0).normal(0, 0.5, (64, 2)).astype("float32")
    >>> _ = model.fit(data, epochs=1, batch_size=16, verbose=0)
    >>> model.generate(4, seed=0, verbose=0, return_float=True).shape  # one step
    (4, 2)
    """

    default_sampler = "meanflow"
    default_clip_sample = False
    interval_denoiser = True

    def __init__(self, network, process=None, interval_fraction=0.25, adaptive_power=1.0, adaptive_eps=1e-3,
                 prediction_type="velocity", **kwargs):
        if process is None:
            process = RectifiedFlow(logit_mean=-0.4, logit_std=1.0)
        backend = keras.backend.backend()
        if backend not in JVP_BACKENDS:
            raise ValueError(
                f"MeanFlow trains through keras.ops.jvp, which the {backend!r} backend does not have. Set "
                f"KERAS_BACKEND to one of {JVP_BACKENDS} (or pass --backend to the command line)."
            )
        if getattr(process, "kind", None) != "flow":
            raise ValueError(
                f"MeanFlow's average velocities live on a rectified flow; got a {type(process).__name__}. "
                "Use RectifiedFlow()."
            )
        if prediction_type != "velocity":
            raise ValueError(f"MeanFlow predicts average velocities: prediction_type must be 'velocity', not "
                             f"{prediction_type!r}.")
        if not _has_interval_input(network):
            raise ValueError(
                "MeanFlow's network takes the interval t - r as an input named 'h' after 't': build it "
                "with keras_diffusion.networks.build_unet(..., interval_input=True) "
                "(or MeanFlow.from_flow(flow_model))."
            )
        if kwargs.get("loss_type", "mse") != "mse":
            raise ValueError(
                f"MeanFlow's loss is its adaptively weighted squared error; loss_type must be 'mse', not "
                f"{kwargs['loss_type']!r}."
            )
        if not 0.0 <= interval_fraction <= 1.0:
            raise ValueError(f"interval_fraction must be in [0, 1]. Received: {interval_fraction}")
        if adaptive_power < 0 or adaptive_eps <= 0:
            raise ValueError(
                f"Need adaptive_power >= 0 and adaptive_eps > 0. Received: {adaptive_power}, {adaptive_eps}"
            )
        super().__init__(network, process, prediction_type=prediction_type, **kwargs)
        self.interval_fraction = float(interval_fraction)
        self.adaptive_power = float(adaptive_power)
        self.adaptive_eps = float(adaptive_eps)

    @classmethod
    def from_flow(cls, flow_model, **kwargs):
        """A MeanFlow model that starts as `flow_model` (a trained `FlowMatching` on `build_unet`).

        Its network is `build_unet` with the flow network's configuration
        plus the interval input, whose last layer starts at zero: every
        layer the two share takes the flow model's (EMA) weights, so at
        `r = t` the new model starts as the flow's velocity.

        Example:
        >>> meanflow = MeanFlow.from_flow(flow, seed=0)  # doctest: +SKIP
        """
        from keras_diffusion.networks import build_unet

        if getattr(flow_model.process, "kind", None) != "flow":
            raise ValueError(
                f"MeanFlow.from_flow needs a flow-matching model; got a {type(flow_model).__name__} on "
                f"{type(flow_model.process).__name__}. Train one with `python -m keras_diffusion train flow`."
            )
        config = flow_model.network.get_config()
        layer_names = {layer.name for layer in flow_model.network.layers}
        if "stem" not in layer_names or "out_conv" not in layer_names:
            raise ValueError(
                "MeanFlow.from_flow copies a build_unet network; this flow model's network is another kind. "
                "Build MeanFlow(build_unet(..., interval_input=True)) and train it from scratch."
            )
        network = build_unet(**_unet_arguments(flow_model, config), interval_input=True)
        with flow_model._ema_weights(True):
            by_name = {layer.name: layer for layer in flow_model.network.layers}
            for layer in network.layers:
                source = by_name.get(layer.name)
                if source is not None and layer.weights:
                    layer.set_weights(source.get_weights())
        process = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(flow_model.process))
        return cls(network, process, num_classes=flow_model.num_classes, **kwargs)

    # ---------------------------------------------------------------- network
    def _average_velocity(self, z, t, r, labels, training):
        """`u(z, r, t)`: the network at times `t` and intervals `t - r`, each `(batch,)`."""
        inputs = [z, self.process.network_time(t), self.process.network_time(t - r)]
        if labels is not None:
            inputs.append(ops.cast(labels, "int32"))
        return ops.cast(self.network(inputs, training=training), "float32")

    def _network_output(self, x, t, labels=None, guidance_scale=None):
        t, r = t
        if guidance_scale is None:
            return self._average_velocity(x, t, r, labels, False)
        both = self._average_velocity(
            ops.concatenate([x, x]), ops.concatenate([t, t]), ops.concatenate([r, r]),
            self._with_unconditional(labels), False,
        )
        conditional, unconditional = ops.split(both, 2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def denoise(self, x, sigma, labels=None, guidance_scale=None, clip_x0=False, sigma_next=None):
        """`x0_hat = z_t - t u(z_t, r, t)`, in sampler space; `r = t` (the instantaneous velocity)
        unless `sigma_next` names the interval's end.

        With `sigma_next`, the deterministic Euler (DDIM) step from `sigma`
        to `sigma_next` on this `x0_hat` lands exactly on `z_r = z_t - (t - r) u`.

        Example:
        >>> x0 = model.denoise(x, 9999.0, sigma_next=0.0)  # doctest: +SKIP
        """
        x = ops.convert_to_tensor(x, "float32")
        batch = ops.shape(x)[:1]
        sigma = ops.broadcast_to(ops.convert_to_tensor(sigma, "float32"), batch)
        t = self.process.sigma_to_t(sigma)
        r = t if sigma_next is None else self.process.sigma_to_t(
            ops.broadcast_to(ops.convert_to_tensor(sigma_next, "float32"), batch)
        )
        ndim = len(x.shape)
        z = append_dims(1.0 - t, ndim) * x
        u = self._network_output(z, (t, r), labels, guidance_scale)
        x0 = z - append_dims(t, ndim) * u
        return ops.clip(x0, -1.0, 1.0) if clip_x0 else x0

    # ---------------------------------------------------------------- training
    def _sample_times(self, batch):
        """The paper's `(t, r)`: two sorted draws, and `r = t` for `1 - interval_fraction` of them."""
        first = self.process.sample_t(batch, self.seed_generator)
        second = self.process.sample_t(batch, self.seed_generator)
        t, r = ops.maximum(first, second), ops.minimum(first, second)
        keep = keras.random.uniform((batch,), seed=self.seed_generator) < self.interval_fraction
        return t, ops.where(keep, r, t)

    def call(self, inputs, training=False):
        """`u(z_t, r, t)` and its stop-gradient target `v - (t - r) du/dt` (one `ops.jvp`)."""
        images, labels = self._unpack(inputs)
        x0 = ops.cast(images, "float32")
        batch = ops.shape(x0)[0]
        t, r = self._sample_times(batch)
        noise = keras.random.normal(ops.shape(x0), seed=self.seed_generator)
        if labels is not None and training and self.label_dropout > 0:
            drop = keras.random.uniform((batch,), seed=self.seed_generator) < self.label_dropout
            labels = self._drop_condition(labels, drop)
        tt = append_dims(t, len(x0.shape))
        z = (1.0 - tt) * x0 + tt * noise
        u, target = self.mean_flow_target(z, t, r, noise - x0, labels, training)
        return {"prediction": u, "target": target, "weight": ops.ones_like(t), "alpha": 1.0 - t, "sigma": t}

    def mean_flow_target(self, z, t, r, v, labels=None, training=False):
        """`u(z, r, t)` and the stop-gradient target `v - (t - r) du/dt` at a point `z` with velocity `v`.

        `du/dt = v . d_z u + d_t u` is one `keras.ops.jvp` of the network with
        tangents `(v, 1)` for `(z, t)`. Only the target uses forward mode:
        gradients through a forward-mode pass are lost on TF eager.

        Args:
            z: points `(batch, ...)` of the flow at times `t`.
            t: times `(batch,)`; `r`: interval starts `(batch,)`, `r <= t`.
            v: the velocity at `z`: training uses the conditional one, `eps - x0`.
            labels: int labels `(batch,)` of a conditional model.
            training: run the network in training mode.

        Returns:
            `(u, target)`, both shaped like `z`. With the exact average
            velocity and the exact marginal `v`, they are equal (the MeanFlow identity).

        Example:
        >>> u, target = model.mean_flow_target(z, t, r, v)  # doctest: +SKIP
        """
        u = self._average_velocity(z, t, r, labels, training)

        def u_of(z, t):
            return self._average_velocity(z, t, r, labels, training)

        # torch's fused attention has no forward mode: attention runs as einsum inside the jvp.
        with explicit_attention():
            _, du_dt = ops.jvp(u_of, (z, t), (v, ops.ones_like(t)))
        return u, ops.stop_gradient(v - append_dims(t - r, len(z.shape)) * du_dt)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The adaptively weighted squared error `|e|^2 / sg(|e|^2 + c)^p`, averaged over the batch."""
        error = ops.square(y_pred["prediction"] - y_pred["target"])
        per_example = ops.mean(error, axis=tuple(range(1, len(error.shape))))
        weight = ops.stop_gradient(ops.power(per_example + self.adaptive_eps, self.adaptive_power))
        loss = ops.mean(per_example / weight)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "interval_fraction": self.interval_fraction,
                "adaptive_power": self.adaptive_power,
                "adaptive_eps": self.adaptive_eps,
            }
        )
        return config


def _unet_arguments(flow_model, config):
    """`build_unet` arguments that rebuild `flow_model`'s U-Net, read from its layers."""
    network = flow_model.network
    layers = {layer.name: layer for layer in network.layers}
    widths, level = [], 0
    while f"down{level}_res0_conv1" in layers:
        widths.append(layers[f"down{level}_res0_conv1"].filters)
        level += 1
    num_res_blocks = 0
    while f"down0_res{num_res_blocks}_conv1" in layers:
        num_res_blocks += 1
    height = flow_model.image_shape[0]
    attention = sorted(
        {height // 2**lv for lv in range(len(widths)) if f"down{lv}_attn0" in layers}, reverse=True
    )
    return {
        "image_shape": flow_model.image_shape,
        "widths": tuple(widths),
        "num_res_blocks": num_res_blocks,
        "attention_resolutions": tuple(attention),
        "norm_groups": layers["out_norm"].groups,
        "num_classes": flow_model.num_classes,
        "time_embedding_dim": layers["time_dense2"].units,
        "data_format": layers["stem"].data_format,
        "name": config.get("name", "unet"),
    }
