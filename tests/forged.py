"""Shared check of the hostile-file tests: a payload of random bytes behind a valid header and CRC."""

import numpy as np

from vaecodec import container
from vaecodec.errors import InvalidFile


def assert_random_payloads_never_crash(codec, data: bytes, size: tuple):
    """Random payloads of several lengths in ``data``'s container (CRC recomputed) either are refused with
    InvalidFile or decode to an image of ``size``: never another exception."""
    header, payload = container.unpack(data)
    rng = np.random.default_rng(1)
    for length in (0, 4, 8, len(payload), 4 * len(payload)):
        forged = container.pack(header, rng.integers(0, 256, length, dtype=np.uint8).tobytes())
        try:
            image = codec.decompress(forged)
        except InvalidFile:
            continue
        assert image.size == size
