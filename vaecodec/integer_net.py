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
"""

from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from .layers import lower_bound, round_ste


def round_half_up_ste(x: torch.Tensor) -> torch.Tensor:
    """floor(x + 1/2) with a straight-through gradient: the integer path's rounding, ties included."""
    return x + (torch.floor(x + 0.5) - x).detach()

WEIGHT_FRAC_BITS = 12
ACTIVATION_FRAC_BITS = 6
ACTIVATION_MAX = 64.0  # hidden activations live in [0, 64] in steps of 1/64
MEAN_MAX = 4096.0  # |mean| bound, far beyond any trained value; keeps symbols finite on hostile input


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

    def __init__(self, z_channels: int, hidden_channels: int, y_channels: int, num_scales: int):
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

    def forward(self, z_symbols: torch.Tensor, dtype=torch.float32):
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
        mean, scale_position = x.float().split(self.y_channels, dim=1)
        # lower_bound, not clamp: an element pushed below the smallest scale must still get the gradient that
        # raises its scale when its residuals grow, or it stays stuck at 0.11 paying ~18 bits per nonzero symbol
        scale_position = lower_bound(scale_position, 0.0).clamp(max=self.num_scales - 1)
        return mean.clamp(-MEAN_MAX, MEAN_MAX), scale_position

    def export_integer_tables(self) -> dict:
        """Integer weights and biases (as int64 tensors) that ``IntegerHyperSynthesis`` runs exactly."""
        tables = {}
        for i, (spec, conv) in enumerate(zip(self.specs, self.convs)):
            tables[f"layer{i}.weight"] = torch.round(conv.weight.detach().double() * 2**WEIGHT_FRAC_BITS).long()
            bias_unit = 2 ** (WEIGHT_FRAC_BITS + spec.in_frac_bits)
            tables[f"layer{i}.bias"] = torch.round(conv.bias.detach().double() * bias_unit).long()
        return tables


class IntegerHyperSynthesis:
    """Exact fixed-point h_s used by both encoder and decoder: z symbols -> (mean_fixed, scale_index).

    ``mean_fixed`` is the mean of y in units of 2^-ACTIVATION_FRAC_BITS (int64); ``scale_index`` indexes
    the Gaussian scale table (int64). Both depend only on the integer inputs and the stored integer tables.
    """

    def __init__(self, specs, tables: dict, y_channels: int, num_scales: int, device="cpu"):
        self.specs = specs
        self.y_channels = y_channels
        self.num_scales = num_scales
        self.weights = [tables[f"layer{i}.weight"].to(device, torch.float64).flatten(1) for i in range(len(specs))]
        self.biases = [tables[f"layer{i}.bias"].to(device, torch.float64) for i in range(len(specs))]

    def to(self, device):
        self.weights = [w.to(device) for w in self.weights]
        self.biases = [b.to(device) for b in self.biases]
        return self

    @torch.no_grad()
    def run(self, z_symbols: torch.Tensor):
        x = z_symbols.to(self.weights[0].device, torch.float64)
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
        limit = MEAN_MAX * 2**ACTIVATION_FRAC_BITS
        mean_fixed = mean_fixed.clamp(-limit, limit)
        half = 2 ** (ACTIVATION_FRAC_BITS - 1)
        scale_index = torch.floor((scale_fixed + half) / 2**ACTIVATION_FRAC_BITS).clamp(0, self.num_scales - 1)
        return mean_fixed.long(), scale_index.long()
