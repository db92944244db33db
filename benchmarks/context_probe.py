"""What each context idea could save on top of already trained transforms: the model's rate estimate, frozen.

    python -m benchmarks.context_probe [--weights mshp-n64 | --run RUN] [--data ../shared/datasets/train]
        [--steps 600] [--crops 2000] [--seed 0] [--out benchmarks/results/context_probe]

The model's transforms, gains, h_a, h_s and z prior stay frozen; only the new part of each variant is trained,
from scratch (its output layer at zero, so every variant starts as no context at all), with Adam, batches of 16
latents at random levels. The latents are g_a's outputs for random crops of the training photos, computed once
(enough of them that a few hundred steps see each only a few times: with 300, the float networks fitted their
training crops and lost on held-out ones); the 16 photos ``vaecodec train`` holds out give the crops every
variant is measured on, and as many of the training crops are measured beside them, which shows what a
variant fitted to its training crops alone. Variants:

1. channel groups, integer context networks (as coded): the groups and context networks of the
   channel-conditional latent codec, built fresh as the codec builds them; group k's mean and scale position
   corrected from h_s's for the group and the symbols of the groups before it. Measured in float64, which
   computes exactly the corrections of the integer coder (tests/test_benchmarks.py checks it).
2. channel groups, float context networks: the same inputs and groups, float networks twice as wide (the
   upper bound of what integer networks of this shape could learn).
3. checkerboard: the anchor half of y (i + j even) coded with h_s alone; the other half's mean and scale
   position corrected by a float network over the anchors' means, scale positions and symbols (5x5).
4. latent residual prediction (LRP): per channel group, a float network predicts the rounding residual
   y - y_hat, bounded to ±0.5, from h_s's mean and scale position of the group and the symbols of this group and
   the groups before it; it is added to y_hat before g_s. The rate does not change; trained on the distortion
   alone (g_s frozen, gradients through it) and measured as the PSNR change. It runs g_s at every step, so it
   trains on smaller crops (--lrp-crop, the centres of the same crops).
5. channel groups, integer context networks, slower on the scale position: variant 1 with Adam's steps on the
   weights that read the scale position POSITION_RATE times the others' (``vaecodec train
   --context-position-rate``): the position spans tens of table steps where means and symbols span a few.

Rate: the model's estimate of the held-out crops' bits, not file sizes: -log2 of the discretised Gaussian
likelihood of every rounded y symbol at its table scale, plus z's bits under its prior (z does not change).
Reported as the change (%) against the same latents coded with h_s alone, at levels 1, 3, 5, 8 and over the
four together, every --steps / 4 steps. What a context adds here comes before any joint training.

Input: shipped weights (a hyperprior model becomes a channel-conditional one whose context networks are at
zero, as ``vaecodec train --init ... --latent-codec channel-conditional`` makes it) or a run folder's
checkpoint; a run whose context networks are trained also gets their own change measured, as a reference.
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import NamedTuple

import click
import numpy as np
import torch
from torch import nn

from vaecodec.entropy.gaussian import NUM_SCALES, GaussianConditional
from vaecodec.integer_net import MEAN_MAX
from vaecodec.latent_codecs.channel_conditional import (CONTEXT_SYMBOL_MAX, POSITION_CENTRE,
                                                        ChannelConditionalLatentCodec, channel_groups)
from vaecodec.layers import lower_bound, round_ste
from vaecodec.model import VAE, ModelConfig
from vaecodec.train import checkpoint
from vaecodec.train.data import list_images, random_crops, split_validation

REPORTED_LEVELS = (1, 3, 5, 8)  # qualities; the zero-based level is one less
BATCH = 16
HELD_OUT_PHOTOS = 16  # as `vaecodec train` holds them out
HELD_OUT_CROPS_PER_PHOTO = 4
LEVEL_WEIGHTING = 0.5  # LRP's distortion per crop weighed as the trainer does by default (rate_distortion_loss)
FLOAT_HIDDEN = 128  # width of the float networks
POSITION_SPREAD = 8.0  # table positions per unit of the float networks' (centred) scale-position input
CHECKERBOARD_KERNEL = 5
POSITION_RATE = 0.125  # variant 5's --context-position-rate
REPO = Path(__file__).resolve().parent.parent
CONDITIONAL = GaussianConditional()


# ---- the model and the latents ---------------------------------------------------------------------------


def load_weights(name: str) -> tuple:
    """(channel-conditional model, description) of shipped weights; a hyperprior gets context networks at zero."""
    from vaecodec.weights import model_of_weights, read_weights
    from vaecodec.zoo import weights_path

    path = weights_path(name)
    weights, model_hash = read_weights(path)
    described = {"name": weights["name"], "hash": model_hash.hex(), "source": f"weights {path.name}"}
    return as_channel_conditional(model_of_weights(weights)), described


def load_run(run: Path) -> tuple:
    """(channel-conditional model, description) of a run's checkpoint. The run may be training: a checkpoint
    replaced while it is read is read again once."""
    config = json.loads((run / "config.json").read_text())
    try:
        state = checkpoint.load(run)
    except (OSError, RuntimeError, EOFError):
        time.sleep(10)
        state = checkpoint.load(run)
    model = VAE(ModelConfig(**config["model"]))
    model.load_state_dict(state["model"])
    described = {"name": f"run {run.name} at step {state['step']}", "hash": state_hash(model),
                 "source": f"run folder {run}"}
    return as_channel_conditional(model), described


def state_hash(model: nn.Module) -> str:
    """First 4 bytes of the SHA-256 of the model's parameters, in state-dict order (a run's identity)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:8]


