"""Integer tables, range coding with escapes, and the exactness of the integer hyper-synthesis."""

import constriction
import numpy as np
import torch

from vaecodec.entropy.coder import TableSet, decode_symbols, encode_symbols
from vaecodec.entropy.gaussian import GaussianConditional, NUM_SCALES
from vaecodec.entropy.tables import PRECISION, frequency_tables, table_sizes
from vaecodec.integer_net import ACTIVATION_FRAC_BITS, HyperSynthesis, IntegerHyperSynthesis


def test_frequency_tables_are_positive_exact_and_end_with_an_escape():
    pmf = np.array([[0.2, 0.5, 0.3, 0.0], [1.0, 1e-12, 0.0, 0.0]])
    valid = np.array([[True, True, True, False], [True, True, False, False]])
    counts = frequency_tables(pmf, valid)
    assert (counts.sum(axis=1) == 2**PRECISION).all()
    assert list(table_sizes(counts)) == [4, 3]
    assert (counts[0, :4] > 0).all() and counts[0, 4] == 0
    assert counts[1, 2] >= 1  # the escape of a table whose mass is all inside still has a code


def test_gaussian_tables_cover_every_scale():
    tables = GaussianConditional.export_tables(PRECISION)
    assert tables["frequencies"].shape[0] == NUM_SCALES
    assert (tables["frequencies"].sum(axis=1) == 2**PRECISION).all()
    assert (np.diff(tables["table_low"]) <= 0).all()  # wider scales reach further


def test_range_coding_round_trips_with_escapes():
    exported = GaussianConditional.export_tables(PRECISION)
    tables = TableSet(exported["frequencies"], exported["table_low"])
    rng = np.random.default_rng(0)
    table_index = rng.integers(0, NUM_SCALES, (4, 16, 16))
    symbols = np.round(rng.normal(0, 3, table_index.shape)).astype(np.int64)
    symbols[0, 0, :4] = [32767, -32768, 500, -9000]  # far outside the small-scale tables
    encoder = constriction.stream.queue.RangeEncoder()
    encode_symbols(encoder, symbols, table_index, tables)
    decoder = constriction.stream.queue.RangeDecoder(encoder.get_compressed())
    assert np.array_equal(decode_symbols(decoder, table_index, tables), symbols)


QUALITY_LEVEL = torch.arange(29, dtype=torch.float64) / 4  # zero-based level of each quality index


def _hyper_synthesis():
    torch.manual_seed(0)
    network = HyperSynthesis(z_channels=8, hidden_channels=16, y_channels=12, num_scales=NUM_SCALES, levels=8)
    with torch.no_grad():  # non-trivial level tables, as after training
        network.level_scale_shift.normal_(0, 0.2)
        network.level_log_mean_gain.normal_(0, 0.1)
    integer = IntegerHyperSynthesis(network.specs, network.export_integer_tables(QUALITY_LEVEL), 12, NUM_SCALES)
    return network, integer


def test_integer_path_matches_the_fake_quantized_training_path():
    network, integer = _hyper_synthesis()
    z = torch.randint(-6, 7, (29, 8, 5, 7)).float()
    quality_index = torch.arange(29)  # every quality, fractional levels included
    mean, scale_position = network(z, QUALITY_LEVEL, dtype=torch.float64)
    mean_fixed, scale_index = integer.run(z.long(), quality_index)
    agree_mean = (mean_fixed.double() / 2**ACTIVATION_FRAC_BITS == mean.double()).double().mean()
    agree_scale = (torch.floor(scale_position + 0.5).long() == scale_index).double().mean()
    assert agree_mean == 1 and agree_scale == 1  # same grid, same half-up rounding, exact float64 sums


def test_integer_path_is_independent_of_batch_and_threads():
    _, integer = _hyper_synthesis()
    z = torch.randint(-20, 21, (8, 8, 6, 6))
    quality_index = torch.arange(8) * 3
    alone = [integer.run(z[i:i + 1], quality_index[i:i + 1]) for i in range(8)]
    torch.set_num_threads(1)
    try:
        batched = integer.run(z, quality_index)
    finally:
        torch.set_num_threads(2)
    for i, (mean, scale) in enumerate(alone):
        assert torch.equal(mean[0], batched[0][i]) and torch.equal(scale[0], batched[1][i])
