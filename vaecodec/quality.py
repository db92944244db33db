"""The three names of a rate setting, and the one place they are converted.

* **quality**: what users choose, 1 to 8 in steps of ``QUALITY_STEP`` (fractional: 6.5 is allowed).
* **quality index**: the integer a .vae header stores, 0 to ``QUALITY_INDEXES`` - 1; the coder's
  per-quality tables (gains, h_s's scale shifts and mean gains) have one row per quality index.
* **level**: the zero-based index of the trained per-level tables, fractional in between (training samples
  whole levels; a quality between two trained levels interpolates their tables).

quality = 1 + index * QUALITY_STEP, and the trained levels sit at the whole qualities: level = quality - 1.

A quality is a fidelity: a grayscale image (coded as three equal channels) reaches a higher PSNR than its
colour original at the same quality index, so it is coded ``GRAY_QUALITY_OFFSET`` indexes lower, where its
mean PSNR comes nearest the colour photos' at the quality asked for (``coded_quality_index``, the one place of
that rule). The header stores the index used, so decoding never needs the rule.

This module is read by the container, which must not import torch (``info`` and Pillow's ``open`` run
without it), so torch is imported only where tensors are made.
"""

QUALITY_STEP = 0.25
QUALITY_INDEXES = 29  # 1.0, 1.25, ..., 8.0
QUALITY_INDEXES_PER_LEVEL = round(1 / QUALITY_STEP)  # quality indexes from one trained level to the next
# What a user gets without choosing. With the shipped model's wide λ ladder, quality 5 lands where quality 4
# did before the ladder was widened (see the Kodak table in the model card).
DEFAULT_QUALITY = 5.0
# Quality indexes (steps of QUALITY_STEP) by which a grayscale image is coded below the quality asked for, so
# that it gets about the fidelity (mean PSNR) a colour photo gets at that quality: the offset with the smallest
# mean absolute PSNR difference on the 16 photos held out of the training folders (never Kodak), qualities 2 to
# 7, for the shipped model. `python -m benchmarks.grayscale --calibrate` measures it and
# benchmarks/results/grayscale_calibration.md names the model and the differences; tests/test_readme.py checks
# that this constant is the offset chosen there. It applies to any model loaded; rerun that when new weights ship.
GRAY_QUALITY_OFFSET = 1


def quality_to_index(quality: float) -> int:
    """The quality index of a quality; ValueError if it is off the grid."""
    index = (quality - 1) / QUALITY_STEP
    if not (0 <= index <= QUALITY_INDEXES - 1) or abs(index - round(index)) > 1e-9:
        raise ValueError(f"quality must be between 1 and 8 in steps of {QUALITY_STEP}, got {quality}")
    return round(index)


def coded_quality_index(quality_index: int, mode: str, gray_offset: bool = True) -> int:
    """The quality index an image of ``mode`` ("RGB" or "L") is coded at when ``quality_index`` is asked for:
    a grayscale one ``GRAY_QUALITY_OFFSET`` lower (at least 0), the fidelity of colour at the index asked for,
    unless ``gray_offset`` is false."""
    if mode == "L" and gray_offset:
        return max(0, quality_index - GRAY_QUALITY_OFFSET)
    return quality_index


def index_to_quality(index: int) -> float:
    return 1 + index * QUALITY_STEP


def index_to_level(index: int) -> float:
    """The zero-based, possibly fractional, trained level of a quality index."""
    return index * QUALITY_STEP


def index_levels():
    """The level of every quality index, a float64 tensor (QUALITY_INDEXES,): the rows exported tables hold."""
    import torch

    return torch.tensor([index_to_level(index) for index in range(QUALITY_INDEXES)], dtype=torch.float64)
