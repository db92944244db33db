"""vaecodec.stream and the send/receive commands, over loopback (127.0.0.1, ports from binding port 0).

Framing, safety and CLI tests use synthetic .vae files and latents (valid containers, random payloads), so
they need no model; the tests at the end compress and decode real images with ``vaecodec.load()``.
Every blocking call has a timeout, so a bug shows up as a failure, not a hung test run.
"""

import dataclasses
import io
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import vaecodec.stream
from vaecodec import container
from vaecodec.errors import InvalidFile
from vaecodec.latents import Latents
from vaecodec.stream import (
    FLAG_WANTS_REPLY, HEADER_SIZE, CorruptMessage, InvalidMessage, MessageTooLarge, MessageType, Receiver,
    Rejected, Sender, StreamError, StreamTimeout, TruncatedStream, UnsupportedStreamVersion, Channel,
    encode_frame, read_frame, safe_name,
)

try:
    from vaecodec_cli.transfer import ReceiveServer, receive, send
except ImportError:  # not installed: run from the repository root
    from cli.transfer import ReceiveServer, receive, send

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 20  # seconds any single wait may take before the test fails
TEST_HASH = bytes.fromhex("0badc0de")


def fake_vae(seed: int = 0, size: int = 300) -> bytes:
    """A valid .vae container with a random payload: enough for everything but decoding."""
    header = container.ImageHeader("test", TEST_HASH, 12, "RGB", 64, 64)
    return container.pack(header, np.random.default_rng(seed).bytes(size))


def fake_latents(seed: int = 0) -> Latents:
    rng = np.random.default_rng(seed)
    header = container.ImageHeader("test", TEST_HASH, 8, "RGB", 64, 64)
    return Latents(header, rng.integers(-40, 40, (64, 1, 1)).astype(np.int16),
                   rng.integers(-300, 300, (128, 4, 4)).astype(np.int16))


@contextmanager
def loopback():
    """A connected (client, server) pair of TCP sockets on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        server, _ = listener.accept()
    with client, server:
        yield client, server


@contextmanager
def background(function, *args, **kwargs):
    """Run ``function`` in a thread; yields its future."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(function, *args, **kwargs)


def replies(sock, count: int) -> list:
    channel = Channel(sock)
    return [read_frame(channel, 1 << 16, TIMEOUT, "reply") for _ in range(count)]


def receive_all(sock, **options) -> list:
    """Every message until the end of stream, acknowledged; the error that stopped it is the last item."""
    receiver = Receiver(sock, idle_timeout=TIMEOUT, **options)
    results = []
    while True:
        try:
            message = receiver.receive()
        except StreamError as error:
            results.append(error)
            if error.resumable:
                continue
            return results
        if message is None:
            return results
        results.append(message)


# -- the frame format ---------------------------------------------------------------------------------------------

def test_frame_layout_is_pinned():
    frame = encode_frame(MessageType.ACK, "a.png", b"", FLAG_WANTS_REPLY)
    assert frame.hex() == "564145530104010500000000a33640b7612e706e676fabc45e"
    assert len(encode_frame(MessageType.IMAGE, "ab", b"xyz")) == HEADER_SIZE + 2 + 3 + 4


def test_stream_through_a_file_and_every_truncation():
    stream = io.BytesIO()
    sender = Sender(stream)
    assert not sender.wait_for_reply  # a file cannot answer
    sender.send(fake_vae(1), name="one.png")
    sender.send(fake_latents(2), name="two.png")
    data = stream.getvalue()
    messages = list(Receiver(io.BytesIO(data)))
    assert [(m.kind, m.name) for m in messages] == [(MessageType.IMAGE, "one.png"), (MessageType.LATENTS, "two.png")]
    assert messages[0].data == fake_vae(1) and messages[1].latents == fake_latents(2)
    first_end = len(encode_frame(MessageType.IMAGE, "one.png", fake_vae(1)))
    for cut in range(first_end + 1, len(data)):  # every cut inside the second message
        receiver = Receiver(io.BytesIO(data[:cut]))
        assert receiver.receive().name == "one.png"  # the good message before the cut is kept
        with pytest.raises(TruncatedStream, match="stream ended inside (the header of )?message 2"):
            receiver.receive()


