"""The benchmark's markdown table and bar chart.

Writes atomically (temp file + rename) without importing Keras, so the
orchestrating process stays framework-free; it is the pattern of
`keras_diffusion.files`, which importing would load a Keras backend.
"""

import os
import uuid

COLUMNS = (
    ("run", None),
    ("params", "params"),
    ("GFLOP/img fwd", "flops"),
    ("compile s", "compile_s"),
    ("train img/s", "train_images_per_s"),
    ("sample img*steps/s", "sample_image_steps_per_s"),
    ("peak RSS MB", "peak_rss_mb"),
    ("train loss", "train_loss"),
    ("eval loss", "eval_loss"),
    ("train vs diffusers", "train_ratio"),
    ("sample vs diffusers", "sample_ratio"),
)


def write_atomically(path, write):
    """Calls `write(tmp)` on a temp path beside `path`, then renames it into place.

    Args:
        path: destination file.
        write: writes a complete file to the path it receives.

    Returns:
        `path`.
    """
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.{uuid.uuid4().hex[:12]}.tmp{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _ratios(rows):
    reference = next((r for r in rows if r["name"] == "diffusers"), None)
    for row in rows:
        if reference:
            row["train_ratio"] = row["train_images_per_s"] / reference["train_images_per_s"]
            row["sample_ratio"] = row["sample_image_steps_per_s"] / reference["sample_image_steps_per_s"]
    return rows


def _cell(key, value):
    if value is None:
        return "-"
    if key == "params":
        return f"{value / 1e6:.3f}M"
    if key == "flops":
        return f"{value / 1e9:.3f}"
    if key in ("train_ratio", "sample_ratio"):
        return f"{value:.2f}x"
    if key in ("train_loss", "eval_loss"):
        return f"{value:.4f}"
    return f"{value:.1f}"


def markdown(results):
    """The report as markdown: main table, parity table, conditions.

    Args:
        results: the dict that `benchmarks.compare.run` builds.

    Returns:
        A string.
    """
    rows = _ratios(results["rows"])
    cfg, machine = results["config"], results["machine"]
    lines = [
        "| " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = [row["name"]] + [_cell(key, row.get(key)) for _, key in COLUMNS[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    counted = [r for r in rows if "flops_counter" in r]
    for row in counted:
        lines.append(
            f"FLOPs cross-check: torch.utils.flop_counter on the Keras network (torch backend) gives "
            f"{row['flops_counter'] / 1e9:.3f} GFLOP/img without the attention matmuls (it does not count "
            f"PyTorch's CPU attention kernel); the layer count, with them, gives {row['flops'] / 1e9:.3f}."
        )
    if results["parity"]:
        tol = results["parity_tolerance"]
        lines += [
            "",
            "Cross-backend parity (same weights and inputs; max |difference|):",
            "",
            f"| backends | network output (tol {tol['network']:g}) | DDIM {cfg['parity_steps']} steps, eta=0 "
            f"(tol {tol['ddim']:g}) |",
            "|---|---|---|",
        ]
        for row in results["parity"]:
            lines.append(f"| {row['pair']} | {row['network']:.2e} | {row['ddim']:.2e} |")
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    lines += [
        "",
        f"Network `{cfg['network']}` {results['network_config']}; batch {cfg['batch_size']}, "
        f"{cfg['warmup_steps']} warm-up + {cfg['train_steps']} timed training steps (AdamW "
        f"{cfg['learning_rate']:g}, no EMA, {cfg['schedule']} schedule), sampling {cfg['sample_images']} "
        f"images x {cfg['sample_steps']} DDIM steps; seed {cfg['seed']}; dtype policy {cfg['dtype_policy']}; "
        f"jit_compile {cfg['jit_compile']}; U-Net layout {cfg.get('data_format', 'channels_last')}; "
        f"initial weights {cfg.get('init', 'keras')} (the same on every backend); "
        f"extra XLA_FLAGS for JAX: {cfg.get('xla_flags') or 'none'}.",
        f"Machine: {machine['cpu']}, {machine['cores_available']} cores available "
        f"({machine['cores_total']} total), {machine['threads']} intra-op threads for torch/TF; "
        f"load average {machine['load_average']:.2f} at start, {machine.get('load_average_end', 0):.2f} at end. "
        f"Python {machine['python']}; {versions}.",
        "Peak RSS is the worker process's ru_maxrss (framework included).",
    ]
    return "\n".join(lines) + "\n"


def bar_chart(path, results):
    """Writes a PNG with two bar groups: training and sampling throughput.

    Uses Pillow (a runtime dependency), so the chart needs no plotting library.

    Args:
        path: the `.png` to write.
        results: the dict that `benchmarks.compare.run` builds.

    Returns:
        `path`.
    """
    from PIL import Image
    from PIL import ImageDraw

    rows = results["rows"]
    panels = (("training, images/s", "train_images_per_s"), ("DDIM sampling, images x steps / s",
                                                           "sample_image_steps_per_s"))
    colors = {"jax": (66, 133, 244), "tensorflow": (255, 143, 0), "torch": (238, 76, 44),
              "diffusers": (120, 120, 120)}
    bar_h, gap, label_w, plot_w = 22, 6, 110, 420
    panel_h = 30 + len(rows) * (bar_h + gap)
    image = Image.new("RGB", (label_w + plot_w + 90, 20 + panel_h * len(panels)), "white")
    draw = ImageDraw.Draw(image)
    y = 10
    for title, key in panels:
        draw.text((10, y), title, fill="black")
        y += 22
        top = max(r[key] for r in rows) or 1.0
        for row in rows:
            width = int(plot_w * row[key] / top)
            draw.text((10, y + 5), row["name"], fill="black")
            draw.rectangle([label_w, y, label_w + max(width, 1), y + bar_h], fill=colors.get(row["name"], "black"))
            draw.text((label_w + width + 6, y + 5), f"{row[key]:.1f}", fill="black")
            y += bar_h + gap
        y += 8
    return write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))
