"""The channel-checkerboard latent codec: the channel-conditional codec with a spatial context within each
group, coded in two passes (anchors, then the rest). Exact integer coding, determinism, hostile input, and a
warm start from a channel-conditional model that codes exactly as that model."""

import constriction
import numpy as np
import pytest
import torch

import vaecodec
from vaecodec.errors import InvalidFile
from vaecodec.latent_codecs import Symbols
from vaecodec.latent_codecs.channel_conditional import (ChannelCheckerboardCoder, ChannelCheckerboardLatentCodec,
                                                        anchor_mask)
from vaecodec.model import ModelConfig
from vaecodec.quality import index_levels
from vaecodec.weights import model_of_weights, model_type, read_weights, save_weights
from vaecodec.zoo import weights_path

from forged import assert_random_payloads_never_crash
from test_channel_conditional import crop


def _perturb(codec, seed: int = 0, std: float = 0.02):
    """Non-trivial context and spatial networks, as after training (their output layers start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for network in list(codec.context) + list(codec.spatial):
            for conv in network.convs:
                conv.weight.add_(torch.randn(conv.weight.shape, generator=generator) * std)
                conv.bias.add_(torch.randn(conv.bias.shape, generator=generator) * 0.2)


def _tiny():
    torch.manual_seed(0)
    config = ModelConfig(channels=16, latent_channels=24, hyper_channels=8, latent_codec="channel-checkerboard")
    codec = ChannelCheckerboardLatentCodec.from_config(config)
    _perturb(codec, std=0.05)
    with torch.no_grad():
        codec.h_s.level_scale_shift.normal_(0, 0.2)
        codec.h_s.level_log_mean_gain.normal_(0, 0.1)
    coder = ChannelCheckerboardCoder(codec.export_tables(index_levels()), config, torch.device("cpu"))
    return codec.eval(), coder


def _checkerboard_weights(tmp_path_factory, perturbed: bool):
    """The shipped channel-conditional weights with spatial networks added: zero ones (a warm start, which
    must code as the channel-conditional model does) or perturbed ones."""
    weights, _ = read_weights(weights_path("default"))
    assert weights["config"]["latent_codec"] == "channel-conditional"
    weights["config"] = {**weights["config"], "latent_codec": "channel-checkerboard"}
    model = model_of_weights(weights)  # the context networks loaded, the spatial ones at zero
    if perturbed:
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for network in model.latent_codec.spatial:
                for conv in network.convs:
                    conv.weight.add_(torch.randn(conv.weight.shape, generator=generator) * 0.01)
    weights["latent_codec"]["context"] = model.latent_codec.export_context_tables()
    path = tmp_path_factory.mktemp("cb") / ("cb-perturbed.pt" if perturbed else "cb-zero.pt")
    save_weights(weights, path)
    return path


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    torch.set_num_threads(2)
    return vaecodec.load(str(_checkerboard_weights(tmp_path_factory, perturbed=True)), device="cpu")


def test_anchors_are_half_the_positions_and_neighbour_only_non_anchors():
    anchor = anchor_mask(5, 6)
    assert anchor[0, 0] and not anchor[0, 1] and not anchor[1, 0] and anchor[1, 1]
    assert int(anchor.sum()) == 15
    inside = ~anchor[1:-1, 1:-1]  # every direct neighbour of a non-anchor is an anchor
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        assert anchor[1 + dy:5 - 1 + dy, 1 + dx:6 - 1 + dx][inside].all()


def test_training_forward_agrees_with_the_integer_coder_in_float64():
    codec, coder = _tiny()
    y = torch.randn(3, 24, 8, 12) * 4
    quality_index = torch.tensor([0, 13, 28])
    y_hat, likelihoods = codec(y, index_levels()[quality_index], dtype=torch.float64)
    symbols = coder.quantize(y, quality_index)
    assert torch.equal(y_hat.double(), coder.dequantize(symbols, quality_index).double())
    assert likelihoods["y"].shape == y.shape
    # the spatial corrections matter, at the non-anchors only
    mean_fixed, scale_fixed = coder._hyper(symbols.z, quality_index)
    start, end = coder.bounds[1]
    mean, scale = coder._group(1, mean_fixed, scale_fixed, symbols.y[:, :start])
    corrected, _ = coder._spatial_step(1, mean, scale, symbols.y[:, start:end])
    anchor = anchor_mask(8, 12)
    assert torch.equal(corrected[..., anchor], mean[..., anchor])
    assert not torch.equal(corrected[..., ~anchor], mean[..., ~anchor])


def test_range_coding_round_trips_exactly_with_escapes():
    _, coder = _tiny()
    y = torch.randn(2, 24, 8, 12) * 4
    y[0, 20, 0, :3] = torch.tensor([30000.0, -30000.0, 900.0])  # escaped, and clamped as context inputs
    y[1, 2, 3, 4] = -5000.0  # an anchor's escape feeds its group's spatial context
    quality_index = torch.tensor([4, 20])
    symbols = coder.quantize(y, quality_index)
    for i in range(2):
        image = Symbols(symbols.z[i].numpy(), symbols.y[i].numpy())
        encoder = constriction.stream.queue.RangeEncoder()
        coder.encode(encoder, image, int(quality_index[i]))
        known = constriction.stream.queue.RangeEncoder()
        coder.encode(known, image, int(quality_index[i]), symbols.y_table_index[i].numpy())
        assert np.array_equal(known.get_compressed(), encoder.get_compressed())
        assert np.array_equal(symbols.y_table_index[i].numpy(), coder._one(image, int(quality_index[i])))
        decoder = constriction.stream.queue.RangeDecoder(encoder.get_compressed())
        decoded = coder.decode(decoder, Symbols(image.z.shape, image.y.shape), int(quality_index[i]))
        assert np.array_equal(decoded.z, image.z) and np.array_equal(decoded.y, image.y)
        batch = Symbols(torch.from_numpy(decoded.z)[None], torch.from_numpy(decoded.y)[None])
        kept = coder.dequantize(batch, quality_index[i:i + 1])
        assert torch.equal(kept, coder.dequantize(batch, quality_index[i:i + 1]))
        bits = coder.estimated_bits(image, int(quality_index[i]))
        assert abs(32 * len(encoder.get_compressed()) - bits) < 64 + 0.01 * bits


def test_files_round_trip_and_are_deterministic_across_threads_and_batches(codec):
    images = [crop(i, 256, 192) for i in range(1, 9)] + [crop(9, 80, 48)]  # odd latent sizes too (5 x 3)
    alone = [codec.compress(image, 4) for image in images]
    torch.set_num_threads(1)
    try:
        one_thread = codec.compress(images[0], 4)
        latents_one_thread = codec.bytes_to_latents(alone[2])
    finally:
        torch.set_num_threads(2)
    batched = codec.compress_batch(images[:8], 4, batch_size=8)
    assert one_thread == alone[0] and batched == alone[:8]
    assert latents_one_thread == codec.bytes_to_latents(alone[2])
    for image, data in zip(images[-2:], alone[-2:]):
        assert codec.bytes_to_latents(data) == codec.encode_latents(image, 4)
        assert codec.decompress(data).size == image.size
    decoded_alone = np.asarray(codec.decompress(alone[3]))
    assert np.array_equal(decoded_alone, np.asarray(codec.decompress_batch(batched, batch_size=8)[3]))
    assert 10 * np.log10(255**2 / np.mean((decoded_alone - np.asarray(images[3], dtype=float)) ** 2)) > 24
    assert codec.config.latent_codec == "channel-checkerboard"


def test_hostile_and_truncated_payloads_give_invalid_file(codec):
    data = codec.compress(crop(11, 64, 64), 4)
    for cut in range(0, len(data), 3):
        with pytest.raises(InvalidFile):
            codec.decompress(data[:cut])
    assert_random_payloads_never_crash(codec, data, (64, 64))


def test_zero_spatial_networks_code_exactly_as_the_channel_conditional_model(tmp_path_factory):
    """A warm start has the channel-conditional model's symbols, means and tables: the same code length for
    every symbol, so the same file size within the range coder's final word (the two passes put the symbols
    in another order), and the same pixels."""
    channel_conditional = vaecodec.load("default", device="cpu")
    path = _checkerboard_weights(tmp_path_factory, perturbed=False)
    warm_start = vaecodec.load(str(path), device="cpu")
    for index, quality in ((5, 1.0), (7, 4.5), (9, 8.0)):
        image = crop(index, 128, 112)
        expected, latents = channel_conditional.encode_latents(image, quality), warm_start.encode_latents(image, quality)
        assert np.array_equal(latents.z_symbols, expected.z_symbols)
        assert np.array_equal(latents.y_symbols, expected.y_symbols)
        assert warm_start.estimated_bits(latents) == channel_conditional.estimated_bits(expected)
        data, expected_data = warm_start.latents_to_bytes(latents), channel_conditional.latents_to_bytes(expected)
        assert abs(len(data) - len(expected_data)) <= 4
        assert np.array_equal(np.asarray(warm_start.decompress(data)),
                              np.asarray(channel_conditional.decompress(expected_data)))
    assert warm_start.config.latent_codec == "channel-checkerboard" == model_type(path)


def test_train_init_adds_spatial_networks_keeping_every_shared_parameter():
    from vaecodec_cli.training import _with_latent_codec

    channel_conditional = model_of_weights(read_weights(weights_path("default"))[0])
    converted = _with_latent_codec(channel_conditional, "channel-checkerboard")
    state = converted.state_dict()
    for key, value in channel_conditional.state_dict().items():
        assert torch.equal(state.pop(key), value), key
    assert state and all(".spatial." in key for key in state)
    for key, value in state.items():
        if key.endswith((".convs.2.weight", ".convs.2.bias")):  # output layers: zero corrections
            assert not value.any(), key


def test_weights_without_a_spatial_network_are_refused_by_name(tmp_path_factory):
    weights, _ = read_weights(_checkerboard_weights(tmp_path_factory, perturbed=False))
    context = weights["latent_codec"]["context"]
    del context[next(key for key in context if key.startswith("spatial2."))]
    config = ModelConfig(**weights["config"])
    with pytest.raises(InvalidFile, match="spatial2"):
        ChannelCheckerboardCoder(weights["latent_codec"], config, torch.device("cpu"))


def test_integer_network_at_chosen_positions_gives_the_same_integers_there():
    from vaecodec.integer_net import IntegerNetwork, IntegerRunner
    from vaecodec.latent_codecs.channel_conditional import spatial_specs

    torch.manual_seed(2)
    network = IntegerNetwork(spatial_specs(4, hidden=8))
    for conv in network.convs:
        torch.nn.init.normal_(conv.weight, std=0.3)
    runner = IntegerRunner(network.specs, network.export_integer_tables(), input_bound=2**16)
    x = torch.randint(-500, 500, (2, 12, 7, 9)).double()
    everywhere = runner.run(x)
    chosen = ~anchor_mask(7, 9)
    at_chosen = runner.run(x, positions=chosen)
    assert everywhere[..., chosen].abs().sum() > 0
    assert torch.equal(at_chosen[..., chosen], everywhere[..., chosen])
    assert not at_chosen[..., ~chosen].any()
