"""The channel-conditional codec: y coded in channel groups, each predicted from the groups decoded before it.

Minnen & Singh, "Channel-wise autoregressive entropy models for learned image compression" (ICIP 2020), with
the uneven groups of ELIC (He et al., CVPR 2022): small groups first, where a few channels carry most of the
energy, larger ones after. For M = 128 the groups are 16/16/32/64 channels; wider latents add a last group
with the rest (M = 320: 16/16/32/64/192).

    y --h_a--> z --FactorizedCoder--> z symbols --h_s (integer), quality--> mean, scale position (every group)
    group 0: mean, scale index from h_s alone                               --GaussianCoder--> symbols 0
    group k: context_k(h_s mean and position of group k, symbols of groups < k) --> correction of the mean
             and of the scale position of group k                           --GaussianCoder--> symbols k
    y_hat = y symbols + corrected mean

Each context network is an integer network (``integer_net.py``): a 3x3 convolution over the concatenated
inputs, then two 1x1 convolutions, bounded-ReLU hidden layers, all in fixed point. Its inputs are integers
(the h_s outputs in units of 2^-ACTIVATION_FRAC_BITS, the decoded symbols of the earlier groups, clamped to
±CONTEXT_SYMBOL_MAX, in the same unit), and so are its outputs: the decoder computes the same corrections
from the same symbols, on any machine. The groups are coded one after another in one range-coder stream;
within a group each scale table's symbols go in one vectorised constriction call.

The output layer of every context network starts at zero, so a model made from a trained hyperprior
(``load_tables`` of its tables, as ``vaecodec train --init ... --latent-codec channel-conditional`` does) codes
the same symbols with the same tables as that hyperprior, until fine-tuning moves it: the same code length for
every symbol, the same file size within the range coder's last word (the groups enter the stream in another
order than the hyperprior's single pass, so the bytes themselves differ).

The checkerboard variant (type "channel-checkerboard") adds a spatial context within every group (He et
al., "Checkerboard context model for efficient learned image compression", CVPR 2021; ELIC combines the
two): each group is coded in two passes, first its anchors (the positions whose row + column is even) with
the parameters above, then the other half, whose mean and scale position a spatial network corrects from the
anchors' symbols around it (every direct neighbour of a non-anchor is an anchor):

    group k, pass 1 (anchors):     mean, scale index as above               --GaussianCoder--> anchor symbols
    group k, pass 2 (non-anchors): spatial_k(mean and position of group k, anchor symbols of group k)
                                   --> correction at the non-anchors        --GaussianCoder--> other symbols

The spatial networks are integer networks too, and their output layers also start at zero: a checkerboard
model made from a channel-conditional one codes the same symbols with the same tables until fine-tuning.

Encoder-side refinement (``refine``) searches y against the means and scales that the unrefined y's symbols
give (the corrections depend on the rounded symbols themselves, so they are held fixed while it searches);
whatever it chooses is then coded exactly with the corrections of its own symbols.
"""

import collections
import hashlib
import threading

import numpy as np
import torch
from torch import nn

from ..entropy.gaussian import NUM_SCALES
from ..errors import InvalidFile
from ..integer_net import (ACTIVATION_FRAC_BITS, MEAN_MAX, IntegerNetwork, IntegerRunner, LayerSpec,
                           scale_index_of)
from ..layers import lower_bound, round_ste
from .base import Quantized, Symbols
from .gaussian import GaussianRate
from .hyperprior import HyperpriorCoder, HyperpriorLatentCodec, _check_keys

CONTEXT_SYMBOL_MAX = 255  # earlier groups' symbols enter the context networks clamped to this magnitude
CONTEXT_HIDDEN = 64  # width of the context networks' hidden layers
SPATIAL_KERNEL = 3  # the spatial networks' first layer: 3x3 sees a non-anchor's four anchor neighbours
CONTEXT_LR_FACTOR = 10.0  # learning rate of the context networks relative to the rest of the model
UNIT = 2**ACTIVATION_FRAC_BITS  # fixed-point unit of every context input and output
# The scale position enters the context networks centred on a typical position: uncentred, it adds the
# same large term to every hidden unit, which then stays either always off or always on (linear).
POSITION_CENTRE = 16
MEAN_LIMIT = MEAN_MAX * UNIT


