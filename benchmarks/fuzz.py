"""Fuzzing: mutated files through the API and hostile peers against the receiver, with a summary of outcomes.

    python -m benchmarks.fuzz --cases 10000 [--seed 0] [--max-pixels 65536] [--out benchmarks/results]

Case classes, each built from small real files of the shipped model (so mutants reach deep into the decoder):

    vae        .vae files: truncation, bit flips, overwritten, inserted or deleted bytes, random bytes, and
               forged header fields, payloads and splices with the CRC recomputed -> Codec.decompress
    latents    Latents.to_bytes() mutated the same way -> Latents.from_bytes, Codec.decode_latents
    image      PNG files truncated, flipped or announcing huge sizes -> Codec.compress
    peer       hostile senders against a ReceiveServer on 127.0.0.1 that decodes what it receives: damaged,
               cut, oversized and lying frames, hostile names and .vae content, random bytes, slow senders,
               crowds of connections; a good message after each, which must still be stored

Every case must end in a documented way (an InvalidFile or UnsupportedImage subclass, a NACK, a closed
connection) within ``CASE_SECONDS``; a file whose CRC fails must never decode; nothing decodes above the pixel
limit; the receiver must keep serving, write only what it acknowledged and leave no temporaries. Anything
else is counted as a failure and printed. Writes fuzz.json and fuzz.md to --out.
"""

import datetime
import io
import json
import resource
import select
import socket
import struct
import tempfile
import threading
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

import vaecodec
from benchmarks.rd import machine_info
from vaecodec import container
from vaecodec.errors import InvalidFile, UnsupportedImage
from vaecodec.latents import Latents
from vaecodec.stream import (CRC, FLAG_WANTS_REPLY, HEADER_FIELDS, HEADER_SIZE, Channel, MessageType, StreamError,
                             encode_frame, read_frame)

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"
CASE_SECONDS = 10.0  # a case running longer counts as a hang
CLASS_WEIGHTS = {"vae": 0.55, "latents": 0.1, "image": 0.05, "peer": 0.3}
PEER_TIMEOUT = 0.4  # the fuzzed receiver's idle and per-message timeouts: slow senders cost this much each


class Failure(Exception):
    """A case that ended in an undocumented way."""


# -- forging and mutating bytes -----------------------------------------------------------------------------------

def with_crc(body: bytes) -> bytes:
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def crc_holds(data: bytes) -> bool:
    return len(data) >= 4 and zlib.crc32(data[:-4]) == struct.unpack("<I", data[-4:])[0]


def vae_fields(data: bytes) -> dict:
    """The raw fields of a valid .vae file, as ``forge_vae`` takes them."""
    header, payload = container.unpack(data)
    return {"version": container.FORMAT_VERSION, "name": header.model_name.encode(), "hash": header.model_hash,
            "quality": header.quality_index, "mode": container.MODES.index(header.mode),
            "width": container.write_varint(header.width), "height": container.write_varint(header.height),
            "length": container.write_varint(len(payload)), "payload": payload}


def forge_vae(fields: dict) -> bytes:
    """A .vae file from raw fields (byte strings where the format has varints), with a correct CRC."""
    return with_crc(b"".join([
        container.MAGIC, bytes([fields["version"], len(fields["name"]) & 0xFF]), fields["name"], fields["hash"],
        bytes([fields["quality"], fields["mode"]]), fields["width"], fields["height"], fields["length"],
        fields["payload"]]))


def random_varint(rng) -> bytes:
    """Mostly plausible sizes, with zero, the format's edges, huge values, padded and overlong encodings."""
    choice = rng.integers(0, 6)
    if choice == 0:
        return container.write_varint(int(rng.choice([0, 1, 63, 64, 65, 8192, 65536, 65537, 2**31, 2**35 - 1])))
    if choice == 1:  # padded: a redundant continuation ending in 0
        return bytes([int(rng.integers(0, 128)) | 0x80] * int(rng.integers(1, 4)) + [0])
    if choice == 2:  # overlong or unterminated
        return bytes(rng.integers(128, 256, int(rng.integers(1, 8))).astype(np.uint8))
    return container.write_varint(int(rng.integers(1, 1 << int(rng.integers(1, 17)))))