def test_many_messages_in_one_connection_latents_unchanged():
    items = [fake_vae(i) if i % 2 else fake_latents(i) for i in range(30)]
    with loopback() as (client, server), background(receive_all, server) as received:
        sender = Sender(client, reply_timeout=TIMEOUT)
        deliveries = [sender.send(item, name=f"image{i}.png") for i, item in enumerate(items)]
        client.shutdown(socket.SHUT_WR)
        messages = received.result(TIMEOUT)
    assert [d.stored_as for d in deliveries] == [f"image{i}.png" for i in range(30)]  # ACKs carry the name
    assert len(messages) == 30
    for item, message in zip(items, messages):
        if isinstance(item, Latents):
            assert message.kind == MessageType.LATENTS and message.latents == item
            assert np.array_equal(message.latents.y_symbols, item.y_symbols)
        else:
            assert message.kind == MessageType.IMAGE and message.data == item


def test_sender_validates_before_sending():
    stream = io.BytesIO()
    sender = Sender(stream)
    damaged = bytearray(fake_vae())
    damaged[20] ^= 1
    for bad in (b"not an image", bytes(damaged), fake_latents().to_bytes()[:-1]):
        with pytest.raises(InvalidFile):
            sender.send(bad)
    assert stream.getvalue() == b""


# -- damaged and hostile streams --------------------------------------------------------------------------------

