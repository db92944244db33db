"""Range coding of integer symbols against frozen frequency tables, with constriction.

Each symbol comes with the index of the table that models it (a channel of z, or a scale of y). Symbols are
grouped by table with one stable argsort, and each group is coded in one vectorized constriction call, so
the Python loop runs over tables (at most a few dozen), never over symbols. A symbol outside its table's
range is coded as the table's escape entry; after all groups, the escaped values follow as raw 16-bit
numbers. Encoder and decoder derive the same grouping from the same table indexes, which are integers
(see ``integer_net.py``), so the bitstream is machine independent. ``decode_exactly`` checks that a payload
is exactly the words the decoder consumes: no more, no less.
"""

import constriction
import numpy as np

from ..errors import InvalidFile
from .tables import PRECISION, table_sizes

SYMBOL_MIN, SYMBOL_MAX = -32768, 32767  # escaped values are coded as 16-bit numbers
CHECK_EVERY = 1 << 16  # symbols decoded between checks of a payload's length (see PayloadDecoder.spend)
_RAW_MODEL = constriction.stream.model.Uniform(1 << 16)


class TableSet:
    """Frozen tables ready for coding: row ``t`` codes symbols ``low[t] .. low[t] + size[t] - 2`` plus escape."""

    def __init__(self, frequencies: np.ndarray, table_low: np.ndarray):
        frequencies = np.asarray(frequencies, dtype=np.int64)
        self.low = np.asarray(table_low, dtype=np.int64)
        self.size = table_sizes(frequencies).astype(np.int64)
        self.escape = self.size - 1
        self.models = [
            constriction.stream.model.Categorical(row[:size] / float(1 << PRECISION), perfect=False)
            for row, size in zip(frequencies, self.size)
        ]
        # -log2 probability of every entry, for rate estimates without coding
        self.bits = [-np.log2(row[:size] / float(1 << PRECISION)) for row, size in zip(frequencies, self.size)]
        # The fewest bits the coder can spend on an entry. perfect=False quantizes (fast_quantized_cdf) to at most
        # frequency + 2 of the 2^PRECISION slots; one more covers the rounding of its float cumulative sums.
        self.min_bits = [np.maximum(0.0, -np.log2((row[:size] + 3) / float(1 << PRECISION)))
                         for row, size in zip(frequencies, self.size)]

    def __len__(self) -> int:
        return len(self.models)

    def entries(self, symbols: np.ndarray, table_index: np.ndarray):
        """Table entries of the symbols and the mask of those that need an escape."""
        entries = symbols.astype(np.int64) - self.low[table_index]
        escaped = (entries < 0) | (entries >= self.escape[table_index])
        return np.where(escaped, self.escape[table_index], entries), escaped

    def code_lengths(self, symbols: np.ndarray, table_index: np.ndarray) -> tuple:
        """(bits each symbol costs under its table, float64 shaped like ``symbols``, escapes' 16 raw bits
        included; number of escaped symbols)."""
        table_index = table_index.ravel().astype(np.int64)
        entries, escaped = self.entries(symbols.ravel(), table_index)
        frequencies = np.zeros((len(self), int(self.size.max())))
        for table, bits in enumerate(self.bits):
            frequencies[table, :len(bits)] = bits
        bits = frequencies[table_index, entries] + 16.0 * escaped
        return bits.reshape(symbols.shape), int(escaped.sum())

    def estimated_bits(self, symbols: np.ndarray, table_index: np.ndarray) -> float:
        """Information content of the symbols under the tables (escapes counted with their 16 raw bits)."""
        symbols, table_index = symbols.ravel(), table_index.ravel()
        entries, escaped = self.entries(symbols, table_index)
        total = 16.0 * escaped.sum()
        for table in np.unique(table_index):
            chosen = table_index == table
            total += self.bits[table][entries[chosen]].sum()
        return float(total)


def _grouping(table_index: np.ndarray, num_tables: int):
    order = np.argsort(table_index, kind="stable")
    counts = np.bincount(table_index, minlength=num_tables)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    groups = [(t, bounds[t], bounds[t + 1]) for t in np.nonzero(counts)[0]]
    return order, groups


def encode_symbols(encoder, symbols: np.ndarray, table_index: np.ndarray, tables: TableSet):
    """Append ``symbols`` (any int array) to a constriction RangeEncoder; table_index has the same shape."""
    symbols, table_index = symbols.ravel(), table_index.ravel().astype(np.int64)
    order, groups = _grouping(table_index, len(tables))
    entries, escaped = tables.entries(symbols[order], table_index[order])
    entries = entries.astype(np.int32)
    for table, start, end in groups:
        encoder.encode(entries[start:end], tables.models[table])
    raw = np.clip(symbols[order][escaped], SYMBOL_MIN, SYMBOL_MAX) - SYMBOL_MIN
    if raw.size:
        encoder.encode(raw.astype(np.int32), _RAW_MODEL)


