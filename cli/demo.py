"""A one-image tour of the codec: ``python -m vaecodec_cli.demo IMAGE`` (``make demo``).

Compresses the image with the default model, writes the .vae file and its decoded PNG, and prints the file
size, bits per pixel, PSNR and how long encoding and decoding took.
"""

import tempfile
import time
from pathlib import Path

import click
import numpy as np

import vaecodec
from vaecodec.container import DEFAULT_QUALITY, unpack

from .batch import gray_note
from .files import write_atomically
from .main import Command, check_quality


def psnr(original, decoded) -> float:
    """PSNR in dB over 8-bit RGB pixels (grayscale is compared as RGB too); inf for identical images."""
    a = np.asarray(original.convert("RGB"), dtype=np.float64)
    b = np.asarray(decoded.convert("RGB"), dtype=np.float64)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("image_path", metavar="IMAGE", type=click.Path(path_type=Path))
@click.option("-q", "--quality", type=float, default=DEFAULT_QUALITY, show_default=True,
              callback=check_quality,
              help="1 (smallest files) to 8 (best quality), in steps of 0.25.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write the .vae and decoded .png files.  [default: a new temporary directory]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def demo(image_path, quality, out_dir, device):
    """Compress IMAGE with the default model, decode it again and report size, quality and speed.

    \b
    Examples:
      python -m vaecodec_cli.demo photo.png
      python -m vaecodec_cli.demo photo.png -q 2 --out-dir results/
    """
    codec = vaecodec.load(name="default", device=device)
    image = vaecodec.open_image(image_path)
    out_dir = out_dir or Path(tempfile.mkdtemp(prefix="vaecodec-demo-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    # The first call also pays one-off set-up costs (kernel selection, allocations), so times are an upper bound.
    started = time.perf_counter()
    data = codec.compress(image, quality=quality)
    encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    decoded = codec.decompress(data)
    decode_seconds = time.perf_counter() - started

    compressed_path = out_dir / f"{image_path.stem}.vae"
    decoded_path = out_dir / f"{image_path.stem}.decoded.png"
    # Rerunning the demo into the same --out-dir replaces its earlier results, hence force=True.
    write_atomically(compressed_path, lambda file: file.write(data), force=True)
    write_atomically(decoded_path, lambda file: decoded.save(file, format="PNG"), force=True)

    width, height = image.size
    coded = gray_note(quality, unpack(data)[0].quality) or f"quality {quality:g}"  # gray: coded lower
    click.echo(f"model:        {codec.model_name} ({codec.model_hash.hex()}) on {codec.device}")
    click.echo(f"image:        {image_path} ({width}x{height} {image.mode}), {coded}")
    click.echo(f"compressed:   {compressed_path} ({len(data)} bytes, {8 * len(data) / (width * height):.4f} bpp)")
    click.echo(f"decoded:      {decoded_path}")
    click.echo(f"PSNR:         {psnr(image, decoded):.2f} dB")
    click.echo(f"encode time:  {encode_seconds:.3f} s")
    click.echo(f"decode time:  {decode_seconds:.3f} s")


if __name__ == "__main__":
    demo(prog_name="python -m vaecodec_cli.demo")
