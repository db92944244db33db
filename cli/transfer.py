"""The ``send`` and ``receive`` commands: compressed images over TCP, framed by ``vaecodec.stream``.

    vaecodec receive --listen 0.0.0.0:9000 --out received/
    vaecodec send photos/ kodim23.png --to receiver-host:9000 -q 5

``send`` compresses each image (.vae files and latents go unchanged), sends everything over one connection,
waits for each acknowledgement and exits non-zero unless every file was delivered. ``receive`` serves several
senders at once (a thread each), decodes each message to PNG (``--keep-vae``: keeps the received file too,
``--no-decode``: keeps only that) and writes it atomically under a sanitized name that never overwrites a
file, then acknowledges it.
"""

import contextlib
import os
import socket
import threading
from pathlib import Path

import click

from vaecodec import container
from vaecodec.errors import ModelNotFound, UsageError, VaecodecError, printable
from vaecodec.stream import (DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MESSAGE_TIMEOUT, InvalidMessage, MessageType, Receiver,
                             Sender, StreamError, encode_frame)

from .files import NewFile, remove_stale_temporaries, walk

SENDABLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".gif",
                     ".vae", ".latents"}
COMPRESSED_SUFFIXES = {MessageType.IMAGE: ".vae", MessageType.LATENTS: ".latents"}
MAX_STEM_BYTES = 200  # leaves room for "-123.latents" within the usual 255-byte file name limit
DEFAULT_MAX_OPEN_CONNECTIONS = 16  # more senders at once are turned away: each holds a thread until its deadline


class Address(click.ParamType):
    """HOST:PORT (IPv6 hosts in brackets) -> (host, port)."""

    name = "HOST:PORT"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        host, _, port = value.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or int(port) > 65535:
            self.fail(f"expected HOST:PORT, got {value!r}", param, ctx)
        return host, int(port)


def _size(count: int) -> str:
    return f"{count / 1000:.1f} kB" if count < 10**6 else f"{count / 10**6:.2f} MB"


def _fail(error: VaecodecError):
    click.echo(f"error: {error}", err=True)
    raise SystemExit(error.exit_code)


def _load_codec(model: str, device: str):
    import vaecodec  # deferred: a receiver with --no-decode, or a sender of .vae files, needs no model

    return vaecodec.load(name=model, device=device)


