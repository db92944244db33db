"""The factorized codec of the side information z: one learned, input-independent distribution per channel.

Ballé, Minnen, Singh, Hwang, Johnston, "Variational image compression with a scale hyperprior" (ICLR 2018),
appendix 6.1. Training (``FactorizedLatentCodec``): the likelihood of z + uniform noise under the
non-parametric prior of ``entropy/factorized.py`` is the rate; the straight-through symbols
round(z - median) go on to the hyper-synthesis. Coding (``FactorizedCoder``): the same symbols, clamped to
what the coder can escape, are coded with one frozen integer frequency table per channel.

The codec's reconstruction is the symbol itself, an integer offset from the channel's median: what reads it
(the integer hyper-synthesis) takes integers, so the float median never reaches the decoder.
"""

import numpy as np
import torch
from torch import nn

from ..entropy.coder import SYMBOL_MAX, SYMBOL_MIN, TableSet, decode_symbols, encode_symbols
from ..entropy.factorized import FactorizedPrior
from ..entropy.tables import PRECISION
from ..layers import round_ste

TAIL_FIT_STEPS = 3000


class FactorizedLatentCodec(nn.Module):
    """Training side: ``forward(z) -> (symbols with a straight-through gradient, likelihood of noisy z)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.prior = FactorizedPrior(channels)

    def forward(self, z: torch.Tensor) -> tuple:
        medians = self.prior.medians.detach()[None, :, None, None]
        z_noisy = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        return round_ste(z - medians), self.prior.likelihood(z_noisy)

    def auxiliary_parameters(self) -> list:
        return [self.prior.quantiles]

    def auxiliary_loss(self) -> torch.Tensor:
        return self.prior.quantile_loss()

    def fit_tails(self, steps: int = TAIL_FIT_STEPS) -> float:
        """Move the lower and upper quantiles to their targets; the medians, which the hyper-synthesis was
        trained against, stay as trained. Returns the final quantile loss."""
        quantiles = self.prior.quantiles
        optimizer = torch.optim.Adam([quantiles], lr=0.05)
        keep_median = torch.tensor([1.0, 0.0, 1.0])
        for _ in range(steps):
            optimizer.zero_grad()
            self.prior.quantile_loss().backward()
            quantiles.grad *= keep_median
            optimizer.step()
        return self.prior.quantile_loss().item()

    def export_tables(self) -> dict:
        """{offsets (float32, the medians), table_low, frequencies (int32): the coder's tables; state: the
        prior's float parameters, kept to fine-tune from}."""
        tables = self.prior.export_tables(PRECISION)
        return {"offsets": torch.from_numpy(tables["offsets"]), "table_low": torch.from_numpy(tables["table_low"]),
                "frequencies": torch.from_numpy(tables["frequencies"]),
                "state": {k: v.detach().float() for k, v in self.prior.state_dict().items()}}

    def load_tables(self, tables: dict):
        self.prior.load_state_dict({k: v.float() for k, v in tables["state"].items()})


class FactorizedCoder:
    """Coding side: z -> round(z - offset) symbols, coded with channel c's table."""

    KEYS = {"offsets", "table_low", "frequencies", "state"}

    def __init__(self, tables: dict, device: torch.device):
        self.offsets = tables["offsets"].float().to(device)
        self.tables = TableSet(tables["frequencies"].numpy(), tables["table_low"].numpy())

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        return torch.round(z - self.offsets[None, :, None, None]).clamp(SYMBOL_MIN, SYMBOL_MAX).long()

    @staticmethod
    def table_index(shape: tuple) -> np.ndarray:
        return np.broadcast_to(np.arange(shape[0])[:, None, None], shape)

    def encode(self, encoder, symbols: np.ndarray):
        encode_symbols(encoder, symbols, self.table_index(symbols.shape), self.tables)

    def decode(self, decoder, shape: tuple) -> np.ndarray:
        return decode_symbols(decoder, self.table_index(shape), self.tables)

    def code_lengths(self, symbols: np.ndarray) -> tuple:
        return self.tables.code_lengths(symbols, self.table_index(symbols.shape))
