"""Gaussian conditional model of y given the hyperprior, with a fixed table of scales.

Minnen, Ballé, Toderici, "Joint autoregressive and hierarchical priors for learned image compression"
(NeurIPS 2018), mean-scale variant without context model: each element of y is Gaussian with a mean and a
scale predicted by the hyper-synthesis. The symbol coded is round(y - mean), so only the scale shapes its
distribution. Scales come from a fixed table of ``NUM_SCALES`` log-spaced values; the hyper-synthesis
predicts an index into it, so training sees exactly the scales that coding uses, and coding needs one
integer frequency table per scale (``export_tables``), built once at export.
"""

import math

import numpy as np
import torch
from torch import nn

from .tables import frequency_tables

NUM_SCALES = 64
SCALE_MIN = 0.11
SCALE_MAX = 256.0
TAIL_MASS = 1e-9
LIKELIHOOD_BOUND = 1e-9
LOG_SCALE_STEP = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (NUM_SCALES - 1)  # between neighbouring scales


def scale_table() -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), NUM_SCALES, dtype=torch.float64))


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-x / math.sqrt(2))


class GaussianConditional(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("scales", scale_table().float(), persistent=False)

    def scale_from_position(self, scale_position: torch.Tensor) -> torch.Tensor:
        """Table scale at the nearest index (round half up, as the integer path), straight-through gradient."""
        index = torch.floor(scale_position + 0.5)
        index = scale_position + (index - scale_position).detach()
        return SCALE_MIN * torch.exp(index * LOG_SCALE_STEP)

    @staticmethod
    def position_of_scale(scale: torch.Tensor) -> torch.Tensor:
        """The continuous table position of a scale (the inverse of ``scale_from_position``), within the table."""
        return ((scale / SCALE_MIN).log() / LOG_SCALE_STEP).clamp(0, NUM_SCALES - 1)

    @staticmethod
    def likelihood(residual: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """P(symbol) of a residual (y - mean, noisy or rounded) under N(0, scale) convolved with U(-1/2, 1/2)."""
        residual = residual.abs()
        upper = _standard_normal_cdf((0.5 - residual) / scale)
        lower = _standard_normal_cdf((-0.5 - residual) / scale)
        return (upper - lower).clamp(min=LIKELIHOOD_BOUND)

    @staticmethod
    @torch.no_grad()
    def export_tables(precision: int) -> dict:
        """One integer frequency table per scale over symbols -R..R (R covers 1 - TAIL_MASS), plus escape."""
        scales = scale_table()
        tail_z = -torch.special.ndtri(torch.tensor(TAIL_MASS / 2, dtype=torch.float64))
        radius = torch.ceil(scales * tail_z).long()
        span = int(2 * radius.max()) + 1
        offsets = torch.arange(span, dtype=torch.float64)[None, :] - radius[:, None]
        valid = offsets <= radius[:, None]
        upper = _standard_normal_cdf((offsets + 0.5) / scales[:, None])
        lower = _standard_normal_cdf((offsets - 0.5) / scales[:, None])
        pmf = torch.where(valid, upper - lower, torch.zeros(()))
        return {
            "table_low": (-radius).numpy().astype(np.int32),
            "frequencies": frequency_tables(pmf.numpy(), valid.numpy(), precision),
        }
