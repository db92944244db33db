"""Re-aim a trained model's quality levels at a new λ ladder before fine-tuning it (``train --init --lambdas``).

Four tables have one row per level: the gains and inverse gains of y (``HyperpriorVAE``) and h_s's scale shift
and mean gain (``HyperSynthesis``). In trained models each is close to a straight line in log λ (the gain's
slope is near 1/2, as the quantization step ~ λ^-1/2 of high-rate theory predicts). A new ladder therefore gets
its rows by interpolating each channel in log λ between the levels it was trained at, and by following the
channel's least-squares line beyond them; training then starts near every new level's optimum instead of
spending thousands of steps walking the gains there at Adam's pace.
"""

import math

import torch

from ..model import HyperpriorVAE, ModelConfig

PER_LEVEL_TABLES = ("log_gain", "log_inverse_gain", "h_s.level_scale_shift", "h_s.level_log_mean_gain")


def resample_levels(table: torch.Tensor, old_lambdas, new_lambdas) -> torch.Tensor:
    """Rows of a per-level table (L, C) trained at ``old_lambdas``, moved to ``new_lambdas`` (L', C)."""
    old = torch.tensor([math.log(v) for v in old_lambdas], dtype=torch.float64)
    table = table.detach().to(torch.float64)
    centred = old - old.mean()
    slope = (centred[:, None] * (table - table.mean(0))).sum(0) / centred.pow(2).sum()  # per channel
    rows = []
    for log_lambda in (math.log(v) for v in new_lambdas):
        if log_lambda <= old[0]:
            rows.append(table[0] + slope * (log_lambda - old[0]))
        elif log_lambda >= old[-1]:
            rows.append(table[-1] + slope * (log_lambda - old[-1]))
        else:
            upper = int(torch.searchsorted(old, torch.tensor(log_lambda, dtype=torch.float64)))
            t = (log_lambda - old[upper - 1]) / (old[upper] - old[upper - 1])
            rows.append((1 - t) * table[upper - 1] + t * table[upper])
    return torch.stack(rows)


def with_lambdas(model: HyperpriorVAE, lambdas) -> HyperpriorVAE:
    """A copy of ``model`` trained for ``lambdas``: same transforms, per-level tables resampled."""
    config = ModelConfig(**{**model.config.to_dict(), "lambdas": tuple(lambdas)})
    state = model.state_dict()
    for name in PER_LEVEL_TABLES:
        state[name] = resample_levels(state[name], model.config.lambdas, config.lambdas).to(state[name].dtype)
    moved = HyperpriorVAE(config)
    moved.load_state_dict(state)
    return moved
