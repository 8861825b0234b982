"""`finetune`: fine-tune Stable Diffusion 3 on a folder of captioned images.

    python -m keras_diffusion finetune --preset PATH_OR_NAME --data DIR \\
        --method lora|full|dreambooth|textual-inversion --out DIR

It writes into `--out`:

- the result: `sd3.lora.npz` (LoRA, or DreamBooth with LoRA), `preset/`
  (full fine-tuning, or DreamBooth without LoRA: a KerasHub preset folder),
  or `embedding.npz` (textual inversion);
- `samples_before.png` and `samples_after.png`: the same prompts and seeds
  rendered before and after training;
- `train_log.json`: the loss per epoch, parameter counts and times;
- `backup/` while training: rerunning an interrupted command with the same
  `--out` resumes exactly from its last checkpoint (`train.fit_with_backup`).

`--data pokemon` downloads keras.io's Pokemon BLIP captions (network needed).
"""

import os
import time

from keras_diffusion.cli.args import add_command
from keras_diffusion.cli.args import add_sd3_model_args
from keras_diffusion.cli.args import load_sd3
from keras_diffusion.cli.args import momentum
from keras_diffusion.cli.args import positive_int
from keras_diffusion.cli.train import add_checkpoint_flag
from keras_diffusion.cli.train import fit_with_backup
from keras_diffusion.sd3.finetune import WEIGHTING_SCHEMES
from keras_diffusion.sd3.lora import LAYOUTS

# --method -> the learning rate it trains with unless --learning-rate is given.
METHODS = {"lora": 1e-4, "full": 1e-5, "dreambooth": 1e-4, "textual-inversion": 5e-3}
MIXED_PRECISION = ("no", "bfloat16", "float16")


def add_parser(subparsers):
    """Adds `finetune`."""
    parser = add_command(
        subparsers,
        __name__,
        help="fine-tune Stable Diffusion 3 (LoRA, full, DreamBooth, textual inversion)",
        description="Fine-tunes SD3's MMDiT with the rectified-flow loss on a folder of captioned\n"
        "images (metadata.jsonl, captions.txt, or file names as captions). Writes the\n"
        "adapter, embedding or weights to --out, with sample grids from the same prompts\n"
        "and seeds before and after. Rerun with the same --out to resume an interrupted run.\n\n"
        "Example:\n  python -m keras_diffusion finetune --preset tiny --data photos/ --method lora "
        "--out runs/lora",
    )
    add_sd3_model_args(parser)
    parser.add_argument("--data", required=True, help="training folder, or 'pokemon' (download)")
    parser.add_argument("--method", required=True, choices=tuple(METHODS), help="what to train")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--epochs", type=positive_int, default=10, help="passes over the data")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="examples per step")
    add_checkpoint_flag(parser)
    parser.add_argument(
        "--learning-rate", type=float, default=None,
        help="AdamW learning rate (default: " + ", ".join(f"{rate:g} for {name}" for name, rate in METHODS.items()) + ")",
    )
    parser.add_argument("--weight-decay", type=float, default=1e-2, help="AdamW weight decay")
    parser.add_argument("--grad-accum", type=positive_int, default=1, help="gradient accumulation steps")
    parser.add_argument("--clipnorm", type=float, default=1.0, help="global gradient-norm clip; 0 disables")
    parser.add_argument("--ema", type=momentum, default=0.0, help="EMA momentum, e.g. 0.999; 0 disables")
    parser.add_argument(
        "--mixed-precision", choices=MIXED_PRECISION, default="no",
        help="compute in this dtype with float32 weights",
    )
    parser.add_argument(
        "--weighting-scheme", choices=WEIGHTING_SCHEMES, default="logit_normal",
        help="diffusers' --weighting_scheme: the density of the training times (logit_normal, "
        "mode) or the loss weight of uniform times (sigma_sqrt, cosmap); uniform is neither",
    )
    parser.add_argument(
        "--precondition-outputs", action="store_true",
        help="diffusers' default loss on the clean latent (sigma^2 x the velocity loss), "
        "so that diffusers' learning rates carry over",
    )
    parser.add_argument(
        "--caption-dropout", type=float, default=0.0,
        help="probability of training on the empty caption, which keeps the unconditional "
        "branch that guidance uses",
    )
    parser.add_argument("--cache-latents", action="store_true", help="encode images and captions once")
    parser.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    parser.add_argument("--max-images", type=positive_int, default=None, help="use at most this many images")
    parser.add_argument("--skip-bad-files", action="store_true", help="skip unreadable images")
    lora = parser.add_argument_group("LoRA (lora, and dreambooth unless --dreambooth-full)")
    lora.add_argument("--rank", type=positive_int, default=4, help="LoRA rank")
    lora.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: rank)")
    lora.add_argument("--lora-mlp", action="store_true", help="LoRA on the blocks' MLP layers too")
    lora.add_argument(
        "--lora-layout", choices=LAYOUTS, default="fused",
        help="fused: one adapter per qkv projection; diffusers: separate q, k, v adapters",
    )
    dreambooth = parser.add_argument_group("DreamBooth")
    dreambooth.add_argument("--instance-prompt", default=None, help="e.g. 'a photo of sks dog'")
    dreambooth.add_argument("--class-prompt", default=None, help="e.g. 'a photo of a dog'")
    dreambooth.add_argument("--num-class-images", type=positive_int, default=100, help="class images")
    dreambooth.add_argument("--class-dir", default=None, help="class images folder (default: OUT/class_images)")
    dreambooth.add_argument("--prior-loss-weight", type=float, default=1.0, help="lambda; 0: no prior")
    dreambooth.add_argument("--dreambooth-full", action="store_true", help="full fine-tuning instead of LoRA")
    inversion = parser.add_argument_group("textual inversion")
    inversion.add_argument("--placeholder", default=None, help="the new token, e.g. '<cat-toy>'")
    inversion.add_argument("--initializer", default=None, help="a one-token word, e.g. 'toy'")
    parser.add_argument(
        "--sample-prompts", nargs="+", default=None,
        help="prompts for the before/after grids (default: from the data)",
    )


