"""Encoder-side latent refinement: search for y symbols that code smaller and decode better.

The analysis transform g_a is an amortized guess at the best latents for an image; it is trained for all
images at once and leaves an "amortization gap" on each one. At encode time we know the image and the fixed
decoder, so we can close part of that gap by gradient descent on y itself, minimising the same objective the
model trained for, lambda * 255^2 * MSE + bpp, for this image alone (Campos et al., "Content adaptive
optimization for neural image compression", CVPRW 2019; Yang, Bamler, Mandt, "Improving inference for
neural image compression", NeurIPS 2020).

Rounding has no useful gradient, so the search uses stochastic Gumbel annealing (SGA, Yang et al.): each
element rounds down or up at random, with odds that favour the nearer integer and sharpen as the temperature
falls to zero; at the end y is rounded as usual. The rate is the latent codec's (``LatentRate``): its side
information, and with it every mean and table, stays as the codec computed it before the search, so the rate
that is optimised is the rate the range coder pays, and the file format and decoder do not change: refined
files decode with any vaecodec.

The search is a float computation, so its result may differ between machines, but it only chooses which
integers are coded; whatever it chooses is written exactly and decodes identically everywhere. Its Gumbel
noise comes from a generator seeded per image, so an image refines to the same bytes alone or in a batch.
"""

import torch

from .latent_codecs import LatentRate
from .layers import interpolate_levels
from .tiling import HALO_UNITS, TILE_UNITS, tiles

# chosen by measurement (docs/notes.md)
LEARNING_RATE = 0.03  # Adam step on y, in quantization steps
START_TEMPERATURE = 1.0  # falls linearly to ~0 over the steps
SEED = 0


def soft_round(residual: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """Stochastic Gumbel-annealed rounding: floor or ceil, sampled by nearness, with a relaxed gradient."""
    below = torch.floor(residual)
    fraction = residual - below
    limit = 1 - 1e-5  # atanh(1) is infinite
    logits = torch.stack([-torch.atanh(fraction.clamp(max=limit)),
                          -torch.atanh((1 - fraction).clamp(max=limit))], dim=-1) / temperature
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-10, 1 - 1e-10)
    gumbel = -torch.log(-torch.log(uniform))
    # a relaxed one-hot sample at the same temperature, as in the paper's code (it divides twice)
    round_up = torch.softmax((logits + gumbel) / temperature, dim=-1)[..., 1]
    return below + round_up


def refine_latents(synthesis, x: torch.Tensor, y: torch.Tensor, rate: LatentRate, inverse_gain: torch.Tensor, lam: float, steps: int, pixel_mask: torch.Tensor,
                   latent_mask: torch.Tensor = None) -> torch.Tensor:
    """Refined y (float, same shape) for one image; round(y - mean) are then the symbols to code.

    ``synthesis`` maps y * inverse_gain to pixels; ``x`` is the padded image in [0, 1]; ``pixel_mask`` is 1
    where distortion counts (real pixels, not padding). ``rate`` is the latent codec's rate of this image's
    y (its mean, and the bits of each residual from it). Where ``latent_mask`` is False, y stays as given and
    only serves as context (a tile's halo).
    """
    mean = rate.mean
    fixed_residual = torch.round(y - mean)
    if latent_mask is None:
        latent_mask = torch.ones_like(y, dtype=torch.bool)
    num_pixels = float(pixel_mask.sum())
    generator = torch.Generator(device=y.device).manual_seed(SEED)
    y = y.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([y], lr=LEARNING_RATE)
    with torch.enable_grad():
        for step in range(steps):
            temperature = START_TEMPERATURE * max(1e-3, 1 - step / steps)
            residual = torch.where(latent_mask, soft_round(y - mean, temperature, generator), fixed_residual)
            bits = (rate.bits(residual) * latent_mask).sum()
            x_hat = synthesis((residual + mean) * inverse_gain)
            squared_error = ((x_hat - x).square() * pixel_mask).sum() / (3 * num_pixels)
            loss = lam * 255**2 * squared_error + bits / num_pixels
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return y.detach()


def refine_tiled(synthesis, x, y, rate: LatentRate, inverse_gain, lam, steps, pixel_mask,
                 y_stride: int, tile: int = TILE_UNITS, halo: int = HALO_UNITS) -> torch.Tensor:
    """``refine_latents`` on tiles of y with a fixed halo of context, so memory stays bounded on large images
    (the backward pass keeps every activation of the synthesis). Tiles depend only on the image size."""
    units_h, units_w = y.shape[-2:]
    if units_h <= tile and units_w <= tile:
        return refine_latents(synthesis, x, y, rate, inverse_gain, lam, steps, pixel_mask)
    refined = y.clone()
    for (top, bottom, left, right), (t0, t1, l0, l1) in tiles(units_h, units_w, tile, halo):
        inside = torch.zeros((1, 1, t1 - t0, l1 - l0), dtype=torch.bool, device=y.device)
        inside[..., top - t0:bottom - t0, left - l0:right - l0] = True
        window = (..., slice(t0, t1), slice(l0, l1))
        pixels = (..., slice(t0 * y_stride, t1 * y_stride), slice(l0 * y_stride, l1 * y_stride))
        pixel_inside = inside.repeat_interleave(y_stride, -2).repeat_interleave(y_stride, -1)
        result = refine_latents(synthesis, x[pixels], y[window], rate.window(window), inverse_gain, lam, steps, pixel_mask[pixels] * pixel_inside, inside)
        refined[..., top:bottom, left:right] = result[..., top - t0:bottom - t0, left - l0:right - l0]
    return refined


def level_lambda(lambdas: tuple, level: float) -> float:
    """The lambda a (possibly fractional) zero-based level trades at: geometric between trained levels, as the
    gains are interpolated (``layers.interpolate_levels`` on log lambda)."""
    log_lambdas = torch.tensor(lambdas, dtype=torch.float64).log()[:, None]
    return float(interpolate_levels(log_lambdas, torch.tensor([float(level)], dtype=torch.float64)).exp())
