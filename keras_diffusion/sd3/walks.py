"""Walks through Stable Diffusion 3's latent spaces.

The walks of the keras.io example "A walk through latent space with Stable
Diffusion 3", on every backend:

- `interpolate_prompts`: slerp between the text embeddings of two or more
  prompts, with fixed or varying initial latents.
- `walk_around_prompt`: small steps away from one prompt's embeddings.
- `circular_walk`: one prompt, initial latents moving on the circle
  `cos(a) * x + sin(a) * y` of two fixed noises; loopable.
- `interpolation_grid`: an N x N grid between four prompts.

All are built from the backbone's `encode_text_step`, `denoise_step` and
`decode_step`, the same steps KerasHub's `StableDiffusion3TextToImage` runs.
`render` denoises frames in batches of `batch_size` with one compiled
program (see `FrameRenderer`); frames come back as uint8 `(F, H, W, 3)`.

Relation to KerasHub's `generate`: rendering N prompts' own embeddings
(`encode_prompts`) from the latents `keras.random.normal((N,
*model.latent_shape), seed=seed)`, which is what KerasHub draws, is the same
computation as `text_to_image(model, prompts, seed=seed)`. On torch, which
runs eagerly, the images are equal bit for bit. JAX and TensorFlow compile
the two as different XLA programs (here the prompts are encoded outside the
denoising loop, and frames run in batches of `batch_size`), so a few uint8
values may differ by 1. Within the walk machinery a frame does not depend on
its batch or its place in it: the end frames of `interpolate_prompts` equal
`render` of the end prompts, bit for bit on every backend.
"""

import collections
import math

import keras
import numpy as np
from keras import ops

from keras_diffusion import images as image_utils
from keras_diffusion.compile import CompiledLoop
from keras_diffusion.sd3.generate import (
    check_guidance_scale,
    check_negative_prompts,
    check_num_steps,
    check_prompts,
    check_seed,
)

# `walk_around_prompt`'s directions: a step of ones, or of fresh standard normal noise.
DIRECTIONS = ("ones", "random")

Embeddings = collections.namedtuple(
    "Embeddings", ["positive", "negative", "pooled_positive", "pooled_negative"]
)
Embeddings.__doc__ = """Text embeddings as `encode_text_step` returns them.

`positive`/`negative`: `(N, tokens, width)`; `pooled_positive`/
`pooled_negative`: `(N, pooled_width)`. Negatives may have N = 1, shared by
every frame.
"""


class FrameRenderer:
    """Encodes prompts and denoises + decodes frames, compiled once per backend.

    One program is compiled per `(num_steps, guidance on/off)`: the
    scheduler's sigmas for `num_steps` are baked into it, as in KerasHub.
    Each is compiled once for its batch shape (JAX: `jax.jit` in a
    `StatelessScope`; TensorFlow: `tf.function(jit_compile=True)`; torch:
    eager under `no_grad`), through `keras_diffusion.compile.CompiledLoop`.

    Get it as `model.frame_renderer`: the model rebuilds it when its
    structure changes (LoRA enabled, a textual-inversion token added).

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`; its variables
            (textual-inversion rows included) are the programs' state.

    Attributes:
        trace_count: how many programs were traced so far (always 0 on
            torch, which does not compile).

    Example:
    >>> renderer = model.frame_renderer  # doctest: +SKIP
    """

    def __init__(self, model):
        self.model = model
        self.backbone = model.backbone
        self._encoder = CompiledLoop(self.backbone.encode_text_step, model)
        self._loops = {}

    @property
    def trace_count(self):
        loops = self._loops.values()
        return self._encoder.trace_count + sum(loop.trace_count for loop in loops)

    def encode(self, token_ids, negative_token_ids):
        """`backbone.encode_text_step`, compiled; returns an `Embeddings`."""
        return Embeddings(*self._encoder(token_ids, negative_token_ids))

    def __call__(self, latents, embeddings, num_steps, guidance_scale, decode=True):
        """Denoises `latents` over `num_steps` steps and decodes them.

        Args:
            latents: float32 `(B, *latent_shape)`.
            embeddings: an `Embeddings` with batch B everywhere.
            num_steps: int number of steps.
            guidance_scale: float; `<= 1` turns guidance off, as in KerasHub.
            decode: `False` returns the denoised latents instead of images.

        Returns:
            Float images `(B, H, W, 3)`, about in [-1, 1] (or latents).
        """
        guided = guidance_scale > 1.0
        key = (num_steps, guided, decode)
        if key not in self._loops:
            self._loops[key] = CompiledLoop(self._make_loop(guided, decode), self.model)
        self.backbone.configure_scheduler(num_steps)
        return self._loops[key](
            latents,
            tuple(embeddings),
            ops.convert_to_tensor(num_steps, "int32"),
            ops.convert_to_tensor(guidance_scale, "float32"),
        )

    def _make_loop(self, guided, decode):
        backbone = self.backbone

        def loop(latents, embeddings, num_steps, guidance_scale):
            scale = guidance_scale if guided else None

            def body(step, latents):
                return backbone.denoise_step(latents, embeddings, step, num_steps, scale)

            latents = ops.fori_loop(0, num_steps, body, latents)
            return backbone.decode_step(latents) if decode else latents

        return loop


