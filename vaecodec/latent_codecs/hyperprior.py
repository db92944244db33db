"""The mean-scale hyperprior codec: side information z predicts the mean and scale of every element of y.

Ballé et al., "Variational image compression with a scale hyperprior" (ICLR 2018), with the means of
Minnen, Ballé, Toderici (NeurIPS 2018) and without their autoregressive context:

    y --h_a--> z --FactorizedCoder--> z symbols --h_s (integer), quality--> mean, scale index
    y --GaussianCoder(mean, scale index)--> y symbols;   y_hat = y symbols + mean

h_a is a float network run by the encoder alone; h_s is an integer network (``integer_net.py``), so the
decoder derives every table index and mean from integers, exactly, on any machine. h_s is told the quality
index: y is scaled by a per-quality gain, so one z stands for latents of very different sizes.

Training side ``HyperpriorLatentCodec`` (h_a, the fake-quantized h_s, the z and y part codecs); coding side
``HyperpriorCoder``, built from ``export_tables``: {"h_a": float weights, "h_s": integer tables,
"z": FactorizedCoder tables, "y": GaussianCoder tables}.
"""

import numpy as np
import torch
from torch import nn

from ..entropy.gaussian import NUM_SCALES
from ..errors import InvalidFile
from ..integer_net import (ACTIVATION_FRAC_BITS, MEAN_GAIN_FRAC_BITS, MEAN_GAIN_UNIT, SCALE_SHIFT_UNIT,
                           HyperSynthesis, IntegerHyperSynthesis)
from ..layers import conv
from .base import LatentCodec, LatentCoder, Quantized, Symbols
from .factorized import FactorizedCoder, FactorizedLatentCodec
from .gaussian import GaussianCoder, GaussianLatentCodec, GaussianRate

Z_STRIDE = 4  # z is at 1/4 of y's resolution (h_a downsamples twice by 2)


def hyper_analysis(latent_channels: int, hyper_channels: int) -> nn.Sequential:
    return nn.Sequential(conv(latent_channels, hyper_channels, 3, 1), nn.ReLU(), conv(hyper_channels, hyper_channels),
                         nn.ReLU(), conv(hyper_channels, hyper_channels))


def hyper_synthesis(config) -> HyperSynthesis:
    return HyperSynthesis(config.hyper_channels, config.hyper_channels, config.latent_channels, NUM_SCALES,
                          config.levels)


class HyperpriorLatentCodec(LatentCodec):
    """Training side (see the module docstring); ``forward(y, level) -> (y_hat, {"z": ..., "y": ...})``."""

    type_name = "hyperprior"

    def __init__(self, h_a: nn.Module, h_s: HyperSynthesis, z_codec: FactorizedLatentCodec,
                 y_codec: GaussianLatentCodec):
        super().__init__()
        self.h_a, self.h_s, self.z_codec, self.y_codec = h_a, h_s, z_codec, y_codec

    @classmethod
    def from_config(cls, config) -> "HyperpriorLatentCodec":
        return cls(hyper_analysis(config.latent_channels, config.hyper_channels), hyper_synthesis(config),
                   FactorizedLatentCodec(config.hyper_channels), GaussianLatentCodec())

    def forward(self, y: torch.Tensor, level: torch.Tensor) -> tuple:
        z_symbols, z_likelihood = self.z_codec(self.h_a(y))
        mean, scale_position = self.h_s(z_symbols, level)
        y_hat, y_likelihood = self.y_codec(y, mean, scale_position)
        return y_hat, {"z": z_likelihood, "y": y_likelihood}

    def auxiliary_parameters(self) -> list:
        return self.z_codec.auxiliary_parameters()

    def auxiliary_loss(self) -> torch.Tensor:
        return self.z_codec.auxiliary_loss()

    def per_level_parameters(self) -> tuple:
        """h_s's scale shift and mean gain, one row per level (it is told the level)."""
        return ("h_s.level_scale_shift", "h_s.level_log_mean_gain")

    def finish_training(self) -> float:
        return self.z_codec.fit_tails()

    def export_tables(self, levels: torch.Tensor) -> dict:
        return {"h_a": {k: v.detach().clone() for k, v in self.h_a.state_dict().items()},
                "h_s": self.h_s.export_integer_tables(levels),
                "z": self.z_codec.export_tables(), "y": self.y_codec.export_tables()}

    def load_tables(self, tables: dict):
        self.h_a.load_state_dict({k: v.float() for k, v in tables["h_a"].items()})
        _load_integer_tables(self.h_s, tables["h_s"])
        self.z_codec.load_tables(tables["z"])


