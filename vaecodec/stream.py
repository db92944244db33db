"""Sending compressed images and latents over a byte stream: a TCP socket, a pipe or a file.

Each message is one frame, integers little-endian:

    offset   size  field
    0        4     magic b"VAES"
    4        1     version (STREAM_VERSION)
    5        1     type: 1 IMAGE (a .vae file), 2 LATENTS (Latents.to_bytes), 3 FILE (any bytes, unchecked),
                         4 ACK, 5 NACK
    6        1     flags: bit 0 = the sender waits for an ACK or NACK of this message; other bits are 0
    7        1     name length N
    8        4     payload length L
    12       4     CRC-32 of bytes 0..11
    16       N     name, UTF-8. IMAGE, LATENTS, FILE: the sender's file name (a hint: the receiver sanitizes
                   it, see ``safe_name``); ACK: the name the receiver stored it under; NACK: the message's name
    16+N     L     payload. IMAGE, LATENTS, FILE: the bytes sent; ACK: empty; NACK: the reason, UTF-8
    16+N+L   4     CRC-32 of name and payload

The header has its own CRC, so a damaged length is caught before the receiver waits for that many bytes, and
L is checked against the receiver's limit before any payload is read; the payload buffer then grows only as
bytes arrive. A message must arrive whole within a deadline counted from its first byte (``message_timeout``),
so a peer that trickles bytes cannot hold a connection by staying just inside the idle timeout. The stream
ends cleanly only between frames: an end anywhere else is reported as truncation.
Replies (ACK/NACK) travel the other way, one per message that asked for one, in order, so they carry no
sequence number. Receivers validate IMAGE and LATENTS payloads (container CRC and header; model, given a codec).

A message that failed validation but whose frame was intact (bad payload, body CRC, unsafe name) leaves the
stream at a frame boundary: the error is ``resumable`` and the next message can still be received. Framing
errors (magic, version, header CRC, size, truncation, timeout) are not: the connection should be closed.
"""

import socket
import struct
import time
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from . import container
from .errors import InvalidFile, UnsupportedImage, UsageError, VaecodecError, printable
from .latents import MAGIC as LATENTS_MAGIC, Latents

MAGIC = b"VAES"
STREAM_VERSION = 1
HEADER_FIELDS = struct.Struct("<4sBBBBI")  # magic, version, type, flags, name length, payload length
CRC = struct.Struct("<I")
HEADER_SIZE = HEADER_FIELDS.size + CRC.size
FLAG_WANTS_REPLY = 0x01
MAX_NAME_BYTES = 255
MAX_PAYLOAD = 0xFFFFFFFF
DEFAULT_MAX_MESSAGE_SIZE = 64 << 20  # a Kodak image is ~50 kB as .vae and ~0.4 MB as latents
MAX_REPLY_SIZE = 64 << 10
DEFAULT_MESSAGE_TIMEOUT = 120.0  # seconds for a whole message: 64 MiB at about 5 Mbit/s
READ_CHUNK = 1 << 20
_CONTROL_CHARACTERS = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]}


class MessageType(IntEnum):
    IMAGE = 1
    LATENTS = 2
    FILE = 3
    ACK = 4
    NACK = 5


DATA_TYPES = (MessageType.IMAGE, MessageType.LATENTS, MessageType.FILE)


class StreamError(VaecodecError):
    """A message could not be received or delivered. ``resumable``: the stream is still at a frame boundary."""

    exit_code = 8

    def __init__(self, message: str, resumable: bool = False):
        super().__init__(message)
        self.resumable = resumable


class TruncatedStream(StreamError):
    """The stream ended (connection closed or reset) in the middle of a message."""


class CorruptMessage(StreamError):
    """Wrong magic bytes or a CRC mismatch."""


class UnsupportedStreamVersion(StreamError):
    """The peer speaks another version of this protocol."""


class MessageTooLarge(StreamError):
    """The length field exceeds the receiver's limit; nothing of the payload was read."""


class StreamTimeout(StreamError):
    """No data arrived for the idle timeout, or a message did not arrive whole within its deadline."""


class InvalidMessage(StreamError):
    """An intact frame with content the receiver refuses: bad .vae or latents, wrong model, unsafe name."""

    def __init__(self, message: str, resumable: bool = True):
        super().__init__(message, resumable)


class Rejected(StreamError):
    """The receiver answered NACK; the message is the receiver's reason."""

    def __init__(self, message: str, resumable: bool = True):
        super().__init__(message, resumable)