def _check_quality(ctx, param, value):
    try:
        container.quality_to_index(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return value


def expand_inputs(paths) -> list:
    """Files as given; directories contribute their image, .vae and latents files, recursively and sorted (as
    ``compress`` walks them)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += walk(path, SENDABLE_SUFFIXES)
        else:
            files.append(path)
    return files


# -- send -------------------------------------------------------------------------------------------------------

@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--to", "address", required=True, type=Address(), help="The receiver, as HOST:PORT.")
@click.option("-q", "--quality", default=container.DEFAULT_QUALITY, show_default=True,
              callback=_check_quality,
              help="Quality for images (1 to 8 in steps of 0.25); .vae files and latents go unchanged.")
@click.option("--model", default="default", show_default=True, help="Model that compresses the images.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--timeout", default=300.0, show_default=True,
              help="Seconds to wait for the connection and for each acknowledgement.")
def send(inputs, address, quality, model, device, timeout):
    """Send images (or directories of them) to a `vaecodec receive` over TCP.

    Images are compressed on the way; .vae files and .latents go as they are. Each file is acknowledged by
    the receiver; the exit code is non-zero unless every file was delivered.

    \b
    Examples:
      vaecodec send photo.png --to 127.0.0.1:9000
      vaecodec send photos/ --to receiver-host:9000 -q 6
      vaecodec send photo.vae --to 127.0.0.1:9000        # already compressed: sent unchanged
    """
    files = expand_inputs(inputs)
    if not files:
        _fail(UsageError(f"no images in {', '.join(map(str, inputs))}"))
    host, port = address
    try:
        connection = socket.create_connection(address, timeout=timeout)
    except OSError as error:
        _fail(StreamError(f"cannot connect to {host}:{port}: {error.strerror or error}"))
    delivered, first_error = 0, None
    with connection:
        sender = Sender(connection, model=model, device=device, reply_timeout=timeout)
        for index, path in enumerate(files):
            try:
                delivery = sender.send(path, quality)
            except VaecodecError as error:
                first_error = first_error or error
                message = str(error) if path.name in str(error) else f"{path}: {error}"
                click.echo(f"error: {message}", err=True)
                if isinstance(error, ModelNotFound) or (isinstance(error, StreamError) and not error.resumable):
                    click.echo(f"error: {len(files) - index - 1} more files not sent", err=True)
                    break
                continue
            delivered += 1
            click.echo(f"delivered {path} ({_size(delivery.size)}) -> {printable(delivery.stored_as)}")
    click.echo(f"delivered {delivered} of {len(files)} files to {host}:{port}")
    if first_error is not None:
        raise SystemExit(first_error.exit_code)


# -- receive ----------------------------------------------------------------------------------------------------

class ReceiveServer:
    """Accepts senders on a TCP address and stores what they send in ``out_dir``, one thread per connection.

    ``codec``: decode each message to PNG (images over ``max_pixels`` are refused), a message written by another
    installed release (an earlier default model) with that release; None stores the .vae files and latents as
    received. Files appear atomically (a NewFile, named when complete) under a free name: this
    server never overwrites a file. A sender must deliver each message within ``message_timeout`` seconds of its
    first byte; beyond ``max_open_connections`` senders at once, a new one is answered NACK and closed.
    """

    def __init__(self, address, out_dir, codec=None, *, keep_compressed: bool = False,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, max_pixels: int = container.DEFAULT_MAX_PIXELS,
                 idle_timeout: float = 60.0, message_timeout: float = DEFAULT_MESSAGE_TIMEOUT,
                 max_open_connections: int = DEFAULT_MAX_OPEN_CONNECTIONS, log=None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.codec, self.keep_compressed, self.max_pixels = codec, keep_compressed, max_pixels
        self._releases = None
        if codec is not None:
            from vaecodec.codec import Releases  # deferred with torch: a --no-decode receiver loads no model

            self._releases = Releases(codec, device=codec.device.type)
        self.max_message_size, self.idle_timeout, self.message_timeout = max_message_size, idle_timeout, message_timeout
        self.max_open_connections = max_open_connections
        self._log = log or (lambda line, error: click.echo(line, err=error))
        self._listener = socket.create_server(address)
        self.address = self._listener.getsockname()[:2]
        self.stored, self.failed, self.turned_away = 0, 0, 0
        self._lock = threading.Lock()  # counters, log lines, active connections, choosing names
        self._codec_lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections = set()

    def serve(self, max_connections: int = None, max_messages: int = None):
        """Serve until ``stop()``, until ``max_connections`` connections have ended or ``max_messages`` (good or
        bad) were handled."""
        self._listener.settimeout(0.2)  # to notice stop() between accepts
        threads = []
        try:
            while not self._stopping.is_set() and (max_connections is None or len(threads) < max_connections):
                try:
                    connection, peer = self._listener.accept()
                except TimeoutError:
                    continue
                if not self._admit(connection, peer):
                    continue
                thread = threading.Thread(target=self._serve_connection, args=(connection, peer, max_messages),
                                          daemon=True)
                thread.start()
                threads.append(thread)
            while not self._stopping.is_set() and any(thread.is_alive() for thread in threads):
                self._stopping.wait(0.2)
        finally:
            self.stop()
            self._listener.close()
            for thread in threads:
                thread.join(timeout=5)

    @property
    def open_connections(self) -> int:
        """Senders being served now."""
        with self._lock:
            return len(self._connections)

    def _admit(self, connection, peer) -> bool:
        """Take the connection into service, or turn it away (NACK, close, counted) when too many are open."""
        with self._lock:
            if len(self._connections) < self.max_open_connections:
                self._connections.add(connection)
                return True
            self.turned_away += 1
            self._log(f"turned away {peer[0]}:{peer[1]}: {self.max_open_connections} connections already open",
                      True)
        with connection:
            try:
                connection.settimeout(1.0)  # a courtesy, never a wait on a peer that does not read
                connection.sendall(encode_frame(
                    MessageType.NACK, "", f"receiver busy: {self.max_open_connections} senders connected".encode()))
            except OSError:
                pass
        return False

    def stop(self):
        """Stop accepting and cut the connections still open (their unfinished messages are not stored)."""
        self._stopping.set()
        with self._lock:
            for connection in self._connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _serve_connection(self, connection, peer, max_messages):
        source = f"{peer[0]}:{peer[1]}"
        try:
            with connection:
                # no model check in the Receiver: store() decodes each message with the release that wrote it
                receiver = Receiver(connection, max_message_size=self.max_message_size,
                                    idle_timeout=self.idle_timeout, message_timeout=self.message_timeout,
                                    max_pixels=self.max_pixels if self.codec is not None else None)
                while not self._stopping.is_set():
                    try:
                        message = receiver.receive()
                        if message is None:
                            break
                    except VaecodecError as error:
                        self._count(f"error from {source}: {error}", failed=True, max_messages=max_messages)
                        if getattr(error, "resumable", False):
                            continue
                        break
                    try:
                        stored_as = self.store(message)
                    except (VaecodecError, OSError) as error:
                        reason = str(error) if isinstance(error, VaecodecError) else f"cannot write: {error}"
                        receiver.reject(message, reason)
                        self._count(f"error from {source}: message {message.number} ({message.name!r}): {reason}",
                                    failed=True, max_messages=max_messages)
                        continue
                    receiver.acknowledge(message, stored_as)
                    self._count(f"stored {printable(stored_as)} ({_size(len(message.data))}) from {source}",
                                failed=False, max_messages=max_messages)
        except Exception as error:  # a bug: say so in one line, and keep serving the other senders
            self._count(f"internal error with {source}: {error!r}", failed=True, max_messages=max_messages)
        finally:
            with self._lock:
                self._connections.discard(connection)

    def _count(self, line: str, failed: bool, max_messages: int):
        with self._lock:
            self.failed += failed
            self.stored += not failed
            self._log(line, failed)
            if max_messages is not None and self.stored + self.failed >= max_messages:
                self._stopping.set()

    def store(self, message) -> str:
        """Write one message's outputs atomically; returns the file name of the first (the image)."""
        if message.kind not in COMPRESSED_SUFFIXES:
            raise InvalidMessage(f"this receiver stores compressed images and latents, not {message.kind.name}")
        outputs = []  # (suffix, function writing the content to a binary file)
        if self.codec is not None:  # the Receiver has refused images over max_pixels
            with self._codec_lock:  # one decode at a time: the codec is not documented as thread-safe
                image = message.decode(self._releases.for_header(message.header), self.max_pixels)
            outputs.append((".png", lambda file: image.save(file, format="PNG")))
        if self.codec is None or self.keep_compressed:
            outputs.append((COMPRESSED_SUFFIXES[message.kind], lambda file: file.write(message.data)))
        stem = Path(message.name).stem.encode("utf-8")[:MAX_STEM_BYTES].decode("utf-8", "ignore") or "image"
        remove_stale_temporaries(self.out_dir)
        with contextlib.ExitStack() as written:  # files not published by the end are discarded
            files = []
            for suffix, write in outputs:
                new = written.enter_context(NewFile(self.out_dir, f"receiving{suffix}"))
                write(new.file)
                files.append(new)
            with self._lock:  # choosing a free name and taking it must not interleave with another thread
                stem = self._free_stem(stem, [suffix for suffix, _ in outputs])
                for new, (suffix, _) in zip(files, outputs):
                    new.publish(self.out_dir / f"{stem}{suffix}", replace=False)
        return f"{stem}{outputs[0][0]}"

    def _free_stem(self, stem: str, suffixes: list) -> str:
        candidate, number = stem, 0
        while any(os.path.lexists(self.out_dir / f"{candidate}{suffix}") for suffix in suffixes):
            number += 1
            candidate = f"{stem}-{number}"
        return candidate


@click.command()
@click.option("--listen", "address", required=True, type=Address(),
              help="Address to listen on, as HOST:PORT (port 0 picks a free one).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for the received images (created if missing).")
@click.option("--keep-vae", is_flag=True, help="Also keep each received .vae file (or latents) beside the PNG.")
@click.option("--no-decode", is_flag=True, help="Keep only the received .vae files and latents; loads no model.")
@click.option("--model", default="default", show_default=True, help="Model that decodes the images.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--max-size", type=click.IntRange(min=1), default=DEFAULT_MAX_MESSAGE_SIZE >> 20, show_default=True,
              help="Largest message accepted, in MiB.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=container.DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest image decoded, in pixels (width x height); larger ones are refused before decoding.")
@click.option("--idle-timeout", default=60.0, show_default=True,
              help="Seconds a connection may stay silent before it is closed.")
@click.option("--message-timeout", default=DEFAULT_MESSAGE_TIMEOUT, show_default=True,
              help="Seconds a sender has to deliver a whole message, from its first byte.")
@click.option("--max-connections", "max_open_connections", type=click.IntRange(min=1),
              default=DEFAULT_MAX_OPEN_CONNECTIONS, show_default=True,
              help="Senders served at once; more are turned away.")
@click.option("--once", is_flag=True, help="Exit when the first connection ends.")
@click.option("--max-messages", type=click.IntRange(min=1), help="Exit after this many messages, good or bad.")
def receive(address, out_dir, keep_vae, no_decode, model, device, max_size, max_pixels, idle_timeout, message_timeout,
            max_open_connections, once, max_messages):
    """Receive images from `vaecodec send` and store them in a directory.

    Each image is decoded to PNG and stored atomically under its sender's file name (made safe, never
    overwriting). Exits non-zero when any message could not be stored.

    \b
    Examples:
      vaecodec receive --listen 127.0.0.1:9000 --out inbox/
      vaecodec receive --listen 0.0.0.0:9000 --out inbox/ --keep-vae    # keep the .vae files too
      vaecodec receive --listen 127.0.0.1:9000 --out inbox/ --no-decode --once
    """
    try:
        codec = None if no_decode else _load_codec(model, device)
        server = ReceiveServer(address, out_dir, codec, keep_compressed=keep_vae, max_message_size=max_size << 20,
                               max_pixels=max_pixels, idle_timeout=idle_timeout, message_timeout=message_timeout,
                               max_open_connections=max_open_connections)
    except VaecodecError as error:
        _fail(error)
    except OSError as error:  # mkdir names its path; bind does not
        where = f"create {error.filename}" if error.filename else f"listen on {address[0]}:{address[1]}"
        _fail(StreamError(f"cannot {where}: {error.strerror or error}"))
    host, port = server.address
    click.echo(f"listening on {host}:{port}, storing in {out_dir}")
    try:
        server.serve(max_connections=1 if once else None, max_messages=max_messages)
    except KeyboardInterrupt:
        server.stop()
    turned_away = f", {server.turned_away} connections turned away" if server.turned_away else ""
    click.echo(f"stored {server.stored} messages, {server.failed} failed{turned_away}")
    if server.failed:
        raise SystemExit(StreamError.exit_code)