def channel_groups(latent_channels: int) -> tuple:
    """Sizes of the channel groups, in coding order: 16/16/32/64 (ELIC) and the rest as a last group; latents
    narrower than 128 channels are split in the same proportions."""
    if latent_channels >= 128:
        rest = latent_channels - 128
        return (16, 16, 32, 64) + ((rest,) if rest else ())
    if latent_channels < 5:
        return (latent_channels,)
    unit = latent_channels // 8 or 1
    return (unit, unit, 2 * unit, latent_channels - 4 * unit)


def context_specs(group: int, earlier: int, hidden: int = CONTEXT_HIDDEN) -> tuple:
    """Layers of the context network of a group of ``group`` channels after ``earlier`` decoded channels.
    Input: [h_s mean (group), h_s scale position (group) minus POSITION_CENTRE, symbols of the earlier
    groups]; output: [mean correction, scale-position correction] of the group."""
    return (
        LayerSpec(2 * group + earlier, hidden, 1, ACTIVATION_FRAC_BITS, True, kernel=3),
        LayerSpec(hidden, hidden, 1, ACTIVATION_FRAC_BITS, True, kernel=1),
        LayerSpec(hidden, 2 * group, 1, ACTIVATION_FRAC_BITS, False, kernel=1),
    )


def spatial_specs(group: int, hidden: int = CONTEXT_HIDDEN, kernel: int = SPATIAL_KERNEL) -> tuple:
    """Layers of the spatial network of a group of ``group`` channels. Input: [mean (group), scale position
    (group) minus POSITION_CENTRE, the group's anchor symbols (zero elsewhere)]; output: [mean correction,
    scale-position correction] of the group, used at its non-anchor positions. A 5x5 first layer (He et al.'s)
    would see the 12 nearest anchors; it cost 14% of a training step for little more (docs/notes.md)."""
    return (
        LayerSpec(3 * group, hidden, 1, ACTIVATION_FRAC_BITS, True, kernel=kernel),
        LayerSpec(hidden, hidden, 1, ACTIVATION_FRAC_BITS, True, kernel=1),
        LayerSpec(hidden, 2 * group, 1, ACTIVATION_FRAC_BITS, False, kernel=1),
    )


def _network(specs: tuple, group: int, position_rate: float) -> IntegerNetwork:
    """A context or spatial network of a group of ``group`` channels (inputs: mean, scale position, then
    symbols), its first-layer weights on the scale position in units of ``position_rate``
    (``IntegerNetwork``'s ``input_units``). The position spans tens of table steps where means and symbols
    span a few, so at equal steps its weights move the hidden units most."""
    symbols = specs[0].in_channels - 2 * group
    return IntegerNetwork(specs, [1.0] * group + [position_rate] * group + [1.0] * symbols)


def anchor_mask(height: int, width: int, device=None) -> torch.Tensor:
    """The checkerboard's first pass: True where row + column is even (bool, height x width)."""
    rows = torch.arange(height, device=device)[:, None]
    columns = torch.arange(width, device=device)[None, :]
    return (rows + columns) % 2 == 0


def _bounds(groups: tuple) -> list:
    edges = np.cumsum((0,) + tuple(groups)).tolist()
    return list(zip(edges[:-1], edges[1:]))


