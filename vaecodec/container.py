"""The ``.vae`` file format: a small self-describing header around one range-coded payload.

Layout (version 1), integers little-endian, ``varint`` = unsigned LEB128:

    magic        3 bytes  b"VAE"
    version      1 byte   FORMAT_VERSION
    model name   1 byte length + name (1 to 64 characters: letters, digits, "." "_" "+" "-"; see MODEL_NAME)
    model hash   4 bytes  first bytes of the SHA-256 of the weights (see zoo.py)
    quality      1 byte   quality index (see quality.py)
    colour mode  1 byte   0 = RGB, 1 = L (grayscale)
    width        varint   original image width
    height       varint   original image height
    payload      varint length + bytes: z symbols then y symbols, one constriction range-coder stream
    crc32        4 bytes  CRC-32 of everything before it

The latent shapes follow from width, height and the model, so they are not repeated. For a Kodak image the
overhead is 30 bytes with an 8-character model name. ``unpack`` rejects anything malformed with an
``InvalidFile`` subclass and never allocates more than the file's own size. Every value has one encoding:
varints are minimal (no padding 0x80 bytes) and nothing may follow the payload; the payload itself must be
exactly what the range decoder consumes (checked while decoding, in ``entropy/coder.py``). The CRC is
checked before any field, the version byte included, so a damaged file reads as damaged.
"""

import re
import struct
import zlib
from dataclasses import dataclass

from .errors import ImageTooLarge, InvalidFile, UnsupportedVersion, UsageError
from .quality import DEFAULT_QUALITY, QUALITY_INDEXES, QUALITY_STEP, index_to_quality, quality_to_index  # noqa: F401

MAGIC = b"VAE"
FORMAT_VERSION = 1
MODES = ("RGB", "L")
MAX_SIDE = 1 << 16
MAX_PIXELS = 1 << 26  # 67 megapixels: what the format allows
# What a decoder decodes unless told otherwise (``max_pixels=``, ``--max-pixels``): like Pillow's
# decompression-bomb guard, a small file must not make the decoder spend gigabytes and minutes by default.
DEFAULT_MAX_PIXELS = 50_000_000
# A model name is looked up among installed models, never used as a path: a short, fixed character set.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def is_model_name(name: str) -> bool:
    return isinstance(name, str) and MODEL_NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class ImageHeader:
    """What a receiver must know besides the symbols: model identity, quality and the original image."""

    model_name: str
    model_hash: bytes
    quality_index: int
    mode: str
    width: int
    height: int

    @property
    def quality(self) -> float:
        return index_to_quality(self.quality_index)

    def __repr__(self) -> str:  # the quality and hash as the CLI and users write them
        return (f"ImageHeader(model_name={self.model_name!r}, model_hash={self.model_hash.hex()!r}, "
                f"quality={self.quality:g}, mode={self.mode!r}, width={self.width}, height={self.height})")


def write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class Reader:
    """Bounds-checked cursor over bytes; any overrun is an InvalidFile, never an IndexError."""

    def __init__(self, data: bytes, what: str):
        self.data, self.position, self.what = memoryview(data), 0, what

    def take(self, count: int) -> bytes:
        if count < 0 or self.position + count > len(self.data):
            raise InvalidFile(f"{self.what} is truncated")
        chunk = bytes(self.data[self.position:self.position + count])
        self.position += count
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self, max_bytes: int = 5) -> int:
        """A minimal LEB128 number: a last byte of 0 after others would be padding, a second encoding."""
        value = 0
        for shift in range(0, 7 * max_bytes, 7):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise InvalidFile(f"{self.what} has a padded number field")
                return value
        raise InvalidFile(f"{self.what} has a malformed length field")

    def at_end(self) -> bool:
        return self.position == len(self.data)


def check_crc_and_magic(data: bytes, magic: bytes, version: int, what: str) -> Reader:
    """Validate magic, trailing CRC-32 and version, in that order (a flipped bit in the version byte is damage,
    not a newer file); return a Reader positioned after the version byte."""
    if len(data) < len(magic) or data[:len(magic)] != magic:
        raise InvalidFile(f"not a {what} (wrong magic bytes)")
    if len(data) < len(magic) + 1 + 4:
        raise InvalidFile(f"{what} is truncated")
    (stored_crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) != stored_crc:
        raise InvalidFile(f"{what} is corrupted or truncated (CRC mismatch)")
    file_version = data[len(magic)]
    if file_version > version:
        raise UnsupportedVersion(
            f"{what} has format version {file_version}; this vaecodec reads up to version {version}: upgrade it")
    if file_version != version:
        raise InvalidFile(f"{what} has unknown format version {file_version}")
    reader = Reader(data[:-4], what)
    reader.take(len(magic) + 1)
    return reader


def write_image_header(header: ImageHeader) -> bytes:
    if not is_model_name(header.model_name):
        raise UsageError(f"model name {header.model_name!r} cannot be written into a .vae file: use 1 to "
                         f"64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit")
    name = header.model_name.encode("ascii")
    return b"".join([
        bytes([len(name)]), name, header.model_hash,
        bytes([header.quality_index, MODES.index(header.mode)]),
        write_varint(header.width), write_varint(header.height),
    ])


def read_image_header(reader: Reader) -> ImageHeader:
    name = reader.take(reader.byte()).decode("latin-1")
    if not is_model_name(name):
        raise InvalidFile(f"{reader.what} has a malformed model name")
    model_hash = reader.take(4)
    quality_index, mode_index = reader.byte(), reader.byte()
    width, height = reader.varint(), reader.varint()
    if quality_index >= QUALITY_INDEXES:
        raise InvalidFile(f"{reader.what} has an invalid quality index {quality_index}")
    if mode_index >= len(MODES):
        raise InvalidFile(f"{reader.what} has an unknown colour mode {mode_index}")
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise InvalidFile(f"{reader.what} has invalid image dimensions {width}x{height}")
    return ImageHeader(name, model_hash, quality_index, MODES[mode_index], width, height)


def check_pixels(header: ImageHeader, max_pixels, what: str = ""):
    """Raise ImageTooLarge when the image has more than ``max_pixels`` pixels (None: no limit but the format's)."""
    if max_pixels is not None and header.width * header.height > max_pixels:
        raise ImageTooLarge(
            f"{what + ': ' if what else ''}a {header.width}x{header.height} image ({header.width * header.height} "
            f"pixels) is over the limit of {max_pixels} pixels; raise it to decode (--max-pixels, max_pixels=)")


def pack(header: ImageHeader, payload: bytes) -> bytes:
    """Serialize a compressed image."""
    body = MAGIC + bytes([FORMAT_VERSION]) + write_image_header(header) + write_varint(len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def unpack(data: bytes) -> tuple:
    """Parse and validate a .vae file: returns (ImageHeader, payload bytes)."""
    reader = check_crc_and_magic(bytes(data), MAGIC, FORMAT_VERSION, ".vae file")
    header = read_image_header(reader)
    payload_length = reader.varint()
    payload = reader.take(payload_length)
    if not reader.at_end():
        raise InvalidFile(".vae file has trailing bytes after the payload")
    return header, payload
