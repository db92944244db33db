"""PSNR cost of shipping the transforms in fp16: the shipped weights against an fp32 export of the same run.

    vaecodec export RUN_DIR -o /tmp/fp32.pt --fp32 --name mcc-n64   # the run the shipped default came from
    python -m benchmarks.fp16_check /tmp/fp32.pt > benchmarks/results/fp16_check.txt
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

import vaecodec

KODAK = Path("../shared/datasets/kodak")
IMAGES = (1, 5, 12, 19, 23)
QUALITIES = (1, 4, 8)


def psnr(a, b) -> float:
    return 10 * np.log10(255**2 / np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2))


def main(fp32_weights: str):
    fp16 = vaecodec.load("default", "cpu")
    fp32 = vaecodec.load(fp32_weights, "cpu")
    gains = []
    for index in IMAGES:
        image = Image.open(KODAK / f"kodim{index:02d}.png").convert("RGB")
        for quality in QUALITIES:
            gains.append(psnr(image, fp32.decompress(fp32.compress(image, quality)))
                         - psnr(image, fp16.decompress(fp16.compress(image, quality))))
    print(f"{fp16.model_name}@{fp16.model_hash.hex()}: fp32 minus fp16 PSNR: mean {np.mean(gains):.4f} dB, "
          f"max {np.max(gains):.4f} dB")


if __name__ == "__main__":
    main(sys.argv[1])