class ChannelConditionalLatentCodec(HyperpriorLatentCodec):
    """Training side: the hyperprior's parts plus one context network per group after the first (and, with
    the checkerboard, one spatial network per group)."""

    type_name = "channel-conditional"
    checkerboard = False

    def __init__(self, h_a, h_s, z_codec, y_codec, groups: tuple, position_rate: float = 1.0):
        super().__init__(h_a, h_s, z_codec, y_codec)
        self.groups = tuple(groups)
        self.context = nn.ModuleList(
            _network(context_specs(end - start, start), end - start, position_rate)
            for start, end in _bounds(self.groups)[1:])
        self.spatial = nn.ModuleList(_network(spatial_specs(size), size, position_rate) for size in self.groups) \
            if self.checkerboard else nn.ModuleList()
        for _, network in self.named_context_networks():
            network.zero_output_layer()

    @classmethod
    def from_config(cls, config) -> "ChannelConditionalLatentCodec":
        hyper = HyperpriorLatentCodec.from_config(config)
        return cls(hyper.h_a, hyper.h_s, hyper.z_codec, hyper.y_codec, channel_groups(config.latent_channels),
                   config.context_position_rate)

    def forward(self, y: torch.Tensor, level: torch.Tensor, dtype=torch.float32) -> tuple:
        """As the hyperprior's forward, group by group; ``dtype=torch.float64`` computes the context networks
        exactly as the integer coder does (tests)."""
        z_symbols, z_likelihood = self.z_codec(self.h_a(y))
        mean, scale_position = self.h_s(z_symbols, level, dtype=dtype)
        y_hats, likelihoods, symbols = [], [], []
        for k, (start, end) in enumerate(_bounds(self.groups)):
            group_mean, group_position = mean[:, start:end], scale_position[:, start:end]
            if k > 0:
                context = torch.cat(symbols, 1).clamp(-CONTEXT_SYMBOL_MAX, CONTEXT_SYMBOL_MAX)
                correction = self.context[k - 1](group_mean, group_position - POSITION_CENTRE, context,
                                                 dtype=dtype).float()
                group_mean, group_position = _with_correction(group_mean, group_position, correction)
            if self.checkerboard:
                group_mean, group_position = self._spatial_step(k, y[:, start:end], group_mean, group_position,
                                                                dtype)
            y_hat, likelihood = self.y_codec(y[:, start:end], group_mean, group_position)
            symbols.append(round_ste(y[:, start:end] - group_mean))
            y_hats.append(y_hat)
            likelihoods.append(likelihood)
        return torch.cat(y_hats, 1), {"z": z_likelihood, "y": torch.cat(likelihoods, 1)}

    def _spatial_step(self, k: int, y_group, mean, position, dtype) -> tuple:
        """Group k's mean and scale position with the non-anchors corrected from the anchors' symbols."""
        anchor = anchor_mask(*y_group.shape[-2:], device=y_group.device)
        anchor_symbols = torch.where(anchor, round_ste(y_group - mean), 0.0).clamp(-CONTEXT_SYMBOL_MAX,
                                                                                   CONTEXT_SYMBOL_MAX)
        correction = self.spatial[k](mean, position - POSITION_CENTRE, anchor_symbols, dtype=dtype).float()
        corrected_mean, corrected_position = _with_correction(mean, position, correction)
        return torch.where(anchor, mean, corrected_mean), torch.where(anchor, position, corrected_position)

    def learning_rate_factors(self) -> dict:
        """{parameter: factor of the run's learning rate}: the context (and spatial) networks, which start from
        zero while the rest of the model is trained, learn at CONTEXT_LR_FACTOR times the rate."""
        return {parameter: CONTEXT_LR_FACTOR for _, network in self.named_context_networks()
                for parameter in network.parameters()}

    def export_tables(self, levels: torch.Tensor) -> dict:
        tables = super().export_tables(levels)
        tables["context"] = self.export_context_tables()
        return tables

    def export_context_tables(self) -> dict:
        """{"groups": the group sizes, "group{k}.layer{i}.weight"/".bias": context network k's integers,
        with the checkerboard "spatial{k}.layer{i}..." too}."""
        tables = {"groups": torch.tensor(self.groups, dtype=torch.long)}
        for name, network in self.named_context_networks():
            tables.update({f"{name}.{key}": value for key, value in network.export_integer_tables().items()})
        return tables

    def named_context_networks(self) -> list:
        """(table prefix, network): the context network of group k is "group{k}" (k from 1), the spatial
        network of group k "spatial{k}" (k from 0)."""
        return ([(f"group{k + 1}", network) for k, network in enumerate(self.context)]
                + [(f"spatial{k}", network) for k, network in enumerate(self.spatial)])

    def load_tables(self, tables: dict):
        """Set the parameters from exported tables; a hyperprior's tables (no "context" entry) leave the
        context networks' corrections at zero: the warm start from a trained hyperprior."""
        super().load_tables({key: value for key, value in tables.items() if key != "context"})
        context = tables.get("context", {})
        for name, network in self.named_context_networks():
            integer = _prefixed(context, name)
            if not integer:  # a warm start: this network's correction starts at zero
                network.zero_output_layer()
                continue
            network.load_state_dict({key: value.float() for key, value in
                                     network.state_from_integer_tables(integer).items()})


class ChannelCheckerboardLatentCodec(ChannelConditionalLatentCodec):
    """Training side of the channel-conditional codec with a spatial checkerboard within each group."""

    type_name = "channel-checkerboard"
    checkerboard = True


