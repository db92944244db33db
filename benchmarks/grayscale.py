"""What a grayscale photo costs, and the calibration of the quality offset grayscale images are coded at.

    python -m benchmarks.grayscale [--data ../shared/datasets/kodak] [--model default] [--long-side 512]
                                   [--out benchmarks/results]
    python -m benchmarks.grayscale --calibrate [--train-data ../shared/datasets/train] [--model default]

A quality is a fidelity, and a grayscale photo (coded as three equal channels) reaches a higher PSNR than its
colour original at the same quality index, so vaecodec codes it ``GRAY_QUALITY_OFFSET`` quality indexes lower
(vaecodec/quality.py). The benchmark codes every Kodak photo (evaluation only) at qualities 2 to 7: as it is
(RGB) and converted by Pillow to gray (mode L, decoded back to L), the gray one both as vaecodec codes it now
and at the full quality index, as it was coded before the offset. JPEG and WebP at Pillow quality 75 are
measured the same way as peers, in the same run. Reports the mean gray/colour size ratio per quality and the
PSNR of each decoded image against its own original (gray against gray). Writes grayscale.json and .md.

``--calibrate`` chooses the offset, on the 16 photos that ``vaecodec train`` holds out of the training folders
(never Kodak): the mean PSNR of the colour photos at each quality 2 to 7 and of their gray versions at every
quality index, then for each offset the per-quality difference of the gray photos' mean PSNR at the lowered
index from the colour photos' at the quality asked for. The offset with the smallest mean absolute
difference is the one to put in quality.py. Writes grayscale_calibration.json and .md.
"""

from __future__ import annotations

import datetime
import io
import json
import math
from pathlib import Path

import click
import numpy as np
from PIL import Image

import vaecodec
from vaecodec.quality import GRAY_QUALITY_OFFSET, coded_quality_index, index_to_quality, quality_to_index

QUALITIES = (2, 3, 4, 5, 6, 7)
PEER_QUALITY = 75
OFFSETS = range(0, 9)  # candidate offsets in quality indexes: 0 to 2 whole qualities
ROOT = Path(__file__).resolve().parents[2]


def psnr(decoded: Image.Image, original: Image.Image) -> float:
    error = np.asarray(decoded, dtype=np.float64) - np.asarray(original, dtype=np.float64)
    return 10 * math.log10(255**2 / max(float(np.mean(error**2)), 1e-10))


def pillow_peer(format_name: str):
    def code(image: Image.Image) -> tuple:
        buffer = io.BytesIO()
        image.save(buffer, format_name, quality=PEER_QUALITY)
        data = buffer.getvalue()
        decoded = Image.open(io.BytesIO(data))
        return len(data), decoded.convert(image.mode)  # WebP decodes gray as RGB with equal channels
    return code


def photos(folder: Path, long_side: int) -> list:
    loaded = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            image = image.convert("RGB")
        scale = min(1.0, long_side / max(image.size))
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        loaded.append((path.name, image))
    return loaded


def gray_against_colour(code, images: list, *gray_codes) -> list:
    """Per way of coding the gray photos (``gray_codes``, else ``code`` itself), the mean gray/colour size
    ratio and PSNRs over the photos, for ``code(image) -> (bytes, decoded image)``; each colour photo is coded
    once."""
    gray_codes = gray_codes or (code,)
    ratios, colour_psnr = [[] for _ in gray_codes], []
    gray_psnr = [[] for _ in gray_codes]
    for _, colour in images:
        gray = colour.convert("L")
        colour_size, colour_decoded = code(colour)
        colour_psnr.append(psnr(colour_decoded, colour))
        for i, code_gray in enumerate(gray_codes):
            gray_size, gray_decoded = code_gray(gray)
            ratios[i].append(gray_size / colour_size)
            gray_psnr[i].append(psnr(gray_decoded, gray))
    return [{"gray_to_colour": float(np.mean(ratios[i])), "colour_psnr": float(np.mean(colour_psnr)),
             "gray_psnr": float(np.mean(gray_psnr[i]))} for i in range(len(gray_codes))]