def test_connection_cut_mid_message_keeps_earlier_messages():
    good = encode_frame(MessageType.IMAGE, "good.png", fake_vae(1))
    cut = encode_frame(MessageType.IMAGE, "cut.png", fake_vae(2))
    with loopback() as (client, server):
        client.sendall(good + cut[:len(cut) // 2])
        client.close()
        results = receive_all(server)
    assert results[0].name == "good.png"
    assert isinstance(results[1], TruncatedStream) and "inside message 2" in str(results[1])


def test_sender_sees_receiver_hang_up():
    with loopback() as (client, server):
        def hang_up_after_header():
            server.recv(HEADER_SIZE)
            server.shutdown(socket.SHUT_RDWR)

        with background(hang_up_after_header) as peer:
            with pytest.raises(StreamError, match="closed the connection|connection lost"):
                Sender(client, reply_timeout=TIMEOUT).send(fake_vae(), name="a.png")
            peer.result(TIMEOUT)


def test_corrupted_payload_is_refused_and_the_stream_goes_on():
    frames = [bytearray(encode_frame(MessageType.IMAGE, f"{i}.png", fake_vae(i), FLAG_WANTS_REPLY))
              for i in range(3)]
    frames[1][HEADER_SIZE + 40] ^= 0x10
    with loopback() as (client, server), background(receive_all, server) as received:
        client.sendall(b"".join(frames))
        answers = replies(client, 3)
        client.shutdown(socket.SHUT_WR)
        results = received.result(TIMEOUT)
    assert [a.kind for a in answers] == [MessageType.ACK, MessageType.NACK, MessageType.ACK]
    assert b"corrupted" in answers[1].payload
    assert isinstance(results[1], CorruptMessage) and results[1].resumable and "message 2" in str(results[1])
    assert [results[0].name, results[2].name] == ["0.png", "2.png"]


def test_corrupted_header_is_fatal():
    frame = bytearray(encode_frame(MessageType.IMAGE, "a.png", fake_vae()))
    frame[9] ^= 0x01  # the payload length
    receiver = Receiver(io.BytesIO(encode_frame(MessageType.IMAGE, "ok.png", fake_vae()) + frame))
    assert receiver.receive().name == "ok.png"
    with pytest.raises(CorruptMessage, match="message 2: header is corrupted"):
        receiver.receive()
    with pytest.raises(StreamError, match="unusable after an earlier error"):
        receiver.receive()


def test_wrong_magic():
    with pytest.raises(CorruptMessage, match="not a vaecodec stream"):
        Receiver(io.BytesIO(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).receive()


def test_oversize_length_is_refused_before_reading():
    header = bytearray(encode_frame(MessageType.FILE, "", b"", FLAG_WANTS_REPLY)[:HEADER_SIZE])
    header[8:12] = (0xFFFFFFF0).to_bytes(4, "little")
    header[12:16] = zlib.crc32(header[:12]).to_bytes(4, "little")
    with loopback() as (client, server), background(receive_all, server) as received:
        started = time.monotonic()
        client.sendall(bytes(header))  # and no payload: the receiver must not wait for 4 GB
        (answer,) = replies(client, 1)
        results = received.result(TIMEOUT)
    assert time.monotonic() - started < TIMEOUT / 2
    assert isinstance(results[0], MessageTooLarge) and answer.kind == MessageType.NACK
    assert b"over the limit" in answer.payload


def test_sender_told_why_an_oversize_message_was_refused():
    def refuse_and_hang_up(server):
        with server:  # as a server does after a fatal error
            return receive_all(server, max_message_size=1 << 16)

    with loopback() as (client, server), background(refuse_and_hang_up, server) as received:
        # Linux keeps the NACK readable after the receiver hangs up; elsewhere the sender may only see the reset
        with pytest.raises(StreamError, match="over the limit|connection lost"):
            Sender(client, reply_timeout=TIMEOUT).send_file(bytes(4 << 20), "big.png")
        assert isinstance(received.result(TIMEOUT)[0], MessageTooLarge)


def test_wrong_version_is_reported_on_both_sides(monkeypatch):
    frame = bytearray(encode_frame(MessageType.IMAGE, "a.png", fake_vae(), FLAG_WANTS_REPLY))
    frame[4] = 2
    with loopback() as (client, server), background(receive_all, server) as received:
        client.sendall(frame)
        results = received.result(TIMEOUT)
        monkeypatch.setattr(vaecodec.stream, "STREAM_VERSION", 2)  # the client is a version-2 sender
        with pytest.raises(UnsupportedStreamVersion, match="peer speaks stream version 1, this vaecodec speaks 2"):
            replies(client, 1)  # the receiver's NACK, in version 1
    assert isinstance(results[0], UnsupportedStreamVersion)
    assert "stream version 2, this vaecodec speaks 1" in str(results[0])


def test_idle_timeout():
    with loopback() as (client, server):
        client.sendall(encode_frame(MessageType.IMAGE, "a.png", fake_vae())[:5])
        started = time.monotonic()
        with pytest.raises(StreamTimeout, match="no data for 0.2 s while reading the header of message 1"):
            Receiver(server, idle_timeout=0.2).receive()
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("name, expected", [
    ("kodim01.png", "kodim01.png"), ("photos/2024/a.png", "a.png"), ("C:\\photos\\a.png", "a.png"),
    (".bashrc", "bashrc"), ("", ""), ("été.png", "été.png"),
])
def test_safe_name(name, expected):
    assert safe_name(name) == expected


@pytest.mark.parametrize("name", ["../x.png", "a/../../x.png", "..", "..\\x.png", "a\x00.png", "a\nb.png", "\x1b[2J"])
def test_unsafe_name_is_refused(name):
    with pytest.raises(InvalidMessage):
        safe_name(name)


def test_traversal_name_is_rejected_and_the_connection_goes_on():
    with loopback() as (client, server), background(receive_all, server) as received:
        sender = Sender(client, reply_timeout=TIMEOUT)
        with pytest.raises(Rejected, match="points outside") as rejected:
            sender.send(fake_vae(), name="../../etc/evil.png")
        assert rejected.value.resumable
        assert sender.send(fake_vae(), name="fine.png").stored_as == "fine.png"
        client.shutdown(socket.SHUT_WR)
        results = received.result(TIMEOUT)
    assert isinstance(results[0], InvalidMessage) and results[1].name == "fine.png"


def test_wrong_model_is_rejected():
    other = SimpleNamespace(model_name="other", model_hash=bytes(4))
    with loopback() as (client, server), background(receive_all, server, codec=other) as received:
        with pytest.raises(Rejected, match="encoded with model test .* this receiver has other"):
            Sender(client, reply_timeout=TIMEOUT).send(fake_latents())
        client.shutdown(socket.SHUT_WR)
        assert isinstance(received.result(TIMEOUT)[0], InvalidMessage)


# -- the receiving server and the commands ------------------------------------------------------------------------

@contextmanager
def running_server(out_dir, **options):
    lines = []
    server = ReceiveServer(("127.0.0.1", 0), out_dir, log=lambda line, error: lines.append(line),
                           idle_timeout=TIMEOUT, **options)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server, lines
    finally:
        server.stop()
        thread.join(TIMEOUT)
    assert not thread.is_alive()


def send_all(address, items) -> list:
    with socket.create_connection(address, timeout=TIMEOUT) as connection:
        sender = Sender(connection, reply_timeout=TIMEOUT)
        return [sender.send(item, name=name) for name, item in items]


def wait_until(condition):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_server_two_senders_at_once_never_overwrite(tmp_path):
    (tmp_path / "same.vae").write_bytes(b"existing")
    batches = [[("same.png", fake_vae(100 * s + i)) for i in range(5)] for s in range(2)]
    with running_server(tmp_path) as (server, lines):
        with ThreadPoolExecutor(2) as pool:
            deliveries = [d for batch in pool.map(lambda b: send_all(server.address, b), batches) for d in batch]
    stored = sorted(d.stored_as for d in deliveries)
    assert stored == sorted(["same-%d.vae" % i for i in range(1, 11)])
    assert (tmp_path / "same.vae").read_bytes() == b"existing"
    received = {(tmp_path / name).read_bytes() for name in stored}
    assert received == {item for batch in batches for _, item in batch}
    assert sorted(os.listdir(tmp_path)) == sorted(stored + ["same.vae"])  # no temporary files left
    assert server.stored == 10 and server.failed == 0


def test_server_cut_and_hostile_messages_write_nothing(tmp_path):
    with running_server(tmp_path / "out") as (server, lines):
        with socket.create_connection(server.address, timeout=TIMEOUT) as raw:
            frame = encode_frame(MessageType.IMAGE, "cut.png", fake_vae(), FLAG_WANTS_REPLY)
            raw.sendall(frame[:-10])  # cut mid-message
        with pytest.raises(Rejected, match="points outside"):
            send_all(server.address, [("../escape.png", fake_vae())])
        with pytest.raises(Rejected, match="stores compressed images"):
            with socket.create_connection(server.address, timeout=TIMEOUT) as connection:
                Sender(connection, reply_timeout=TIMEOUT).send_file(b"#!/bin/sh", "run.sh")
        wait_until(lambda: server.failed == 3)
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == []
    assert any("stream ended inside message 1" in line for line in lines)


def test_send_command(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        (inputs / f"k{i}.vae").write_bytes(fake_vae(i))
    (inputs / "notes.txt").write_text("not sent: not an image")
    with running_server(tmp_path / "out") as (server, _):
        result = CliRunner().invoke(send, [str(inputs), "--to", "%s:%d" % server.address])
    assert result.exit_code == 0, result.output
    assert "delivered 3 of 3 files" in result.output
    assert sorted(os.listdir(tmp_path / "out")) == ["k0.vae", "k1.vae", "k2.vae"]


def test_send_command_reports_failures(tmp_path):
    damaged = bytearray(fake_vae())
    damaged[-1] ^= 1
    (tmp_path / "bad.vae").write_bytes(damaged)
    (tmp_path / "good.vae").write_bytes(fake_vae())
    with running_server(tmp_path / "out") as (server, _):
        result = CliRunner().invoke(send, [str(tmp_path / "bad.vae"), str(tmp_path / "good.vae"),
                                           "--to", "%s:%d" % server.address])
    assert result.exit_code == InvalidFile.exit_code
    assert "corrupted" in result.output and "delivered 1 of 2 files" in result.output
    assert "Traceback" not in result.output

    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        free = placeholder.getsockname()[1]  # closed below: nothing listens there any more
    result = CliRunner().invoke(send, [str(tmp_path / "good.vae"), "--to", f"127.0.0.1:{free}"])
    assert result.exit_code == StreamError.exit_code
    assert result.output.strip().startswith("error: cannot connect to 127.0.0.1:") and "Traceback" not in result.output


def test_receive_command_in_a_process(tmp_path):
    command = [sys.executable, "-c", "from cli.transfer import receive; receive()", "--listen", "127.0.0.1:0",
               "--out", str(tmp_path), "--no-decode", "--max-messages", "3"]
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            first_line = process.stdout.readline()
            assert first_line.startswith("listening on 127.0.0.1:"), first_line + process.stderr.read()
            port = int(first_line.split(":")[1].split(",")[0])
            items = [("a.png", fake_vae(1)), ("b.png", fake_latents(2))]
            send_all(("127.0.0.1", port), items)
            damaged = fake_vae(3)[:-1] + b"\0"  # the Sender would refuse it: frame it by hand
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
                raw.sendall(encode_frame(MessageType.IMAGE, "c.png", damaged, FLAG_WANTS_REPLY))
                assert replies(raw, 1)[0].kind == MessageType.NACK
        except Exception:
            process.kill()
            raise
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == StreamError.exit_code  # one message failed
    assert "stored 2 messages, 1 failed" in stdout and "corrupted" in stderr and "Traceback" not in stderr
    assert sorted(os.listdir(tmp_path)) == ["a.vae", "b.latents"]
    assert Latents.from_bytes((tmp_path / "b.latents").read_bytes()) == fake_latents(2)


def test_receive_command_usage_errors(tmp_path):
    result = CliRunner().invoke(receive, ["--listen", "nowhere", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "expected HOST:PORT" in result.output
    with socket.create_server(("127.0.0.1", 0)) as taken:
        address = "%s:%d" % taken.getsockname()
        result = CliRunner().invoke(receive, ["--listen", address, "--out", str(tmp_path), "--no-decode"])
    assert result.exit_code == StreamError.exit_code
    assert result.output.startswith(f"error: cannot listen on {address}: ") and "Traceback" not in result.output


# -- with the real model ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def codec():
    import torch
    import vaecodec
    from vaecodec.errors import ModelNotFound

    torch.set_num_threads(1)
    try:
        return vaecodec.load(device="cpu")
    except ModelNotFound as error:
        pytest.skip(f"no trained model shipped yet: {error}")


def small_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1) + rng.integers(0, 16, (64, 64, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def test_images_and_latents_cross_unchanged(codec):
    image = small_image(0)
    latents = codec.encode_latents(small_image(1), quality=3.0)
    with loopback() as (client, server), background(receive_all, server) as received:
        sender = Sender(client, codec, reply_timeout=TIMEOUT)
        sender.send(image, quality=4.0, name="pil.png")
        sender.send(latents, name="latents.png")
        client.shutdown(socket.SHUT_WR)
        image_message, latents_message = received.result(TIMEOUT)
    assert image_message.data == codec.compress(image, quality=4.0)
    assert latents_message.latents == latents  # exactly the symbols sent
    expected = np.asarray(codec.decode_latents(latents))
    assert np.array_equal(np.asarray(latents_message.decode(codec)), expected)


def test_receive_server_decodes_and_keeps_vae(codec, tmp_path):
    path = tmp_path / "small.png"
    small_image(2).save(path)
    with running_server(tmp_path / "out", codec=codec, keep_compressed=True) as (server, lines):
        with socket.create_connection(server.address, timeout=TIMEOUT) as connection:
            delivery = Sender(connection, codec, reply_timeout=TIMEOUT).send(path, quality=2.0)
    assert delivery.stored_as == "small.png"
    vae = (tmp_path / "out" / "small.vae").read_bytes()
    assert vae == codec.compress(path, quality=2.0)
    decoded = Image.open(tmp_path / "out" / "small.png")
    assert np.array_equal(np.asarray(decoded), np.asarray(codec.decompress(vae)))


def test_receive_server_decodes_a_file_of_the_earlier_default_with_that_release(codec, tmp_path):
    """A sender with the earlier default (mshp-n64) sends its .vae file unchanged: a receiver whose model is the
    new default decodes it with the installed mshp-n64; a file of a release installed nowhere is refused."""
    import vaecodec

    old = (Path(__file__).resolve().parent / "data" / "mshp-n64-684f772f-q4.vae").read_bytes()
    header, payload = container.unpack(old)
    unknown = container.pack(dataclasses.replace(header, model_hash=bytes(4)), payload)
    with running_server(tmp_path / "out", codec=codec) as (server, lines):
        with pytest.raises(Rejected, match="mshp-n64@00000000, which is not installed"):
            send_all(server.address, [("unknown.vae", unknown)])
        assert send_all(server.address, [("old.vae", old)])[0].stored_as == "old.png"
    decoded = np.asarray(Image.open(tmp_path / "out" / "old.png"))
    assert np.array_equal(decoded, np.asarray(vaecodec.load("mshp-n64@684f772f", device="cpu").decompress(old)))
    assert sorted(os.listdir(tmp_path / "out")) == ["old.png"]


def test_send_command_compresses_images(codec, tmp_path):
    small_image(3).save(tmp_path / "small.png")
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")  # refused: transparent
    with running_server(tmp_path / "out", codec=codec) as (server, _):
        result = CliRunner().invoke(send, [str(tmp_path / "small.png"), str(tmp_path / "clear.png"), "-q", "2",
                                           "--to", "%s:%d" % server.address, "--device", "cpu"])
    assert result.exit_code == 3, result.output  # UnsupportedImage
    assert "transparent" in result.output and "delivered 1 of 2 files" in result.output
    assert os.listdir(tmp_path / "out") == ["small.png"]
    decoded = np.asarray(Image.open(tmp_path / "out" / "small.png"))
    assert np.array_equal(decoded, np.asarray(codec.decompress(codec.compress(tmp_path / "small.png", 2.0))))


def test_server_refuses_to_decode_huge_images(codec, tmp_path):
    header = container.ImageHeader(codec.model_name, codec.model_hash, 0, "RGB", 8192, 8000)
    hostile = container.pack(header, bytes(64))  # 80 bytes announcing 65 million pixels (the format allows 67)
    with running_server(tmp_path, codec=codec) as (server, _):
        with pytest.raises(Rejected, match="a 8192x8000 image .* is over the limit of 50000000 pixels"):
            send_all(server.address, [("huge.png", hostile)])
    assert os.listdir(tmp_path) == []