@dataclass(frozen=True)
class Frame:
    kind: MessageType
    flags: int
    name: str
    payload: bytes


@dataclass(frozen=True)
class Message:
    """One received, validated message."""

    kind: MessageType
    name: str  # a plain file name from ``safe_name`` ("" when the sender gave none)
    data: bytes = field(repr=False)  # exactly the bytes sent: a .vae file, Latents.to_bytes() or a FILE's content
    number: int  # position in the stream, from 1
    header: container.ImageHeader = None  # IMAGE and LATENTS
    latents: Latents = field(default=None, repr=False)  # LATENTS, parsed

    def decode(self, codec, max_pixels: int = container.DEFAULT_MAX_PIXELS):
        """The image, decoded with ``codec`` (a vaecodec.Codec); ``max_pixels`` as in ``Codec.decompress``."""
        if self.kind == MessageType.IMAGE:
            return codec.decompress(self.data, max_pixels)
        if self.kind == MessageType.LATENTS:
            return codec.decode_latents(self.latents, max_pixels)
        raise UsageError(f"a {self.kind.name} message holds no compressed image")


@dataclass(frozen=True)
class Delivery:
    """What ``Sender.send`` sent, and what the receiver said about it."""

    name: str
    kind: MessageType
    size: int  # payload bytes
    stored_as: str = None  # the name in the receiver's ACK; None when no reply was awaited


def safe_name(name: str) -> str:
    """Reduce a sender-chosen name to a plain file name, or raise InvalidMessage.

    Directories (and a drive prefix) are dropped; a ``..`` component or control characters are refused, since
    they only come from a broken or hostile sender; leading dots go, so nothing turns into a hidden file.
    """
    if not _CONTROL_CHARACTERS.isdisjoint(name):
        raise InvalidMessage(f"file name {name!r} contains control characters")
    parts = name.replace("\\", "/").replace(":", "/").split("/")
    if ".." in parts:
        raise InvalidMessage(f"file name {name!r} points outside the receiver's directory")
    return parts[-1].lstrip(".")


def encode_frame(kind: MessageType, name: str, payload: bytes, flags: int = 0) -> bytes:
    name_bytes = name.encode("utf-8")
    if len(name_bytes) > MAX_NAME_BYTES:
        raise UsageError(f"name {name[:40]!r}... is longer than {MAX_NAME_BYTES} bytes")
    if len(payload) > MAX_PAYLOAD:
        raise UsageError(f"a message payload is limited to 4 GiB, got {len(payload)} bytes")
    header = HEADER_FIELDS.pack(MAGIC, STREAM_VERSION, kind, flags, len(name_bytes), len(payload))
    body = name_bytes + payload
    return b"".join([header, CRC.pack(zlib.crc32(header)), body, CRC.pack(zlib.crc32(body))])


class Channel:
    """Reads and writes over a socket (with timeouts), a binary file object, or a (reader, writer) pair."""

    def __init__(self, stream):
        self.socket = stream if isinstance(stream, socket.socket) else None
        self.reader, self.writer = stream if isinstance(stream, tuple) else (stream, stream)

    def read(self, count: int, timeout: float) -> bytes:
        """Up to ``count`` bytes; b"" at the end of the stream. ``timeout`` only applies to sockets."""
        try:
            if self.socket is not None:
                self.socket.settimeout(timeout)
                return self.socket.recv(count)
            return self.reader.read(count) or b""
        except ConnectionResetError:
            return b""  # a reset peer is an ended stream: what was read so far decides if it ended cleanly

    def write(self, data: bytes, timeout: float):
        if self.socket is not None:
            self.socket.settimeout(timeout)
            self.socket.sendall(data)
        else:
            self.writer.write(data)
            self.writer.flush()

    def read_exactly(self, count: int, timeout: float, what: str, deadline: "Deadline" = None) -> bytes:
        """``count`` bytes, or fewer if the stream ends; the buffer grows only as data arrives. Each read waits
        at most ``timeout`` seconds, and all of them end by the ``deadline`` (sockets only)."""
        data = bytearray()
        deadline = deadline if self.socket is not None else None
        while len(data) < count:
            wait = timeout if deadline is None else min(timeout, deadline.left(what))
            try:
                chunk = self.read(min(count - len(data), READ_CHUNK), wait)
            except TimeoutError:
                if wait < timeout:
                    continue  # it was the deadline's remainder: the next pass raises (or waits out the rest)
                raise StreamTimeout(
                    f"no data for {timeout:g} s while reading {what} ({len(data)} of {count} bytes received)") from None
            if not chunk:
                break
            data += chunk
        return bytes(data)