def encode_prompts(model, prompts, negative_prompts=None):
    """Encodes prompts with the model's CLIP (and T5) text encoders.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        prompts: a string or a non-empty list of strings.
        negative_prompts: `None` (the empty prompt), a string, or one string
            per prompt.

    Returns:
        An `Embeddings` with one row per prompt.

    Example:
    >>> encode_prompts(model, ["a cat", "a dog"]).pooled_positive.shape
    ...  # doctest: +SKIP
    (2, 192)
    """
    prompts = check_prompts(prompts)
    negative_prompts = check_negative_prompts(negative_prompts, len(prompts))
    preprocess = model.preprocessor.generate_preprocess
    return model.frame_renderer.encode(preprocess(prompts), preprocess(negative_prompts))


def slerp(start, end, weights, dot_threshold=0.9995):
    """Spherical linear interpolation between two tensors.

    Each tensor is treated as one flat vector. When the two are nearly
    parallel (`|cos| > dot_threshold`) it falls back to linear
    interpolation. Weights 0 and 1 return `start` and `end` exactly: the
    blend coefficients are computed in float64 on the host, where
    `sin(theta) / sin(theta)` is exactly 1.

    Args:
        start: tensor.
        end: tensor of the same shape.
        weights: 1-D sequence of interpolation weights in [0, 1].
        dot_threshold: cosine above which to interpolate linearly.

    Returns:
        Tensor `(len(weights), *start.shape)` in `start`'s dtype, computed in
        float32.

    Reference:
        K. Shoemake, "Animating rotation with quaternion curves", 1985.

    Example:
    >>> a, b = np.array([1.0, 0.0], "float32"), np.array([0.0, 1.0], "float32")
    >>> np.round(keras.ops.convert_to_numpy(slerp(a, b, [0.5])), 4)
    array([[0.7071, 0.7071]], dtype=float32)
    """
    start = ops.convert_to_tensor(start)
    dtype = keras.backend.standardize_dtype(start.dtype)
    start = ops.cast(start, "float32")
    end = ops.cast(ops.convert_to_tensor(end), "float32")
    norms = ops.norm(ops.reshape(start, (-1,))) * ops.norm(ops.reshape(end, (-1,)))
    dot = float(ops.convert_to_numpy(ops.sum(start * end) / norms))
    weights = np.asarray(weights, dtype="float64").reshape(-1)
    if not np.isfinite(dot) or abs(dot) > dot_threshold:
        start_weights, end_weights = 1.0 - weights, weights
    else:
        theta = np.arccos(dot)
        start_weights = np.sin(theta - theta * weights) / np.sin(theta)
        end_weights = np.sin(theta * weights) / np.sin(theta)
    shape = (-1,) + (1,) * len(start.shape)
    start_weights = ops.reshape(ops.convert_to_tensor(start_weights, "float32"), shape)
    end_weights = ops.reshape(ops.convert_to_tensor(end_weights, "float32"), shape)
    return ops.cast(start_weights * start[None] + end_weights * end[None], dtype)