def as_channel_conditional(model: VAE) -> VAE:
    """The model with the channel-conditional latent codec, every shared parameter carried over (as
    ``vaecodec train --latent-codec channel-conditional`` does); frozen, in eval mode."""
    if model.config.latent_codec != "channel-conditional":
        converted = VAE(dataclasses.replace(model.config, latent_codec="channel-conditional"))
        result = converted.load_state_dict(model.state_dict(), strict=False)
        if result.unexpected_keys or any(not key.startswith("latent_codec.context.") for key in result.missing_keys):
            raise click.UsageError(f"a {model.config.latent_codec} model does not carry over to channel groups")
        model = converted
    return model.eval().requires_grad_(False)


def photo_crops(photos: list, per_photo: int, crop: int, rng: random.Random) -> torch.Tensor:
    """``per_photo`` random crops of each photo after the trainer's random downscale (uint8, N x 3 x crop x crop)."""
    crops = [pixels for photo in photos for pixels in random_crops(photo, crop, per_photo, rng)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def centres(crops: torch.Tensor, size: int) -> torch.Tensor:
    top = (crops.shape[-1] - size) // 2
    return crops[..., top:top + size, top:top + size].contiguous()


@torch.no_grad()
def analyse(model: VAE, crops: torch.Tensor) -> torch.Tensor:
    """g_a's latents (before the level's gain) of uint8 crops, float32."""
    return torch.cat([model.g_a(part.float() / 255).float() for part in crops.split(BATCH)])


class Side(NamedTuple):
    """Latents y of one level (gained) and what the decoder knows before them: h_s's mean and scale position of
    every element, and the bits of z."""

    y: torch.Tensor
    mean: torch.Tensor
    position: torch.Tensor
    z_bits: float


@torch.no_grad()
def hyperprior_side(model: VAE, latents: torch.Tensor, levels: torch.Tensor, dtype=torch.float32) -> Side:
    """``Side`` of g_a latents at zero-based ``levels`` (B,); ``dtype=torch.float64`` runs h_s exactly as the
    integer coder does."""
    codec = model.latent_codec
    y = latents * model.gains(levels.float())[0]
    medians = codec.z_codec.prior.medians[None, :, None, None]
    z_symbols = torch.round(codec.h_a(y) - medians)
    mean, position = codec.h_s(z_symbols, levels.float(), dtype=dtype)
    z_bits = -torch.log2(codec.z_codec.prior.likelihood(z_symbols + medians)).double().sum().item()
    return Side(y, mean, position, z_bits)


def gaussian_bits(y: torch.Tensor, mean: torch.Tensor, position: torch.Tensor, noisy: bool) -> torch.Tensor:
    """Bits of every element of y at its mean and table scale: of the noisy residual (training, as the model
    trains), or of the rounded one (the symbol the coder codes)."""
    residual = y - mean
    residual = residual + torch.empty_like(residual).uniform_(-0.5, 0.5) if noisy else torch.round(residual)
    scale = CONDITIONAL.scale_from_position(position)
    return -torch.log2(GaussianConditional.likelihood(residual, scale))


def symbols_for_context(symbols: torch.Tensor) -> torch.Tensor:
    return symbols.clamp(-CONTEXT_SYMBOL_MAX, CONTEXT_SYMBOL_MAX)


# ---- the variants ----------------------------------------------------------------------------------------


class FloatNetwork(nn.Module):
    """kernel x kernel conv -> FLOAT_HIDDEN, ReLU, 1x1 -> FLOAT_HIDDEN, ReLU, 1x1 -> outputs, over its inputs
    concatenated; the output layer starts at zero. Called as the integer context networks are."""

    def __init__(self, inputs: int, outputs: int, kernel: int = 3):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(inputs, FLOAT_HIDDEN, kernel, padding=kernel // 2), nn.ReLU(),
                                    nn.Conv2d(FLOAT_HIDDEN, FLOAT_HIDDEN, 1), nn.ReLU(),
                                    nn.Conv2d(FLOAT_HIDDEN, outputs, 1))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, *inputs: torch.Tensor, dtype=None) -> torch.Tensor:
        return self.layers(torch.cat(inputs, 1).float())