def _with_correction(mean, position, correction) -> tuple:
    """Training side: a context network's output [mean correction, position correction] applied, clamped as
    the coder clamps it (``_corrected``)."""
    mean_correction, position_correction = correction.split(mean.shape[1], dim=1)
    return ((mean + mean_correction).clamp(-MEAN_MAX, MEAN_MAX),
            lower_bound(position + position_correction, 0.0).clamp(max=NUM_SCALES - 1))


def _prefixed(tables: dict, name: str) -> dict:
    """The entries of ``tables`` named "name.<key>", as {key: value}."""
    prefix = name + "."
    return {key[len(prefix):]: value for key, value in tables.items() if key.startswith(prefix)}


class ChannelConditionalCoder(HyperpriorCoder):
    """Coding side (see the module docstring)."""

    checkerboard = False

    def __init__(self, tables: dict, config, device: torch.device):
        _check_keys(tables, {"h_a", "h_s", "z", "y", "context"}, "latent codec")
        super().__init__({key: value for key, value in tables.items() if key != "context"}, config, device)
        context = tables["context"]
        self.groups = channel_groups(config.latent_channels)
        if "groups" not in context or tuple(int(v) for v in context["groups"]) != self.groups:
            raise InvalidFile(f"weights: context groups do not match the {config.latent_channels} latent channels")
        self.bounds = _bounds(self.groups)
        self.decoded_means = _MeanCache()
        input_bound = max(MEAN_LIMIT, (NUM_SCALES - 1) * UNIT, CONTEXT_SYMBOL_MAX * UNIT)
        self.context = [
            self._runner(context, f"group{k}", lambda hidden, _: context_specs(end - start, start, hidden),
                         input_bound, device) for k, (start, end) in enumerate(self.bounds[1:], 1)]
        self.spatial = [
            self._runner(context, f"spatial{k}", lambda hidden, kernel: spatial_specs(end - start, hidden, kernel),
                         input_bound, device) for k, (start, end) in enumerate(self.bounds)
        ] if self.checkerboard else []

    @staticmethod
    def _runner(context: dict, name: str, specs_of_shape, input_bound: float, device) -> IntegerRunner:
        """The runner of a context network, its hidden width (and first kernel) read from its tables."""
        integer = _prefixed(context, name)
        try:
            first = integer["layer0.weight"]
            specs = specs_of_shape(int(first.shape[0]), int(first.shape[-1]))
            return IntegerRunner(specs, integer, input_bound, device)
        except (KeyError, ValueError, AttributeError, IndexError) as error:
            raise InvalidFile(f"weights: context network {name} does not fit the model ({error})") from None

    def _hyper(self, z_symbols: torch.Tensor, quality_index) -> tuple:
        return self.h_s.run_fixed(z_symbols.to(self.device), quality_index)

    def _group(self, k: int, mean_fixed, scale_fixed, earlier) -> tuple:
        """Group k's (mean, scale position), both in units of 2^-ACTIVATION_FRAC_BITS as float64 integers, from
        its h_s outputs and the symbols of the groups before it (int64, B x earlier channels)."""
        start, end = self.bounds[k]
        mean_fixed, scale_fixed = mean_fixed[:, start:end], scale_fixed[:, start:end]
        if k > 0:
            context = earlier.to(mean_fixed.device, torch.float64).clamp(-CONTEXT_SYMBOL_MAX, CONTEXT_SYMBOL_MAX)
            correction = self.context[k - 1].run(torch.cat([mean_fixed, scale_fixed - POSITION_CENTRE * UNIT,
                                                            context * UNIT], 1))
            mean_fixed, scale_fixed = _corrected(mean_fixed, scale_fixed, correction)
        return mean_fixed, scale_fixed

    def _spatial_step(self, k: int, mean_fixed, scale_fixed, group_symbols) -> tuple:
        """Group k's (mean, scale position) with the non-anchors corrected from the anchors' symbols; the other
        entries of ``group_symbols`` (B x group channels, int64) are not read."""
        anchor = anchor_mask(*mean_fixed.shape[-2:], device=mean_fixed.device)
        context = torch.where(anchor, group_symbols.to(mean_fixed.device, torch.float64), 0.0)
        context = context.clamp(-CONTEXT_SYMBOL_MAX, CONTEXT_SYMBOL_MAX)
        correction = self.spatial[k].run(torch.cat([mean_fixed, scale_fixed - POSITION_CENTRE * UNIT,
                                                    context * UNIT], 1), positions=~anchor)
        corrected_mean, corrected_scale = _corrected(mean_fixed, scale_fixed, correction)
        return torch.where(anchor, mean_fixed, corrected_mean), torch.where(anchor, scale_fixed, corrected_scale)

    def _passes(self, height: int, width: int) -> list:
        """The positions of a group coded together, in coding order (numpy bool masks, height x width)."""
        if not self.checkerboard:
            return [np.ones((height, width), dtype=bool)]
        anchor = anchor_mask(height, width).numpy()
        return [anchor, ~anchor]

    def _side_all(self, z_symbols: torch.Tensor, y_symbols: torch.Tensor, quality_index) -> tuple:
        """Means (fixed point) and scale indexes of every group at once, all symbols being known."""
        mean_fixed, scale_fixed = self._hyper(z_symbols, quality_index)
        y_symbols = y_symbols.to(mean_fixed.device)
        means, scale_indexes = [], []
        for k, (start, end) in enumerate(self.bounds):
            mean, scale = self._group(k, mean_fixed, scale_fixed, y_symbols[:, :start])
            if self.checkerboard:
                mean, scale = self._spatial_step(k, mean, scale, y_symbols[:, start:end])
            means.append(mean)
            scale_indexes.append(scale_index_of(scale, NUM_SCALES))
        return torch.cat(means, 1), torch.cat(scale_indexes, 1)

    def quantize(self, y, quality_index, refine=None) -> Quantized:
        z_symbols = self.z.quantize(self.h_a(y))
        mean_fixed, scale_fixed = self._hyper(z_symbols, quality_index)
        if refine is not None:  # against the corrections of the unrefined symbols: nearly the rate coded below
            _, mean, scale_index = self._in_coding_order(y, mean_fixed, scale_fixed)
            y = refine(y, GaussianRate(mean.to(y.dtype) / UNIT, scale_index))
        symbols, _, scale_indexes = self._in_coding_order(y, mean_fixed, scale_fixed)
        return Quantized(z_symbols, symbols, scale_indexes)

    def _in_coding_order(self, y, mean_fixed, scale_fixed) -> tuple:
        """y's symbols, means (fixed point) and scale indexes, group by group and pass by pass as the decoder
        will know them."""
        symbols, means, scale_indexes = [], [], []
        for k, (start, end) in enumerate(self.bounds):
            earlier = torch.cat(symbols, 1) if symbols else None
            mean, scale = self._group(k, mean_fixed, scale_fixed, earlier)
            group_symbols = self.y.quantize(y[:, start:end], mean.to(y.dtype) / UNIT)
            if self.checkerboard:  # the anchors' means stay, and so do their symbols
                mean, scale = self._spatial_step(k, mean, scale, group_symbols)
                group_symbols = self.y.quantize(y[:, start:end], mean.to(y.dtype) / UNIT)
            symbols.append(group_symbols)
            means.append(mean)
            scale_indexes.append(scale_index_of(scale, NUM_SCALES))
        return torch.cat(symbols, 1), torch.cat(means, 1), torch.cat(scale_indexes, 1)

    def dequantize(self, symbols: Symbols, quality_index) -> torch.Tensor:
        quality_index = torch.as_tensor(quality_index).reshape(-1)
        means = [self.decoded_means.get(symbols.z[i], symbols.y[i], int(quality_index[i]))
                 for i in range(len(symbols.y))]
        if any(mean is None for mean in means):
            mean_fixed, _ = self._side_all(symbols.z, symbols.y, quality_index)
            mean = mean_fixed.float() / UNIT
        else:
            mean = torch.stack(means).to(self.device)
        return symbols.y.to(self.device).float() + mean

    def _one(self, symbols: Symbols, quality_index: int, known=None) -> np.ndarray:
        """One image's scale indexes (numpy), all symbols known: ``known`` (``quantize``'s y_table_index for
        it) if given, else from h_s and every context network."""
        if known is not None:
            return known
        z = torch.from_numpy(np.asarray(symbols.z, dtype=np.int64))[None]
        y = torch.from_numpy(np.asarray(symbols.y, dtype=np.int64))[None]
        return self._side_all(z, y, torch.tensor([quality_index]))[1][0].cpu().numpy()

    def encode(self, encoder, symbols: Symbols, quality_index: int, y_table_index=None):
        self.z.encode(encoder, symbols.z)
        scale_index = self._one(symbols, quality_index, y_table_index)
        passes = self._passes(*symbols.y.shape[-2:])
        for start, end in self.bounds:  # the order the decoder reads them in
            for positions in passes:
                self.y.encode(encoder, symbols.y[start:end][:, positions], scale_index[start:end][:, positions])

    def decode(self, decoder, shapes: Symbols, quality_index: int) -> Symbols:
        z_symbols = self.z.decode(decoder, shapes.z)
        mean_fixed, scale_fixed = self._hyper(torch.from_numpy(z_symbols.astype(np.int64))[None],
                                              torch.tensor([quality_index]))
        height, width = shapes.y[-2:]
        symbols, means = [], []
        for k, (start, end) in enumerate(self.bounds):
            earlier = torch.from_numpy(np.concatenate(symbols))[None] if symbols else None
            mean, scale = self._group(k, mean_fixed, scale_fixed, earlier)
            group_symbols = np.zeros((end - start, height, width), dtype=np.int64)
            for coded, positions in enumerate(self._passes(height, width)):
                if coded:  # the checkerboard's second pass, after the anchors
                    mean, scale = self._spatial_step(k, mean, scale, torch.from_numpy(group_symbols)[None])
                scale_index = scale_index_of(scale, NUM_SCALES)[0].cpu().numpy()
                group_symbols[:, positions] = self.y.decode(decoder, scale_index[:, positions])
            symbols.append(group_symbols)
            means.append(mean[0])
        y_symbols = np.concatenate(symbols)
        # the synthesis needs these means again (``dequantize``): kept rather than computed a second time
        self.decoded_means.put(z_symbols, y_symbols, quality_index, torch.cat(means).float() / UNIT)
        return Symbols(z_symbols, y_symbols)

    def code_lengths(self, symbols: Symbols, quality_index: int, y_table_index=None) -> tuple:
        z_bits, z_escapes = self.z.code_lengths(symbols.z)
        y_bits, y_escapes = self.y.code_lengths(symbols.y, self._one(symbols, quality_index, y_table_index))
        return Symbols(z_bits, y_bits), z_escapes + y_escapes


