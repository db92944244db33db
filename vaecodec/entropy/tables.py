"""Integer frequency tables: the frozen form of every entropy model used at coding time.

A table codes the symbols ``low .. low + n - 1`` as entries ``0 .. n - 1`` and has one more entry, the
escape, for any symbol outside that range (its value then follows as a raw 16-bit number, see
``coder.py``). Frequencies are positive integers summing exactly to 2^precision, so the model is the same
bits on every machine. Rows of a table set are padded with zeros to a common width; ``table_sizes`` gives
each row's true length (escape included).
"""

import numpy as np

PRECISION = 24  # bits; matches constriction's default range coder model precision


def frequency_tables(pmf: np.ndarray, valid: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Quantize probability rows to integer frequencies with an escape entry after the last valid one.

    pmf, valid: (rows, span) arrays; each row's valid entries are a prefix. Returns int32 (rows, span + 1):
    valid entries and the escape get frequency >= 1, everything else 0, every row sums to 2^precision.
    """
    rows, span = pmf.shape
    sizes = valid.sum(axis=1)
    pmf = np.where(valid, np.clip(pmf, 0.0, 1.0), 0.0)
    tail = np.clip(1.0 - pmf.sum(axis=1), 0.0, 1.0)
    probabilities = np.zeros((rows, span + 1))
    probabilities[:, :span] = pmf
    probabilities[np.arange(rows), sizes] = tail  # the escape sits right after the valid entries
    entries = np.arange(span + 1)[None, :] <= sizes[:, None]
    probabilities /= probabilities.sum(axis=1, keepdims=True)

    total = 2**precision
    spare = total - (sizes + 1)  # every entry first gets a count of 1
    counts = np.floor(probabilities * spare[:, None]).astype(np.int64) + entries
    counts[np.arange(rows), counts.argmax(axis=1)] += total - counts.sum(axis=1)
    assert (counts.sum(axis=1) == total).all() and (counts[entries] >= 1).all()
    return counts.astype(np.int32)


def table_sizes(frequencies: np.ndarray) -> np.ndarray:
    """Number of entries (escape included) of each row: all rows have their nonzero entries as a prefix."""
    return (frequencies > 0).sum(axis=1).astype(np.int32)