def group_bounds(groups: tuple) -> list:
    edges = np.cumsum((0,) + tuple(groups)).tolist()
    return list(zip(edges[:-1], edges[1:]))


class ChannelContext(nn.Module):
    """Channel groups coded in order; group k > 0 gets corrections of its mean and scale position from
    ``networks[k - 1](mean, centred position, symbols of groups < k)``, clamped as the channel-conditional
    codec clamps them. ``position_scale`` multiplies the centred position (1 for the integer networks, which
    take it in table positions as the codec gives it)."""

    def __init__(self, networks: nn.ModuleList, groups: tuple, position_scale: float):
        super().__init__()
        self.networks, self.groups, self.position_scale = networks, groups, position_scale

    def means_and_positions(self, side: Side, dtype=torch.float32) -> tuple:
        """The corrected mean and scale position of every element of y (float64 ``dtype``: as the coder)."""
        means, positions, symbols = [], [], []
        for k, (start, end) in enumerate(group_bounds(self.groups)):
            mean, position = side.mean[:, start:end], side.position[:, start:end]
            if k > 0:
                centred = (position - POSITION_CENTRE) * self.position_scale
                correction = self.networks[k - 1](mean, centred, symbols_for_context(torch.cat(symbols, 1)),
                                                  dtype=dtype).float()
                mean_correction, position_correction = correction.split(end - start, 1)
                mean = (mean + mean_correction).clamp(-MEAN_MAX, MEAN_MAX)
                position = lower_bound(position + position_correction, 0.0).clamp(max=NUM_SCALES - 1)
            symbols.append(round_ste(side.y[:, start:end] - mean))
            means.append(mean)
            positions.append(position)
        return torch.cat(means, 1), torch.cat(positions, 1)

    def y_bits(self, side: Side, noisy: bool, dtype=torch.float32) -> torch.Tensor:
        mean, position = self.means_and_positions(side, dtype)
        return gaussian_bits(side.y, mean, position, noisy)


def integer_channel_context(config: ModelConfig) -> ChannelContext:
    """Variant 1: the context networks the channel-conditional codec builds (fresh, output layers at zero)."""
    return ChannelContext(ChannelConditionalLatentCodec.from_config(config).context,
                          channel_groups(config.latent_channels), position_scale=1.0)


def slow_position_channel_context(config: ModelConfig) -> ChannelContext:
    """Variant 5: variant 1 parameterised for smaller steps on the scale-position weights."""
    return integer_channel_context(dataclasses.replace(config, context_position_rate=POSITION_RATE))


def float_channel_context(config: ModelConfig) -> ChannelContext:
    groups = channel_groups(config.latent_channels)
    networks = nn.ModuleList(FloatNetwork(2 * (end - start) + start, 2 * (end - start))
                             for start, end in group_bounds(groups)[1:])
    return ChannelContext(networks, groups, position_scale=1 / POSITION_SPREAD)


