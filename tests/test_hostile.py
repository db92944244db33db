"""Hostile files and peers: one regression test per hole a fuzzing run found, each with its minimal reproducer.

Files are forged byte by byte (``forge``), since the library refuses to write most of them; peers talk over
loopback (127.0.0.1) and every wait has a timeout.
"""

import os
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vaecodec
from vaecodec import container, zoo
from vaecodec.errors import (ImageTooLarge, InvalidFile, ModelMismatch, ModelNotFound, UnsupportedImage,
                             UnsupportedVersion, printable)
from vaecodec.stream import (FLAG_WANTS_REPLY, Channel, MessageType, Receiver, Rejected, Sender, StreamTimeout,
                             encode_frame, read_frame)
from vaecodec_cli import files
from vaecodec_cli.files import write_atomically
from vaecodec_cli.main import cli
from vaecodec_cli.transfer import ReceiveServer

REPO = Path(__file__).resolve().parent.parent
KODAK = REPO.parent / "shared" / "datasets" / "kodak"
TIMEOUT = 20


@pytest.fixture(scope="module")
def codec():
    torch.set_num_threads(1)
    return vaecodec.load("default", device="cpu")


@pytest.fixture(scope="module")
def valid(codec) -> bytes:
    """A real .vae file of a 64x48 crop."""
    image = Image.open(KODAK / "kodim23.png").convert("RGB").crop((300, 100, 364, 148))
    return codec.compress(image, 4.0)


def varint(value: int) -> bytes:
    return container.write_varint(value)


def forge(codec=None, name: bytes = None, model_hash: bytes = None, quality_index: int = 12, mode: int = 0,
          width: bytes = varint(64), height: bytes = varint(64), payload: bytes = b"", version: int = 1) -> bytes:
    """A .vae file laid out by hand, with a correct CRC; by default it names the loaded model."""
    name = codec.model_name.encode() if name is None else name
    model_hash = codec.model_hash if model_hash is None else model_hash
    body = b"".join([b"VAE", bytes([version, len(name)]), name, model_hash, bytes([quality_index, mode]),
                     width, height, varint(len(payload)), payload])
    return body + struct.pack("<I", zlib.crc32(body))