def render(
    model,
    embeddings,
    latents,
    *,
    num_steps=28,
    guidance_scale=7.0,
    batch_size=4,
    progress=True,
):
    """Denoises and decodes frames from latents and text embeddings.

    Frames run in batches of `batch_size`; the last batch is padded with
    copies of the last frame so that every batch has the same shape and the
    program compiles once.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        embeddings: an `Embeddings` whose four tensors have F rows, or 1
            row shared by every frame.
        latents: float32 `(F, *model.latent_shape)`, or `(1, ...)` shared.
        num_steps: denoising steps.
        guidance_scale: classifier-free guidance scale; `<= 1` turns it off.
        batch_size: frames per compiled call.
        progress: show a `keras.utils.Progbar` over frames.

    Returns:
        uint8 frames `(F, H, W, 3)`.

    Example:
    >>> emb = encode_prompts(model, ["a cat", "a dog"])  # doctest: +SKIP
    >>> noise = keras.random.normal((1, *model.latent_shape), seed=1)
    ...  # doctest: +SKIP
    >>> render(model, emb, noise, num_steps=4).shape  # doctest: +SKIP
    (2, 32, 32, 3)
    """
    num_steps = check_num_steps(num_steps)
    guidance_scale = check_guidance_scale(guidance_scale)
    batch_size = _check_count(batch_size, "batch_size", 1)
    latents = ops.cast(ops.convert_to_tensor(latents), "float32")
    if tuple(ops.shape(latents)[1:]) != model.latent_shape:
        raise ValueError(
            f"`latents` must have shape (F, {', '.join(map(str, model.latent_shape))}), "
            f"got {tuple(ops.shape(latents))}."
        )
    counts = {int(ops.shape(t)[0]) for t in (latents, *embeddings)}
    count = max(counts)
    if not counts <= {1, count}:
        raise ValueError(
            "`latents` and every embedding must have the same number of rows "
            f"(frames), or 1 to share; got {sorted(counts)}."
        )
    progbar = keras.utils.Progbar(count, verbose=1 if progress else 0, unit_name="frame")
    frames = []
    for start in range(0, count, batch_size):
        # Indices past the end repeat the last frame (padding).
        rows = np.minimum(np.arange(start, start + batch_size), count - 1)
        batch = Embeddings(*(_take_rows(t, rows) for t in embeddings))
        images = model.frame_renderer(_take_rows(latents, rows), batch, num_steps, guidance_scale)
        done = min(batch_size, count - start)
        frames.append(_to_uint8(images)[:done])
        progbar.add(done)
    return np.concatenate(frames, axis=0)


