"""The checks only a CUDA GPU can run, in about a minute: the first part of a GPU training round.

    python -m benchmarks.gpu_checks [--images DIR] [--out DIR]

1. Decodability across devices: Kodak-sized images (or the photos in --images) compressed on the GPU decode
   on the CPU to the same latent symbols, and their pixels agree within one 8-bit step.
2. Batch throughput on the GPU: compress_batch / decompress_batch at batch sizes 1, 8 and 32, images/s, and
   whether the bytes equal one-at-a-time coding.
3. bf16 synthesis accuracy: PSNR of the decoded image with g_s under bf16 autocast against fp32, the price
   of running the transforms in bf16 at coding time.

Prints a summary and writes gpu_checks.json to --out. Exits 1 if a decodability check fails.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

import vaecodec


def test_images(folder, count: int) -> list:
    if folder:
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in {".png", ".jpg", ".webp"})[:count]
        return [Image.open(p).convert("RGB") for p in paths]
    generator = np.random.default_rng(0)  # smooth random pictures: no data needed on the device
    images = []
    for _ in range(count):
        small = generator.integers(0, 256, (24, 16, 3), dtype=np.uint8)
        images.append(Image.fromarray(small).resize((768, 512), Image.BICUBIC))
    return images


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return 10 * math.log10(255**2 / max(float(np.mean(error**2)), 1e-10))


@click.command()
@click.option("--images", default=None, type=click.Path(exists=True, file_okay=False))
@click.option("--count", default=8, show_default=True)
@click.option("--out", default="benchmarks/results", type=click.Path(file_okay=False))
def main(images, count, out):
    if not torch.cuda.is_available():
        raise click.ClickException("no CUDA GPU here")
    gpu, cpu = vaecodec.load("default", device="cuda"), vaecodec.load("default", device="cpu")
    pictures = test_images(images, count)
    report = {"gpu": torch.cuda.get_device_name(0), "model": f"{gpu.model_name}@{gpu.model_hash.hex()[:8]}"}

    cross = []
    for image in pictures:
        data = gpu.compress(image, 5)
        same_symbols = gpu.bytes_to_latents(data) == cpu.bytes_to_latents(data)
        pixels_gpu, pixels_cpu = np.asarray(gpu.decompress(data)), np.asarray(cpu.decompress(data))
        max_step = int(np.abs(pixels_gpu.astype(int) - pixels_cpu.astype(int)).max())
        cross.append({"bytes": len(data), "same_symbols": bool(same_symbols), "max_pixel_difference": max_step,
                      # information only: g_a's floats may round a latent differently on another device
                      "same_bytes_as_cpu_encode": data == cpu.compress(image, 5)})
    report["cuda_encode_cpu_decode"] = cross

    throughput = []
    single = [gpu.compress(image, 5) for image in pictures]
    for batch_size in (1, 8, 32):
        batch = (pictures * math.ceil(batch_size / len(pictures)))[:max(batch_size, len(pictures))]
        torch.cuda.synchronize()
        started = time.perf_counter()
        files = gpu.compress_batch(batch, 5, batch_size=batch_size)
        encode_s = time.perf_counter() - started
        started = time.perf_counter()
        gpu.decompress_batch(files, batch_size=batch_size)
        decode_s = time.perf_counter() - started
        throughput.append({"batch_size": batch_size, "images": len(batch),
                           "encode_images_per_s": round(len(batch) / encode_s, 1),
                           "decode_images_per_s": round(len(batch) / decode_s, 1),
                           "bytes_equal_one_at_a_time": files[:len(single)] == single})
    report["batch_throughput"] = throughput

    bf16 = []
    for image in pictures[:4]:
        data = gpu.compress(image, 8)
        reference = gpu.decompress(data)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            in_bf16 = gpu.decompress(data)
        bf16.append({"psnr_fp32": round(psnr(reference, image), 3), "psnr_bf16": round(psnr(in_bf16, image), 3)})
    report["bf16_synthesis"] = bf16

    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "gpu_checks.json").write_text(json.dumps(report, indent=2) + "\n")
    decodable = all(c["same_symbols"] and c["max_pixel_difference"] <= 1 for c in cross)
    click.echo(f"{report['gpu']}: CUDA encode -> CPU decode {'OK' if decodable else 'FAILED'}; "
               f"batch 32 encode {throughput[-1]['encode_images_per_s']} img/s, decode "
               f"{throughput[-1]['decode_images_per_s']} img/s; bf16 synthesis costs "
               f"{np.mean([b['psnr_fp32'] - b['psnr_bf16'] for b in bf16]):.3f} dB at q8")
    sys.exit(0 if decodable else 1)


if __name__ == "__main__":
    main()