class Checkerboard(nn.Module):
    """Anchors (i + j even) coded with h_s alone; the other elements' means and scale positions corrected from
    the anchors' means, centred positions and symbols (a float network, CHECKERBOARD_KERNEL wide)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        channels = config.latent_channels
        self.network = FloatNetwork(3 * channels, 2 * channels, CHECKERBOARD_KERNEL)

    def y_bits(self, side: Side, noisy: bool, dtype=None) -> torch.Tensor:
        height, width = side.y.shape[-2:]
        anchor = ((torch.arange(height)[:, None] + torch.arange(width)[None, :]) % 2 == 0).float()
        symbols = symbols_for_context(torch.round(side.y - side.mean))
        centred = (side.position - POSITION_CENTRE) / POSITION_SPREAD
        correction = self.network(side.mean * anchor, centred * anchor, symbols * anchor)
        mean_correction, position_correction = correction.split(side.y.shape[1], 1)
        mean = side.mean + mean_correction * (1 - anchor)
        position = lower_bound(side.position + position_correction * (1 - anchor), 0.0).clamp(max=NUM_SCALES - 1)
        return gaussian_bits(side.y, mean, position, noisy)


class LatentResidualPrediction(nn.Module):
    """y_hat = symbols + h_s mean + 0.5 tanh(network_k(mean, centred position of group k, symbols of groups
    0..k)) per channel group k: the rounding residual predicted from what the decoder has."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.groups = channel_groups(config.latent_channels)
        self.networks = nn.ModuleList(FloatNetwork(2 * (end - start) + end, end - start)
                                      for start, end in group_bounds(self.groups))

    def forward(self, side: Side) -> torch.Tensor:
        symbols = torch.round(side.y - side.mean)
        known = symbols_for_context(symbols)
        centred = (side.position - POSITION_CENTRE) / POSITION_SPREAD
        residuals = [0.5 * torch.tanh(network(side.mean[:, start:end], centred[:, start:end], known[:, :end]))
                     for network, (start, end) in zip(self.networks, group_bounds(self.groups))]
        return symbols + side.mean + torch.cat(residuals, 1)


VARIANTS = {  # title: what builds the trained part from the model's config
    "channel groups, integer context networks (as coded)": integer_channel_context,
    "channel groups, float context networks (upper bound for the integer ones)": float_channel_context,
    f"checkerboard (spatial, {CHECKERBOARD_KERNEL}x{CHECKERBOARD_KERNEL} over the anchor half)": Checkerboard,
    "latent residual prediction": LatentResidualPrediction,
    f"channel groups, integer context networks, scale-position steps x{POSITION_RATE:g}":
        slow_position_channel_context,
}


# ---- measuring and training ------------------------------------------------------------------------------


def at_level(count: int, quality: int) -> torch.Tensor:
    return torch.full((count,), float(quality - 1))


@torch.no_grad()
def rate_changes(variant, sides: dict) -> dict:
    """Change (%) of the estimated bits (z and y) of crops' latents against h_s alone: per reported
    level and over the reported levels together. Integer networks run in float64: exactly as coded."""
    changes, before, after = {}, 0.0, 0.0
    for quality, side in sides.items():
        alone = side.z_bits + gaussian_bits(side.y, side.mean, side.position, noisy=False).double().sum().item()
        with_context = side.z_bits + variant.y_bits(side, noisy=False, dtype=torch.float64).double().sum().item()
        changes[str(quality)] = round(100 * (with_context / alone - 1), 3)
        before, after = before + alone, after + with_context
    changes["overall"] = round(100 * (after / before - 1), 3)
    return changes


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    return 10 * math.log10(1 / (x_hat.clamp(0, 1) - x).pow(2).mean().item())


@torch.no_grad()
def psnrs(model: VAE, sides: dict, pixels: torch.Tensor, predict=None) -> dict:
    """PSNR (dB) of crops per reported level, decoded from y_hat = symbols + mean, or from ``predict(side)``'s
    y_hat."""
    found = {}
    for quality, side in sides.items():
        y_hat = predict(side) if predict is not None else torch.round(side.y - side.mean) + side.mean
        found[str(quality)] = psnr(model.synthesis(y_hat, at_level(len(pixels), quality)), pixels)
    return found


