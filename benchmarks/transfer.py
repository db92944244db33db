"""Transfer benchmark: images over loopback TCP with vaecodec.stream, compressed versus the PNG files.

    python -m benchmarks.transfer --data ../shared/datasets/kodak [--limit N] [--quality 4] [--repeats 5]

Each mode sends every image over one connection to 127.0.0.1, each message acknowledged before the next one
goes (as `vaecodec send` does), with the same framing:

    png           the PNG files themselves, as FILE messages
    vae           .vae files compressed beforehand; the receiver validates them (CRC, header, model)
    vae+codec     end to end: the sender compresses each image, the receiver decodes it (`send` + `receive`)

Reported: images/s, MB/s of bytes on the wire, wire bytes per image, and the seconds per image that those
bytes would take on a 100 Mbit/s link. Loopback shows the protocol's own cost; on a real link the wire bytes
decide. Writes transfer.json and transfer.md to --out.
"""

import datetime
import json
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import torch

import vaecodec
from benchmarks.rd import machine_info
from vaecodec.stream import CRC, HEADER_SIZE, Receiver, Sender

LINK_BITS_PER_S = 100e6


def wire_bytes(delivery) -> int:
    return HEADER_SIZE + len(delivery.name.encode("utf-8")) + delivery.size + CRC.size


def transfer(items, send, on_receive, repeats: int, codec) -> tuple:
    """Send ``items`` ``repeats`` times over one loopback connection; (seconds until the last ACK, wire bytes)."""
    with socket.create_server(("127.0.0.1", 0)) as listener, ThreadPoolExecutor(1) as pool:
        def serve():
            connection, _ = listener.accept()
            with connection:
                for message in Receiver(connection, idle_timeout=600):
                    on_receive(message)

        served = pool.submit(serve)
        with socket.create_connection(listener.getsockname(), timeout=600) as connection:
            sender = Sender(connection, codec, reply_timeout=600)
            started = time.perf_counter()
            total = sum(wire_bytes(send(sender, item)) for _ in range(repeats) for item in items)
            seconds = time.perf_counter() - started
            connection.shutdown(socket.SHUT_WR)
        served.result(timeout=600)
    return seconds, total


def summarize(mode: str, images: int, seconds: float, total_bytes: int) -> dict:
    return {
        "mode": mode,
        "images": images,
        "seconds": round(seconds, 4),
        "images_per_s": round(images / seconds, 2),
        "wire_MB_per_s": round(total_bytes / seconds / 1e6, 2),
        "wire_bytes_per_image": round(total_bytes / images),
        "seconds_per_image_at_100_Mbit": round(total_bytes * 8 / LINK_BITS_PER_S / images, 4),
    }


def markdown_report(result: dict) -> str:
    lines = [
        f"# Transfer over loopback ({result['images']} images of {result['data']}, quality {result['quality']}, "
        f"{result['threads']} torch threads)",
        "",
        "| mode | images/s | wire MB/s | wire bytes/image | s/image at 100 Mbit/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["results"]:
        lines.append(f"| {row['mode']} | {row['images_per_s']} | {row['wire_MB_per_s']} | "
                     f"{row['wire_bytes_per_image']} | {row['seconds_per_image_at_100_Mbit']} |")
    lines += ["", "png: the PNG files; vae: pre-compressed .vae files; vae+codec: compress on the sender and "
                  "decode on the receiver. Each message is acknowledged before the next is sent.", ""]
    return "\n".join(lines)


@click.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Directory of PNG images (Kodak).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default="benchmarks/results",
              show_default=True)
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N images.")
@click.option("--quality", type=float, default=4.0, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Passes over the images for the png and vae modes (vae+codec runs once).")
@click.option("--threads", type=click.IntRange(min=1), default=os.cpu_count(), show_default=True,
              help="torch threads for compressing and decoding.")
def main(data_dir, out_dir, limit, quality, repeats, threads):
    torch.set_num_threads(threads)
    paths = sorted(data_dir.glob("*.png"))[:limit]
    if not paths:
        raise click.UsageError(f"no PNG images in {data_dir}")
    codec = vaecodec.load(device="cpu")
    compressed = [(path.name, codec.compress(path, quality)) for path in paths]
    originals = [(path.name, path.read_bytes()) for path in paths]
    ignore = lambda message: None  # noqa: E731 -- the receiver's validation is all the work in these modes

    results = []
    seconds, total = transfer(originals, lambda sender, item: sender.send_file(item[1], item[0]), ignore, repeats,
                              codec)
    results.append(summarize("png", len(paths) * repeats, seconds, total))
    seconds, total = transfer(compressed, lambda sender, item: sender.send(item[1], name=item[0]), ignore, repeats,
                              codec)
    results.append(summarize("vae", len(paths) * repeats, seconds, total))
    seconds, total = transfer(paths, lambda sender, path: sender.send(path, quality),
                              lambda message: message.decode(codec), 1, codec)
    results.append(summarize("vae+codec", len(paths), seconds, total))

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "data": data_dir.name,
        "model": codec.model_name,
        "images": len(paths),
        "quality": quality,
        "repeats": repeats,
        "threads": threads,
        "results": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "transfer.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "transfer.md").write_text(markdown_report(result))
    click.echo(markdown_report(result))
    click.echo(f"results in {out_dir}")


if __name__ == "__main__":
    main()
