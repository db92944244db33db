"""The channel-conditional latent codec: integer context networks, exact coding, determinism, hostile input,
and a warm start that codes exactly as the hyperprior it starts from. The coding tests run for its checkerboard
variant too (tests/test_checkerboard.py has what is the checkerboard's own)."""

from pathlib import Path

import constriction
import numpy as np
import pytest
import torch
from PIL import Image

import vaecodec
from vaecodec.errors import InvalidFile
from vaecodec.integer_net import (ACTIVATION_FRAC_BITS, IntegerNetwork, IntegerRunner, LayerSpec)
from vaecodec.latent_codecs import Symbols
from vaecodec.latent_codecs.channel_conditional import (ChannelConditionalCoder, ChannelConditionalLatentCodec,
                                                        channel_groups)
from vaecodec.model import VAE, ModelConfig
from vaecodec.quality import index_levels
from vaecodec.weights import model_of_weights, model_type, read_weights, save_weights, weights_of_model
from vaecodec.zoo import weights_path

from forged import assert_random_payloads_never_crash

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"


def crop(index: int, width: int = 192, height: int = 128) -> Image.Image:
    image = Image.open(KODAK / f"kodim{index:02d}.png").convert("RGB")
    return image.crop((100, 100, 100 + width, 100 + height))


