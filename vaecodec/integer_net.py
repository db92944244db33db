"""Integer hyper-synthesis: the network that turns z symbols into the means and scale indexes of y.

Everything the entropy decoder needs must come out bit-identical on every machine, or the decoder reads
garbage (CompressAI issues #279, #309, #320). Following Ballé, Johnston & Minnen, "Integer networks for data
compression with latent-variable models" (ICLR 2019), this network is trained with fake quantization and run
at coding time in exact fixed-point arithmetic:

* weights are integers in units of 2^-WEIGHT_FRAC_BITS,
* hidden activations are integers in units of 2^-ACTIVATION_FRAC_BITS, clamped to [0, ACTIVATION_MAX]
  (a bounded ReLU), rounded half-up after every layer,
* each convolution is computed as unfold + matmul on float64 tensors holding integers: every partial sum is
  an integer far below 2^53, so the result is exact in any summation order, thread count, batch size and
  device (no FFT/Winograd algorithm can sneak in).

Workflow: ``forward`` (training) is differentiable and simulates the rounding with straight-through
estimators; ``export_integer_tables`` freezes the weights to integers; ``IntegerHyperSynthesis.run`` (coding)
uses only those integers.

The network is told the quality. y is multiplied by a per-level gain before coding, so the same z can stand
for latents 10x larger or smaller; without the level, h_s predicts one compromise scale for all levels and the
low qualities pay for it (measured on the round-2 model: q1 coded at 2.3x the entropy of its own symbols,
and its predicted means were as large as the residuals they left). Two small per-level, per-channel tables
let it adapt, exactly in integers: a shift of the scale-table position (a scale factor, since the table is
log-spaced) and a fixed-point gain of the mean (round 3 learned mean gains of 0.15 at q1 to 0.51 at q8).
"""

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from .layers import interpolate_levels, lower_bound, round_ste


def round_half_up_ste(x: torch.Tensor) -> torch.Tensor:
    """floor(x + 1/2) with a straight-through gradient: the integer path's rounding, ties included."""
    return x + (torch.floor(x + 0.5) - x).detach()

WEIGHT_FRAC_BITS = 12
ACTIVATION_FRAC_BITS = 6
ACTIVATION_MAX = 64.0  # hidden activations live in [0, 64] in steps of 1/64
MEAN_MAX = 4096.0  # |mean| bound, far beyond any trained value; keeps symbols finite on hostile input
MEAN_GAIN_FRAC_BITS = 12
# The per-level tables are stored in coarse units so Adam (steps ~ learning rate) can move a scale by several
# table positions within a few thousand steps rather than a few hundred thousand.
SCALE_SHIFT_UNIT = 32.0  # table positions per unit of the scale-shift parameter
MEAN_GAIN_UNIT = 8.0  # log mean gain per unit of its parameter


@dataclass(frozen=True)
class LayerSpec:
    in_channels: int
    out_channels: int
    upscale: int  # pixel-shuffle factor after the 3x3 convolution
    in_frac_bits: int
    hidden: bool  # bounded-ReLU hidden layer (True) or the linear output layer


class HyperSynthesis(nn.Module):
    """Fake-quantized h_s: z symbols -> (mean of y, continuous scale-table position of y).

    Three 3x3 convolutions; the first two are followed by a 2x pixel shuffle (sub-pixel upsampling, so the
    integer path needs only stride-1 convolutions) and a bounded ReLU.
    """

    def __init__(self, z_channels: int, hidden_channels: int, y_channels: int, num_scales: int, levels: int = 8):
        super().__init__()
        self.y_channels = y_channels
        self.num_scales = num_scales
        self.specs = (
            LayerSpec(z_channels, hidden_channels, 2, 0, True),
            LayerSpec(hidden_channels, hidden_channels, 2, ACTIVATION_FRAC_BITS, True),
            LayerSpec(hidden_channels, 2 * y_channels, 1, ACTIVATION_FRAC_BITS, False),
        )
        self.convs = nn.ModuleList(
            nn.Conv2d(s.in_channels, s.out_channels * s.upscale**2, 3, padding=1) for s in self.specs
        )
        with torch.no_grad():  # start every scale in the middle of the table
            self.convs[-1].bias[y_channels:] = num_scales / 2
        # zero: the level tables start as the identity (no shift, mean gain 1)
        self.level_scale_shift = nn.Parameter(torch.zeros(levels, y_channels))
        self.level_log_mean_gain = nn.Parameter(torch.zeros(levels, y_channels))

    def level_tables(self, level: torch.Tensor, dtype=torch.float32):
        """(scale shift in table positions, mean gain) for zero-based, possibly fractional levels, on their
        integer grids: shapes (B, M)."""
        shift = interpolate_levels(self.level_scale_shift.to(dtype) * SCALE_SHIFT_UNIT, level.to(dtype))
        shift = round_half_up_ste(shift * 2**ACTIVATION_FRAC_BITS) / 2**ACTIVATION_FRAC_BITS
        log_gain = interpolate_levels(self.level_log_mean_gain.to(dtype) * MEAN_GAIN_UNIT, level.to(dtype))
        mean_gain = round_ste(log_gain.exp() * 2**MEAN_GAIN_FRAC_BITS) / 2**MEAN_GAIN_FRAC_BITS
        return shift, mean_gain

    def forward(self, z_symbols: torch.Tensor, level: torch.Tensor, dtype=torch.float32):
        """Training path. Returns (mean, scale_position); both are already on their integer grids.

        ``dtype=torch.float64`` reproduces the integer path exactly (tests use it); training uses float32,
        several times faster on CPU, whose rare last-bit differences only perturb the training signal.
        """
        x = z_symbols.to(dtype)
        for spec, conv in zip(self.specs, self.convs):
            weight = round_ste(conv.weight.to(dtype) * 2**WEIGHT_FRAC_BITS) / 2**WEIGHT_FRAC_BITS
            bias_unit = 2 ** (WEIGHT_FRAC_BITS + spec.in_frac_bits)
            bias = round_ste(conv.bias.to(dtype) * bias_unit) / bias_unit
            x = F.conv2d(x, weight, bias, padding=1)
            if spec.upscale > 1:
                x = F.pixel_shuffle(x, spec.upscale)
            x = round_half_up_ste(x * 2**ACTIVATION_FRAC_BITS) / 2**ACTIVATION_FRAC_BITS
            if spec.hidden:
                x = x.clamp(0.0, ACTIVATION_MAX)
        mean, scale_position = x.split(self.y_channels, dim=1)
        shift, mean_gain = self.level_tables(level, dtype)
        mean = round_half_up_ste(mean * mean_gain[:, :, None, None] * 2**ACTIVATION_FRAC_BITS)
        mean = (mean / 2**ACTIVATION_FRAC_BITS).float()
        scale_position = (scale_position + shift[:, :, None, None]).float()
        # lower_bound, not clamp: an element pushed below the smallest scale must still get the gradient that
        # raises its scale when its residuals grow, or it stays stuck at 0.11 paying ~18 bits per nonzero symbol
        scale_position = lower_bound(scale_position, 0.0).clamp(max=self.num_scales - 1)
        return mean.clamp(-MEAN_MAX, MEAN_MAX), scale_position

    def export_integer_tables(self, level_of_quality: torch.Tensor) -> dict:
        """Integer weights, biases and per-quality tables (int64 tensors) that ``IntegerHyperSynthesis`` runs
        exactly; ``level_of_quality[i]`` is the zero-based level of quality index i."""
        shift, mean_gain = self.level_tables(level_of_quality, torch.float64)
        tables = {
            "scale_shift": torch.round(shift.detach() * 2**ACTIVATION_FRAC_BITS).long(),
            "mean_gain": torch.round(mean_gain.detach() * 2**MEAN_GAIN_FRAC_BITS).long(),
        }
        for i, (spec, conv) in enumerate(zip(self.specs, self.convs)):
            tables[f"layer{i}.weight"] = torch.round(conv.weight.detach().double() * 2**WEIGHT_FRAC_BITS).long()
            bias_unit = 2 ** (WEIGHT_FRAC_BITS + spec.in_frac_bits)
            tables[f"layer{i}.bias"] = torch.round(conv.bias.detach().double() * bias_unit).long()
        return tables


