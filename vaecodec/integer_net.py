"""Integer networks: the part of a model whose outputs the range coder depends on, computed exactly.

Everything the entropy decoder needs must come out bit-identical on every machine, or the decoder reads
garbage (CompressAI issues #279, #309, #320). Following Ballé, Johnston & Minnen, "Integer networks for data
compression with latent-variable models" (ICLR 2019), such a network is trained with fake quantization and
run at coding time in exact fixed-point arithmetic:

* weights are integers in units of 2^-WEIGHT_FRAC_BITS,
* hidden activations are integers in units of 2^-ACTIVATION_FRAC_BITS, clamped to [0, ACTIVATION_MAX]
  (a bounded ReLU), rounded half-up after every layer,
* each convolution is computed as unfold + matmul on float64 tensors holding integers: every partial sum is
  an integer far below 2^53 (checked when the tables are loaded, from the weights and the input bound), so
  the result is exact in any summation order, thread count, batch size and device (no FFT/Winograd
  algorithm can sneak in).

``IntegerNetwork`` is the trainable twin (differentiable, the rounding simulated with straight-through
estimators); ``export_integer_tables`` freezes it to integers; ``IntegerRunner`` computes with only those
integers. A network is a stack of ``LayerSpec``: a 1x1, 3x3 or 5x5 stride-1 convolution, an optional pixel
shuffle (sub-pixel upsampling, so no transposed convolution is needed), then a bounded ReLU or, for the last
layer, nothing. Several inputs are concatenated along channels before the first layer, all in the same
fixed-point unit.

Instances: ``HyperSynthesis`` (z symbols -> mean and scale-table position of y, below) and the context
networks of the channel-conditional latent codec (``latent_codecs/channel_conditional.py``).

h_s is told the quality. y is multiplied by a per-level gain before coding, so the same z can stand for
latents 10x larger or smaller; without the level, h_s predicts one compromise scale for all levels and the
low qualities pay for it. Two small per-level, per-channel tables let it adapt, exactly in integers: a shift
of the scale-table position (a scale factor, since the table is log-spaced) and a fixed-point gain of the
mean.
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
EXACT_LIMIT = 2.0**53  # float64 holds every integer below this exactly


@dataclass(frozen=True)
class LayerSpec:
    in_channels: int
    out_channels: int  # before the pixel shuffle: the convolution has out_channels * upscale^2 outputs
    upscale: int  # pixel-shuffle factor after the convolution
    in_frac_bits: int  # fixed-point unit of this layer's input: 2^-in_frac_bits
    hidden: bool  # bounded-ReLU hidden layer (True) or the linear output layer
    kernel: int = 3  # 1, 3 or 5; stride 1, zero padding kernel // 2

    def __post_init__(self):
        if self.kernel not in (1, 3, 5):
            raise ValueError(f"kernel must be 1, 3 or 5, got {self.kernel}")


class IntegerNetwork(nn.Module):
    """Fake-quantized twin of an integer network: ``forward`` computes, in float, exactly the values that
    ``IntegerRunner`` computes in integers (exactly so in float64; float32 training may differ in rare last
    bits, which only perturbs the training signal). Outputs are on the 2^-ACTIVATION_FRAC_BITS grid."""

    def __init__(self, specs, input_units=None):
        """``input_units`` (one per input channel, default all 1): the first layer's weight on input channel
        c is its parameter times ``input_units[c]``. Adam moves every parameter by about the same step, so a
        unit below 1 makes the steps on that input's weights as much smaller: an input much larger than the
        others would otherwise swing the hidden units at every step. The integers it exports do not depend on
        the units, only on the weights."""
        super().__init__()
        self.specs = tuple(specs)
        for previous, spec in zip(self.specs, self.specs[1:]):
            if spec.in_channels != previous.out_channels or spec.in_frac_bits != ACTIVATION_FRAC_BITS:
                raise ValueError("each layer takes the previous layer's outputs, in activation units")
        self.convs = nn.ModuleList(
            nn.Conv2d(s.in_channels, s.out_channels * s.upscale**2, s.kernel, padding=s.kernel // 2)
            for s in self.specs
        )
        units = [1.0] * self.specs[0].in_channels if input_units is None else [float(u) for u in input_units]
        if len(units) != self.specs[0].in_channels or min(units) <= 0:
            raise ValueError(f"need {self.specs[0].in_channels} positive input units")
        self.register_buffer("input_units", torch.tensor(units)[None, :, None, None], persistent=False)
        with torch.no_grad():  # the same initial weights whatever the units
            self.convs[0].weight /= self.input_units

    def _units(self, i: int, dtype) -> torch.Tensor | float:
        """What layer i's parameters are multiplied by to give its weights: the input units for the first."""
        return self.input_units.to(dtype) if i == 0 else 1.0

    def weight(self, i: int, dtype=torch.float32) -> torch.Tensor:
        """Layer i's weights, before fixed-point rounding."""
        weight = self.convs[i].weight.to(dtype)
        return weight * self._units(0, dtype) if i == 0 else weight  # no multiply by 1 on the training path

    def keep_weights_of(self, other: "IntegerNetwork"):
        """Take ``other``'s weights and biases, whatever the units of either: the same network, in this one's
        parameterisation."""
        with torch.no_grad():
            for i, conv in enumerate(self.convs):
                conv.weight.copy_(other.weight(i, torch.float64) / self._units(i, torch.float64))
                conv.bias.copy_(other.convs[i].bias)

    def zero_output_layer(self):
        """Make the network output zero whatever its input (a correction that starts as no correction)."""
        with torch.no_grad():
            self.convs[-1].weight.zero_()
            self.convs[-1].bias.zero_()

    def run_layers(self, x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """Training path: ``x`` (B, in_channels, H, W) holds values on the first layer's input grid."""
        x = x.to(dtype)
        for i, (spec, conv) in enumerate(zip(self.specs, self.convs)):
            weight = round_ste(self.weight(i, dtype) * 2**WEIGHT_FRAC_BITS) / 2**WEIGHT_FRAC_BITS
            bias_unit = 2 ** (WEIGHT_FRAC_BITS + spec.in_frac_bits)
            bias = round_ste(conv.bias.to(dtype) * bias_unit) / bias_unit
            x = F.conv2d(x, weight, bias, padding=spec.kernel // 2)
            if spec.upscale > 1:
                x = F.pixel_shuffle(x, spec.upscale)
            x = round_half_up_ste(x * 2**ACTIVATION_FRAC_BITS) / 2**ACTIVATION_FRAC_BITS
            if spec.hidden:
                x = x.clamp(0.0, ACTIVATION_MAX)
        return x

    def forward(self, *inputs: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        return self.run_layers(torch.cat(inputs, dim=1) if len(inputs) > 1 else inputs[0], dtype)

    def export_integer_tables(self) -> dict:
        """``layer{i}.weight`` (in units of 2^-WEIGHT_FRAC_BITS) and ``layer{i}.bias`` (in units of the
        layer's accumulator, 2^-(WEIGHT_FRAC_BITS + in_frac_bits)), int64."""
        tables = {}
        for i, (spec, conv) in enumerate(zip(self.specs, self.convs)):
            weight = self.weight(i, torch.float64).detach()
            tables[f"layer{i}.weight"] = torch.round(weight * 2**WEIGHT_FRAC_BITS).long()
            bias_unit = 2 ** (WEIGHT_FRAC_BITS + spec.in_frac_bits)
            tables[f"layer{i}.bias"] = torch.round(conv.bias.detach().double() * bias_unit).long()
        return tables

    def state_from_integer_tables(self, tables: dict, prefix: str = "") -> dict:
        """The float parameters (state-dict entries named ``prefix + convs.i.weight`` etc.) that export
        ``tables`` again: the inverse of ``export_integer_tables``, for fine-tuning shipped weights."""
        state = {}
        for i, spec in enumerate(self.specs):
            weight = tables[f"layer{i}.weight"].double() / 2**WEIGHT_FRAC_BITS
            state[f"{prefix}convs.{i}.weight"] = weight / self._units(i, torch.float64)
            bias_unit = 2 ** (WEIGHT_FRAC_BITS + spec.in_frac_bits)
            state[f"{prefix}convs.{i}.bias"] = tables[f"layer{i}.bias"].double() / bias_unit
        return state


class IntegerRunner:
    """Exact integer evaluation of an ``IntegerNetwork``'s exported tables.

    ``run`` takes integers in units of 2^-in_frac_bits of the first layer, at most ``input_bound`` in
    magnitude (the caller clamps), and returns integers in units of 2^-ACTIVATION_FRAC_BITS (as float64
    tensors holding integers). Loading refuses tables whose accumulators could reach 2^53.
    """

    def __init__(self, specs, tables: dict, input_bound: float, device="cpu"):
        self.specs = tuple(specs)
        self.weights, self.biases = [], []
        bound = float(input_bound)
        for i, spec in enumerate(self.specs):
            weight = tables[f"layer{i}.weight"]
            expected = (spec.out_channels * spec.upscale**2, spec.in_channels, spec.kernel, spec.kernel)
            if tuple(weight.shape) != expected or tuple(tables[f"layer{i}.bias"].shape) != expected[:1]:
                raise ValueError(f"layer {i}: weight shape {tuple(weight.shape)}, expected {expected}")
            weight = weight.to(device, torch.float64).flatten(1)
            bias = tables[f"layer{i}.bias"].to(device, torch.float64)
            largest = float((weight.abs().sum(1) * bound + bias.abs()).max())
            if not largest < EXACT_LIMIT:
                raise ValueError(f"layer {i} of an integer network could exceed 2^53 ({largest:.3g}): not exact")
            self.weights.append(weight)
            self.biases.append(bias)
            shift = WEIGHT_FRAC_BITS + spec.in_frac_bits - ACTIVATION_FRAC_BITS
            bound = ACTIVATION_MAX * 2**ACTIVATION_FRAC_BITS if spec.hidden else largest / 2**shift + 1

    @torch.no_grad()
    def run(self, x: torch.Tensor, positions: torch.Tensor = None) -> torch.Tensor:
        """``positions`` (bool, H x W): compute the outputs at those positions alone, the same integers there,
        zero elsewhere (for a network whose layers after the first are 1x1 without upscaling)."""
        x = x.to(self.weights[0].device, torch.float64)
        batch, _, height, width = x.shape
        selected = None
        if positions is not None:
            if any(spec.kernel != 1 or spec.upscale != 1 for spec in self.specs[1:]) or self.specs[0].upscale != 1:
                raise ValueError("outputs at chosen positions need 1x1 layers after the first, without upscaling")
            selected = torch.as_tensor(positions, device=x.device).reshape(-1).nonzero().squeeze(1)
        for i, (spec, weight, bias) in enumerate(zip(self.specs, self.weights, self.biases)):
            if selected is not None and i > 0:
                columns = x  # (B, C, chosen positions)
            else:
                batch, _, height, width = x.shape
                if spec.kernel == 1:
                    columns = x.reshape(batch, spec.in_channels, height * width)
                else:  # (B, Cin*k*k, H*W): explicit products, no convolution algorithm
                    columns = F.unfold(x, spec.kernel, padding=spec.kernel // 2)
                if selected is not None:
                    columns = columns[:, :, selected]
            accumulator = torch.matmul(weight, columns) + bias[:, None]
            shift = WEIGHT_FRAC_BITS + spec.in_frac_bits - ACTIVATION_FRAC_BITS
            x = torch.floor((accumulator + 2 ** (shift - 1)) / 2**shift)  # round half up; exact in float64
            if selected is None:
                x = x.view(batch, -1, height, width)
                if spec.upscale > 1:
                    x = F.pixel_shuffle(x, spec.upscale)
            if spec.hidden:
                x = x.clamp(0, ACTIVATION_MAX * 2**ACTIVATION_FRAC_BITS)
        if selected is not None:
            everywhere = x.new_zeros(batch, x.shape[1], height * width)
            everywhere[:, :, selected] = x
            x = everywhere.view(batch, -1, height, width)
        return x


class HyperSynthesis(IntegerNetwork):
    """Fake-quantized h_s: z symbols -> (mean of y, continuous scale-table position of y).

    Three 3x3 convolutions; the first two are followed by a 2x pixel shuffle and a bounded ReLU.
    """

    def __init__(self, z_channels: int, hidden_channels: int, y_channels: int, num_scales: int, levels: int = 8):
        super().__init__((
            LayerSpec(z_channels, hidden_channels, 2, 0, True),
            LayerSpec(hidden_channels, hidden_channels, 2, ACTIVATION_FRAC_BITS, True),
            LayerSpec(hidden_channels, 2 * y_channels, 1, ACTIVATION_FRAC_BITS, False),
        ))
        self.y_channels = y_channels
        self.num_scales = num_scales
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
        x = self.run_layers(z_symbols, dtype)
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
        tables.update(super().export_integer_tables())
        return tables


Z_SYMBOL_BOUND = 2**15  # z symbols are 16-bit (entropy/coder.py)


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
        self.runner = IntegerRunner(specs, tables, Z_SYMBOL_BOUND, device)
        self.scale_shift = tables["scale_shift"].to(device, torch.float64)
        self.mean_gain = tables["mean_gain"].to(device, torch.float64)

    @torch.no_grad()
    def run_fixed(self, z_symbols: torch.Tensor, quality_index: torch.Tensor):
        """z symbols (B, C, h, w), quality indexes (B,) -> mean_fixed, scale_fixed (B, M, 4h, 4w): float64
        tensors of integers in units of 2^-ACTIVATION_FRAC_BITS; the scale position is clamped to the table."""
        x = self.runner.run(z_symbols)
        quality_index = torch.as_tensor(quality_index, device=x.device).long().reshape(-1)
        mean_fixed, scale_fixed = x.split(self.y_channels, dim=1)
        mean_gain = self.mean_gain[quality_index][:, :, None, None]
        mean_fixed = torch.floor((mean_fixed * mean_gain + 2 ** (MEAN_GAIN_FRAC_BITS - 1)) / 2**MEAN_GAIN_FRAC_BITS)
        scale_fixed = scale_fixed + self.scale_shift[quality_index][:, :, None, None]
        limit = MEAN_MAX * 2**ACTIVATION_FRAC_BITS
        mean_fixed = mean_fixed.clamp(-limit, limit)
        scale_fixed = scale_fixed.clamp(0, (self.num_scales - 1) * 2**ACTIVATION_FRAC_BITS)
        return mean_fixed, scale_fixed

    def run(self, z_symbols: torch.Tensor, quality_index: torch.Tensor):
        """z symbols (B, C, h, w) and quality indexes (B,) -> mean_fixed, scale_index (B, M, 4h, 4w), int64."""
        mean_fixed, scale_fixed = self.run_fixed(z_symbols, quality_index)
        return mean_fixed.long(), scale_index_of(scale_fixed, self.num_scales)


def scale_index_of(scale_fixed: torch.Tensor, num_scales: int) -> torch.Tensor:
    """Scale-table index (int64) of a fixed-point scale position: round half up, clamped to the table."""
    half = 2 ** (ACTIVATION_FRAC_BITS - 1)
    return torch.floor((scale_fixed + half) / 2**ACTIVATION_FRAC_BITS).clamp(0, num_scales - 1).long()