def check_arguments(args):
    """Fails fast, before any model is loaded, on arguments that do not fit together."""
    if not 0.0 <= args.caption_dropout < 1.0:
        raise ValueError(f"--caption-dropout must be in [0, 1), got {args.caption_dropout}.")
    if args.method == "dreambooth" and not args.instance_prompt:
        raise ValueError("--method dreambooth needs --instance-prompt, e.g. 'a photo of sks dog'.")
    if args.method == "textual-inversion" and not (args.placeholder and args.initializer):
        raise ValueError(
            "--method textual-inversion needs --placeholder (e.g. '<cat-toy>') and "
            "--initializer (a one-token word, e.g. 'toy')."
        )
    if args.mixed_precision != "no" and args.dtype is not None:
        raise ValueError("Use --dtype or --mixed-precision, not both.")
    if args.data != "pokemon":
        if not os.path.isdir(args.data):
            raise FileNotFoundError(
                f"--data {args.data!r} is not a folder. Pass a folder of captioned images, "
                "or 'pokemon' to download keras.io's example data."
            )
        from keras_diffusion.sd3 import data as data_lib

        data_lib.read_captions(args.data)  # an empty folder or missing files fail here
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ValueError(f"--out {args.out!r} is a file; pass a folder.")


def run(args):
    """Runs `finetune`; returns 0 after printing the files written."""
    check_arguments(args)
    from keras_diffusion.sd3 import data as data_lib

    mixed = None if args.mixed_precision == "no" else f"mixed_{args.mixed_precision}"
    model = load_sd3(args, dtype=mixed)
    if args.data == "pokemon":
        dataset = data_lib.load_pokemon_blip(model.image_size, max_images=args.max_images)
    else:
        dataset = data_lib.load_captioned_folder(
            args.data, model.image_size, skip_bad_files=args.skip_bad_files, max_images=args.max_images
        )
    os.makedirs(args.out, exist_ok=True)
    for path in _finetune(args, model, dataset):
        print(f"Wrote {path}")
    return 0