def perturb(codec: ChannelConditionalLatentCodec, seed: int = 0, std: float = 0.02):
    """Non-trivial context (and spatial) networks, as after training (their output layers start at zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for network in list(codec.context) + list(codec.spatial):
            for conv in network.convs:
                conv.weight.add_(torch.randn(conv.weight.shape, generator=generator) * std)
                conv.bias.add_(torch.randn(conv.bias.shape, generator=generator) * 0.2)


def tiny(latent_codec: str = "channel-conditional"):
    """A small trained-looking model of ``latent_codec``: (training side, coding side from its tables)."""
    from vaecodec.latent_codecs import coding_class, training_class

    torch.manual_seed(0)
    config = ModelConfig(channels=16, latent_channels=24, hyper_channels=8, latent_codec=latent_codec)
    codec = training_class(latent_codec).from_config(config)
    perturb(codec, std=0.05)
    with torch.no_grad():
        codec.h_s.level_scale_shift.normal_(0, 0.2)
        codec.h_s.level_log_mean_gain.normal_(0, 0.1)
    coder = coding_class(latent_codec)(codec.export_tables(index_levels()), config, torch.device("cpu"))
    return codec.eval(), coder


def _cc_weights(tmp_path_factory, perturbed: bool) -> Path:
    """The hyperprior mshp-n64's weights with context networks added: zero ones (a warm start, which must code as
    the hyperprior does) or perturbed ones."""
    weights, _ = read_weights(weights_path("mshp-n64"))
    weights["config"] = {**weights["config"], "latent_codec": "channel-conditional"}
    context = ChannelConditionalLatentCodec.from_config(ModelConfig(**weights["config"]))
    if perturbed:
        perturb(context)
    weights["latent_codec"]["context"] = context.export_context_tables()
    path = tmp_path_factory.mktemp("cc") / ("cc-perturbed.pt" if perturbed else "cc-zero.pt")
    save_weights(weights, path)
    return path


def channel_conditional_weights(tmp_path_factory) -> Path:
    """The shipped weights as a channel-conditional model (a checkerboard release without its spatial networks)."""
    weights, _ = read_weights(weights_path("default"))
    weights["config"] = {**weights["config"], "latent_codec": "channel-conditional"}
    context = weights["latent_codec"]["context"]
    weights["latent_codec"]["context"] = {key: value for key, value in context.items()
                                          if not key.startswith("spatial")}
    path = tmp_path_factory.mktemp("cc") / "cc-shipped.pt"
    save_weights(weights, path)
    return path


def checkerboard_weights(tmp_path_factory, perturbed: bool) -> Path:
    """The shipped weights as a channel-conditional model with spatial networks added: zero ones (a warm start,
    which must code as the channel-conditional model does) or perturbed ones."""
    weights, _ = read_weights(channel_conditional_weights(tmp_path_factory))
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


CODECS = ["channel-conditional", "channel-checkerboard"]


def test_a_hyperprior_warm_start_trains_from_the_same_parameters_with_zero_corrections():
    weights, _ = read_weights(weights_path("mshp-n64"))
    hyperprior = model_of_weights(weights)
    weights["config"] = {**weights["config"], "latent_codec": "channel-conditional"}
    warm = model_of_weights(weights)
    shared = hyperprior.state_dict()
    for key, value in warm.state_dict().items():
        if ".context." in key:
            if key.endswith((".convs.2.weight", ".convs.2.bias")):  # the output layers: zero corrections
                assert not value.any(), key
        else:
            assert torch.equal(value, shared.pop(key)), key
    assert not shared
    x = torch.rand(2, 3, 128, 128)
    level = torch.tensor([1.0, 6.0])
    torch.manual_seed(0)
    expected = hyperprior.eval()(x, level)
    torch.manual_seed(0)
    output = warm.eval()(x, level)
    assert torch.equal(output["x_hat"], expected["x_hat"])  # the same rounded latents (the noise is drawn
    # per group, so the likelihoods of the noisy latents differ by their noise only)


@pytest.fixture(scope="module", params=CODECS)
def codec(tmp_path_factory, request):
    torch.set_num_threads(2)
    make = _cc_weights if request.param == "channel-conditional" else checkerboard_weights
    codec = vaecodec.load(str(make(tmp_path_factory, perturbed=True)), device="cpu")
    assert codec.config.latent_codec == request.param
    return codec


def test_groups_are_uneven_and_cover_the_latents():
    assert channel_groups(128) == (16, 16, 32, 64)
    assert channel_groups(320) == (16, 16, 32, 64, 192)
    for channels in (1, 4, 12, 24, 96, 192, 320):
        assert sum(channel_groups(channels)) == channels and min(channel_groups(channels)) > 0


def test_integer_network_matches_its_training_twin_with_1x1_3x3_5x5_kernels_and_upscaling():
    torch.manual_seed(1)
    specs = (LayerSpec(7, 12, 2, ACTIVATION_FRAC_BITS, True, kernel=5),
             LayerSpec(12, 10, 1, ACTIVATION_FRAC_BITS, True, kernel=1),
             LayerSpec(10, 6, 1, ACTIVATION_FRAC_BITS, False, kernel=3))
    network = IntegerNetwork(specs)
    runner = IntegerRunner(specs, network.export_integer_tables(), input_bound=2**16)
    a, b = torch.randint(-200, 200, (3, 4, 5, 6)), torch.randint(0, 2000, (3, 3, 5, 6))
    unit = 2**ACTIVATION_FRAC_BITS
    expected = network(a.double() / unit, b.double() / unit, dtype=torch.float64)
    assert torch.equal(runner.run(torch.cat([a, b], 1)), expected * unit)
    network.zero_output_layer()
    assert not network(a.double(), b.double()).any()
    with pytest.raises(ValueError):  # accumulators that could pass 2^53 are refused
        IntegerRunner(specs, network.export_integer_tables(), input_bound=2**60)


@pytest.mark.parametrize("latent_codec", CODECS)
def test_training_forward_agrees_with_the_integer_coder_in_float64(latent_codec):
    codec, coder = tiny(latent_codec)
    y = torch.randn(3, 24, 8, 12) * 4
    quality_index = torch.tensor([0, 13, 28])
    y_hat, likelihoods = codec(y, index_levels()[quality_index], dtype=torch.float64)
    symbols = coder.quantize(y, quality_index)
    assert torch.equal(y_hat.double(), coder.dequantize(symbols, quality_index).double())
    assert likelihoods["y"].shape == y.shape
    # the corrections matter: the same symbols with the hyperprior's means give other latents
    hyper_mean, _ = coder.h_s.run(symbols.z, quality_index)
    assert not torch.equal(symbols.y + hyper_mean / 2**ACTIVATION_FRAC_BITS, coder.dequantize(symbols, quality_index))


@pytest.mark.parametrize("latent_codec", CODECS)
def test_range_coding_round_trips_exactly_with_escapes(latent_codec):
    _, coder = tiny(latent_codec)
    y = torch.randn(2, 24, 8, 12) * 4
    y[0, 20, 0, :3] = torch.tensor([30000.0, -30000.0, 900.0])  # escaped, and clamped as context inputs
    y[1, 2, 3, 4] = -5000.0  # a checkerboard anchor's escape feeds its group's spatial context
    quality_index = torch.tensor([4, 20])
    symbols = coder.quantize(y, quality_index)
    for i in range(2):
        image = Symbols(symbols.z[i].numpy(), symbols.y[i].numpy())
        encoder = constriction.stream.queue.RangeEncoder()
        coder.encode(encoder, image, int(quality_index[i]))
        # the table index quantize derived (after the context corrections) is the one the symbols give again
        known = constriction.stream.queue.RangeEncoder()
        coder.encode(known, image, int(quality_index[i]), symbols.y_table_index[i].numpy())
        assert np.array_equal(known.get_compressed(), encoder.get_compressed())
        assert np.array_equal(symbols.y_table_index[i].numpy(), coder._one(image, int(quality_index[i])))
        decoder = constriction.stream.queue.RangeDecoder(encoder.get_compressed())
        decoded = coder.decode(decoder, Symbols(image.z.shape, image.y.shape), int(quality_index[i]))
        assert np.array_equal(decoded.z, image.z) and np.array_equal(decoded.y, image.y)
        # the means kept from decoding are those the context networks give when run again
        batch = Symbols(torch.from_numpy(decoded.z)[None], torch.from_numpy(decoded.y)[None])
        kept = coder.dequantize(batch, quality_index[i:i + 1])
        assert coder.decoded_means.get(decoded.z, decoded.y, int(quality_index[i])) is None  # used up
        assert torch.equal(kept, coder.dequantize(batch, quality_index[i:i + 1]))
        bits = coder.estimated_bits(image, int(quality_index[i]))
        assert abs(32 * len(encoder.get_compressed()) - bits) < 64 + 0.01 * bits


@pytest.mark.parametrize("latent_codec", CODECS)
def test_refinement_searches_against_the_corrected_means_and_scales_of_the_unrefined_symbols(latent_codec):
    from vaecodec.latent_codecs.channel_conditional import UNIT

    _, coder = tiny(latent_codec)
    y = torch.randn(2, 24, 8, 12) * 4
    quality_index = torch.tensor([4, 20])
    plain = coder.quantize(y, quality_index)
    seen = []
    refined = coder.quantize(y, quality_index, refine=lambda y, rate: seen.append(rate) or y)  # y left as it was
    assert torch.equal(refined.y, plain.y) and torch.equal(refined.y_table_index, plain.y_table_index)
    mean_fixed, scale_index = coder._side_all(plain.z, plain.y, quality_index)  # what the decoder will use
    assert torch.equal(seen[0].mean, mean_fixed.to(y.dtype) / UNIT)
    assert torch.equal(seen[0].scale_index, scale_index) and torch.equal(scale_index, plain.y_table_index)


def test_files_round_trip_and_are_deterministic_across_threads_and_batches(codec):
    images = [crop(i, 256, 192) for i in range(1, 9)]
    odd = crop(9, 80, 48)  # latents of odd size (5 x 3)
    assert codec.bytes_to_latents(codec.compress(odd, 4)) == codec.encode_latents(odd, 4)
    alone = [codec.compress(image, 4) for image in images]
    torch.set_num_threads(1)
    try:
        one_thread = codec.compress(images[0], 4)
        latents_one_thread = codec.bytes_to_latents(alone[2])
    finally:
        torch.set_num_threads(2)
    batched = codec.compress_batch(images, 4, batch_size=8)
    assert one_thread == alone[0] and batched == alone
    assert latents_one_thread == codec.bytes_to_latents(alone[2])
    for image, data in zip(images[:2], alone):
        assert codec.bytes_to_latents(data) == codec.encode_latents(image, 4)
    decoded_alone = np.asarray(codec.decompress(alone[3]))
    assert np.array_equal(decoded_alone, np.asarray(codec.decompress_batch(batched, batch_size=8)[3]))
    assert 10 * np.log10(255**2 / np.mean((decoded_alone - np.asarray(images[3], dtype=float)) ** 2)) > 24


def test_hostile_and_truncated_payloads_give_invalid_file(codec):
    data = codec.compress(crop(11, 64, 64), 4)
    for cut in range(0, len(data), 3):
        with pytest.raises(InvalidFile):
            codec.decompress(data[:cut])
    assert_random_payloads_never_crash(codec, data, (64, 64))


@pytest.mark.parametrize("latent_codec", CODECS)
def test_zero_new_networks_code_exactly_as_the_model_they_start_from(tmp_path_factory, latent_codec):
    """A warm start (context networks added to a hyperprior, or spatial networks to a channel-conditional
    model) has its start's symbols, means and tables: the same code length for every symbol, so the same file
    size (within the range coder's final word: the groups, or the checkerboard's passes, put the symbols in
    another order), and the same decoded pixels."""
    start = "mshp-n64" if latent_codec == "channel-conditional" else str(channel_conditional_weights(tmp_path_factory))
    reference = vaecodec.load(start, device="cpu")
    make = _cc_weights if latent_codec == "channel-conditional" else checkerboard_weights
    path = make(tmp_path_factory, perturbed=False)
    warm_start = vaecodec.load(str(path), device="cpu")
    for index, quality in ((5, 1.0), (7, 4.5), (9, 8.0)):
        image = crop(index, 128, 112)
        expected, latents = reference.encode_latents(image, quality), warm_start.encode_latents(image, quality)
        assert np.array_equal(latents.z_symbols, expected.z_symbols)
        assert np.array_equal(latents.y_symbols, expected.y_symbols)
        assert warm_start.estimated_bits(latents) == reference.estimated_bits(expected)
        data, expected_data = warm_start.latents_to_bytes(latents), reference.latents_to_bytes(expected)
        assert abs(len(data) - len(expected_data)) <= 4
        assert np.array_equal(np.asarray(warm_start.decompress(data)), np.asarray(reference.decompress(expected_data)))
    assert warm_start.config.latent_codec == latent_codec == model_type(path)  # read without torch (info)


def test_wide_latents_and_a_lighter_synthesis_than_analysis_train_export_and_code(tmp_path):
    """M = 320 latent channels (five groups), N = 192 in g_a and 128 in g_s: a training pass, an export, and an
    exact round trip of real files."""
    torch.manual_seed(0)
    config = ModelConfig(channels=192, synthesis_channels=128, latent_channels=320, hyper_channels=64,
                         latent_codec="channel-conditional")
    model = VAE(config)
    assert model.g_a[0].out_channels == 192 and model.g_s[0].out_channels == 128
    assert model.latent_codec.groups == (16, 16, 32, 64, 192)
    perturb(model.latent_codec)
    output = model(torch.rand(2, 3, 64, 64), torch.tensor([0.0, 7.0]))
    assert output["x_hat"].shape == (2, 3, 64, 64) and output["likelihoods"]["y"].shape == (2, 320, 4, 4)
    path = tmp_path / "wide.pt"
    save_weights(weights_of_model(model, "wide", fp16=True, training={}), path)
    codec = vaecodec.load(str(path), device="cpu")
    image = crop(3, 96, 64)
    latents = codec.encode_latents(image, 6)
    data = codec.latents_to_bytes(latents)
    assert codec.bytes_to_latents(data) == latents
    assert codec.decompress(data).size == image.size


def test_train_init_switches_latent_codec_keeping_every_shared_parameter():
    from vaecodec_cli.training import _with_latent_codec

    hyperprior = model_of_weights(read_weights(weights_path("mshp-n64"))[0])
    converted = _with_latent_codec(hyperprior, "channel-conditional")
    assert converted.config.latent_codec == "channel-conditional"
    state = converted.state_dict()
    for key, value in hyperprior.state_dict().items():
        assert torch.equal(state.pop(key), value), key
    assert state and all(".context." in key for key in state)
    back = _with_latent_codec(converted, "hyperprior")  # the context networks are left behind
    assert back.state_dict().keys() == hyperprior.state_dict().keys()


def test_fresh_context_hidden_units_respond_to_their_inputs():
    """With the scale position centred, a freshly initialised context network's first hidden units switch
    on for some inputs and off for others. Uncentred, the typical position (about 16 table steps) dominates
    many units' input, leaving them always off or always on; in training such units then died, and the
    network learned no useful correction."""
    torch.manual_seed(0)
    codec = ChannelConditionalLatentCodec.from_config(ModelConfig(latent_channels=128))
    network = codec.context[-1]  # the 64-channel group after 64 decoded channels
    group, earlier = 64, 64
    generator = torch.Generator().manual_seed(1)
    mean = torch.randn(4, group, 8, 8, generator=generator) * 0.3
    position = 16 + torch.randn(4, group, 8, 8, generator=generator) * 3  # typical trained positions
    symbols = torch.randint(-2, 3, (4, earlier, 8, 8), generator=generator).float()

    def switching_fraction(centre: float) -> float:
        first = network.convs[0]
        inputs = torch.cat([mean, position - centre, symbols], 1)
        on = torch.nn.functional.conv2d(inputs, first.weight, first.bias, padding=1) > 0
        per_unit = on.float().mean((0, 2, 3))
        return float(((per_unit > 0.05) & (per_unit < 0.95)).float().mean())

    from vaecodec.latent_codecs.channel_conditional import POSITION_CENTRE
    assert switching_fraction(POSITION_CENTRE) > 0.9
    assert switching_fraction(0.0) < 0.7  # what the centring fixes


def test_input_units_change_the_step_on_an_input_s_weights_not_the_network():
    torch.manual_seed(0)
    specs = (LayerSpec(6, 8, 1, ACTIVATION_FRAC_BITS, True, kernel=3),
             LayerSpec(8, 4, 1, ACTIVATION_FRAC_BITS, False, kernel=1))
    plain = IntegerNetwork(specs)
    units = torch.tensor([1, 1, 0.125, 0.125, 1, 1])
    slow = IntegerNetwork(specs, units)
    slow.keep_weights_of(plain)
    tables = plain.export_integer_tables()
    assert all(torch.equal(tables[key], value) for key, value in slow.export_integer_tables().items())
    again = IntegerNetwork(specs, units)  # shipped integers loaded for fine-tuning export the same integers
    again.load_state_dict(again.state_from_integer_tables(tables))
    assert all(torch.equal(tables[key], value) for key, value in again.export_integer_tables().items())
    # one Adam step of the same loss: the weights on inputs 2 and 3 move 8x less, the others alike
    x = torch.randn(2, 6, 5, 5)
    moved = []
    for network in (plain, slow):
        before = network.weight(0).detach().clone()
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
        network(x).square().sum().backward()
        optimizer.step()
        moved.append((network.weight(0).detach() - before).abs().mean((0, 2, 3)))
    assert torch.allclose(moved[1], moved[0] * units, rtol=1e-3)


def test_train_init_sets_the_context_position_rate_keeping_every_integer(tmp_path):
    from vaecodec.errors import UsageError
    from vaecodec_cli.training import _with_context_position_rate

    shipped = model_of_weights(read_weights(weights_path("default"))[0])
    converted = _with_context_position_rate(shipped, 0.125)
    assert converted.config.context_position_rate == 0.125
    levels = index_levels()
    before, after = shipped.latent_codec.export_tables(levels), converted.latent_codec.export_tables(levels)
    assert before["context"].keys() == after["context"].keys()
    assert all(torch.equal(value, after["context"][key]) for key, value in before["context"].items())
    # saved and loaded again, the weights come back in the new parameterisation, the same integers
    path = tmp_path / "converted.pt"
    save_weights(weights_of_model(converted, "converted", fp16=False, training={}), path)
    again = model_of_weights(read_weights(path)[0])
    assert again.config.context_position_rate == 0.125
    assert torch.equal(again.latent_codec.context[0].convs[0].weight, converted.latent_codec.context[0].convs[0].weight)
    with pytest.raises(UsageError):
        _with_context_position_rate(model_of_weights(read_weights(weights_path("mshp-n64"))[0]), 0.125)