def interpolate_prompts(
    model,
    prompts,
    *,
    frames=16,
    negative_prompt="",
    vary_latents=False,
    num_steps=28,
    guidance_scale=7.0,
    seed=None,
    batch_size=4,
    progress=True,
):
    """Frames that move through the text embeddings of two or more prompts.

    The positive embeddings and the pooled embeddings are each slerped
    between consecutive prompts; the negative prompt's embeddings stay fixed.
    The prompts sit at evenly spaced frames: the first and last frames are
    the first and last prompts exactly (and a middle prompt lands on a frame
    when `(frames - 1)` is a multiple of `(len(prompts) - 1)`).

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        prompts: two or more strings.
        frames: number of frames, at least 2.
        negative_prompt: the negative prompt for every frame.
        vary_latents: draw new initial latents for every frame instead of one
            shared noise.
        num_steps: denoising steps per frame.
        guidance_scale: classifier-free guidance scale; `<= 1` turns it off.
        seed: int seed for the initial latents. With fixed latents, they
            are `keras.random.normal((1, *model.latent_shape), seed=seed)`,
            the noise `text_to_image` uses for one prompt.
        batch_size: frames per compiled call.
        progress: show a progress bar over frames.

    Returns:
        uint8 frames `(frames, H, W, 3)`.

    Example:
    >>> frames = interpolate_prompts(model, ["a dog", "a cat"], frames=16,
    ...                              seed=42)  # doctest: +SKIP
    >>> save_gif("dog_to_cat.gif", frames, rubber_band=True)  # doctest: +SKIP
    """
    prompts = check_prompts(prompts)
    if len(prompts) < 2:
        raise ValueError(f"Interpolation needs at least 2 prompts, got {len(prompts)}.")
    frames = _check_frames(frames)
    encoded = encode_prompts(model, prompts, negative_prompt)
    # Frame k sits at position k * (P - 1) / (F - 1) along the P prompts.
    positions = np.linspace(0.0, len(prompts) - 1, frames)
    segments = np.minimum(np.floor(positions).astype(int), len(prompts) - 2)
    positive, pooled = [], []
    for segment in np.unique(segments):
        weights = positions[segments == segment] - segment
        pair = [segment, segment + 1]
        positive.append(slerp(*_rows(encoded.positive, pair), weights))
        pooled.append(slerp(*_rows(encoded.pooled_positive, pair), weights))
    embeddings = _with_fixed_negatives(
        encoded, ops.concatenate(positive, axis=0), ops.concatenate(pooled, axis=0)
    )
    latents = _initial_latents(model, frames if vary_latents else 1, check_seed(seed))
    return render(
        model,
        embeddings,
        latents,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        batch_size=batch_size,
        progress=progress,
    )


def walk_around_prompt(
    model,
    prompt,
    *,
    frames=16,
    step_size=0.01,
    direction="ones",
    negative_prompt="",
    num_steps=28,
    guidance_scale=7.0,
    seed=None,
    batch_size=4,
    progress=True,
):
    """Frames that take small steps in embedding space away from one prompt.

    Frame 0 is the prompt itself. The positive and pooled embeddings move by
    `step_size` per frame; the initial latents stay fixed.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        prompt: a string.
        frames: number of frames, at least 2.
        step_size: size of each step.
        direction: `"ones"` adds `step_size` to every entry at every step
            (the keras.io example); `"random"` adds `step_size` times fresh
            standard normal noise at every step (a random walk, seeded by
            `seed`).
        negative_prompt: the negative prompt for every frame.
        num_steps: denoising steps per frame.
        guidance_scale: classifier-free guidance scale; `<= 1` turns it off.
        seed: int seed for the latents (and for the random steps).
        batch_size: frames per compiled call.
        progress: show a progress bar over frames.

    Returns:
        uint8 frames `(frames, H, W, 3)`.

    Example:
    >>> frames = walk_around_prompt(model, "the eiffel tower", frames=16)
    ...  # doctest: +SKIP
    """
    if not isinstance(prompt, str):
        raise ValueError(f"`prompt` must be one string, got {prompt!r}.")
    if direction not in DIRECTIONS:
        raise ValueError(f"`direction` must be one of {DIRECTIONS}, got {direction!r}.")
    frames = _check_frames(frames)
    seed = check_seed(seed)
    encoded = encode_prompts(model, prompt, negative_prompt)
    generator = keras.random.SeedGenerator(seed)

    def walk(tensor):
        tensor = ops.cast(tensor, "float32")
        steps_shape = (frames - 1,) + tuple(ops.shape(tensor)[1:])
        if direction == "ones":
            steps = ops.full(steps_shape, step_size, "float32")
        else:
            steps = step_size * keras.random.normal(steps_shape, seed=generator)
        offsets = ops.concatenate([ops.zeros_like(tensor), ops.cumsum(steps, axis=0)], 0)
        return ops.cast(tensor + offsets, keras.backend.standardize_dtype(encoded.positive.dtype))

    embeddings = _with_fixed_negatives(
        encoded, walk(encoded.positive), walk(encoded.pooled_positive)
    )
    return render(
        model,
        embeddings,
        _initial_latents(model, 1, seed),
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        batch_size=batch_size,
        progress=progress,
    )


