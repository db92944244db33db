"""Range coding of integer symbols against frozen frequency tables, with constriction.

Each symbol comes with the index of the table that models it (a channel of z, or a scale of y). Symbols are
grouped by table with one stable argsort, and each group is coded in one vectorized constriction call, so
the Python loop runs over tables (at most a few dozen), never over symbols. A symbol outside its table's
range is coded as the table's escape entry; after all groups, the escaped values follow as raw 16-bit
numbers. Encoder and decoder derive the same grouping from the same table indexes, which are integers
(see ``integer_net.py``), so the bitstream is machine independent.
"""

import constriction
import numpy as np

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
