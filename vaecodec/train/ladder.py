"""Re-aim a trained model's quality levels at a new λ ladder before fine-tuning it (``train --init --lambdas``).

The model names its tables with one row per level (``VAE.per_level_parameters``): the gains and inverse gains
of y, and those its latent codec names (the hyperprior's: h_s's scale shift and mean gain). In trained models
each is close to a straight line in log λ (the gain's slope is near 1/2, as the quantization step ~ λ^-1/2 of
high-rate theory predicts). A new ladder therefore gets its rows by interpolating each channel in log λ between
the levels it was trained at, and by following the channel's least-squares line beyond them; training then
starts near every new level's optimum instead of spending thousands of steps walking the gains there at
Adam's pace.
"""

import numpy as np
import torch

from ..layers import interpolate_levels
from ..model import HyperpriorVAE, ModelConfig


def resample_levels(table: torch.Tensor, old_lambdas, new_lambdas) -> torch.Tensor:
    """Rows of a per-level table (L, C) trained at ``old_lambdas``, moved to ``new_lambdas`` (L', C)."""
    old = np.log(old_lambdas)
    new = np.log(new_lambdas)
    table = table.detach().to(torch.float64)
    centred = torch.from_numpy(old - old.mean())
    slope = (centred[:, None] * (table - table.mean(0))).sum(0) / centred.pow(2).sum()  # per channel
    # fractional level of each new lambda, held at the end levels; beyond them, follow the slope
    position = torch.from_numpy(np.interp(new, old, np.arange(len(old), dtype=np.float64)))
    beyond = torch.from_numpy(new - np.clip(new, old[0], old[-1]))
    return interpolate_levels(table, position) + beyond[:, None] * slope


def with_lambdas(model: HyperpriorVAE, lambdas) -> HyperpriorVAE:
    """A copy of ``model`` trained for ``lambdas``: same transforms, per-level tables resampled."""
    config = ModelConfig(**{**model.config.to_dict(), "lambdas": tuple(lambdas)})
    state = model.state_dict()
    for name in model.per_level_parameters():
        state[name] = resample_levels(state[name], model.config.lambdas, config.lambdas).to(state[name].dtype)
    moved = HyperpriorVAE(config)
    moved.load_state_dict(state)
    return moved