def psnr_changes(model: VAE, variant: LatentResidualPrediction, sides: dict, pixels: torch.Tensor,
                 without: dict) -> dict:
    """PSNR change (dB) of crops with the predicted residuals against ``without`` them, per reported
    level and their mean."""
    changes = {key: round(value - without[key], 4) for key, value in psnrs(model, sides, pixels, variant).items()}
    changes["mean"] = round(float(np.mean(list(changes.values()))), 4)
    return changes


def record_steps(steps: int) -> list:
    return sorted({round(steps * quarter / 4) for quarter in range(1, 5)} - {0})


def train(variant: nn.Module, loss_of_batch, evaluate, steps: int, learning_rate: float, seed: int,
          progress: str) -> list:
    """Adam on ``loss_of_batch(variant, generator)``; ``evaluate(variant)`` at step 0 and every steps / 4.
    Seconds count the training steps only."""
    optimizer = torch.optim.Adam(variant.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    curve = [{"step": 0, "seconds": 0.0, **evaluate(variant)}]
    seconds = 0.0
    for step in range(1, steps + 1):
        started = time.perf_counter()
        loss = loss_of_batch(variant, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - started
        if step in record_steps(steps):
            curve.append({"step": step, "seconds": round(seconds, 1), **evaluate(variant)})
            click.echo(f"{progress} step {step}: {curve[-1]}", err=True)
    return curve


def random_batch(count: int, levels: int, generator: torch.Generator) -> tuple:
    index = torch.randint(count, (BATCH,), generator=generator)
    return index, torch.randint(levels, (BATCH,), generator=generator).float()


def measure(model: VAE, training: torch.Tensor, held_out: torch.Tensor, lrp_crop: int, steps: int,
            learning_rate: float, seed: int) -> dict:
    """Train and measure every variant; ``training`` and ``held_out`` are uint8 crops. Every measurement is
    made on the held-out crops and, to show how much of a gain is fitted to the training crops, on as many
    of the training crops."""
    config = model.config
    lambdas = torch.tensor(config.lambdas)
    level_weights = (math.exp(lambdas.log().mean().item()) / lambdas) ** LEVEL_WEIGHTING
    training_latents = analyse(model, training)
    small_crops = centres(training, lrp_crop)  # uint8; LRP's batches are converted as they are drawn
    small_latents = analyse(model, small_crops)
    seen = slice(0, len(held_out))  # the training crops measured beside the held-out ones

    def sides(latents):  # h_s in float64: the means and scale positions the coder computes
        return {quality: hyperprior_side(model, latents, at_level(len(latents), quality), torch.float64)
                for quality in REPORTED_LEVELS}

    rate_sides = {"held_out": sides(analyse(model, held_out)), "training": sides(training_latents[seen])}
    psnr_sides = {"held_out": sides(analyse(model, centres(held_out, lrp_crop))),
                  "training": sides(small_latents[seen])}
    pixels = {"held_out": centres(held_out, lrp_crop).float() / 255, "training": small_crops[seen].float() / 255}
    without_prediction = {crops: psnrs(model, psnr_sides[crops], pixels[crops]) for crops in pixels}

    def rate_loss(variant, generator):
        index, levels = random_batch(len(training_latents), config.levels, generator)
        return variant.y_bits(hyperprior_side(model, training_latents[index], levels), noisy=True).mean()

    def distortion_loss(variant, generator):
        index, levels = random_batch(len(small_latents), config.levels, generator)
        x_hat = model.synthesis(variant(hyperprior_side(model, small_latents[index], levels)), levels)
        mse = (x_hat - small_crops[index].float() / 255).pow(2).flatten(1).mean(1)
        level = levels.long()
        return (level_weights[level] * lambdas[level] * 255**2 * mse).mean()

    def evaluate_rate(variant):
        return {crops: rate_changes(variant, rate_sides[crops]) for crops in rate_sides}

    def evaluate_psnr(variant):
        return {crops: psnr_changes(model, variant, psnr_sides[crops], pixels[crops], without_prediction[crops])
                for crops in psnr_sides}

    baseline = {"bpp": {}, "psnr": without_prediction["held_out"]}
    for quality, side in rate_sides["held_out"].items():
        bits = side.z_bits + gaussian_bits(side.y, side.mean, side.position, noisy=False).double().sum().item()
        baseline["bpp"][str(quality)] = bits / (len(held_out) * held_out.shape[-1] ** 2)
    variants = []
    for number, (title, build) in enumerate(VARIANTS.items(), 1):
        torch.manual_seed(seed)  # the same initial weights and training noise on every run
        variant = build(config)
        predicts_residuals = isinstance(variant, LatentResidualPrediction)
        loss, evaluate = (distortion_loss, evaluate_psnr) if predicts_residuals else (rate_loss, evaluate_rate)
        curve = train(variant, loss, evaluate, steps, learning_rate, seed, f"{number}. {title}:")
        variants.append({"title": title, "measured": "psnr_change_db" if predicts_residuals else "rate_change_percent",
                         "parameters": sum(p.numel() for p in variant.parameters()), "curve": curve})
    own = ChannelContext(model.latent_codec.context, channel_groups(config.latent_channels), position_scale=1.0)
    trained = any(network.convs[-1].weight.any() or network.convs[-1].bias.any() for network in own.networks)
    return {"baseline": baseline, "variants": variants,
            "own_context_networks": rate_changes(own, rate_sides["held_out"]) if trained else None,
            "training_crops": len(training), "held_out_crops": len(held_out),
            "training_crops_measured": len(training_latents[seen]), "crop": held_out.shape[-1],
            "lrp_crop": lrp_crop}


# ---- the report ------------------------------------------------------------------------------------------


def curve_table(curve: list, levels: list, total: str, cell) -> list:
    """Markdown rows: per recorded step, the held-out changes per level and ``total``, and ``total`` on the
    training crops."""
    lines = ["| step | seconds | " + " | ".join(f"level {q}" for q in levels) + f" | {total} | {total}, training "
             "crops |", "|---:|---:|" + "---:|" * (len(levels) + 2)]
    for row in curve:
        held_out = [cell(row["held_out"][key]) for key in levels + [total]]
        lines.append(f"| {row['step']} | {row['seconds']:.0f} | " + " | ".join(held_out)
                     + f" | {cell(row['training'][total])} |")
    return lines


def markdown(report: dict) -> str:
    model, levels = report["model"], [str(quality) for quality in REPORTED_LEVELS]
    size, small = f"{report['crop']}x{report['crop']}", f"{report['lrp_crop']}x{report['lrp_crop']}"
    lines = [
        "# Context probe: what each context idea saves on top of the trained transforms", "",
        f"{report['date']}. Model **{model['name']}** (hash {model['hash']}, {model['source']}): transforms, "
        f"gains, h_a, h_s and z prior frozen. Each variant's new part trained from scratch (output layer at zero) "
        f"with Adam, lr {report['learning_rate']}, {report['steps']} steps of {BATCH} latents at random levels "
        f"1-8, seed {report['seed']}; latents of {report['training_crops']} random {size} crops of the training "
        f"photos (the {HELD_OUT_PHOTOS} held-out photos excluded), measured on {report['held_out_crops']} crops of "
        f"the held-out photos ({HELD_OUT_CROPS_PER_PHOTO} each) and, in the last column, on "
        f"{report['training_crops_measured']} of the training crops (the gap between the two is what the variant "
        f"fitted to its training crops alone). {report['threads']} thread on a 2-core CPU shared with the long "
        f"training run; seconds count the training steps only. Whole run: {report['seconds'] / 60:.0f} minutes.", "",
        "**These are the model's estimates with frozen transforms: what a context adds before any joint "
        "training.** Rate = the estimated bits (-log2 of the discretised Gaussian likelihood of each rounded y "
        "symbol at its table scale, plus z's bits under its prior), not file sizes; change against the same "
        "latents coded with h_s alone. Negative: fewer bits.", "",
        "Without context (h_s alone), held-out crops: " + ", ".join(
            f"level {q} {report['baseline']['bpp'][q]:.4f} bpp" for q in levels)
        + f"; PSNR of their {small} centres (LRP's crops): " + ", ".join(
            f"{report['baseline']['psnr'][q]:.2f} dB" for q in levels) + ".", "",
    ]
    for number, variant in enumerate(report["variants"], 1):
        lines += [f"## {number}. {variant['title']}", "", f"{variant['parameters']:,} trained parameters.", ""]
        if variant["measured"] == "rate_change_percent":
            lines += curve_table(variant["curve"], levels, "overall", lambda value: f"{value:+.2f}%")
        else:
            lines += [f"Rate unchanged; PSNR change (dB) of the {small} centres of the crops. Trained on the {small} "
                      f"centres of the training crops, on the distortion alone: λ·255²·MSE per crop, weighed by "
                      f"(λ_mid/λ)^{LEVEL_WEIGHTING} as the trainer weighs levels.", ""]
            lines += curve_table(variant["curve"], levels, "mean", lambda value: f"{value:+.3f}")
        lines.append("")
    own = report["own_context_networks"]
    if own is not None:
        lines += ["## Reference: the model's own context networks, as trained with it", "",
                  "The integer context networks this model was trained with (jointly with everything else), "
                  "measured the same way on the held-out crops: "
                  + ", ".join(f"level {q} {own[q]:+.2f}%" for q in levels) + f", overall {own['overall']:+.2f}%.", ""]
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in report["notes"]] + [""]
    lines += [f"Regenerate: `{report['command']}`", ""]
    return "\n".join(lines)


@click.command()
@click.option("--weights", default=None, help="Hyperprior weights: a model name or .pt file [default: mshp-n64].")
@click.option("--run", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A run folder: its checkpoint and config.json instead of --weights.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), show_default=True,
              default=str(REPO.parent / "shared" / "datasets" / "train"), help="The training photos.")
