"""Learned non-parametric factorized prior for the hyper-latents z.

Ballé, Minnen, Singh, Hwang, Johnston, "Variational image compression with a scale hyperprior" (ICLR 2018),
appendix 6.1: each channel's cumulative distribution is a small monotone network of the value. During
training the prior returns the likelihood of z + uniform noise (the rate term of the loss) and fits three
quantiles per channel (the tails and the median) with an auxiliary loss. At export, ``export_tables``
freezes each channel's probability mass over integer offsets from its median into an integer frequency
table (see ``tables.py``); coding never evaluates this network again.
"""

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .tables import frequency_tables

LIKELIHOOD_BOUND = 1e-9


class FactorizedPrior(nn.Module):
    def __init__(self, channels: int, filters=(3, 3, 3), init_scale: float = 10.0, tail_mass: float = 1e-9):
        super().__init__()
        self.channels = channels
        self.tail_mass = tail_mass
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(widths) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(widths) - 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, widths[i + 1], 1) - 0.5))
            if i < len(widths) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))
        self.quantiles = nn.Parameter(torch.tensor([-init_scale, 0.0, init_scale]).repeat(channels, 1, 1))

    @property
    def medians(self) -> torch.Tensor:
        return self.quantiles[:, 0, 1]

    def _logits_cumulative(self, values: torch.Tensor, stop_gradient: bool = False) -> torch.Tensor:
        """Logit of the CDF at ``values`` of shape (channels, 1, n)."""
        detach = (lambda p: p.detach()) if stop_gradient else (lambda p: p)
        logits = values
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            logits = torch.matmul(F.softplus(detach(matrix)), logits) + detach(bias)
            if i < len(self.factors):
                logits = logits + torch.tanh(detach(self.factors[i])) * torch.tanh(logits)
        return logits

    def _likelihood_channels_first(self, values: torch.Tensor) -> torch.Tensor:
        lower = self._logits_cumulative(values - 0.5)
        upper = self._logits_cumulative(values + 0.5)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the tail where sigmoid is accurate
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        """Likelihood of each element of z (B, C, H, W) under the prior; z is already noisy or rounded."""
        batch, channels, height, width = z.shape
        values = z.permute(1, 0, 2, 3).reshape(channels, 1, -1)
        likelihood = self._likelihood_channels_first(values).clamp(min=LIKELIHOOD_BOUND)
        return likelihood.reshape(channels, batch, height, width).permute(1, 0, 2, 3)

    def quantile_loss(self) -> torch.Tensor:
        """Auxiliary loss that moves ``quantiles`` to the tail_mass/2, 0.5, 1 - tail_mass/2 points."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        edge = math.log(2 / self.tail_mass - 1)
        target = torch.tensor([-edge, 0.0, edge], device=logits.device)
        return torch.abs(logits - target).sum()

    @torch.no_grad()
    def export_tables(self, precision: int) -> dict:
        """Integer frequency tables of the symbols round(z - median), one per channel.

        Returns {"offsets": float32 (C,), "table_low": int32 (C,), "frequencies": int32 (C, n)}.
        """
        medians = self.medians.detach().float()
        low = torch.floor(self.quantiles[:, 0, 0] - medians).long().clamp(max=-1)
        high = torch.ceil(self.quantiles[:, 0, 2] - medians).long().clamp(min=1)
        span = int((high - low).max()) + 1
        symbols = low[:, None] + torch.arange(span)[None, :]  # (C, span)
        values = symbols.float() + medians[:, None]
        pmf = self._likelihood_channels_first(values[:, None, :]).squeeze(1).double().numpy()
        valid = (symbols <= high[:, None]).numpy()
        pmf = np.where(valid, pmf, 0.0)
        return {
            "offsets": medians.numpy().astype(np.float32),
            "table_low": low.numpy().astype(np.int32),
            "frequencies": frequency_tables(pmf, valid, precision),
        }