def measure(codec, images: list) -> dict:
    def vaecodec_at(quality, gray_offset=True):
        def code(image):
            data = codec.compress(image, quality, gray_offset=gray_offset)
            return len(data), codec.decompress(data)
        return code

    now, before = {}, {}
    for quality in QUALITIES:
        gray_quality = index_to_quality(coded_quality_index(quality_to_index(quality), "L"))
        lowered, full = gray_against_colour(vaecodec_at(quality), images, vaecodec_at(quality),
                                            vaecodec_at(quality, gray_offset=False))
        now[f"vaecodec q{quality:g}"] = {"gray_quality": gray_quality, **lowered}
        before[f"vaecodec q{quality:g}, gray at q{quality:g} (before)"] = {"gray_quality": float(quality), **full}
    rows = {**now, **before}
    rows[f"JPEG q{PEER_QUALITY} (Pillow)"], = gray_against_colour(pillow_peer("JPEG"), images)
    rows[f"WebP q{PEER_QUALITY} (Pillow)"], = gray_against_colour(pillow_peer("WEBP"), images)
    return rows


def report(result: dict) -> str:
    lines = ["# What a grayscale photo costs", "",
             f"Run {result['time']}, model {result['model']}, {result['photos']} Kodak photos (long side at most "
             f"{result['long_side']} px), each coded in colour and converted to gray by Pillow: real files, decoded "
             "pixels. vaecodec codes a gray photo asked at quality q at q − "
             f"{result['gray_quality_offset'] * 0.25:g} "
             f"(GRAY_QUALITY_OFFSET = {result['gray_quality_offset']}, in steps of 0.25), the offset that best matched "
             "the gray photos' mean PSNR to the colour photos' at q on the photos held out of the training folders "
             "(grayscale_calibration.md); the rows marked (before) code it at q itself, as vaecodec did before the "
             "offset. Size ratio: mean over the photos of gray bytes / colour bytes (lower: gray costs less). PSNR "
             "of each decode against its own original; gray − colour: the difference of the two means.", "",
             "| codec | gray coded at | gray / colour size | colour PSNR dB | gray PSNR dB | gray − colour dB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, row in result["rows"].items():
        coded_at = f"q{row['gray_quality']:g}" if "gray_quality" in row else ""
        lines.append(f"| {name} | {coded_at} | {row['gray_to_colour']:.3f} | {row['colour_psnr']:.2f} | "
                     f"{row['gray_psnr']:.2f} | {row['gray_psnr'] - row['colour_psnr']:+.2f} |")
    lines += ["", "Regenerate: `python -m benchmarks.grayscale`"]
    return "\n".join(lines) + "\n"


# -- calibration -------------------------------------------------------------------------------------------------

def calibrate(codec, images: list) -> dict:
    """Per-photo PSNR and bytes (real files) of the colour photos at QUALITIES and of their gray versions at
    every quality index up to the highest of QUALITIES, each coded at exactly that index."""
    from vaecodec.targeting import Search

    colour_indexes = [quality_to_index(quality) for quality in QUALITIES]
    gray_indexes = range(0, max(colour_indexes) + 1)
    colour = {index: {"psnr": [], "bytes": []} for index in colour_indexes}
    gray = {index: {"psnr": [], "bytes": []} for index in gray_indexes}
    for _, image in images:
        for found, indexes, picture in ((colour, colour_indexes, image), (gray, gray_indexes, image.convert("L"))):
            search = Search(codec, picture)  # codes at exactly the index given: no offset
            for index in indexes:
                found[index]["psnr"].append(search.psnr(index))
                found[index]["bytes"].append(len(search.file(index)))
    return {"colour": colour, "gray": gray}


def offset_table(measured: dict) -> dict:
    """For each candidate offset: per quality, the gray photos' mean PSNR at the lowered index minus the colour
    photos' at the quality (dB), and the mean gray/colour size ratio; their mean absolute difference."""
    colour, gray = measured["colour"], measured["gray"]
    table = {}
    for offset in OFFSETS:
        rows = {}
        for quality in QUALITIES:
            index = quality_to_index(quality)
            lowered = max(0, index - offset)
            ratio = np.mean(np.array(gray[lowered]["bytes"]) / np.array(colour[index]["bytes"]))
            rows[f"{quality:g}"] = {"gray_quality": index_to_quality(lowered),
                                    "psnr_difference": float(np.mean(gray[lowered]["psnr"]) -
                                                             np.mean(colour[index]["psnr"])),
                                    "gray_to_colour": float(ratio)}
        table[offset] = {"per_quality": rows,
                         "mean_abs_difference": float(np.mean([abs(r["psnr_difference"]) for r in rows.values()])),
                         "mean_difference": float(np.mean([r["psnr_difference"] for r in rows.values()]))}
    return table


def calibration_report(result: dict) -> str:
    table, chosen = result["offsets"], result["chosen_offset"]
    qualities = list(next(iter(table.values()))["per_quality"])
    lines = ["# Calibration of the grayscale quality offset", "",
             f"Run {result['time']}, model {result['model']}, the {result['photos']} photos held out of the "
             f"training folders (never Kodak; long side at most {result['long_side']} px), each coded in colour "
             "at each quality and converted to gray by Pillow and coded at every quality index: real files, "
             "decoded pixels. For each offset (in quality indexes of 0.25): per quality q, mean PSNR of the "
             "gray photos coded at q − offset/4 minus mean PSNR of the colour photos at q (dB; positive: gray "
             "gets more fidelity than colour at q), and the mean gray/colour size ratio.", "",
             "| offset | " + " | ".join(f"q{q}" for q in qualities) + " | mean abs dB | mean dB |",
             "|---:|" + "---:|" * (len(qualities) + 2)]
    for offset, row in table.items():
        cells = [f"{row['per_quality'][q]['psnr_difference']:+.2f} ({row['per_quality'][q]['gray_to_colour']:.2f})"
                 for q in qualities]
        mark = " (chosen)" if int(offset) == chosen else ""
        lines.append(f"| {offset}{mark} | " + " | ".join(cells) + f" | {row['mean_abs_difference']:.2f} | "
                     f"{row['mean_difference']:+.2f} |")
    colour = result["colour_psnr"]
    lines += ["", "Cells: PSNR difference in dB (size ratio). Mean colour PSNR per quality: " +
              ", ".join(f"q{q} {colour[q]:.2f} dB" for q in qualities) + ".", "",
              f"Chosen: GRAY_QUALITY_OFFSET = {chosen} (the smallest mean absolute difference), a gray photo coded "
              f"{chosen * 0.25:g} quality lower.", "",
              "Regenerate: `python -m benchmarks.grayscale --calibrate`"]
    return "\n".join(lines) + "\n"


def run_calibration(codec, train_data: Path, long_side: int, out: Path) -> None:
    from benchmarks.heldout import held_out_photos

    images = held_out_photos(str(train_data), long_side)
    measured = calibrate(codec, images)
    table = offset_table(measured)
    chosen = min(table, key=lambda offset: (round(table[offset]["mean_abs_difference"], 9), offset))
    result = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
              "model": f"{codec.model_name} {codec.model_hash.hex()}", "photos": len(images),
              "names": [name for name, _ in images], "long_side": long_side, "chosen_offset": chosen,
              "colour_psnr": {f"{q:g}": float(np.mean(measured["colour"][quality_to_index(q)]["psnr"]))
                              for q in QUALITIES},
              "gray_psnr_by_quality": {f"{index_to_quality(i):g}": float(np.mean(v["psnr"]))
                                       for i, v in measured["gray"].items()},
              "offsets": table}
    out.mkdir(parents=True, exist_ok=True)
    (out / "grayscale_calibration.json").write_text(json.dumps(result, indent=2) + "\n")
    text = calibration_report(result)
    (out / "grayscale_calibration.md").write_text(text)
    click.echo(text)


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=ROOT / "shared" / "datasets" / "kodak", show_default=True,
              help="Photos of the benchmark (evaluation only).")
@click.option("--calibrate", is_flag=True,
              help="Choose the offset on the held-out training photos instead of running the benchmark.")
@click.option("--train-data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=ROOT / "shared" / "datasets" / "train", show_default=True,
              help="Training folder whose 16 held-out photos --calibrate uses.")
@click.option("--model", default="default", show_default=True, help="Model name or weights file.")
@click.option("--long-side", type=int, default=512, show_default=True, help="Downscale photos to this first.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parent / "results", show_default=True)
def main(data: Path, calibrate: bool, train_data: Path, model: str, long_side: int, out: Path):
    codec = vaecodec.load(model, device="cpu")
    if calibrate:
        return run_calibration(codec, train_data, long_side, out)
    images = photos(data, long_side)
    result = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
              "model": f"{codec.model_name} {codec.model_hash.hex()}", "photos": len(images),
              "long_side": long_side, "gray_quality_offset": GRAY_QUALITY_OFFSET, "rows": measure(codec, images)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "grayscale.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report(result)
    (out / "grayscale.md").write_text(text)
    click.echo(text)


if __name__ == "__main__":
    main()