class ChannelCheckerboardCoder(ChannelConditionalCoder):
    """Coding side of the channel-conditional codec with a spatial checkerboard within each group."""

    checkerboard = True


def _corrected(mean_fixed, scale_fixed, correction) -> tuple:
    """Coding side: a context network's output [mean correction, scale correction] applied, clamped as the
    training side clamps it (``_with_correction``)."""
    mean_correction, scale_correction = correction.split(mean_fixed.shape[1], dim=1)
    return ((mean_fixed + mean_correction).clamp(-MEAN_LIMIT, MEAN_LIMIT),
            (scale_fixed + scale_correction).clamp(0, (NUM_SCALES - 1) * UNIT))


class _MeanCache:
    """The means ``decode`` computed for the last few images, found again by their symbols and quality: a
    decoder reads the symbols and then synthesises them (``dequantize``), which would otherwise run every
    context network a second time. Bounded in entries and in elements; safe across threads."""

    ENTRIES, ELEMENTS = 16, 1 << 25

    def __init__(self):
        self.lock = threading.Lock()
        self.means = collections.OrderedDict()

    @staticmethod
    def _key(z_symbols, y_symbols, quality_index: int) -> bytes:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(int(quality_index).to_bytes(2, "little"))
        for part in (z_symbols, y_symbols):
            part = part.cpu().numpy() if isinstance(part, torch.Tensor) else part
            part = np.ascontiguousarray(part, dtype=np.int64)
            digest.update(np.asarray(part.shape, dtype=np.int64).tobytes())
            digest.update(part.tobytes())
        return digest.digest()

    def put(self, z_symbols, y_symbols, quality_index: int, mean: torch.Tensor):
        if mean.numel() > self.ELEMENTS:
            return
        key = self._key(z_symbols, y_symbols, quality_index)
        with self.lock:
            self.means[key] = mean
            while len(self.means) > self.ENTRIES or sum(m.numel() for m in self.means.values()) > self.ELEMENTS:
                self.means.popitem(last=False)

    def get(self, z_symbols, y_symbols, quality_index: int):
        key = self._key(z_symbols, y_symbols, quality_index)
        with self.lock:
            return self.means.pop(key, None)
