"""Give a trained model more latent channels without changing its reconstructions (``train --init
--latent-channels``).

Why: at the top qualities every one of mshp-n64's 128 latent channels carries variance (the weakest has a
standard deviation above 2 quantization steps), and its transforms cannot reconstruct held-out crops better
than about 30.9 dB even from unquantized latents, with the top level within 0.1 dB of that ceiling
(``benchmarks.ceiling``): y is too narrow. More latent channels cost little compute, since y lives at 1/16 of
the image resolution.

How (in the spirit of Net2Net, Chen, Goodfellow, Shlens, ICLR 2016): the new channels of y start as random
projections of g_a's last features, with g_a rows as large as the old ones but a per-channel gain set so that
at the top level their spread is about half a quantization step (``TOP_LEVEL_RMS``); their inverse gains
undo that. They get mean 0 and, at every level, the scale of their spread (so they cost their entropy, not
escape codes). g_s reads them with zero weights and h_a with zero weights, so reconstructions and z are those
of the old model (up to float rounding); only the rate grows, and only at the top levels. Training then
learns g_s's readout of the new symbols (a consistent least-squares gradient, because they are not zero) and
reshapes or silences each channel as its bits pay off.

Measured on the 2-core CPU (session of 2026-11-24), widening mshp-n64 from 128 to 192 channels did not pay
within an hour: over 5000 steps at learning rate 1e-4 (level weighting 0.5, then 0.25 from step 1855) g_s's
readout grew only to a sixth of the old weights' size while the rate shrank the new channels (3% nonzero
symbols at the top level), and held-out PSNR fell 0.2-0.5 dB. Two other starts fared worse: exactly zero at
the smallest scale (any value then costs many bits, so the rate held them at zero), and rows at 0.1 of the old
rows' size (Adam's fixed-size steps shrank them within a few hundred steps). Training only the new channels
(everything else frozen) at learning rate 1e-3 for 1400 steps left held-out PSNR exactly where it was: g_a's
earlier layers feed the old 128 channels what they need, so random projections of its last features carry
little new information, and the rate shrank them. Widening pays only with joint training of the whole analysis
transform, for many more steps than a CPU session has: a GPU round (or train the wider model from scratch
there).
"""

import torch

from ..integer_net import SCALE_SHIFT_UNIT
from ..model import HyperpriorVAE, ModelConfig

TOP_LEVEL_RMS = 0.5  # spread of each new channel at the top level, in quantization steps


def with_latent_channels(model: HyperpriorVAE, latent_channels: int, calibration: torch.Tensor,
                         seed: int = 0) -> HyperpriorVAE:
    """A copy of ``model`` with ``latent_channels`` >= its M: same reconstructions, new channels ready to train.

    ``calibration``: a few training crops (B, 3, H, W) in [0, 1], used to fit the new channels' scales.
    """
    old = model.config.latent_channels
    added = latent_channels - old
    if added < 0:
        raise ValueError(f"cannot shrink the latents from {old} to {latent_channels} channels")
    config = ModelConfig(**{**model.config.to_dict(), "latent_channels": latent_channels})
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)

    def extend(name, dim, new_part):
        state[name] = torch.cat([state[name], new_part.to(state[name].dtype)], dim)

    def zeros(name, dim):
        shape = list(state[name].shape)
        shape[dim] = added
        return torch.zeros(shape)

    analysis = state["g_a.6.weight"]  # (M, N, k, k)
    noise = torch.randn((added,) + analysis.shape[1:], generator=generator)
    extend("g_a.6.weight", 0, noise * analysis.std())
    extend("g_a.6.bias", 0, zeros("g_a.6.bias", 0))
    extend("g_s.0.weight", 0, zeros("g_s.0.weight", 0))  # ConvTranspose2d: (in = M, out = N, k, k)
    extend("h_a.0.weight", 1, zeros("h_a.0.weight", 1))
    # h_s's output layer stacks [means (M), scale positions (M)]: each half gets its new rows at its end
    for name in ("h_s.convs.2.weight", "h_s.convs.2.bias"):
        mean_rows, scale_rows = state[name].split(old, dim=0)
        new_rows = torch.zeros((added,) + mean_rows.shape[1:], dtype=mean_rows.dtype)
        state[name] = torch.cat([mean_rows, new_rows, scale_rows, new_rows], 0)
    for name in ("log_gain", "log_inverse_gain"):  # the old channels' mean, shifted by _fit_new_gains_and_scales
        extend(name, 1, state[name].mean(1, keepdim=True).repeat(1, added))
    extend("h_s.level_log_mean_gain", 1, zeros("h_s.level_log_mean_gain", 1))
    extend("h_s.level_scale_shift", 1, zeros("h_s.level_scale_shift", 1))
    widened = HyperpriorVAE(config)
    widened.load_state_dict(state)
    _fit_new_gains_and_scales(widened, old, calibration)
    return widened


@torch.no_grad()
def _fit_new_gains_and_scales(model: HyperpriorVAE, first_new: int, calibration: torch.Tensor):
    """Shift each new channel's gains (and inverse gains the other way) so that its RMS at the top level is
    TOP_LEVEL_RMS; then set its scale position at every level to its RMS there (per-level scale shift)."""
    features = model.g_a(calibration)[:, first_new:]
    rms = features.pow(2).mean((0, 2, 3)).sqrt().clamp(min=1e-6)  # (added,)
    log_shift = (rms * model.log_gain[-1, first_new:].exp() / TOP_LEVEL_RMS).log()
    model.log_gain[:, first_new:] -= log_shift
    model.log_inverse_gain[:, first_new:] += log_shift
    position = model.y_conditional.position_of_scale(rms * model.log_gain[:, first_new:].exp())  # (levels, added)
    model.h_s.level_scale_shift[:, first_new:] = position / SCALE_SHIFT_UNIT
