"""Give a trained model more channels without changing what it computes (``train --init --channels`` and ``train
--init --latent-channels``).

Both follow Net2Net (Chen, Goodfellow, Shlens, "Net2Net: accelerating learning via knowledge transfer", ICLR
2016): the wider model starts as an exact copy of the trained one, so training continues from its rate-
distortion point instead of from scratch.

Hidden channels (``with_channels``): every hidden layer of g_a and g_s gets more units; each new unit copies
an old one (its filters, bias and GDN row) and the copies share the old unit's outgoing weights. GDN's
normalisation pool sums over units, so each copy's weight in every pool is divided by the number of copies:
the pools, and with them every output, stay the same. The outgoing weights are split unequally (random shares
per weight that sum to the old weight), which keeps the output but gives each copy its own gradient, so the
copies can drift apart (with equal shares they would stay copies forever).

Latent channels (``with_latent_channels``): for models whose latents are too few for the top qualities (every
channel carries variance there and ``benchmarks.ceiling`` shows the transforms at their ceiling). More latent
channels cost little compute, since y lives at 1/16 of the image resolution.

How: the new channels of y start as random projections of g_a's last features, with g_a rows as large as the
old ones but a per-channel gain set so that at the top level their spread is about half a quantization step
(``TOP_LEVEL_RMS``); their inverse gains undo that. They get mean 0 and, at every level, the scale of their
spread (so they cost their entropy, not escape codes). g_s reads them with zero weights and h_a with zero
weights, so reconstructions and z are those of the old model (up to float rounding); only the rate grows, and
only at the top levels. Training then learns g_s's readout of the new symbols (a consistent least-squares
gradient, because they are not zero) and reshapes or silences each channel as its bits pay off. A
channel-conditional model keeps its context networks where its channel groups stay (from 128 channels up the
new channels form groups of their own, coded last) and gets new ones, with zero corrections, for the rest.

What widening gave in measurements: docs/notes.md.
"""

import torch

from ..entropy.gaussian import GaussianConditional
from ..integer_net import SCALE_SHIFT_UNIT
from ..layers import GDN
from ..model import CONV_LAYERS, GDN_LAYERS, VAE as HyperpriorVAE, ModelConfig

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

    last, first = f"g_a.{CONV_LAYERS[-1]}", f"g_s.{CONV_LAYERS[0]}"  # the layers that write and read y
    h_a, h_s = "latent_codec.h_a.0", "latent_codec.h_s"
    analysis = state[f"{last}.weight"]  # (M, N, k, k)
    noise = torch.randn((added,) + analysis.shape[1:], generator=generator)
    extend(f"{last}.weight", 0, noise * analysis.std())
    extend(f"{last}.bias", 0, zeros(f"{last}.bias", 0))
    extend(f"{first}.weight", 0, zeros(f"{first}.weight", 0))  # ConvTranspose2d: (in = M, out = N, k, k)
    extend(f"{h_a}.weight", 1, zeros(f"{h_a}.weight", 1))
    # h_s's output layer stacks [means (M), scale positions (M)]: each half gets its new rows at its end
    for name in (f"{h_s}.convs.2.weight", f"{h_s}.convs.2.bias"):
        mean_rows, scale_rows = state[name].split(old, dim=0)
        new_rows = torch.zeros((added,) + mean_rows.shape[1:], dtype=mean_rows.dtype)
        state[name] = torch.cat([mean_rows, new_rows, scale_rows, new_rows], 0)
    for name in ("log_gain", "log_inverse_gain"):  # the old channels' mean, shifted by _fit_new_gains_and_scales
        extend(name, 1, state[name].mean(1, keepdim=True).repeat(1, added))
    extend(f"{h_s}.level_log_mean_gain", 1, zeros(f"{h_s}.level_log_mean_gain", 1))
    extend(f"{h_s}.level_scale_shift", 1, zeros(f"{h_s}.level_scale_shift", 1))
    widened = HyperpriorVAE(config)
    state.update(_context_state(model, widened))
    widened.load_state_dict(state)
    _fit_new_gains_and_scales(widened, old, calibration)
    return widened


def _context_state(model: HyperpriorVAE, widened: HyperpriorVAE) -> dict:
    """The context (and checkerboard spatial) networks of a widened channel-conditional model: the old model's
    for the groups both have (from 128 channels up the old groups are the first of the new ones, and the new
    channels form groups of their own), fresh ones with zero corrections for the rest. Empty for a hyperprior."""
    fresh = {k: v for k, v in widened.state_dict().items()
             if k.startswith(("latent_codec.context.", "latent_codec.spatial."))}
    if not fresh:
        return {}
    old_groups, new_groups = model.latent_codec.groups, widened.latent_codec.groups
    shared = len(old_groups) if new_groups[:len(old_groups)] == old_groups else 0
    kept = {"context": shared - 1, "spatial": shared}  # context networks are numbered from group 1, spatial from 0
    old_state = model.state_dict()

    def is_kept(key: str) -> bool:
        _, kind, index = key.split(".")[:3]
        return int(index) < kept[kind]

    return {k: (old_state[k] if is_kept(k) else v) for k, v in fresh.items()}