def with_payload(data: bytes, payload: bytes) -> bytes:
    header, _ = container.unpack(data)
    return container.pack(header, payload)


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def one_error_line(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaecodec: error: "), lines
    return lines[0]


# -- 1. a model name from a file is never a path ---------------------------------------------------------------

def test_model_name_from_a_file_never_becomes_a_path(codec, tmp_path):
    evil = tmp_path / "evil.pt"
    evil.symlink_to(zoo.weights_path("default"))  # real weights outside every model folder
    for name in [os.path.relpath(tmp_path / "evil", directory) for directory in zoo.search_dirs()] + [
            str(tmp_path / "evil"), "../../somewhere/evil", "a/b", "a\\b", ".hidden", ""]:
        data = forge(codec, name=name.encode(), model_hash=zoo.file_hash(evil))
        with pytest.raises(InvalidFile, match="malformed model name") as raised:
            codec.decompress(data)
        assert not isinstance(raised.value, ModelMismatch)  # so no "--model <that path>" hint either
        assert zoo.installed_release(name, zoo.file_hash(evil)) is None
        with pytest.raises(ModelNotFound):
            zoo.weights_path(f"{name}@{zoo.file_hash(evil).hex()}")


def test_model_name_hint_names_only_installed_releases(codec, valid):
    other = forge(codec, name=b"mshp-n64", model_hash=bytes(4), payload=container.unpack(valid)[1])
    with pytest.raises(ModelMismatch) as raised:
        codec.decompress(other)
    assert "--model" not in str(raised.value)  # no release with that hash is installed: it says so
    assert str(raised.value).startswith(".vae file was written by model mshp-n64@00000000, which is not installed")


# -- 2. a long model name is an invalid file, not a crash ------------------------------------------------------

@pytest.mark.parametrize("length", [65, 244, 255])
def test_long_model_name_is_an_invalid_file(codec, tmp_path, length):
    data = forge(codec, name=b"m" * length)
    with pytest.raises(InvalidFile, match="malformed model name"):
        codec.decompress(data)
    (tmp_path / "long.vae").write_bytes(data)
    line = one_error_line(run("decompress", tmp_path / "long.vae"), InvalidFile.exit_code)
    assert "internal error" not in line


def test_the_writer_refuses_a_name_the_reader_would_refuse():
    header = container.ImageHeader("../evil", bytes(4), 0, "RGB", 8, 8)
    with pytest.raises(vaecodec.errors.UsageError, match="cannot be written"):
        container.pack(header, b"\0" * 8)


# -- 3. nothing from a file or a peer reaches the terminal unescaped -------------------------------------------

def test_escapes_in_a_model_name_are_refused_and_info_stays_one_line_per_field(codec, tmp_path, valid):
    hostile = forge(codec, name=b"x\x1b[2J\rreal\nname: fake")
    (tmp_path / "escape.vae").write_bytes(hostile)
    result = run("info", tmp_path / "escape.vae")
    one_error_line(result, InvalidFile.exit_code)
    assert "\x1b" not in result.output and "\r" not in result.output
    odd_path = tmp_path / "odd\x1b[31m\nname.vae"
    odd_path.write_bytes(valid)
    result = run("info", odd_path)
    assert result.exit_code == 0 and "\x1b" not in result.output
    assert result.output.splitlines()[0] == "file:           " + printable(odd_path)


def test_printable_escapes_controls_and_bidirectional_overrides():
    assert printable("a\x1b[31mb\r\nc\u202ed") == "a\\x1b[31mb\\r\\nc\\u202ed"
    assert printable("été 東京.png") == "été 東京.png"
    assert len(printable("x" * 1000)) < 210


def test_a_peers_nack_reason_is_printed_escaped():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    with client, server:
        server.sendall(encode_frame(MessageType.NACK, "", b"\x1b]0;owned\x07\x1b[2J\r\nfake line"))
        with pytest.raises(Rejected) as raised:
            Sender(client, reply_timeout=TIMEOUT).send(forge(name=b"test", model_hash=bytes(4), payload=bytes(8)),
                                                       name="a.vae")
    assert not any(c in str(raised.value) for c in "\x1b\x07\r\n") and "fake line" in str(raised.value)


# -- 4. small files that demand huge decodes --------------------------------------------------------------------

def test_a_27_byte_file_announcing_8192x8192_is_refused_at_once(codec):
    data = forge(codec, width=varint(8192), height=varint(8192), payload=b"")
    assert len(data) == 27
    with pytest.raises(ImageTooLarge, match="8192x8192 image .* over the limit of 50000000 pixels"):
        codec.decompress(data)  # the default pixel limit
    started = time.monotonic()
    with pytest.raises(InvalidFile, match="payload"):
        codec.decompress(data, max_pixels=None)  # the limit raised: the empty payload is refused
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("payload", [b"\0" * 4, b"\0" * 8, b"\xff" * 8, b"\1\0\0\0"])
def test_a_short_payload_for_a_large_image_stops_early(codec, payload):
    data = forge(codec, width=varint(4096), height=varint(4096), payload=payload)
    started = time.monotonic()
    with pytest.raises(InvalidFile, match="payload"):
        codec.decompress(data, max_pixels=None)
    assert time.monotonic() - started < 3  # was 23 s and 1.9 GB


def test_the_payload_must_be_exactly_what_the_decoder_reads(codec, valid):
    header, payload = container.unpack(valid)
    assert np.array_equal(np.asarray(codec.decompress(valid)), np.asarray(codec.decompress(valid)))
    for bad in [payload[:-4], payload + b"\1\0\0\0", payload + b"\0" * 4, payload + b"\0" * 8, payload + payload,
                payload[:4]]:
        with pytest.raises(InvalidFile, match="payload"):
            codec.decompress(container.pack(header, bad))


@pytest.mark.parametrize("fill", ["lowest", "highest", "random"])
def test_the_payload_checks_never_refuse_what_the_encoder_writes(codec, fill):
    # Escapes only: the costliest symbols, each a table's rarest entry plus 16 raw bits, test the early length
    # check's bound; all at the lowest value, the stream ends in zero words, which the exactness check must allow.
    image = Image.open(KODAK / "kodim03.png").convert("RGB").crop((100, 100, 164, 164))
    latents = codec.encode_latents(image, 1.0)
    rng = np.random.default_rng(0)
    for symbols in (latents.z_symbols, latents.y_symbols):
        symbols[:] = {"lowest": -32768, "highest": 32767}.get(fill) or rng.integers(-32768, 32768, symbols.shape)
    assert codec.bytes_to_latents(codec.latents_to_bytes(latents)) == latents


def test_a_stream_sealed_with_two_words_decodes_and_takes_no_cut(codec):
    # The encoder ends some streams with an explicit zero word, which the decoder reads exactly to the end.
    # Which symbols end so depends on the weights, so the test looks for them among random fills of a small
    # image's y (about one fill in 60 for mcc-n64 c7c35d7c), instead of naming an image found for one release.
    latents = codec.encode_latents(Image.open(KODAK / "kodim05.png").convert("RGB").crop((96, 0, 120, 16)), 3.0)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        latents.y_symbols[:] = rng.integers(-1, 2, latents.y_symbols.shape)
        data = codec.latents_to_bytes(latents)
        header, payload = container.unpack(data)
        if payload.endswith(bytes(4)):
            break
    else:
        pytest.fail("no fill of y ended its stream with a zero word")
    assert codec.bytes_to_latents(data) == latents
    assert codec.decompress(data).size == (24, 16)
    for cut in (payload[:-4], payload[:-8], payload[:-12]):  # [:-4]: the implied zero word would read the same
        with pytest.raises(InvalidFile, match="payload"):
            codec.decompress(container.pack(header, cut))


def test_decompress_pixel_limit_option(codec, tmp_path, valid):
    (tmp_path / "big.vae").write_bytes(forge(codec, width=varint(8192), height=varint(8000), payload=bytes(8)))
    line = one_error_line(run("decompress", tmp_path / "big.vae"), InvalidFile.exit_code)
    assert "over the limit of 50000000 pixels" in line and "--max-pixels" in line
    line = one_error_line(run("decompress", tmp_path / "big.vae", "--max-pixels", 10**8), InvalidFile.exit_code)
    assert "payload" in line  # allowed now, and then refused for its payload
    (tmp_path / "small.vae").write_bytes(valid)
    line = one_error_line(run("decompress", tmp_path / "small.vae", "--max-pixels", 1000), InvalidFile.exit_code)
    assert "64x48 image (3072 pixels) is over the limit of 1000" in line
    assert sorted(os.listdir(tmp_path)) == ["big.vae", "small.vae"]


def test_the_receiver_refuses_a_28_byte_message_that_asks_for_a_large_decode(codec, tmp_path):
    tiny = forge(codec, width=varint(2048), height=varint(2048), payload=b"")
    huge = forge(codec, width=varint(8192), height=varint(8000), payload=bytes(4))
    with serving(tmp_path, codec=codec) as server:
        with socket.create_connection(server.address, timeout=TIMEOUT) as connection:
            sender = Sender(connection, reply_timeout=TIMEOUT)
            started = time.monotonic()
            with pytest.raises(Rejected, match="payload"):
                sender.send(tiny, name="tiny.vae")
            assert time.monotonic() - started < 3
            with pytest.raises(Rejected, match="over the limit of 50000000 pixels"):
                sender.send(huge, name="huge.vae")
    assert os.listdir(tmp_path) == []


# -- 5. slow peers ----------------------------------------------------------------------------------------------

@contextmanager
def serving(out_dir, **options):
    lines = []
    server = ReceiveServer(("127.0.0.1", 0), out_dir, log=lambda line, error: lines.append(line), **options)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(TIMEOUT)
    server.lines = lines


def trickle(connection, data: bytes, interval: float, stop: threading.Event):
    """Send ``data`` one byte at a time, each well within any idle timeout."""
    try:
        for byte in data:
            if stop.is_set():
                return
            connection.sendall(bytes([byte]))
            time.sleep(interval)
    except OSError:
        pass  # the receiver hung up: what this test wants


def test_a_peer_sending_one_byte_at_a_time_is_dropped_at_the_message_deadline():
    frame = encode_frame(MessageType.IMAGE, "slow.vae", forge(name=b"test", model_hash=bytes(4), payload=bytes(64)))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    stop = threading.Event()
    with client, server:
        thread = threading.Thread(target=trickle, args=(client, frame, 0.05, stop), daemon=True)
        thread.start()
        started = time.monotonic()
        with pytest.raises(StreamTimeout, match="did not arrive whole within 0.5 s"):
            Receiver(server, idle_timeout=5, message_timeout=0.5).receive()
        assert 0.4 < time.monotonic() - started < 3
        stop.set()
        thread.join(TIMEOUT)


def test_the_server_drops_slow_peers_and_turns_away_more_than_it_serves(tmp_path):
    frame = encode_frame(MessageType.IMAGE, "slow.vae", forge(name=b"test", model_hash=bytes(4), payload=bytes(64)),
                         FLAG_WANTS_REPLY)
    stop = threading.Event()
    with serving(tmp_path, idle_timeout=5, message_timeout=1.0, max_open_connections=1) as server:
        with socket.create_connection(server.address, timeout=TIMEOUT) as slow:
            thread = threading.Thread(target=trickle, args=(slow, frame, 0.05, stop), daemon=True)
            thread.start()
            deadline = time.monotonic() + TIMEOUT
            while not server.open_connections and time.monotonic() < deadline:
                time.sleep(0.01)
            with socket.create_connection(server.address, timeout=TIMEOUT) as second:
                with pytest.raises(Rejected, match="receiver busy"):
                    Sender(second, reply_timeout=TIMEOUT).send(forge(name=b"test", model_hash=bytes(4),
                                                                     payload=bytes(8)), name="b.vae")
            reply = read_frame(Channel(slow), 1 << 16, TIMEOUT, "reply")
            assert reply.kind == MessageType.NACK and b"did not arrive whole within 1 s" in reply.payload
            stop.set()
            thread.join(TIMEOUT)
        while server.failed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert server.turned_away == 1 and server.failed == 1 and server.stored == 0
    assert os.listdir(tmp_path) == []


# -- 6. nothing left after kill -9 ------------------------------------------------------------------------------

KILLED_WRITER = """
import sys, time
from pathlib import Path
from vaecodec_cli import files
if sys.argv[2] == "named":
    files._open_unnamed = lambda folder: None  # as on a system without O_TMPFILE
def write(file):
    file.write(b"half a file")
    file.flush()
    print("writing", flush=True)
    time.sleep(60)
files.write_atomically(Path(sys.argv[1]) / "photo.vae", write, force=False)
"""


def kill_while_writing(folder: Path, how: str):
    with subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(folder), how], stdout=subprocess.PIPE,
                          text=True) as process:
        try:
            assert process.stdout.readline() == "writing\n"
        finally:
            process.kill()  # SIGKILL: no handler runs
        process.wait(TIMEOUT)