def circular_walk(
    model,
    prompt,
    *,
    frames=16,
    negative_prompt="",
    num_steps=28,
    guidance_scale=7.0,
    seed=None,
    batch_size=4,
    progress=True,
):
    """Frames of one prompt whose initial noise walks a circle.

    Two noises `x` and `y` are drawn once; frame k starts from
    `cos(a_k) * x + sin(a_k) * y` with `a_k = 2 pi k / (frames - 1)`. Since
    `cos^2 + sin^2 = 1`, every frame's noise is standard normal, and the
    walk ends where it began: the first and last frames are equal.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        prompt: a string.
        frames: number of frames, at least 2.
        negative_prompt: the negative prompt for every frame.
        num_steps: denoising steps per frame.
        guidance_scale: classifier-free guidance scale; `<= 1` turns it off.
        seed: int seed for `x` and `y`.
        batch_size: frames per compiled call.
        progress: show a progress bar over frames.

    Returns:
        uint8 frames `(frames, H, W, 3)`.

    Example:
    >>> frames = circular_walk(model, "cows in a field", frames=32, seed=3)
    ...  # doctest: +SKIP
    >>> save_gif("cows.gif", frames, fps=8)  # doctest: +SKIP
    """
    if not isinstance(prompt, str):
        raise ValueError(f"`prompt` must be one string, got {prompt!r}.")
    frames = _check_frames(frames)
    encoded = encode_prompts(model, prompt, negative_prompt)
    generator = keras.random.SeedGenerator(check_seed(seed))
    shape = (1,) + model.latent_shape
    x = keras.random.normal(shape, dtype="float32", seed=generator)
    y = keras.random.normal(shape, dtype="float32", seed=generator)
    # The last angle, 2 pi, is written as 0 (the same point on the circle) so
    # that the loop closes exactly in floating point.
    angles = 2.0 * math.pi * (np.arange(frames) % (frames - 1)) / (frames - 1)
    cos = ops.reshape(ops.convert_to_tensor(np.cos(angles), "float32"), (-1, 1, 1, 1))
    sin = ops.reshape(ops.convert_to_tensor(np.sin(angles), "float32"), (-1, 1, 1, 1))
    return render(
        model,
        encoded,
        cos * x + sin * y,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        batch_size=batch_size,
        progress=progress,
    )


