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

    def __len__(self) -> int:
        return len(self.models)

    def entries(self, symbols: np.ndarray, table_index: np.ndarray):
        """Table entries of the symbols and the mask of those that need an escape."""
        entries = symbols.astype(np.int64) - self.low[table_index]
        escaped = (entries < 0) | (entries >= self.escape[table_index])
        return np.where(escaped, self.escape[table_index], entries), escaped

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
    """Inverse of ``encode_symbols``: returns int64 symbols shaped like table_index."""
    shape, table_index = table_index.shape, table_index.ravel().astype(np.int64)
    order, groups = _grouping(table_index, len(tables))
    entries = np.empty(table_index.size, dtype=np.int64)
    for table, start, end in groups:
        entries[start:end] = decoder.decode(tables.models[table], int(end - start))
    sorted_tables = table_index[order]
    escaped = entries == tables.escape[sorted_tables]
    values = entries + tables.low[sorted_tables]
    escape_count = int(escaped.sum())
    if escape_count:
        values[escaped] = decoder.decode(_RAW_MODEL, escape_count).astype(np.int64) + SYMBOL_MIN
    symbols = np.empty_like(values)
    symbols[order] = values
    return symbols.reshape(shape)


class PayloadDecoder:
    """A constriction RangeDecoder over a payload that remembers its ``decode`` calls (to replay them, see
    ``decode_exactly``) and can tell early that the payload is too short for what was decoded so far."""

    def __init__(self, words: np.ndarray, what: str):
        self.words, self.what, self.calls = len(words), what, []
        self.decoder = constriction.stream.queue.RangeDecoder(words)

    def decode(self, model, count: int):
        self.calls.append((model, count))
        return self.decoder.decode(model, count)

    def require(self, bits: float):
        """Raise InvalidFile if symbols of ``bits`` information (``TableSet.estimated_bits``) cannot come from this
        payload. After symbols of information I the range, which stays in [2^32, 2^64), has shrunk by at least
        2^-I and been widened by 2^32 per word read, so the decoder has read at least 2 + (I - 32) / 32 words;
        one word of margin covers rounding in I."""
        if bits > 32 * self.words:
            raise InvalidFile(f"{self.what} ends before its last symbol")


def decode_exactly(payload: bytes, decode, what: str = ".vae payload"):
    """``decode(decoder)`` with a PayloadDecoder over ``payload`` (32-bit little-endian words), checking that the
    payload is exactly the words the decoding consumed; raises InvalidFile otherwise.

    The decoder reads two words at the start and one at each renormalization, and shifts in zeros past the end
    of its data, so an empty or short payload would silently decode to garbage. The encoder's seal leaves out a
    final zero word unless its last word is zero: a payload it wrote is read to exactly one word past its end
    when its last word is not zero, and exactly to its end when it is. ``maybe_exhausted()`` is true when every
    word was read (and the state is one a sealed stream ends in), so: decode over the payload plus that one
    implied zero word, which must be used up, then replay the same calls with a further zero word, which must
    be left unread. (Appending a zero word to a payload that implies one thus gives a second payload of the
    same symbols: the state that tells which of the two the encoder wrote is not visible from Python.)
    """
    if not payload or len(payload) % 4:
        raise InvalidFile(f"{what} has a malformed length ({len(payload)} bytes)")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    words = np.concatenate([words, np.zeros(1 if words[-1] else 0, dtype=np.uint32)])
    decoder = PayloadDecoder(words, what)
    result = decode(decoder)
    if not decoder.decoder.maybe_exhausted():
        raise InvalidFile(f"{what} has data after its last symbol")
    replay = constriction.stream.queue.RangeDecoder(np.concatenate([words, np.zeros(1, dtype=np.uint32)]))
    for model, count in decoder.calls:
        replay.decode(model, count)
    if replay.maybe_exhausted():
        raise InvalidFile(f"{what} ends before its last symbol")
    return result
