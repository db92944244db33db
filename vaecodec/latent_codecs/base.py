"""The latent-codec interface: how the latents y become symbols, bits and reconstructed latents again.

A latent codec is everything between the analysis transform's output and the synthesis transform's input:
side information (z), the entropy models and the rounding. It has two sides that share one set of
parameters:

* the training side, ``LatentCodec`` (an ``nn.Module``): ``forward(y, level)`` returns the reconstructed
  latents (rounded, with a straight-through gradient) and the likelihoods of the noisy latents, whose
  -log2 is the rate term of the loss. ``export_tables(levels)`` freezes it into integer tables plus the
  few float weights the encoder alone runs (an analysis network such as h_a).
* the coding side, ``LatentCoder``, built from those exported tables only (never from the training
  module): ``quantize`` turns y into integer symbols, ``encode``/``decode`` move the symbols through a range
  coder, ``dequantize`` gives the float y_hat for the synthesis transform, and ``code_lengths`` /
  ``estimated_bits`` price the symbols exactly under the frozen tables. Everything ``decode`` computes from
  the bitstream is integer, so the decoder parses the same symbols on every machine.

The split mirrors the entropy models of tensorflow-compression (a training call and a compression mode with
frozen integer tables) and the nesting of CompressAI's latent codecs: a composite codec (``hyperprior.py``)
holds part codecs, one for z (``factorized.py``) and one for y given its side information (``gaussian.py``).

Quantization belongs to the coder, not to the caller: in a context model the symbols of later channel
groups depend on the symbols of earlier ones. Symbols are a ``Symbols(z, y)`` pair (side information and
latents, each an integer array; a model without side information may leave z empty). ``quantize`` returns
them as ``Quantized(z, y, y_table_index)``: with the index of the table each y symbol is coded with, which
it derives on the way (from z, and in a context model from earlier y symbols). ``encode`` and
``code_lengths`` take that index when the caller has it (the compress path) and derive it again from the
symbols when not (symbols read from latents, built by hand, or decoded).

A new latent codec registers its two classes in ``latent_codecs/__init__.py`` under a type name; the weights
file names that type in its config (``weights.py``), and ``Codec`` and the trainer build it from there.
"""

from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import nn


class Symbols(NamedTuple):
    """Integer symbols of one image (numpy arrays, channels first) or of a batch (torch tensors, batch first):
    ``z`` the side information, ``y`` the latents proper."""

    z: object
    y: object


class Quantized(NamedTuple):
    """What ``LatentCoder.quantize`` gives: the symbols ``z`` and ``y`` (as in ``Symbols``) and ``y_table_index``,
    the index of the table each y symbol is coded with (the shape of y), as ``encode`` would derive it from
    the symbols. Batch first on the device; ``codec.py`` slices one image's rows to numpy."""

    z: object
    y: object
    y_table_index: object


class LatentRate:
    """What encoder-side refinement (``refine.py``) optimises against, fixed while it searches y: the
    ``mean`` around which y is rounded and ``bits(residual)``, the differentiable code length of each
    element of y - mean. ``window(index)`` is the same rate over a slice of y (an image of a batch, a tile)."""

    mean: torch.Tensor

    def bits(self, residual: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def window(self, index) -> "LatentRate":
        raise NotImplementedError


# refine(y, rate) -> y: the hook ``LatentCoder.quantize`` calls between side information and the rounding of y
Refinement = Callable[[torch.Tensor, LatentRate], torch.Tensor]


class LatentCodec(nn.Module):
    """Training side of a latent codec (see the module docstring).

    Subclasses set ``type_name`` (the name weights files give the codec), build themselves from a
    ``ModelConfig`` (``from_config``) and implement ``forward`` and ``export_tables``.
    """

    type_name = ""

    @classmethod
    def from_config(cls, config) -> "LatentCodec":
        raise NotImplementedError

    def forward(self, y: torch.Tensor, level: torch.Tensor) -> tuple:
        """Latents y (B, M, H, W), already scaled by their level's gain, and zero-based (fractional) levels
        (B,) -> (y_hat, likelihoods): y_hat rounded with a straight-through gradient, likelihoods a dict of
        per-element likelihoods of the noisy latents, one entry per coded group ("z", "y", ...)."""
        raise NotImplementedError

    def auxiliary_parameters(self) -> list:
        """Parameters trained by ``auxiliary_loss`` alone, with their own optimizer (e.g. a prior's tails)."""
        return []

    def auxiliary_loss(self) -> torch.Tensor:
        return torch.zeros(())

    def per_level_parameters(self) -> tuple:
        """Names, as in this module's ``state_dict``, of the parameters with one row per trained level (levels,
        channels), which interpolate between levels: what ``train/ladder.py`` moves to a new λ ladder."""
        return ()

    def finish_training(self) -> float:
        """Prepare for export (e.g. fit a prior's tails to convergence); returns the auxiliary loss."""
        return float(self.auxiliary_loss())

    def export_tables(self, levels: torch.Tensor) -> dict:
        """Everything the coder needs, as a dict of tensors (integer tables, and float weights the encoder
        alone runs): ``levels[i]`` is the zero-based level of quality index i."""
        raise NotImplementedError

    def load_tables(self, tables: dict) -> None:
        """Set the parameters from exported tables again (to fine-tune shipped weights)."""
        raise NotImplementedError


class LatentCoder:
    """Coding side of a latent codec, built from ``LatentCodec.export_tables`` output (see module docstring).

    ``quality_index`` is the integer quality of the .vae header: a (B,) tensor for the batched tensor
    methods, an int for the per-image numpy ones.
    """

    def __init__(self, tables: dict, config, device: torch.device):
        self.config = config
        self.device = device

    def symbol_shapes(self, y_shape: tuple) -> Symbols:
        """Shapes (channels, height, width) of one image's z and y symbols, given y's shape."""
        raise NotImplementedError

    def quantize(self, y: torch.Tensor, quality_index: torch.Tensor,
                 refine: Optional[Refinement] = None) -> Quantized:
        """Latents y (B, M, H, W) on the device, scaled by their gain -> integer symbols and the y table index
        (int64 tensors on the device). ``refine``, if given, may move y once its rate is known, before it is
        rounded."""
        raise NotImplementedError

    def dequantize(self, symbols: Symbols, quality_index: torch.Tensor) -> torch.Tensor:
        """Symbols (int64 tensors, batch first) -> y_hat (float32 on the device), before the inverse gain."""
        raise NotImplementedError

    def encode(self, encoder, symbols: Symbols, quality_index: int, y_table_index=None) -> None:
        """Append one image's symbols (numpy) to a constriction range encoder. ``y_table_index``: that image's
        rows of ``quantize``'s, if the caller kept them (numpy, any integer type); None derives them from the
        symbols. The bytes are the same either way."""
        raise NotImplementedError

    def decode(self, decoder, shapes: Symbols, quality_index: int) -> Symbols:
        """Read one image's symbols (int64 numpy arrays of ``shapes``) back from a range decoder."""
        raise NotImplementedError

    def code_lengths(self, symbols: Symbols, quality_index: int, y_table_index=None) -> tuple:
        """(Symbols of float64 arrays: the bits each symbol costs under the table that codes it, escapes
        included; number of escaped symbols). ``y_table_index`` as in ``encode``."""
        raise NotImplementedError

    def estimated_bits(self, symbols: Symbols, quality_index: int, y_table_index=None) -> float:
        """The information content of one image's symbols under the frozen tables (``y_table_index`` as in
        ``encode``)."""
        bits, _ = self.code_lengths(symbols, quality_index, y_table_index)
        return float(sum(np.sum(part) for part in bits))