class IntegerHyperSynthesis:
    """Exact fixed-point h_s used by both encoder and decoder: (z symbols, quality index) -> (mean_fixed,
    scale_index).

    ``mean_fixed`` is the mean of y in units of 2^-ACTIVATION_FRAC_BITS (int64); ``scale_index`` indexes
    the Gaussian scale table (int64). Both depend only on the integer inputs and the stored integer tables.
    """

    def __init__(self, specs, tables: dict, y_channels: int, num_scales: int, device="cpu"):
        self.specs = specs
        self.y_channels = y_channels
        self.num_scales = num_scales
        self.weights = [tables[f"layer{i}.weight"].to(device, torch.float64).flatten(1) for i in range(len(specs))]
        self.biases = [tables[f"layer{i}.bias"].to(device, torch.float64) for i in range(len(specs))]
        self.scale_shift = tables["scale_shift"].to(device, torch.float64)
        self.mean_gain = tables["mean_gain"].to(device, torch.float64)

    @torch.no_grad()
    def run(self, z_symbols: torch.Tensor, quality_index: torch.Tensor):
        """z symbols (B, C, h, w) and quality indexes (B,) -> mean_fixed, scale_index (B, M, 4h, 4w)."""
        x = z_symbols.to(self.weights[0].device, torch.float64)
        quality_index = torch.as_tensor(quality_index, device=x.device).long().reshape(-1)
        for spec, weight, bias in zip(self.specs, self.weights, self.biases):
            batch, _, height, width = x.shape
            columns = F.unfold(x, 3, padding=1)  # (B, Cin*9, H*W): explicit products, no conv algorithm
            accumulator = torch.matmul(weight, columns) + bias[:, None]
            shift = WEIGHT_FRAC_BITS + spec.in_frac_bits - ACTIVATION_FRAC_BITS
            x = torch.floor((accumulator + 2 ** (shift - 1)) / 2**shift)  # round half up; exact in float64
            x = x.view(batch, -1, height, width)
            if spec.upscale > 1:
                x = F.pixel_shuffle(x, spec.upscale)
            if spec.hidden:
                x = x.clamp(0, ACTIVATION_MAX * 2**ACTIVATION_FRAC_BITS)
        mean_fixed, scale_fixed = x.split(self.y_channels, dim=1)
        mean_gain = self.mean_gain[quality_index][:, :, None, None]
        mean_fixed = torch.floor((mean_fixed * mean_gain + 2 ** (MEAN_GAIN_FRAC_BITS - 1)) / 2**MEAN_GAIN_FRAC_BITS)
        scale_fixed = scale_fixed + self.scale_shift[quality_index][:, :, None, None]
        limit = MEAN_MAX * 2**ACTIVATION_FRAC_BITS
        mean_fixed = mean_fixed.clamp(-limit, limit)
        half = 2 ** (ACTIVATION_FRAC_BITS - 1)
        scale_index = torch.floor((scale_fixed + half) / 2**ACTIVATION_FRAC_BITS).clamp(0, self.num_scales - 1)
        return mean_fixed.long(), scale_index.long()