def interpolation_grid(
    model,
    prompts,
    *,
    size=4,
    negative_prompt="",
    vary_latents=False,
    num_steps=28,
    guidance_scale=7.0,
    seed=None,
    batch_size=4,
    progress=True,
):
    """A `size` x `size` grid of frames between four prompts.

    The prompts sit at the corners: top-left, top-right, bottom-left,
    bottom-right. Row 0 slerps from prompt 1 to prompt 2, the last row from
    prompt 3 to prompt 4, and each column slerps between its top and bottom
    cells.

    Args:
        model: a `keras_diffusion.sd3.StableDiffusion3`.
        prompts: four strings.
        size: cells per side, at least 2.
        negative_prompt: the negative prompt for every frame.
        vary_latents: draw new initial latents for every cell.
        num_steps: denoising steps per frame.
        guidance_scale: classifier-free guidance scale; `<= 1` turns it off.
        seed: int seed for the initial latents.
        batch_size: frames per compiled call.
        progress: show a progress bar over frames.

    Returns:
        uint8 frames `(size * size, H, W, 3)` in row-major order; write them
        with `save_grid(path, frames)`.

    Example:
    >>> cells = interpolation_grid(model, ["a", "b", "c", "d"], size=8)
    ...  # doctest: +SKIP
    >>> save_grid("grid.png", cells)  # doctest: +SKIP
    """
    prompts = check_prompts(prompts)
    if len(prompts) != 4:
        raise ValueError(f"A grid needs exactly 4 prompts (its corners), got {len(prompts)}.")
    size = _check_count(size, "size", 2)
    encoded = encode_prompts(model, prompts, negative_prompt)
    weights = np.linspace(0.0, 1.0, size)

    def grid(tensor):
        top = slerp(*_rows(tensor, [0, 1]), weights)
        bottom = slerp(*_rows(tensor, [2, 3]), weights)
        columns = [slerp(top[j], bottom[j], weights) for j in range(size)]
        cells = ops.stack(columns, axis=1)  # (row, column, ...)
        return ops.reshape(cells, (size * size,) + tuple(ops.shape(tensor)[1:]))

    embeddings = _with_fixed_negatives(
        encoded, grid(encoded.positive), grid(encoded.pooled_positive)
    )
    latents = _initial_latents(model, size * size if vary_latents else 1, check_seed(seed))
    return render(
        model,
        embeddings,
        latents,
        num_steps=num_steps,
        guidance_scale=guidance_scale,
        batch_size=batch_size,
        progress=progress,
    )


def save_gif(path, frames, fps=8, loop=0, rubber_band=False):
    """Writes frames as an animated GIF, atomically.

    Args:
        path: destination file; its folder must exist.
        frames: uint8 `(F, H, W, 3)`.
        fps: frames per second.
        loop: times to repeat; 0 loops forever.
        rubber_band: play the frames forwards, then backwards (A -> B -> A),
            for walks whose ends differ.

    Returns:
        `path` as a string.

    Example:
    >>> save_gif("walk.gif", frames, fps=4, rubber_band=True)  # doctest: +SKIP
    'walk.gif'
    """
    frames = np.asarray(frames)
    if rubber_band:
        frames = np.concatenate([frames, frames[-2:0:-1]], axis=0)
    return image_utils.save_gif(path, frames, fps=fps, loop=loop)


def save_grid(path, frames, rows=None):
    """Writes frames as one PNG grid (square by default), atomically.

    Args:
        path: destination PNG; its folder must exist.
        frames: uint8 `(F, H, W, 3)`.
        rows: number of rows; defaults to `floor(sqrt(F))`.

    Returns:
        `path` as a string.

    Example:
    >>> save_grid("grid.png", interpolation_grid(model, prompts))
    ...  # doctest: +SKIP
    'grid.png'
    """
    return image_utils.save_grid(path, np.asarray(frames), rows=rows)


def _initial_latents(model, count, seed):
    """Standard normal latents, drawn as KerasHub draws them for a batch."""
    return keras.random.normal((count,) + model.latent_shape, dtype="float32", seed=seed)


def _with_fixed_negatives(encoded, positive, pooled):
    return Embeddings(positive, encoded.negative[:1], pooled, encoded.pooled_negative[:1])


def _rows(tensor, indices):
    return [tensor[i] for i in indices]


def _take_rows(tensor, rows):
    """Rows of a batch; a batch of 1 is shared by all rows."""
    if int(ops.shape(tensor)[0]) == 1:
        rows = np.zeros_like(rows)
    return ops.take(tensor, ops.convert_to_tensor(rows, "int32"), axis=0)


def _to_uint8(images):
    """Float images to uint8 numpy, with the same ops as KerasHub's `generate`."""
    images = ops.clip(ops.divide(ops.add(images, 1.0), 2.0), 0.0, 1.0)
    return ops.convert_to_numpy(ops.cast(ops.round(ops.multiply(images, 255.0)), "uint8"))


def _check_frames(frames):
    return _check_count(frames, "frames", 2)


def _check_count(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)