class HyperpriorCoder(LatentCoder):
    """Coding side (see the module docstring)."""

    def __init__(self, tables: dict, config, device: torch.device):
        super().__init__(tables, config, device)
        _check_keys(tables, {"h_a", "h_s", "z", "y"}, "latent codec")
        _check_keys(tables["z"], FactorizedCoder.KEYS, "z tables")
        _check_keys(tables["y"], GaussianCoder.KEYS, "y tables")
        with torch.device("meta"):  # shapes only: the stored tensors replace the parameters
            self.h_a = hyper_analysis(config.latent_channels, config.hyper_channels)
            specs = hyper_synthesis(config).specs
        weights = {name: tensor.to(device, torch.float32, memory_format=torch.channels_last if tensor.dim() == 4
                                   else torch.preserve_format) for name, tensor in tables["h_a"].items()}
        try:
            self.h_a.load_state_dict(weights, assign=True)
        except RuntimeError as error:
            raise InvalidFile(f"h_a weights do not fit the model ({str(error).splitlines()[0]})") from None
        self.h_a = self.h_a.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.h_s = IntegerHyperSynthesis(specs, tables["h_s"], config.latent_channels, NUM_SCALES, device)
        self.z = FactorizedCoder(tables["z"], device)
        self.y = GaussianCoder(tables["y"])

    def symbol_shapes(self, y_shape: tuple) -> Symbols:
        channels, height, width = y_shape
        return Symbols((self.config.hyper_channels, height // Z_STRIDE, width // Z_STRIDE), tuple(y_shape))

    def _side(self, z_symbols: torch.Tensor, quality_index: torch.Tensor) -> tuple:
        """(mean in units of 2^-ACTIVATION_FRAC_BITS, scale index), int64, from the z symbols."""
        return self.h_s.run(z_symbols, quality_index)

    def _scale_index(self, z_symbols: np.ndarray, quality_index: int, known=None) -> np.ndarray:
        """One image's y scale indexes: ``known`` (``quantize``'s y_table_index for it) if given, else from h_s."""
        if known is not None:
            return known
        _, scale_index = self._side(torch.from_numpy(z_symbols.astype(np.int64))[None], torch.tensor([quality_index]))
        return scale_index[0].cpu().numpy()

    def quantize(self, y, quality_index, refine=None) -> Quantized:
        z_symbols = self.z.quantize(self.h_a(y))
        mean_fixed, scale_index = self._side(z_symbols, quality_index)
        mean = mean_fixed.to(y.dtype) / 2**ACTIVATION_FRAC_BITS
        if refine is not None:
            y = refine(y, GaussianRate(mean, scale_index))
        return Quantized(z_symbols, self.y.quantize(y, mean), scale_index)

    def dequantize(self, symbols: Symbols, quality_index) -> torch.Tensor:
        mean_fixed, _ = self._side(symbols.z.to(self.device), quality_index)
        return symbols.y.to(self.device).float() + mean_fixed.float() / 2**ACTIVATION_FRAC_BITS

    def encode(self, encoder, symbols: Symbols, quality_index: int, y_table_index=None):
        self.z.encode(encoder, symbols.z)
        self.y.encode(encoder, symbols.y, self._scale_index(symbols.z, quality_index, y_table_index))

    def decode(self, decoder, shapes: Symbols, quality_index: int) -> Symbols:
        z_symbols = self.z.decode(decoder, shapes.z)
        return Symbols(z_symbols, self.y.decode(decoder, self._scale_index(z_symbols, quality_index)))

    def code_lengths(self, symbols: Symbols, quality_index: int, y_table_index=None) -> tuple:
        z_bits, z_escapes = self.z.code_lengths(symbols.z)
        y_bits, y_escapes = self.y.code_lengths(symbols.y, self._scale_index(symbols.z, quality_index, y_table_index))
        return Symbols(z_bits, y_bits), z_escapes + y_escapes


def _check_keys(tables: dict, expected: set, what: str):
    if not isinstance(tables, dict) or set(tables) != expected:
        found = sorted(tables) if isinstance(tables, dict) else type(tables).__name__
        raise InvalidFile(f"weights: {what} has entries {found}, expected {sorted(expected)}")


def _load_integer_tables(h_s: HyperSynthesis, tables: dict):
    """Set the fake-quantized h_s from its exported integer tables (the inverse of ``export_integer_tables``:
    exact for the weights; the per-level tables are read at the trained levels, every 1 / QUALITY_STEP-th
    quality index)."""
    from ..quality import QUALITY_INDEXES_PER_LEVEL

    state = h_s.state_from_integer_tables(tables)
    state["level_scale_shift"] = tables["scale_shift"][::QUALITY_INDEXES_PER_LEVEL].double() / (
        2**ACTIVATION_FRAC_BITS * SCALE_SHIFT_UNIT)
    state["level_log_mean_gain"] = (tables["mean_gain"][::QUALITY_INDEXES_PER_LEVEL].double()
                                    / 2**MEAN_GAIN_FRAC_BITS).log() / MEAN_GAIN_UNIT
    h_s.load_state_dict({k: v.float() for k, v in state.items()})