def decode_symbols(decoder, table_index: np.ndarray, tables: TableSet) -> np.ndarray:
    """Inverse of ``encode_symbols``: returns int64 symbols shaped like table_index.

    Through a PayloadDecoder, the information decoded so far is checked against the payload every
    ``CHECK_EVERY`` symbols, so a short payload announcing a large image costs about its own size to refuse.
    """
    shape, table_index = table_index.shape, table_index.ravel().astype(np.int64)
    order, groups = _grouping(table_index, len(tables))
    spend = getattr(decoder, "spend", None)
    entries = np.empty(table_index.size, dtype=np.int64)
    for table, start, end in groups:
        for begin in range(start, end, CHECK_EVERY):  # smaller calls, the same symbols from the same stream
            stop = min(end, begin + CHECK_EVERY)
            entries[begin:stop] = decoder.decode(tables.models[table], int(stop - begin))
            if spend is not None:
                spend(float(tables.min_bits[table][entries[begin:stop]].sum()))
    sorted_tables = table_index[order]
    escaped = entries == tables.escape[sorted_tables]
    values = entries + tables.low[sorted_tables]
    escape_count = int(escaped.sum())
    if escape_count:
        if spend is not None:
            spend(16.0 * escape_count)
        values[escaped] = decoder.decode(_RAW_MODEL, escape_count).astype(np.int64) + SYMBOL_MIN
    symbols = np.empty_like(values)
    symbols[order] = values
    return symbols.reshape(shape)


class PayloadDecoder:
    """A constriction RangeDecoder over a payload that remembers its ``decode`` calls (to replay them, see
    ``decode_exactly``) and tells early that the payload is too short for what was decoded so far (``spend``)."""

    def __init__(self, words: np.ndarray, what: str):
        self.readable = len(words)  # a valid stream reads no more than these words
        self.what, self.calls, self.decoded = what, [], []
        self.spent = 0.0  # bits of information decoded so far
        self.decoder = constriction.stream.queue.RangeDecoder(words)

    def decode(self, model, count: int):
        self.calls.append((model, count))
        entries = self.decoder.decode(model, count)
        self.decoded.append((model, entries))
        return entries

    def spend(self, bits: float):
        """Count decoded symbols that cost the coder at least ``bits`` (``TableSet.min_bits``); raise InvalidFile
        once the payload cannot hold all that. After symbols of information I the range, which stays in
        [2^32, 2^64), has shrunk by at least 2^-I and been widened by 2^32 per word read, so the decoder has read
        at least 2 + (I - 32) / 32 words; one word of margin covers rounding in I."""
        self.spent += bits
        if self.spent > 32 * self.readable:
            raise InvalidFile(f"{self.what} ends before its last symbol")


def decode_exactly(payload: bytes, decode, what: str = ".vae payload"):
    """``decode(decoder)`` with a PayloadDecoder over ``payload`` (32-bit little-endian words), checking that the
    payload is exactly the words the decoding consumed; raises InvalidFile otherwise.

    The decoder reads two words at the start and one at each renormalization, and shifts in zeros past the end
    of its data, so an empty or short payload would silently decode to garbage. The encoder seals its stream
    with one word, which the decoder reads followed by one implied zero word, or, when one would not identify
    the final range, with two, the second an explicit zero, which the decoder reads exactly to the end.
    ``maybe_exhausted()`` is true when every word was read (and the state is one a sealed stream ends in), so
    the calls are decoded over the payload and the implied zero word, then replayed to tell which case this is:
    over two zero words after the payload, of which the second must stay unread; or over the payload alone,
    which must be used up and end in a zero word. Appending a zero word to a one-word seal would still pass
    those checks (the state that tells the two apart is not visible from Python), so last the decoded symbols
    are encoded again: the payload must be exactly the bytes the encoder writes for them, one encoding per
    file. That costs one encoding pass, a small part of the entropy-decoding time.
    """
    if not payload or len(payload) % 4:
        raise InvalidFile(f"{what} has a malformed length ({len(payload)} bytes)")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    zero = np.zeros(1, dtype=np.uint32)
    decoder = PayloadDecoder(np.concatenate([words, zero]), what)
    result = decode(decoder)
    implied_word_read = decoder.decoder.maybe_exhausted()
    if not implied_word_read and words[-1] != 0:
        raise InvalidFile(f"{what} does not end with its last symbol")
    replay = constriction.stream.queue.RangeDecoder(np.concatenate([words, zero, zero]) if implied_word_read
                                                     else words)
    for model, count in decoder.calls:
        replay.decode(model, count)
    if implied_word_read and replay.maybe_exhausted():
        raise InvalidFile(f"{what} ends before its last symbol")
    if not implied_word_read and not replay.maybe_exhausted():
        raise InvalidFile(f"{what} does not end with its last symbol")
    encoder = constriction.stream.queue.RangeEncoder()
    for model, entries in decoder.decoded:
        encoder.encode(entries.astype(np.int32), model)
    if not np.array_equal(encoder.get_compressed(), words):
        raise InvalidFile(f"{what} is not the encoding of its symbols (bytes added or changed after them)")
    return result
