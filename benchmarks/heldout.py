"""Should new weights ship? Real files on the held-out training photos, candidate against the shipped model.

    python -m benchmarks.heldout --data ../shared/datasets/train --candidate runs/candidate.pt [--reference default]
                                 [--long-side 512] [--out benchmarks/results]

The 16 photos that ``vaecodec train`` holds out of the training folders (never trained on, never Kodak) are
coded with both models at qualities 1…8: real ``.vae`` bytes, PSNR of the decoded 8-bit pixels, decode time.
Photos are downscaled to ``--long-side`` first to keep the run short. Reports the BD-rate of the candidate
against the reference (negative: fewer bits for the same PSNR), per-quality mean bpp and PSNR, whether PSNR
rises at every quality step, and the decode-time ratio. Writes NAME.json and NAME.md (default heldout) to --out.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path

import click
import numpy as np
from PIL import Image

from benchmarks.bdrate import bd_rate
from vaecodec.train.data import list_images, load_rgb, split_validation

QUALITIES = (1, 2, 3, 4, 5, 6, 7, 8)


def held_out_photos(data: str, long_side: int) -> list:
    _, held_out = split_validation(list_images([data]), 16)
    photos = []
    for path in held_out:
        image = load_rgb(path)
        scale = min(1.0, long_side / max(image.size))
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        photos.append((path.name, image))
    return photos


def measure(codec, photos) -> dict:
    """Mean bpp and PSNR per quality over the photos (real bytes, decoded pixels), and decode seconds."""
    curve = {"bpp": [], "psnr": [], "decode_s": 0.0}
    for quality in QUALITIES:
        bpps, psnrs = [], []
        for _, image in photos:
            data = codec.compress(image, quality)
            started = time.perf_counter()
            decoded = codec.decompress(data)
            curve["decode_s"] += time.perf_counter() - started
            error = np.asarray(decoded, dtype=np.float64) - np.asarray(image, dtype=np.float64)
            bpps.append(8 * len(data) / (image.width * image.height))
            psnrs.append(10 * math.log10(255**2 / max(np.mean(error**2), 1e-10)))
        curve["bpp"].append(round(float(np.mean(bpps)), 5))
        curve["psnr"].append(round(float(np.mean(psnrs)), 4))
    curve["decode_s"] = round(curve["decode_s"], 2)
    return curve


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="Training folder.")
@click.option("--candidate", required=True, help="Weights to judge (name or .pt path).")
@click.option("--reference", default="default", show_default=True, help="Weights to beat.")
@click.option("--long-side", default=512, show_default=True, help="Downscale the photos to this long side.")
@click.option("--threads", default=2, show_default=True)
@click.option("--out", default="benchmarks/results", type=click.Path(file_okay=False))
@click.option("--name", default="heldout", show_default=True, help="Writes OUT/NAME.json and OUT/NAME.md.")
def main(data, candidate, reference, long_side, threads, out, name):
    import torch

    import vaecodec

    torch.set_num_threads(threads)
    photos = held_out_photos(data, long_side)
    curves = {}
    for role, weights in (("reference", reference), ("candidate", candidate)):
        codec = vaecodec.load(weights, device="cpu")
        curves[role] = {"weights": weights, "model": f"{codec.model_name}@{codec.model_hash.hex()[:8]}",
                        **measure(codec, photos)}
        click.echo(f"{role} {curves[role]['model']}: {curves[role]}", err=True)
    reference_curve, candidate_curve = curves["reference"], curves["candidate"]
    report = {
        "date": datetime.date.today().isoformat(), "photos": [photo for photo, _ in photos], "long_side": long_side,
        "threads": threads, "qualities": list(QUALITIES), **curves,
        "bd_rate_percent": round(bd_rate(reference_curve["bpp"], reference_curve["psnr"],
                                         candidate_curve["bpp"], candidate_curve["psnr"]), 2),
        "candidate_psnr_rises_at_every_step": all(b > a for a, b in zip(candidate_curve["psnr"],
                                                                        candidate_curve["psnr"][1:])),
        "decode_time_ratio": round(candidate_curve["decode_s"] / reference_curve["decode_s"], 2),
    }
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    (out_path / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Held-out photos: candidate against the shipped model",
        "",
        f"{report['date']}: the 16 photos held out of `../shared/datasets/train` (never trained on, never Kodak), "
        f"long side ≤ {long_side}, real files and decoded pixels, {threads} threads, both models in one run.",
        "",
        f"- reference: {reference_curve['model']}; candidate: {candidate_curve['model']}",
        f"- BD-rate of the candidate (PSNR): **{report['bd_rate_percent']:+.2f}%** (negative: fewer bits)",
        f"- decode time, candidate / reference: {report['decode_time_ratio']}x",
        f"- candidate PSNR rises at every quality step: {report['candidate_psnr_rises_at_every_step']}",
        "",
        "| quality | reference bpp | reference dB | candidate bpp | candidate dB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for i, quality in enumerate(QUALITIES):
        lines.append(f"| {quality} | {reference_curve['bpp'][i]:.4f} | {reference_curve['psnr'][i]:.2f} | "
                     f"{candidate_curve['bpp'][i]:.4f} | {candidate_curve['psnr'][i]:.2f} |")
    lines += ["", "Regenerate: `python -m benchmarks.heldout --data ../shared/datasets/train --candidate "
              f"{candidate_curve['model']} --reference {reference_curve['model']}"
              + ("" if name == "heldout" else f" --name {name}") + "` (the weights files installed or on "
              "VAECODEC_MODEL_PATH)", ""]
    (out_path / f"{name}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