def random_name(rng) -> bytes:
    kinds = [b"../../somewhere/evil", b"/etc/passwd", b"x\x1b[2J\r\nfake", b"\xff\xfe", b"", b"mshp-n64",
             b"m" * int(rng.integers(60, 256)), bytes(rng.integers(0, 256, int(rng.integers(0, 40))).astype(np.uint8))]
    return kinds[int(rng.integers(0, len(kinds)))]


def forge_field(data: bytes, rng) -> bytes:
    """One header field or the payload of a valid file changed, the CRC recomputed."""
    fields = vae_fields(data)
    field = ["version", "name", "hash", "quality", "mode", "width", "height", "length", "payload",
             "size"][int(rng.integers(0, 10))]
    if field in ("version", "quality", "mode"):
        fields[field] = int(rng.integers(0, 256))
    elif field == "name":
        fields["name"] = random_name(rng)
    elif field == "hash":
        fields["hash"] = bytes(rng.integers(0, 256, 4).astype(np.uint8))
    elif field in ("width", "height", "length"):
        fields[field] = random_varint(rng)
    elif field == "size":  # a large image over a small payload: the decompression bomb
        side = int(rng.choice([256, 1024, 4096, 8192]))
        fields["width"], fields["height"] = container.write_varint(side), container.write_varint(side)
    else:
        payload = fields["payload"]
        fields["payload"] = [
            lambda: bytes(rng.integers(0, 256, int(rng.integers(0, 2 * len(payload) + 8))).astype(np.uint8)),
            lambda: flip_bits(payload, rng),
            lambda: payload[:int(rng.integers(0, len(payload) + 1))],
            lambda: payload + bytes(rng.integers(0, 256, 4 * int(rng.integers(1, 4))).astype(np.uint8)),
            lambda: b"\0" * (4 * int(rng.integers(0, 4))),
        ][int(rng.integers(0, 5))]()
        fields["length"] = container.write_varint(len(fields["payload"]))
    return forge_vae(fields)


