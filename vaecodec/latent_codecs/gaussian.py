"""The Gaussian-indexed codec of y: each element coded with the table of its predicted scale, around its mean.

Minnen, Ballé, Toderici, "Joint autoregressive and hierarchical priors for learned image compression"
(NeurIPS 2018), mean-scale variant. Whatever predicts them (a hyper-synthesis, a context model), each
element of y comes with a mean and an index into the fixed table of ``NUM_SCALES`` log-spaced scales of
``entropy/gaussian.py``. The symbol is round(y - mean): only the scale shapes its distribution, so one integer
frequency table per scale serves every element (``GaussianCoder``). Training (``GaussianLatentCodec``)
sees exactly the table's scales (the position is rounded with a straight-through gradient).

``GaussianRate`` is the rate encoder-side refinement optimises: -log2 of the Gaussian likelihood of a
residual at each element's table scale.
"""

import numpy as np
import torch
from torch import nn

from ..entropy.coder import SYMBOL_MAX, SYMBOL_MIN, TableSet, decode_symbols, encode_symbols
from ..entropy.gaussian import GaussianConditional, scale_table
from ..entropy.tables import PRECISION
from ..layers import round_ste
from .base import LatentRate


class GaussianLatentCodec(nn.Module):
    """Training side: ``forward(y, mean, scale_position) -> (y_hat, likelihood of the noisy residual)``."""

    def __init__(self):
        super().__init__()
        self.conditional = GaussianConditional()

    def forward(self, y: torch.Tensor, mean: torch.Tensor, scale_position: torch.Tensor) -> tuple:
        scale = self.conditional.scale_from_position(scale_position)
        noisy_residual = y - mean + torch.empty_like(y).uniform_(-0.5, 0.5)
        likelihood = self.conditional.likelihood(noisy_residual, scale)
        return round_ste(y - mean) + mean, likelihood

    @staticmethod
    def export_tables() -> dict:
        tables = GaussianConditional.export_tables(PRECISION)
        return {"table_low": torch.from_numpy(tables["table_low"]),
                "frequencies": torch.from_numpy(tables["frequencies"])}


class GaussianRate(LatentRate):
    def __init__(self, mean: torch.Tensor, scale_index: torch.Tensor):
        self.mean, self.scale_index = mean, scale_index
        self.scale = scale_table().to(mean.device, torch.float32)[scale_index.long()]

    def bits(self, residual: torch.Tensor) -> torch.Tensor:
        return -torch.log2(GaussianConditional.likelihood(residual, self.scale))

    def window(self, index) -> "GaussianRate":
        return GaussianRate(self.mean[index], self.scale_index[index])


class GaussianCoder:
    """Coding side: symbols round(y - mean), coded with the table of their scale index."""

    KEYS = {"table_low", "frequencies"}

    def __init__(self, tables: dict):
        self.tables = TableSet(tables["frequencies"].numpy(), tables["table_low"].numpy())

    @staticmethod
    def quantize(y: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        return torch.round(y - mean).clamp(SYMBOL_MIN, SYMBOL_MAX).long()

    def encode(self, encoder, symbols: np.ndarray, scale_index: np.ndarray):
        encode_symbols(encoder, symbols, scale_index, self.tables)

    def decode(self, decoder, scale_index: np.ndarray) -> np.ndarray:
        return decode_symbols(decoder, scale_index, self.tables)

    def code_lengths(self, symbols: np.ndarray, scale_index: np.ndarray) -> tuple:
        return self.tables.code_lengths(symbols, scale_index)
