"""The three names of a rate setting, and the one place they are converted.

* **quality**: what users choose, 1 to 8 in steps of ``QUALITY_STEP`` (fractional: 6.5 is allowed).
* **quality index**: the integer a .vae header stores, 0 to ``QUALITY_INDEXES`` - 1; the coder's
  per-quality tables (gains, h_s's scale shifts and mean gains) have one row per quality index.
* **level**: the zero-based index of the trained per-level tables, fractional in between (training samples
  whole levels; a quality between two trained levels interpolates their tables).

quality = 1 + index * QUALITY_STEP, and the trained levels sit at the whole qualities: level = quality - 1.
This module is read by the container, which must not import torch (``info`` and Pillow's ``open`` run
without it), so torch is imported only where tensors are made.
"""

QUALITY_STEP = 0.25
QUALITY_INDEXES = 29  # 1.0, 1.25, ..., 8.0
QUALITY_INDEXES_PER_LEVEL = round(1 / QUALITY_STEP)  # quality indexes from one trained level to the next
# What a user gets without choosing. With the shipped model's wide λ ladder, quality 5 lands where quality 4
# did before the ladder was widened (see the Kodak table in the model card).
DEFAULT_QUALITY = 5.0


def quality_to_index(quality: float) -> int:
    """The quality index of a quality; ValueError if it is off the grid."""
    index = (quality - 1) / QUALITY_STEP
    if not (0 <= index <= QUALITY_INDEXES - 1) or abs(index - round(index)) > 1e-9:
        raise ValueError(f"quality must be between 1 and 8 in steps of {QUALITY_STEP}, got {quality}")
    return round(index)


def index_to_quality(index: int) -> float:
    return 1 + index * QUALITY_STEP


def index_to_level(index: int) -> float:
    """The zero-based, possibly fractional, trained level of a quality index."""
    return index * QUALITY_STEP


def index_levels():
    """The level of every quality index, a float64 tensor (QUALITY_INDEXES,): the rows exported tables hold."""
    import torch

    return torch.tensor([index_to_level(index) for index in range(QUALITY_INDEXES)], dtype=torch.float64)