def test_kill_9_while_writing_leaves_nothing(tmp_path):
    kill_while_writing(tmp_path, "unnamed")
    assert os.listdir(tmp_path) == []


def test_kill_9_leftover_of_a_named_temporary_goes_on_the_next_run(tmp_path, monkeypatch):
    kill_while_writing(tmp_path, "named")
    [leftover] = os.listdir(tmp_path)
    assert leftover.startswith(".photo.vae.") and leftover.endswith(files.TEMPORARY_SUFFIX)
    alive = tmp_path / f".other.vae.{os.getpid()}.0123abcd{files.TEMPORARY_SUFFIX}"
    alive.write_bytes(b"")  # a temporary of a live writer (this process) stays
    monkeypatch.setattr(files, "_swept_folders", set())
    write_atomically(tmp_path / "next.vae", lambda file: file.write(b"x"), force=False)
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, "next.vae"])


def test_without_unnamed_files_or_links_writes_still_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_link_unnamed", lambda descriptor, path: False)  # e.g. a kernel refusing links
    write_atomically(tmp_path / "a.vae", lambda file: file.write(b"first"), force=False)
    write_atomically(tmp_path / "a.vae", lambda file: file.write(b"second"), force=True)
    with pytest.raises(vaecodec.errors.UsageError, match="exists"):
        write_atomically(tmp_path / "a.vae", lambda file: file.write(b"third"), force=False)
    assert os.listdir(tmp_path) == ["a.vae"] and (tmp_path / "a.vae").read_bytes() == b"second"