def flip_bits(data: bytes, rng, count: int = None) -> bytes:
    data = bytearray(data)
    for _ in range(count or int(rng.integers(1, 9))):
        if data:
            position = int(rng.integers(0, 8 * len(data)))
            data[position // 8] ^= 1 << (position % 8)
    return bytes(data)


def mutate_bytes(data: bytes, rng) -> tuple:
    """(mutation name, mutated bytes), without fixing any CRC."""
    length = len(data)
    at = int(rng.integers(0, length + 1))
    run = int(rng.integers(1, 17))
    noise = bytes(rng.integers(0, 256, run).astype(np.uint8))
    mutations = {
        "truncated": lambda: data[:int(rng.integers(0, length))],
        "bits flipped": lambda: flip_bits(data, rng),
        "bytes overwritten": lambda: data[:at] + noise + data[at + run:],
        "bytes inserted": lambda: data[:at] + noise + data[at:],
        "bytes deleted": lambda: data[:at] + data[at + run:],
        "bytes appended": lambda: data + noise,
        "random bytes": lambda: bytes(rng.integers(0, 256, int(rng.integers(0, 2 * length))).astype(np.uint8)),
        "random after magic": lambda: data[:4] + bytes(rng.integers(0, 256, int(rng.integers(0, length))).astype(
            np.uint8)),
    }
    name = list(mutations)[int(rng.integers(0, len(mutations)))]
    return name, mutations[name]()


def mutate_vae(data: bytes, others: list, rng) -> tuple:
    """(mutation name, mutant) of a .vae file: half raw byte mutations, half forged with a valid CRC."""
    choice = rng.random()
    if choice < 0.5:
        return mutate_bytes(data, rng)
    if choice < 0.9:
        return "field forged, CRC fixed", forge_field(data, rng)
    other = vae_fields(others[int(rng.integers(0, len(others)))])
    fields = vae_fields(data)
    fields["payload"], fields["length"] = other["payload"], other["length"]
    return "payload of another file, CRC fixed", forge_vae(fields)


def mutate_latents(data: bytes, rng) -> tuple:
    if rng.random() < 0.6:
        return mutate_bytes(data, rng)
    body = bytearray(data[:-4])  # a byte after the header changed (shapes, symbols), CRC fixed
    at = int(rng.integers(4, len(body)))
    body[at] = int(rng.integers(0, 256))
    return "byte changed, CRC fixed", with_crc(bytes(body))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def mutate_png(data: bytes, rng) -> tuple:
    if rng.random() < 0.3:  # a header announcing a large image, chunk CRC fixed: Pillow's decompression bomb
        width, height = (int(rng.choice([1, 1000, 12000, 40000, 70000, 2**31 - 1])) for _ in range(2))
        ihdr = png_chunk(b"IHDR", struct.pack(">II", width, height) + data[24:29])
        return "size forged", data[:8] + ihdr + data[33:]
    return mutate_bytes(data, rng)


# -- oracles: what each call may do -------------------------------------------------------------------------------

def decode_vae(codec, data: bytes, max_pixels: int) -> str:
    """The outcome of decompressing ``data``: an InvalidFile subclass name, or "decoded"."""
    try:
        image = codec.decompress(data, max_pixels=max_pixels)
    except InvalidFile as error:
        return type(error).__name__
    if not crc_holds(data):
        raise Failure("a file whose CRC fails was decoded")
    header, _ = container.unpack(data)
    if image.size != (header.width, header.height) or header.width * header.height > max_pixels:
        raise Failure(f"decoded {image.size} from a header of {header.width}x{header.height}")
    return "decoded"


def decode_latents(codec, data: bytes, max_pixels: int) -> str:
    try:
        image = codec.decode_latents(Latents.from_bytes(data), max_pixels=max_pixels)
    except InvalidFile as error:
        return type(error).__name__
    if not crc_holds(data):
        raise Failure("latents whose CRC fails were decoded")
    if image.width * image.height > max_pixels:
        raise Failure(f"decoded {image.size} over the pixel limit")
    return "decoded"


def compress_image(codec, data: bytes, folder: Path) -> str:
    path = folder / "case.png"
    path.write_bytes(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            compressed = codec.compress(path, 1.0)
        except UnsupportedImage as error:
            outcome = type(error).__name__
        else:
            outcome = "compressed"
            codec.decompress(compressed, max_pixels=None)
    if caught:
        raise Failure(f"warning printed: {caught[0].category.__name__}: {caught[0].message}")
    return outcome


# -- hostile peers -----------------------------------------------------------------------------------------------

class Peers:
    """A ReceiveServer on 127.0.0.1 that decodes what it receives, and the ways to abuse it."""

    def __init__(self, codec, seeds: list, out_dir: Path, max_pixels: int, rng):
        from vaecodec_cli.transfer import ReceiveServer

        self.seeds, self.out_dir, self.rng = seeds, out_dir, rng
        self.lines = []
        self.server = ReceiveServer(("127.0.0.1", 0), out_dir, codec, max_pixels=max_pixels,
                                    max_message_size=1 << 16, idle_timeout=PEER_TIMEOUT,
                                    message_timeout=PEER_TIMEOUT, max_open_connections=4,
                                    log=lambda line, error: self.lines.append(line))
        self.thread = threading.Thread(target=self.server.serve, daemon=True)
        self.thread.start()
        self.acknowledged = 0
        self.kind = "-"  # the case being run

    def close(self):
        self.server.stop()
        self.thread.join(10)

    def connect(self):
        return socket.create_connection(self.server.address, timeout=CASE_SECONDS)

    def exchange(self, frame: bytes) -> str:
        """Send bytes, end the stream, read replies until the server closes: "ACK", "NACK" or "closed"."""
        with self.connect() as connection:
            try:
                connection.sendall(frame)
                connection.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server hung up first (e.g. an oversized message): its reply may still be there
            outcome = "closed"
            channel = Channel(connection)
            while True:
                try:
                    reply = read_frame(channel, 1 << 16, CASE_SECONDS, "reply", CASE_SECONDS)
                except (StreamError, OSError):
                    return outcome
                if reply is None:
                    return outcome
                if reply.kind == MessageType.ACK:
                    self.acknowledged += 1
                outcome = reply.kind.name

    def good_message(self) -> str:
        """A valid message, which the server must still store."""
        frame = encode_frame(MessageType.IMAGE, "good.vae", self.pick(), FLAG_WANTS_REPLY)
        outcome = self.exchange(frame)
        if outcome != "ACK":
            raise Failure(f"a valid message after hostile ones got {outcome}")
        return outcome

    def pick(self) -> bytes:
        return self.seeds[int(self.rng.integers(0, len(self.seeds)))]

    def case(self) -> tuple:
        """(kind, outcome) of one hostile sender; ``self.kind`` names it as soon as it is chosen."""
        rng = self.rng
        choice = rng.random()
        self.kind = "-"
        if choice < 0.01:
            self.kind = "slow sender"
            return self.kind, self.slow_sender()
        if choice < 0.02:
            self.kind = "crowd of connections"
            return self.kind, self.crowd()
        if choice < 0.05:
            self.kind = "random bytes"
            return self.kind, self.exchange(bytes(rng.integers(0, 256, int(rng.integers(0, 200))).astype(
                np.uint8)))
        kind = [MessageType.IMAGE, MessageType.LATENTS, MessageType.FILE, MessageType.ACK][int(rng.integers(0, 4))]
        name = ["a.vae", "../../etc/passwd", "x\x1b[2J\r\n.vae", "é" * 100, "", "C:\\evil\\a.vae",
                "\u202egnp.exe"][int(rng.integers(0, 7))]
        payload = self.pick()
        if choice < 0.35:  # a well-framed message with hostile content
            payload = mutate_vae(payload, self.seeds, rng)[1]
            self.kind = f"hostile content ({kind.name})"
            return self.kind, self.exchange(encode_frame(kind, name, payload, FLAG_WANTS_REPLY))
        frame = encode_frame(kind, name, payload, FLAG_WANTS_REPLY)
        if choice < 0.45:  # a header whose length lies (header CRC fixed)
            fields = list(HEADER_FIELDS.unpack(frame[:HEADER_FIELDS.size]))
            fields[5] = int(rng.choice([0, 1, len(payload) + 100, 1 << 16, (1 << 16) + 1, 2**32 - 1]))
            header = HEADER_FIELDS.pack(*fields)
            frame = header + CRC.pack(zlib.crc32(header)) + frame[HEADER_SIZE:]
            self.kind = "lying length"
            return self.kind, self.check_reply(frame, self.exchange(frame))
        mutation, frame = mutate_bytes(frame, rng)
        self.kind = f"frame {mutation}"
        return self.kind, self.check_reply(frame, self.exchange(frame))

    def check_reply(self, frame: bytes, outcome: str) -> str:
        """An ACK needs a first frame whose header and body CRCs hold (bytes after it are another frame)."""
        if outcome == "ACK":
            fields = HEADER_FIELDS.size
            header_ok = len(frame) >= HEADER_SIZE and zlib.crc32(frame[:fields]) == CRC.unpack(
                frame[fields:HEADER_SIZE])[0]
            _, _, _, _, name_length, payload_length = HEADER_FIELDS.unpack(frame[:fields])
            body = frame[HEADER_SIZE:HEADER_SIZE + name_length + payload_length + CRC.size]
            if not (header_ok and len(body) == name_length + payload_length + CRC.size
                    and zlib.crc32(body[:-CRC.size]) == CRC.unpack(body[-CRC.size:])[0]):
                raise Failure("a damaged frame was acknowledged")
        return outcome

    def slow_sender(self) -> str:
        """A valid message one byte at a time, each inside the idle timeout: dropped at the message deadline."""
        frame = encode_frame(MessageType.IMAGE, "slow.vae", self.pick(), FLAG_WANTS_REPLY)
        dropped = self.drops()
        started = time.monotonic()
        with self.connect() as connection:
            for byte in frame:
                if select.select([connection], [], [], PEER_TIMEOUT / 8)[0]:
                    break  # the server answered (NACK) or hung up
                if time.monotonic() - started > 4 * PEER_TIMEOUT:
                    raise Failure("a slow sender was not dropped")
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    break
        while self.drops() == dropped:
            if time.monotonic() - started > CASE_SECONDS:
                raise Failure("a slow sender's connection ended, but no drop was counted")
            time.sleep(0.01)
        return "dropped at the deadline"

    def drops(self) -> int:
        return sum("did not arrive whole" in line for line in list(self.lines))

    def crowd(self) -> str:
        """More silent connections than the server serves at once: the surplus is turned away at once."""
        before = self.server.turned_away
        connections = [self.connect() for _ in range(self.server.max_open_connections + 3)]
        try:
            deadline = time.monotonic() + CASE_SECONDS
            while self.server.turned_away - before < 3:
                if time.monotonic() > deadline:
                    raise Failure("surplus connections were not turned away")
                time.sleep(0.01)
        finally:
            for connection in connections:
                connection.close()
        while self.server.open_connections:  # the served ones end when the server sees them close
            if time.monotonic() > deadline:
                raise Failure("closed connections still counted as open")
            time.sleep(0.01)
        return "surplus turned away"

    def check_folder(self):
        """Only acknowledged messages were stored, and no temporary is left."""
        names = [path.name for path in self.out_dir.iterdir()]
        hidden = [name for name in names if name.startswith(".")]
        if hidden or len(names) != self.acknowledged:
            raise Failure(f"{len(names)} files for {self.acknowledged} ACKs, temporaries {hidden[:3]}")


# -- the run -----------------------------------------------------------------------------------------------------

def seed_files(codec) -> tuple:
    """Small real .vae files, latents and a PNG: odd sizes, gray and colour, low and high quality."""
    photo = Image.open(KODAK / "kodim23.png").convert("RGB")
    crops = [photo.crop((300, 100, 316, 116)), photo.crop((200, 200, 240, 224)),
             photo.crop((100, 300, 133, 317)).convert("L"), photo.crop((400, 50, 401, 51))]
    vae = [codec.compress(crop, quality) for crop in crops for quality in (1.0, 4.5, 8.0)]
    latents = [codec.encode_latents(crop, 3.0).to_bytes() for crop in crops]
    png = io.BytesIO()
    crops[1].save(png, format="PNG")
    return vae, latents, png.getvalue()


def run(cases: int, seed: int, max_pixels: int, log) -> dict:
    torch.set_num_threads(1)
    codec = vaecodec.load("default", device="cpu")
    vae_seeds, latents_seeds, png_seed = seed_files(codec)
    rng = np.random.default_rng(seed)
    classes = list(CLASS_WEIGHTS)
    counts = rng.multinomial(cases, list(CLASS_WEIGHTS.values()))
    order = np.repeat(np.arange(len(classes)), counts)
    rng.shuffle(order)
    outcomes = {name: Counter() for name in classes}
    mutations = {name: Counter() for name in classes}
    failures, slowest = [], (0.0, "")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "received").mkdir()
        peers = Peers(codec, vae_seeds, folder / "received", max_pixels, rng)
        try:
            for number, class_index in enumerate(order):
                kind = classes[class_index]
                case_started = time.perf_counter()
                mutation = "-"
                try:
                    if kind == "vae":
                        mutation, data = mutate_vae(vae_seeds[int(rng.integers(0, len(vae_seeds)))], vae_seeds, rng)
                        outcome = decode_vae(codec, data, max_pixels)
                    elif kind == "latents":
                        mutation, data = mutate_latents(latents_seeds[int(rng.integers(0, len(latents_seeds)))], rng)
                        outcome = decode_latents(codec, data, max_pixels)
                    elif kind == "image":
                        mutation, data = mutate_png(png_seed, rng)
                        outcome = compress_image(codec, data, folder)
                    else:
                        try:
                            mutation, outcome = peers.case()
                        finally:
                            mutation = peers.kind
                        peers.good_message()
                except Failure as error:
                    outcome = "FAILURE"
                    failures.append(f"case {number} ({kind}, {mutation}): {error}")
                except Exception as error:  # an undocumented exception: what this run hunts for
                    outcome = "FAILURE"
                    failures.append(f"case {number} ({kind}, {mutation}): {type(error).__name__}: {error}")
                seconds = time.perf_counter() - case_started
                if seconds > CASE_SECONDS:
                    failures.append(f"case {number} ({kind}, {mutation}): took {seconds:.1f} s")
                slowest = max(slowest, (seconds, f"{kind}, {mutation}"))
                outcomes[kind][outcome] += 1
                mutations[kind][mutation] += 1
                if (number + 1) % 1000 == 0:
                    log(f"{number + 1} cases, {len(failures)} failures, {time.perf_counter() - started:.0f} s")
            peers.check_folder()
        except Failure as error:
            failures.append(f"receiver folder: {error}")
        finally:
            peers.close()
        internal = [line for line in peers.lines if "internal error" in line]
        failures += [f"receiver: {line}" for line in internal]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": f"{codec.model_name} ({codec.model_hash.hex()})",
        "cases": cases, "seed": seed, "max_pixels": max_pixels, "case_limit_s": CASE_SECONDS,
        "peer_timeouts_s": PEER_TIMEOUT,
        "wall_s": round(time.perf_counter() - started, 1),
        "slowest_case_s": round(slowest[0], 3), "slowest_case": slowest[1],
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "receiver": {"stored": peers.server.stored, "failed": peers.server.failed,
                     "turned_away": peers.server.turned_away},
        "outcomes": {kind: dict(counter.most_common()) for kind, counter in outcomes.items()},
        "mutations": {kind: dict(counter.most_common()) for kind, counter in mutations.items()},
        "failures": failures,
    }


