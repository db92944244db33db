"""What a grayscale photo costs: real files of Kodak photos converted to gray, against their colour originals.

    python -m benchmarks.grayscale [--data ../shared/datasets/kodak] [--model default] [--long-side 512]
                                   [--out benchmarks/results]

A grayscale photo carries no colour, so a good codec codes it clearly smaller than its colour original. Every
photo is coded twice with vaecodec at qualities 2, 4 and 6: as it is (RGB) and converted by Pillow to gray
(mode L, which vaecodec codes as three equal channels and decodes back to L). JPEG at Pillow quality 75 is
measured the same way as a peer, in the same run. Reports the mean gray/colour size ratio per quality and the
PSNR of each decoded image against its own original (gray against gray). Writes grayscale.json and .md.
"""

from __future__ import annotations

import datetime
import io
import json
import math
from pathlib import Path

import click
import numpy as np
from PIL import Image

import vaecodec

QUALITIES = (2, 4, 6)
JPEG_QUALITY = 75


def psnr(decoded: Image.Image, original: Image.Image) -> float:
    error = np.asarray(decoded, dtype=np.float64) - np.asarray(original, dtype=np.float64)
    return 10 * math.log10(255**2 / max(float(np.mean(error**2)), 1e-10))


def jpeg(image: Image.Image) -> tuple:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    data = buffer.getvalue()
    return len(data), Image.open(io.BytesIO(data))


def photos(folder: Path, long_side: int) -> list:
    loaded = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            image = image.convert("RGB")
        scale = min(1.0, long_side / max(image.size))
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        loaded.append((path.name, image))
    return loaded


def gray_against_colour(code, images: list) -> dict:
    """Mean gray/colour size ratio and PSNRs over the photos, for ``code(image) -> (bytes, decoded image)``."""
    ratios, colour_psnr, gray_psnr = [], [], []
    for _, colour in images:
        gray = colour.convert("L")
        (colour_size, colour_decoded), (gray_size, gray_decoded) = code(colour), code(gray)
        ratios.append(gray_size / colour_size)
        colour_psnr.append(psnr(colour_decoded, colour))
        gray_psnr.append(psnr(gray_decoded, gray))
    return {"gray_to_colour": float(np.mean(ratios)), "colour_psnr": float(np.mean(colour_psnr)),
            "gray_psnr": float(np.mean(gray_psnr))}


def measure(codec, images: list) -> dict:
    def vaecodec_at(quality):
        def code(image):
            data = codec.compress(image, quality)
            return len(data), codec.decompress(data)
        return code

    rows = {f"vaecodec q{quality}": gray_against_colour(vaecodec_at(quality), images) for quality in QUALITIES}
    rows[f"JPEG q{JPEG_QUALITY} (Pillow)"] = gray_against_colour(jpeg, images)
    return rows


def report(result: dict) -> str:
    lines = ["# What a grayscale photo costs", "",
             f"Run {result['time']}, model {result['model']}, {result['photos']} Kodak photos (long side at most "
             f"{result['long_side']} px), each coded in colour and converted to gray by Pillow: real files, decoded "
             "pixels. Size ratio: mean over the photos of gray bytes / colour bytes (lower: gray costs less). "
             "PSNR of each decode against its own original.", "",
             "| codec | gray / colour size | colour PSNR dB | gray PSNR dB |", "|---|---:|---:|---:|"]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {row['gray_to_colour']:.3f} | {row['colour_psnr']:.2f} | {row['gray_psnr']:.2f} |")
    lines += ["", "Regenerate: `python -m benchmarks.grayscale`"]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak", show_default=True)
@click.option("--model", default="default", show_default=True, help="Model name or weights file.")
@click.option("--long-side", type=int, default=512, show_default=True, help="Downscale photos to this first.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parent / "results", show_default=True)
def main(data: Path, model: str, long_side: int, out: Path):
    codec = vaecodec.load(model, device="cpu")
    images = photos(data, long_side)
    result = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
              "model": f"{codec.model_name} {codec.model_hash.hex()}", "photos": len(images),
              "long_side": long_side, "rows": measure(codec, images)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "grayscale.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report(result)
    (out / "grayscale.md").write_text(text)
    click.echo(text)


if __name__ == "__main__":
    main()