# -- 7. one error line for a decompression bomb -------------------------------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces width x height (RGB) and holds no pixels: Pillow reads only the header on open."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(
        b"IEND", b"")


def test_a_12000x12000_png_gives_one_error_and_no_warning(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(12000, 12000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnsupportedImage, match="too large"):
            vaecodec.open_image(path)
    assert caught == []
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # a warning would be printed to the command's stderr, every time
        line = one_error_line(run("compress", path), UnsupportedImage.exit_code)
    assert "too large" in line and os.listdir(tmp_path) == ["bomb.png"]


# -- 8. the CRC before the version; one encoding per value -------------------------------------------------------

def test_a_flipped_bit_in_the_version_byte_reads_as_damage(valid):
    for bit in range(8):
        damaged = bytearray(valid)
        damaged[3] ^= 1 << bit
        with pytest.raises(InvalidFile, match="CRC mismatch") as raised:
            container.unpack(bytes(damaged))
        assert type(raised.value) is InvalidFile
    newer = forge(name=b"test", model_hash=bytes(4), payload=bytes(8), version=2)
    with pytest.raises(UnsupportedVersion):
        container.unpack(newer)


def test_padded_varints_are_refused(codec, valid):
    header, payload = container.unpack(valid)
    for width, height in [(b"\xc0\x00", varint(48)), (varint(64), b"\xb0\x80\x00"), (b"\x80\x80\x80\x80\x00",
                                                                                      varint(48))]:
        with pytest.raises(InvalidFile, match="padded number"):
            container.unpack(forge(codec, width=width, height=height, payload=payload))
    body = bytearray(valid[:-4])
    length_at = len(body) - len(payload) - len(varint(len(payload)))
    padded = body[:length_at] + bytes([varint(len(payload))[0] | 0x80, 0]) + payload
    with pytest.raises(InvalidFile, match="padded number"):
        container.unpack(bytes(padded) + struct.pack("<I", zlib.crc32(bytes(padded))))
    assert container.unpack(forge(codec, width=varint(64), height=varint(48), payload=payload)) == (header, payload)


def test_trailing_bytes_after_the_payload_are_refused(valid):
    body = valid[:-4] + b"\0"
    with pytest.raises(InvalidFile, match="trailing bytes"):
        container.unpack(body + struct.pack("<I", zlib.crc32(body)))
