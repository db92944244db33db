"""Quantized latents of one image, and their exact, model-independent byte form.

``Latents`` is what ``Codec.encode_latents`` returns and ``Codec.decode_latents`` takes: the integer
symbols of z and y plus the header fields needed to decode them. ``to_bytes`` stores the symbols raw
(int16, not entropy coded: use ``Codec.compress`` for the compact form), so another process can inspect or
forward them without the model; ``from_bytes`` validates everything and round-trips exactly.

Byte layout (version 1): b"VAEL", version byte, the image header of ``container.py``, then for z and y:
three varints (channels, height, width) and channels*height*width little-endian int16; finally CRC-32.
"""

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .container import ImageHeader, check_crc_and_magic, read_image_header, write_image_header, write_varint
from .errors import InvalidFile

MAGIC = b"VAEL"
FORMAT_VERSION = 1
SYMBOL_MIN, SYMBOL_MAX = -32768, 32767  # symbols are clamped to int16 by the encoder
MAX_SYMBOLS = 1 << 28


@dataclass(eq=False)
class Latents:
    header: ImageHeader
    z_symbols: np.ndarray  # int16 (channels, height, width)
    y_symbols: np.ndarray  # int16 (channels, height, width)

    @property
    def quality(self) -> float:
        return self.header.quality

    def __eq__(self, other) -> bool:
        return (isinstance(other, Latents) and self.header == other.header
                and np.array_equal(self.z_symbols, other.z_symbols)
                and np.array_equal(self.y_symbols, other.y_symbols))

    def to_bytes(self) -> bytes:
        parts = [MAGIC, bytes([FORMAT_VERSION]), write_image_header(self.header)]
        for symbols in (self.z_symbols, self.y_symbols):
            parts += [write_varint(n) for n in symbols.shape]
            parts.append(np.ascontiguousarray(symbols, dtype="<i2").tobytes())
        body = b"".join(parts)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Latents":
        reader = check_crc_and_magic(bytes(data), MAGIC, FORMAT_VERSION, "latents message")
        header = read_image_header(reader)
        arrays = []
        for _ in range(2):
            shape = tuple(reader.varint() for _ in range(3))
            count = int(np.prod(shape, dtype=np.int64))
            if count == 0 or count > MAX_SYMBOLS:
                raise InvalidFile(f"latents message has an invalid latent shape {shape}")
            raw = reader.take(2 * count)
            arrays.append(np.frombuffer(raw, dtype="<i2").reshape(shape).astype(np.int16))
        if not reader.at_end():
            raise InvalidFile("latents message has trailing bytes")
        return cls(header, arrays[0], arrays[1])