@click.option("--steps", type=click.IntRange(min=1), default=600, show_default=True)
@click.option("--crops", type=click.IntRange(min=1), default=2000, show_default=True,
              help="Training crops (a few per photo, as many photos as that takes).")
@click.option("--crop", type=click.IntRange(min=64), default=256, show_default=True, help="Crop size.")
@click.option("--lrp-crop", type=click.IntRange(min=64), default=128, show_default=True,
              help="Crop size for latent residual prediction (the centres of the crops).")
@click.option("--lr", "learning_rate", type=float, default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--note", "notes", multiple=True, help="A line for the report's notes (repeatable).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), show_default=True,
              default="benchmarks/results/context_probe", help="Writes OUT.json and OUT.md.")
def main(weights, run, data, steps, crops, crop, lrp_crop, learning_rate, seed, threads, notes, out):
    if weights and run:
        raise click.UsageError("give --weights or --run, not both")
    if lrp_crop > crop or crop % 64 or lrp_crop % 64:
        raise click.UsageError("--crop and --lrp-crop must be multiples of 64, --lrp-crop at most --crop")
    started = time.time()
    torch.set_num_threads(threads)
    model, described = load_run(run) if run else load_weights(weights or "mshp-n64")
    train_photos, held_out_photos = split_validation(list_images([data]), HELD_OUT_PHOTOS)
    if not held_out_photos:
        raise click.UsageError(f"{data} holds too few photos to hold {HELD_OUT_PHOTOS} out")
    rng = random.Random(seed)
    per_photo = math.ceil(crops / len(train_photos))
    training = photo_crops(rng.sample(train_photos, math.ceil(crops / per_photo)), per_photo, crop, rng)[:crops]
    # the same held-out crops whatever the seed
    held_out = photo_crops(held_out_photos, HELD_OUT_CROPS_PER_PHOTO, crop, random.Random("held-out"))
    result = measure(model, training, held_out, lrp_crop, steps, learning_rate, seed)
    command = "python -m benchmarks.context_probe " + (f"--run {run}" if run else f"--weights {weights or 'mshp-n64'}")
    command += f" --steps {steps} --crops {crops} --seed {seed} --out {out}"
    report = {"date": datetime.date.today().isoformat(), "model": described, "steps": steps, "batch": BATCH,
              "learning_rate": learning_rate, "seed": seed, "threads": threads, "levels": list(REPORTED_LEVELS),
              "seconds": round(time.time() - started), "notes": list(notes), "command": command, **result}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    click.echo(markdown(report))


if __name__ == "__main__":
    main()
