"""What is the channel-checkerboard latent codec's own: anchors, spatial corrections at the non-anchors alone,
the warm start's parameters, its tables. (Exact coding, determinism, hostile input and a warm start that
codes exactly as its channel-conditional start run for it in tests/test_channel_conditional.py.)"""

import pytest
import torch

from vaecodec.errors import InvalidFile
from vaecodec.latent_codecs.channel_conditional import ChannelCheckerboardCoder, anchor_mask
from vaecodec.model import ModelConfig
from vaecodec.weights import model_of_weights, read_weights

from test_channel_conditional import channel_conditional_weights, checkerboard_weights, tiny


def test_anchors_are_half_the_positions_and_neighbour_only_non_anchors():
    anchor = anchor_mask(5, 6)
    assert anchor[0, 0] and not anchor[0, 1] and not anchor[1, 0] and anchor[1, 1]
    assert int(anchor.sum()) == 15
    inside = ~anchor[1:-1, 1:-1]  # every direct neighbour of a non-anchor is an anchor
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        assert anchor[1 + dy:5 - 1 + dy, 1 + dx:6 - 1 + dx][inside].all()


def test_spatial_corrections_move_the_non_anchors_alone():
    _, coder = tiny("channel-checkerboard")
    y = torch.randn(3, 24, 8, 12) * 4
    quality_index = torch.tensor([0, 13, 28])
    symbols = coder.quantize(y, quality_index)
    mean_fixed, scale_fixed = coder._hyper(symbols.z, quality_index)
    start, end = coder.bounds[1]
    mean, scale = coder._group(1, mean_fixed, scale_fixed, symbols.y[:, :start])
    corrected, _ = coder._spatial_step(1, mean, scale, symbols.y[:, start:end])
    anchor = anchor_mask(8, 12)
    assert torch.equal(corrected[..., anchor], mean[..., anchor])
    assert not torch.equal(corrected[..., ~anchor], mean[..., ~anchor])


def test_train_init_adds_spatial_networks_keeping_every_shared_parameter(tmp_path_factory):
    from vaecodec_cli.training import _with_latent_codec

    channel_conditional = model_of_weights(read_weights(channel_conditional_weights(tmp_path_factory))[0])
    converted = _with_latent_codec(channel_conditional, "channel-checkerboard")
    state = converted.state_dict()
    for key, value in channel_conditional.state_dict().items():
        assert torch.equal(state.pop(key), value), key
    assert state and all(".spatial." in key for key in state)
    for key, value in state.items():
        if key.endswith((".convs.2.weight", ".convs.2.bias")):  # output layers: zero corrections
            assert not value.any(), key


def test_weights_without_a_spatial_network_are_refused_by_name(tmp_path_factory):
    weights, _ = read_weights(checkerboard_weights(tmp_path_factory, perturbed=False))
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