def markdown_report(result: dict) -> str:
    lines = [
        "## Fuzzing: hostile files and peers", "",
        f"Regenerate: `python -m benchmarks.fuzz --cases {result['cases']} --seed {result['seed']} "
        f"--max-pixels {result['max_pixels']}`", "",
        "Each case must end in a documented error (or a decode of a file whose CRC holds, never above the pixel "
        "limit), a NACK or a closed connection, within the case limit; after every hostile sender a valid message "
        "must still be stored; the receiver's folder must hold only acknowledged files and no temporaries.", "",
        f"Run {result['date']}: {result['cases']} cases (seed {result['seed']}), model {result['model']}, "
        f"pixel limit {result['max_pixels']}, one torch thread, {result['wall_s']} s wall clock on "
        f"{result['machine'].get('cpu', 'unknown CPU')} ({result['machine'].get('cpu_count')} cores). "
        f"Failures (undocumented exceptions, silent decodes of damaged input, hangs over "
        f"{result['case_limit_s']:g} s, receiver faults): **{len(result['failures'])}**. Slowest case "
        f"{result['slowest_case_s']} s ({result['slowest_case']}); peak resident memory of the whole run "
        f"{result['peak_rss_mib']} MiB.", "",
        "| class | cases | outcomes |", "|---|---:|---|",
    ]
    for kind, counter in result["outcomes"].items():
        described = ", ".join(f"{name} {count}" for name, count in counter.items())
        lines.append(f"| {kind} | {sum(counter.values())} | {described} |")
    lines += ["", "| class | mutations |", "|---|---|"]
    for kind, counter in result["mutations"].items():
        lines.append(f"| {kind} | {', '.join(f'{name} {count}' for name, count in counter.items())} |")
    receiver = result["receiver"]
    lines += ["", f"Receiver (a good message after every hostile one, each of which was stored): {receiver['stored']} "
                  f"stored, {receiver['failed']} refused, {receiver['turned_away']} connections turned away.", ""]
    if result["failures"]:
        lines += ["Failures:", ""] + [f"- {failure}" for failure in result["failures"][:50]] + [""]
    return "\n".join(lines)


@click.command()
@click.option("--cases", type=click.IntRange(min=1), default=10000, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--max-pixels", type=click.IntRange(min=1), default=1 << 16, show_default=True,
              help="Pixel limit of the decoder and receiver under test (small keeps the run fast).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default="benchmarks/results",
              show_default=True)
def main(cases, seed, max_pixels, out_dir):
    """Fuzz the decoder, the latents reader, image input and the receiver; summary in fuzz.json and fuzz.md."""
    result = run(cases, seed, max_pixels, click.echo)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fuzz.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "fuzz.md").write_text(markdown_report(result))
    click.echo(markdown_report(result))
    raise SystemExit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
