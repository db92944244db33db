"""How far the transforms themselves limit quality: PSNR from unquantized latents, per level.

    python -m benchmarks.ceiling --data ../shared/datasets/train [--model default]

On the held-out validation crops of the training folders (the split ``vaecodec train`` holds out; never
Kodak), for every trained level: PSNR of g_s(g_a(x)) with y scaled by the level's gain and inverse gain but
not rounded (the ceiling no bit rate can pass), PSNR with y rounded as the codec does (float h_s), and how
many of y's channels spread over at least one quantization step there. When the rounded PSNR of the top
levels sits at the ceiling, more bits cannot help: only better transforms can (see vaecodec/train/widen.py).

Writes ceiling.json and ceiling.md to --out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
import torch

from vaecodec.train.data import list_images, split_validation, validation_crops
from vaecodec.weights import model_of_weights, read_weights
from vaecodec.zoo import weights_path


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    return 10 * math.log10(1 / (x_hat.clamp(0, 1) - x).pow(2).mean().item())


@torch.no_grad()
def measure(model, crops: torch.Tensor) -> list:
    rows = []
    for level in range(model.config.levels):
        levels = torch.full((len(crops),), float(level))
        y = model.analysis(crops, levels)
        channel_std = y.transpose(0, 1).flatten(1).std(1)
        rows.append({
            "level": level + 1,
            "psnr_unquantized": round(psnr(model.synthesis(y, levels), crops), 3),
            "psnr_rounded": round(psnr(model(crops, levels)["x_hat"], crops), 3),
            "channels_over_one_step": int((channel_std >= 1).sum()),
            "smallest_channel_std": round(channel_std.min().item(), 3),
        })
    return rows


@click.command()
@click.option("--data", "data_dirs", multiple=True, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--model", "model_name", default="default", show_default=True)
@click.option("--validation-images", default=16, show_default=True, help="As in `vaecodec train`.")
@click.option("--out", default="benchmarks/results", show_default=True, type=click.Path(file_okay=False))
def main(data_dirs, model_name, validation_images, out):
    torch.set_num_threads(2)
    weights, model_hash = read_weights(weights_path(model_name))
    model = model_of_weights(weights).eval()
    _, held_out = split_validation(list_images(data_dirs), validation_images)
    if not held_out:
        raise click.UsageError("--data holds too few images to hold any out")
    rows = measure(model, validation_crops(held_out))
    result = {"model": weights["name"], "model_hash": model_hash.hex(),
              "latent_channels": model.config.latent_channels, "crops": len(held_out), "levels": rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ceiling.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Transform ceiling", "",
        f"Model {result['model']} ({result['model_hash']}), M = {result['latent_channels']} latent channels; "
        f"{len(held_out)} held-out training crops of 256×256 (never Kodak).", "",
        "| level | PSNR, y not rounded (dB) | PSNR, y rounded (dB) | channels with std ≥ 1 step | smallest channel std |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['level']} | {r['psnr_unquantized']:.2f} | {r['psnr_rounded']:.2f} | "
              f"{r['channels_over_one_step']} | {r['smallest_channel_std']:.2f} |" for r in rows]
    (out / "ceiling.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