class Deadline:
    """The time by which a whole message must have arrived."""

    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def left(self, what: str) -> float:
        """Seconds left; raises StreamTimeout when none are."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise StreamTimeout(f"{what} did not arrive whole within {self.seconds:g} s")
        return left


@dataclass(frozen=True)
class FrameHeader:
    kind: int
    flags: int
    name_length: int
    payload_length: int

    @property
    def wants_reply(self) -> bool:
        return bool(self.flags & FLAG_WANTS_REPLY)


def read_header(channel: Channel, timeout: float, what: str, message_timeout: float = DEFAULT_MESSAGE_TIMEOUT):
    """The next frame's checked header and the Deadline for the whole frame, which starts at its first byte;
    (None, None) at a clean end of stream."""
    data = channel.read_exactly(1, timeout, f"the header of {what}")
    if not data:
        return None, None
    deadline = Deadline(message_timeout)
    data += channel.read_exactly(HEADER_SIZE - 1, timeout, f"the header of {what}", deadline)
    if len(data) < HEADER_SIZE:
        raise TruncatedStream(f"stream ended inside the header of {what} ({len(data)} of {HEADER_SIZE} bytes)")
    fields, (header_crc,) = data[:HEADER_FIELDS.size], CRC.unpack(data[HEADER_FIELDS.size:])
    magic, version, kind, flags, name_length, payload_length = HEADER_FIELDS.unpack(fields)
    if magic != MAGIC:
        raise CorruptMessage(f"{what}: not a vaecodec stream (wrong magic bytes {magic!r})")
    if version != STREAM_VERSION:  # checked before the CRC: magic and version keep their place in every version
        advice = "upgrade this side" if version > STREAM_VERSION else "upgrade the other side"
        raise UnsupportedStreamVersion(
            f"{what}: peer speaks stream version {version}, this vaecodec speaks {STREAM_VERSION}: {advice}")
    if zlib.crc32(fields) != header_crc:
        raise CorruptMessage(f"{what}: header is corrupted (CRC mismatch)")
    return FrameHeader(kind, flags, name_length, payload_length), deadline


def read_body(channel: Channel, header: FrameHeader, timeout: float, what: str, deadline: Deadline = None) -> Frame:
    """The rest of the frame after ``header``; check its size against the limit before calling this."""
    size = header.name_length + header.payload_length + CRC.size
    body = channel.read_exactly(size, timeout, what, deadline)
    if len(body) < size:
        raise TruncatedStream(
            f"stream ended inside {what} ({HEADER_SIZE + len(body)} of {HEADER_SIZE + size} bytes received)")
    if zlib.crc32(body[:-CRC.size]) != CRC.unpack(body[-CRC.size:])[0]:
        raise CorruptMessage(f"{what}: content is corrupted (CRC mismatch)", resumable=True)
    if header.kind not in MessageType._value2member_map_ or header.flags & ~FLAG_WANTS_REPLY:
        raise InvalidMessage(f"{what}: unknown message type {header.kind} or flags {header.flags:#x}")
    try:
        name = body[:header.name_length].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidMessage(f"{what}: file name is not UTF-8") from None
    return Frame(MessageType(header.kind), header.flags, name, body[header.name_length:-CRC.size])


def read_frame(channel: Channel, max_payload: int, timeout: float, what: str,
               message_timeout: float = DEFAULT_MESSAGE_TIMEOUT):
    """The next frame, or None at a clean end of stream. Raises StreamError subclasses."""
    header, deadline = read_header(channel, timeout, what, message_timeout)
    if header is None:
        return None
    check_size(header, max_payload, what)
    return read_body(channel, header, timeout, what, deadline)


def check_size(header: FrameHeader, max_payload: int, what: str):
    if header.payload_length > max_payload:
        raise MessageTooLarge(f"{what} announces {header.payload_length} bytes, over the limit of {max_payload}")


def _clip_name(name: str) -> str:
    return name.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", "ignore")


def _describe(error: OSError) -> str:
    return error.strerror or str(error) or error.__class__.__name__


class Sender:
    """Sends images, .vae files and latents; on a socket, waits for each message's ACK or NACK.

    ``codec`` compresses images (when not given, ``model`` is loaded on ``device`` at the first image).
    ``wait_for_reply`` defaults to True on sockets, the only two-way stream; a NACK raises ``Rejected``.
    """

    def __init__(self, stream, codec=None, *, model: str = "default", device: str = "auto",
                 wait_for_reply: bool = None, reply_timeout: float = 300.0):
        self._channel = Channel(stream)
        self._codec, self._model, self._device = codec, model, device
        self.wait_for_reply = self._channel.socket is not None if wait_for_reply is None else wait_for_reply
        self.reply_timeout = reply_timeout
        self._sent = 0

    @property
    def codec(self):
        if self._codec is None:
            from .codec import load  # deferred: sending .vae files and latents needs no model

            self._codec = load(self._model, self._device)
        return self._codec

    def send(self, item, quality: float = container.DEFAULT_QUALITY, name: str = None) -> Delivery:
        """Send a PIL image or image path (compressed at ``quality``), a .vae file (path or bytes) or Latents.

        ``name`` defaults to the file name of a path ("" otherwise). .vae files and latents are validated,
        then sent unchanged.
        """
        if name is None:
            name = Path(item).name if isinstance(item, (str, Path)) else ""
        kind, payload = self._prepare(item, quality)
        return self._send_frame(kind, name, payload)

    def send_file(self, data: bytes, name: str) -> Delivery:
        """Send bytes as they are, unchecked (a FILE message: e.g. an original PNG, for comparison)."""
        return self._send_frame(MessageType.FILE, name, bytes(data))

    def _prepare(self, item, quality: float) -> tuple:
        if isinstance(item, Latents):
            return MessageType.LATENTS, item.to_bytes()
        if isinstance(item, (str, Path)):
            try:
                with open(item, "rb") as file:
                    is_compressed = file.read(len(container.MAGIC)) == container.MAGIC
                    data = file.read() if is_compressed else None
            except OSError as error:
                raise UnsupportedImage(f"{item}: cannot read ({_describe(error)})") from None
            if not is_compressed:
                return MessageType.IMAGE, self.codec.compress(item, quality)
            item = container.MAGIC + data
        if isinstance(item, (bytes, bytearray, memoryview)):
            data = bytes(item)
            if data.startswith(LATENTS_MAGIC):
                Latents.from_bytes(data)
                return MessageType.LATENTS, data
            if data.startswith(container.MAGIC):
                container.unpack(data)
                return MessageType.IMAGE, data
            raise InvalidFile("bytes to send are neither a .vae file nor latents (pass images as a path or PIL image)")
        return MessageType.IMAGE, self.codec.compress(item, quality)  # a PIL image

    def _send_frame(self, kind: MessageType, name: str, payload: bytes) -> Delivery:
        self._sent += 1
        label = repr(name) if name else f"message {self._sent}"
        frame = encode_frame(kind, name, payload, FLAG_WANTS_REPLY if self.wait_for_reply else 0)
        try:
            self._channel.write(frame, self.reply_timeout)
        except OSError as error:
            # A receiver that refuses a message (too large, say) answers NACK and hangs up while we still write.
            reason = self._pending_rejection() if self.wait_for_reply else None
            if reason is not None:
                raise Rejected(f"{label} rejected by the receiver: {printable(reason)}", resumable=False) from None
            raise StreamError(f"connection lost while sending {label}: {_describe(error)}") from None
        if not self.wait_for_reply:
            return Delivery(name, kind, len(payload))
        reply = self._read_reply(f"the reply to {label}")
        if reply.kind == MessageType.NACK:
            raise Rejected(f"{label} rejected by the receiver: {printable(reply.payload.decode('utf-8', 'replace'))}")
        return Delivery(name, kind, len(payload), reply.name)

    def _read_reply(self, what: str) -> Frame:
        try:
            reply = read_frame(self._channel, MAX_REPLY_SIZE, self.reply_timeout, what, self.reply_timeout)
        except OSError as error:
            raise StreamError(f"connection lost while waiting for {what}: {_describe(error)}") from None
        if reply is None:
            raise StreamError(f"the receiver closed the connection before sending {what}")
        if reply.kind not in (MessageType.ACK, MessageType.NACK):
            raise InvalidMessage(f"expected ACK or NACK as {what}, got {reply.kind.name}", resumable=False)
        return reply

    def _pending_rejection(self):
        """The reason of a NACK already waiting in the stream, if any."""
        try:
            reply = read_frame(self._channel, MAX_REPLY_SIZE, 1.0, "a reply")
        except (OSError, VaecodecError):
            return None
        return reply.payload.decode("utf-8", "replace") if reply and reply.kind == MessageType.NACK else None


class Receiver:
    """Receives and validates messages: call ``receive()`` or iterate.

    ``codec`` (optional) is only used to refuse messages of another model early. A message that asked for a
    reply is acknowledged by ``acknowledge()`` or ``reject()``, or else when the next message is requested
    (so iterating acknowledges each message once the loop body for it has run). A message that fails is
    answered NACK with the reason, and the error raised. On sockets, ``idle_timeout`` bounds every wait for data
    and ``message_timeout`` the arrival of each whole message, from its first byte. IMAGE and LATENTS messages
    of more than ``max_pixels`` pixels are refused (None: the format's limit) before anyone decodes them.
    """

    def __init__(self, stream, codec=None, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 idle_timeout: float = 60.0, message_timeout: float = DEFAULT_MESSAGE_TIMEOUT,
                 max_pixels: int = container.DEFAULT_MAX_PIXELS):
        self._channel = Channel(stream)
        self._codec = codec
        self.max_message_size, self.idle_timeout = max_message_size, idle_timeout
        self.message_timeout, self.max_pixels = message_timeout, max_pixels
        self.received = 0  # messages started, good or bad
        self._unanswered = None  # the last message, while its sender still waits for a reply
        self._failure = None  # the error that left the stream unusable

    def __iter__(self):
        while (message := self.receive()) is not None:
            yield message

    def receive(self):
        """The next validated Message, or None when the stream has ended cleanly."""
        if self._unanswered is not None:
            self.acknowledge(self._unanswered)
        if self._failure is not None:
            raise StreamError(f"stream unusable after an earlier error: {self._failure}")
        number, what = self.received + 1, f"message {self.received + 1}"
        header = None
        try:
            header, deadline = read_header(self._channel, self.idle_timeout, what, self.message_timeout)
            if header is None:
                return None
            self.received = number
            check_size(header, self.max_message_size, what)
            message = self._validate(read_body(self._channel, header, self.idle_timeout, what, deadline), number)
        except StreamError as error:
            self.received = number
            # A sender of another version can still read our NACK's magic and version: it then reports the mismatch.
            if (header is not None and header.wants_reply) or isinstance(error, UnsupportedStreamVersion):
                self._reply(MessageType.NACK, "", str(error).encode("utf-8"))
            if not error.resumable:
                self._failure = error
            raise
        if header.wants_reply:
            self._unanswered = message
        return message

    def acknowledge(self, message: Message, stored_as: str = None):
        """Tell the sender ``message`` arrived intact (and under which name it was stored)."""
        if self._unanswered is message:
            self._unanswered = None
            self._reply(MessageType.ACK, message.name if stored_as is None else stored_as, b"")

    def reject(self, message: Message, reason: str):
        """Tell the sender ``message`` was refused, and why."""
        if self._unanswered is message:
            self._unanswered = None
            self._reply(MessageType.NACK, message.name, reason.encode("utf-8"))

    def _validate(self, frame: Frame, number: int) -> Message:
        try:
            if frame.kind not in DATA_TYPES:
                raise InvalidMessage(f"unexpected {frame.kind.name} message")
            name = safe_name(frame.name)
            if frame.kind == MessageType.FILE:
                return Message(frame.kind, name, frame.payload, number)
            if frame.kind == MessageType.IMAGE:
                latents, (header, _) = None, container.unpack(frame.payload)
            else:
                latents = Latents.from_bytes(frame.payload)
                header = latents.header
            self._check_model(header)
            container.check_pixels(header, self.max_pixels)
            return Message(frame.kind, name, frame.payload, number, header, latents)
        except (InvalidFile, InvalidMessage) as error:  # say which message
            raise InvalidMessage(f"message {number} ({frame.name!r}): {error}") from None

    def _check_model(self, header: container.ImageHeader):
        codec = self._codec
        if codec is not None and (header.model_name, header.model_hash) != (codec.model_name, codec.model_hash):
            raise InvalidMessage(
                f"encoded with model {header.model_name} ({header.model_hash.hex()}), but this receiver has "
                f"{codec.model_name} ({codec.model_hash.hex()})")

    def _reply(self, kind: MessageType, name: str, payload: bytes):
        try:
            self._channel.write(encode_frame(kind, _clip_name(name), payload[:MAX_REPLY_SIZE]), self.idle_timeout)
        except OSError:
            pass  # the sender is gone; it reports the missing reply itself