def _finetune(args, model, dataset):
    import keras

    from keras_diffusion.files import replace_folder_atomically
    from keras_diffusion.files import write_json
    from keras_diffusion.sd3 import data as data_lib
    from keras_diffusion.sd3 import dreambooth, lora, textual_inversion
    from keras_diffusion.sd3.finetune import FlowMatchingTrainer, count_params
    from keras_diffusion.sd3.generate import text_to_image
    from keras_diffusion.sd3.walks import save_grid

    seed = args.seed
    use_lora = args.method == "lora" or (args.method == "dreambooth" and not args.dreambooth_full)
    prompts = args.sample_prompts
    inversion = None
    if args.method == "textual-inversion":
        inversion = textual_inversion.add_placeholder_token(model, args.placeholder, args.initializer)
        dataset.captions = [
            caption if args.placeholder in caption else f"{caption} {args.placeholder}".strip()
            for caption in dataset.captions
        ]
        prompts = prompts or [f"a photo of {args.placeholder}"]
    elif args.method == "dreambooth":
        prompts = prompts or [args.instance_prompt]
    prompts = prompts or sorted(set(dataset.captions))[:4]

    def samples(name):
        images = text_to_image(model, prompts, num_steps=args.steps, guidance_scale=args.guidance, seed=seed)
        return save_grid(os.path.join(args.out, name), images)

    written = [samples("samples_before.png")]
    prior = None
    if args.method == "dreambooth" and args.class_prompt and args.prior_loss_weight > 0:
        prior = dreambooth.class_images(
            model,
            args.class_prompt,
            args.num_class_images,
            folder=args.class_dir or os.path.join(args.out, "class_images"),
            num_steps=args.steps,
            guidance_scale=args.guidance,
            seed=seed,
        )
    if use_lora:
        lora.enable_lora(model, args.rank, args.alpha, layout=args.lora_layout, include_mlp=args.lora_mlp, seed=seed)
    flip = not args.no_flip
    if args.method == "dreambooth":
        batches = dreambooth.dreambooth_batches(
            model, dataset, args.instance_prompt, prior,
            batch_size=args.batch_size, cache=args.cache_latents, random_flip=flip, seed=seed,
        )
    elif args.cache_latents:
        examples = data_lib.cache_examples(model, dataset, random_flip=flip, cache_text=inversion is None, seed=seed)
        batches = data_lib.TrainingBatches(examples, args.batch_size, random_flip=flip, seed=seed)
    else:
        batches = data_lib.TrainingBatches(
            data_lib.raw_examples(model, dataset), args.batch_size, random_flip=flip, seed=seed
        )
    trainer = FlowMatchingTrainer(
        model.backbone,
        weighting_scheme=args.weighting_scheme,
        precondition_outputs=args.precondition_outputs,
        caption_dropout=args.caption_dropout,
        null_caption=data_lib.tokenize(model, [""]) if args.caption_dropout else None,
        prior_loss_weight=args.prior_loss_weight,
        train_diffuser=inversion is None,
        trainable_layers=inversion.layers if inversion else (),
        seed=seed,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=args.learning_rate or METHODS[args.method],
        weight_decay=0.0 if inversion else args.weight_decay,
        epsilon=1e-8,
        global_clipnorm=args.clipnorm or None,
        use_ema=args.ema > 0,
        ema_momentum=args.ema or 0.99,
        gradient_accumulation_steps=args.grad_accum if args.grad_accum > 1 else None,
    )
    trainer.compile(optimizer)
    if use_lora:  # effective counts: the diffusers layout's zeroed blocks do not count
        report = lora.parameter_report(model)
        trainable, total = report["lora"], report["total"]
    else:  # the placeholder rows are not part of the backbone
        trainable, total = count_params(trainer.trainable_variables), model.backbone.count_params()
    print(f"Training {trainable:,} of the model's {total:,} parameters ({trainable / total:.3%}).")
    start = time.time()
    backup = fit_with_backup(trainer, batches, args=args, epochs=args.epochs, verbose=2)
    seconds = time.time() - start
    written.append(samples("samples_after.png"))
    if inversion is not None:
        result = textual_inversion.save_textual_inversion(inversion, os.path.join(args.out, "embedding.npz"))
    elif use_lora:
        result = lora.save_lora(model, os.path.join(args.out, "sd3.lora.npz"))
    else:
        result = replace_folder_atomically(os.path.join(args.out, "preset"), model.save_to_preset)
    written.insert(0, result)
    log = {
        "method": args.method,
        "preset": args.preset,
        "images": len(dataset),
        "epochs": backup.log,
        "resumed": backup.resumes,
        "optimizer_steps": int(keras.ops.convert_to_numpy(optimizer.iterations)),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_seconds": round(seconds, 2),
        "sample_prompts": prompts,
        "seed": seed,
    }
    written.append(write_json(os.path.join(args.out, "train_log.json"), log))
    backup.delete()  # only now: a kill before this point still resumes
    return written

