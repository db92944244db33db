"""Choosing the quality for a goal: the largest whose file fits a size, or the smallest that reaches a PSNR.

Both search the 29 qualities (1 to 8 in steps of 0.25) by bisection, so about 5 trials per image. The
analysis transform g_a runs once: the quality only scales its output by a per-channel gain, so each trial
costs the small hyper networks, plus for a PSNR goal one run of the real decoder. File sizes are first
estimated from the model's own rate (-log2 p of the symbols under the frozen tables, within a few bytes of
the range coder); the chosen quality's file is then really coded, and if it is over the size, the next
lower quality is tried. PSNR comes from decoding the symbols exactly as ``Codec.decompress`` would, so the
chosen file decodes to precisely the pixels measured. The bytes are those ``Codec.compress`` writes at the
chosen quality. A grayscale image is searched over all 29 qualities too, each coded as it is, without the
offset ``Codec.compress`` takes from the quality asked for (quality.py): the quality chosen is the one coded
(for a grayscale image, the bytes of ``Codec.compress(..., gray_offset=False)``).
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .container import ImageHeader, pack
from .quality import QUALITY_INDEXES, index_to_quality
from .errors import UsageError
from .images import image_to_tensor, open_image, pad
from .latent_codecs import Symbols
from .latents import Latents
from .model import STRIDE


@dataclass
class Choice:
    """A quality found for an image, with the file it gives."""

    quality: float
    data: bytes
    goal: str  # what was asked, e.g. "fits 20000 bytes"
    psnr: Optional[float] = None  # of the decoded file, when the goal is a PSNR
    trials: int = 0

    def describe(self) -> str:
        reached = f", {self.psnr:.2f} dB" if self.psnr is not None else ""
        return f"quality {self.quality:g} ({self.goal}{reached}; {self.trials} trials)"


class Search:
    """One image analysed once, coded at any quality index on demand (results kept)."""

    def __init__(self, codec, image):
        self.codec = codec
        self.image = open_image(image)
        width, height = self.image.size
        self.sizes = torch.tensor([[height, width]])
        with torch.no_grad():
            self.x = codec._on_device(pad(image_to_tensor(self.image), STRIDE))
            self.y = codec._analysis(self.x)
        self.coded = {}  # quality index -> (Latents, y table index): the arguments of Codec._pack
        self.psnrs = {}  # quality index -> dB

    def quantized(self, index: int) -> tuple:
        """(Latents, the index of the table each y symbol is coded with) at a quality index."""
        if index not in self.coded:
            quality_index = torch.tensor([index], device=self.codec.device)
            with torch.no_grad():
                z, y, y_table_index = self.codec._quantize(self.x, self.y, quality_index, self.sizes)
            header = ImageHeader(self.codec.model_name, self.codec.model_hash, index, self.image.mode,
                                 *self.image.size)
            self.coded[index] = (Latents(header, z[0].numpy().astype(np.int16), y[0].numpy().astype(np.int16)),
                                 y_table_index[0].numpy())
        return self.coded[index]

    def latents(self, index: int) -> Latents:
        return self.quantized(index)[0]

    def estimated_bytes(self, index: int) -> float:
        latents, y_table_index = self.quantized(index)
        bits = self.codec.latent_codec.estimated_bits(Symbols(latents.z_symbols, latents.y_symbols), index,
                                                      y_table_index)
        return bits / 8 + len(pack(latents.header, b""))  # payload + container

    def file(self, index: int) -> bytes:
        return self.codec._pack(*self.quantized(index))

    def psnr(self, index: int) -> float:
        if index not in self.psnrs:
            self.psnrs[index] = psnr(self.image, self.codec.decode_latents(self.latents(index)))
        return self.psnrs[index]


def psnr(original, decoded) -> float:
    """PSNR in dB over the 8-bit pixels of the image's own mode (RGB, or L for grayscale); inf if identical."""
    a = np.asarray(original, dtype=np.float64)
    b = np.asarray(decoded.convert(original.mode), dtype=np.float64)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))


def last_true(predicate, low: int, high: int) -> tuple:
    """(the largest index in [low, high] where predicate holds, or None; how many times it was evaluated), for
    a predicate true up to some index and false after it. The index after the one returned was evaluated
    false (unless it is past ``high``)."""
    found, trials = None, 0
    while low <= high:
        middle = (low + high) // 2
        trials += 1
        if predicate(middle):
            found, low = middle, middle + 1
        else:
            high = middle - 1
    return found, trials


def compress_to_size(codec, image, max_bytes: int) -> Choice:
    """The file of the largest quality whose file has at most ``max_bytes`` bytes; UsageError if even
    quality 1 is larger."""
    search = Search(codec, image)
    index, trials = last_true(lambda i: search.estimated_bytes(i) <= max_bytes, 0, QUALITY_INDEXES - 1)
    index = 0 if index is None else index
    while True:  # the estimate is within a few bytes; the real file decides
        data = search.file(index)
        trials += 1
        if len(data) <= max_bytes:
            return Choice(index_to_quality(index), data, f"fits {max_bytes} bytes", trials=trials)
        if index == 0:
            raise UsageError(f"even quality 1 needs {len(data)} bytes, more than --size {max_bytes}")
        index -= 1


def compress_to_psnr(codec, image, min_psnr: float) -> Choice:
    """The file of the smallest quality whose decoded image has at least ``min_psnr`` dB PSNR; UsageError if
    even quality 8 falls short."""
    search = Search(codec, image)
    # "PSNR below the goal" holds up to the quality just short of it: the next index is the answer.
    short, trials = last_true(lambda i: search.psnr(i) < min_psnr, 0, QUALITY_INDEXES - 1)
    index = 0 if short is None else short + 1
    if index == QUALITY_INDEXES:
        raise UsageError(f"even quality 8 reaches only {search.psnr(QUALITY_INDEXES - 1):.2f} dB, "
                         f"below --psnr {min_psnr:g}")
    reached = search.psnr(index)  # measured already unless the search never tried it
    return Choice(index_to_quality(index), search.file(index), f"reaches {min_psnr:g} dB", psnr=reached,
                  trials=trials)