@torch.no_grad()
def _fit_new_gains_and_scales(model: HyperpriorVAE, first_new: int, calibration: torch.Tensor):
    """Shift each new channel's gains (and inverse gains the other way) so that its RMS at the top level is
    TOP_LEVEL_RMS; then set its scale position at every level to its RMS there (per-level scale shift)."""
    features = model.g_a(calibration)[:, first_new:]
    rms = features.pow(2).mean((0, 2, 3)).sqrt().clamp(min=1e-6)  # (added,)
    log_shift = (rms * model.log_gain[-1, first_new:].exp() / TOP_LEVEL_RMS).log()
    model.log_gain[:, first_new:] -= log_shift
    model.log_inverse_gain[:, first_new:] += log_shift
    position = GaussianConditional.position_of_scale(rms * model.log_gain[:, first_new:].exp())  # (levels, added)
    model.latent_codec.h_s.level_scale_shift[:, first_new:] = position / SCALE_SHIFT_UNIT


SPLIT_NOISE = 0.5  # spread of the random shares of an old unit's outgoing weights among its copies, relative


def with_channels(model: HyperpriorVAE, channels: int, seed: int = 0) -> HyperpriorVAE:
    """A copy of ``model`` whose g_a and g_s hidden layers have ``channels`` >= N units: same outputs."""
    old = model.config.channels
    if channels < old:
        raise ValueError(f"cannot shrink the transforms from {old} to {channels} channels")
    generator = torch.Generator().manual_seed(seed)
    state = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    # unit i of the wider layers copies old unit copy_of[i]; each old unit gets at most one more copy than any other
    extra = torch.cat([torch.randperm(old, generator=generator) for _ in range(-(-(channels - old) // old))])
    copy_of = torch.cat([torch.arange(old), extra[: channels - old]])
    copies = torch.bincount(copy_of, minlength=old).float()
    for prefix, transposed in (("g_a", False), ("g_s", True)):
        out_dim, in_dim = (1, 0) if transposed else (0, 1)  # ConvTranspose2d stores (in, out, k, k)
        for layer in CONV_LAYERS:
            weight = state[f"{prefix}.{layer}.weight"]
            if layer != CONV_LAYERS[0]:  # reads the hidden units: the copies share each outgoing weight
                weight = _split_among_copies(weight.index_select(in_dim, copy_of), in_dim, copy_of, copies,
                                             generator)
            if layer != CONV_LAYERS[-1]:  # writes hidden units: the copies repeat their unit's filters and bias
                weight = weight.index_select(out_dim, copy_of)
                state[f"{prefix}.{layer}.bias"] = state[f"{prefix}.{layer}.bias"][copy_of]
            state[f"{prefix}.{layer}.weight"] = weight
        for layer in GDN_LAYERS:
            beta, gamma = _widened_gdn(getattr(model, prefix)[layer], copy_of, copies)
            state[f"{prefix}.{layer}.beta"], state[f"{prefix}.{layer}.gamma"] = beta, gamma
    widened = HyperpriorVAE(ModelConfig(**{**model.config.to_dict(), "channels": channels}))
    widened.load_state_dict(state)
    return widened


def _split_among_copies(weight, dim, copy_of, copies, generator):
    """Weights read from the copies of a unit, in random shares that sum to the old unit's weight."""
    shape = [1] * weight.dim()
    shape[dim] = -1
    share = 1 / copies[copy_of].view(shape)
    noise = (torch.rand(weight.shape, generator=generator) - 0.5) * SPLIT_NOISE
    # centre the noise within each group of copies, so the shares still sum to one (a lone unit gets none)
    group_shape = list(weight.shape)
    group_shape[dim] = len(copies)
    group_sum = torch.zeros(group_shape).index_add_(dim, copy_of, noise)
    noise -= group_sum.index_select(dim, copy_of) * share
    return weight * share * (1 + noise)


def _widened_gdn(gdn: GDN, copy_of, copies) -> tuple:
    """Stored (beta, gamma) of a wider GDN: the copies repeat their unit's row and weigh 1/copies in each pool."""
    beta, gamma = (p.detach().float() for p in gdn.effective_parameters())
    return GDN.stored_parameters(beta[copy_of], gamma[copy_of][:, copy_of] / copies[copy_of][None, :])
