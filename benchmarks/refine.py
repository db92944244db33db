"""What encoder-side latent refinement (``compress --refine STEPS``) buys, and what it costs.

    python -m benchmarks.refine --data ../shared/datasets/kodak [--steps 50] [--images N] [--workers 2]

Every image is compressed at qualities 1, 2, ..., 8 twice, with the plain encoder and with refinement, in the
same worker process: real file sizes, real decoded 8-bit RGB pixels, single timed runs (one thread per worker,
``--workers`` spawned processes). Refined files are decoded by the ordinary decoder.

Writes refine_per_image.csv, refine.json and refine.md to --out: the mean curves of both encoders, the BD-rate
of refinement against the plain encoder measured here, and the BD-rate of both against the classical codecs
on the same images. Those classical curves are read from rd.py's committed rd_per_image.csv (their file sizes
and pixels are deterministic, so only their timings belong to another run); the run date is stated.
"""

from __future__ import annotations

import csv
import datetime
import json
import multiprocessing
import time
import traceback
from pathlib import Path

import click
import numpy as np
from PIL import Image

from benchmarks.bdrate import bd_quality, bd_rate
from benchmarks.codecs import CODECS
from benchmarks.rd import machine_info, psnr_rgb8, set_up_worker

QUALITIES = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
CLASSICAL = ("jpeg-420", "jpeg-444", "webp", "jxl", "heic-444", "avif-444")
COLUMNS = ["image", "encoder", "quality", "bytes", "bpp", "psnr", "encode_s"]

_codec = None


def measure_image(task: tuple) -> dict:
    """One image at every quality, plain and refined: {'image', 'rows'} or {'image', 'error'}."""
    global _codec
    image_path, steps = task
    name = Path(image_path).stem
    try:
        import vaecodec

        if _codec is None:
            _codec = vaecodec.load("default", device="cpu")
        original = Image.open(image_path).convert("RGB")
        pixels = np.array(original)
        rows = []
        for quality in QUALITIES:
            for encoder, refine_steps in (("plain", 0), ("refined", steps)):
                started = time.perf_counter()
                data = _codec.compress(original, quality, refine_steps=refine_steps)
                encode_s = time.perf_counter() - started
                decoded = np.array(_codec.decompress(data).convert("RGB"))
                rows.append({"image": name, "encoder": encoder, "quality": quality, "bytes": len(data),
                             "bpp": 8 * len(data) / (original.width * original.height),
                             "psnr": psnr_rgb8(pixels, decoded), "encode_s": encode_s})
        return {"image": name, "rows": rows}
    except Exception:  # one broken image is reported, not fatal to the run
        return {"image": name, "error": traceback.format_exc(limit=3)}


def mean_curve(rows: list[dict], key: str) -> dict:
    """{'bpp': [...], 'psnr': [...], ...} means over images, per setting in increasing order."""
    settings = sorted({row[key] for row in rows})
    curve = {"setting": settings, "bpp": [], "psnr": [], "encode_s": []}
    for setting in settings:
        chosen = [row for row in rows if row[key] == setting]
        for column in ("bpp", "psnr", "encode_s"):
            curve[column].append(float(np.mean([float(row[column]) for row in chosen])))
    curve["images"] = len({row["image"] for row in rows})
    return curve


def classical_curves(rd_csv: Path, images: set) -> dict:
    """Mean curves of the classical codecs over exactly these images, from rd.py's per-image results."""
    if not rd_csv.is_file():
        return {}
    with rd_csv.open() as file:
        rows = [row for row in csv.DictReader(file) if row["codec"] in CLASSICAL and row["image"] in images]
    curves = {}
    for codec in CLASSICAL:
        codec_rows = [dict(row, setting=float(row["setting"])) for row in rows if row["codec"] == codec]
        if codec_rows and {row["image"] for row in codec_rows} == images:
            curves[codec] = mean_curve(codec_rows, "setting")
    return curves


def markdown(summary: dict) -> str:
    plain, refined = summary["curves"]["plain"], summary["curves"]["refined"]
    lines = [
        "# Encoder-side latent refinement on Kodak",
        "",
        f"Run {summary['date']}: {summary['images']} images, `--refine {summary['steps']}` against the plain "
        f"encoder, {summary['workers']} worker processes with 1 thread each, {summary['wall_s']:.0f} s wall clock. "
        f"Model {summary['model']}. Machine: {summary['machine'].get('cpu', 'CPU')}, "
        f"{summary['machine']['cpu_count']} cores.",
        "",
        "Both files of a pair come from the same worker; bpp counts every byte of the file; PSNR is over the "
        "8-bit RGB output of the ordinary decoder. Encode times are single runs on one thread.",
        "",
        "| quality | plain bpp | plain PSNR dB | refined bpp | refined PSNR dB | plain encode s | refined encode s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, quality in enumerate(plain["setting"]):
        lines.append(f"| {quality:g} | {plain['bpp'][i]:.3f} | {plain['psnr'][i]:.2f} | {refined['bpp'][i]:.3f} | "
                     f"{refined['psnr'][i]:.2f} | {plain['encode_s'][i]:.2f} | {refined['encode_s'][i]:.1f} |")
    lines += ["", "BD-rate (PSNR); negative: fewer bits for the same PSNR.", "",
              "| against | plain encoder | refined encoder |", "|---|---:|---:|"]
    for label, entry in summary["bd"].items():
        plain_text = "—" if entry["plain"] is None else f"{entry['plain']:+.1f} %"
        lines.append(f"| {label} | {plain_text} | {entry['refined']:+.1f} % |")
    lines += ["", f"Refined against plain: BD-PSNR {summary['bd_psnr_refined_vs_plain']:+.2f} dB. Classical "
              f"curves: the same images in rd_per_image.csv of the rd.py run of {summary['classical_run']}."]
    if summary["errors"]:
        lines += ["", "Failed images: " + ", ".join(sorted(summary["errors"]))]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default="benchmarks/results",
              show_default=True)
@click.option("--classical", "classical_dir", type=click.Path(file_okay=False, path_type=Path),
              default="benchmarks/results", show_default=True,
              help="Folder with rd.py's rd_per_image.csv and rd_summary.json.")
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True, help="Refinement steps.")
@click.option("--images", "image_limit", type=click.IntRange(min=1), default=None, help="Only the first N images.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True)
def main(data_dir, out_dir, classical_dir, steps, image_limit, workers):
    paths = sorted(path for path in data_dir.iterdir() if path.suffix.lower() == ".png")[:image_limit]
    started = time.perf_counter()
    results = []
    with click.progressbar(length=len(paths), label="images", show_pos=True) as bar:
        with multiprocessing.get_context("spawn").Pool(workers, initializer=set_up_worker) as pool:
            for result in pool.imap_unordered(measure_image, [(str(path), steps) for path in paths]):
                results.append(result)
                bar.update(1)
    rows = sorted((row for result in results for row in result.get("rows", [])),
                  key=lambda row: (row["encoder"], row["quality"], row["image"]))
    errors = {result["image"]: result["error"] for result in results if "error" in result}
    images = {row["image"] for row in rows}
    curves = {encoder: mean_curve([row for row in rows if row["encoder"] == encoder], "quality")
              for encoder in ("plain", "refined")}
    bd = {"vaecodec, plain encoder (this run)": {
        "plain": None, "refined": bd_rate(curves["plain"]["bpp"], curves["plain"]["psnr"],
                                          curves["refined"]["bpp"], curves["refined"]["psnr"])}}
    rd_summary = classical_dir / "rd_summary.json"
    classical_run = json.loads(rd_summary.read_text())["date"] if rd_summary.is_file() else "missing"
    for label, curve in classical_curves(classical_dir / "rd_per_image.csv", images).items():
        bd[label] = {encoder: bd_rate(curve["bpp"], curve["psnr"], curves[encoder]["bpp"], curves[encoder]["psnr"])
                     for encoder in ("plain", "refined")}
    summary = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "images": len(images), "steps": steps, "workers": workers,
        "wall_s": time.perf_counter() - started,
        "model": CODECS["vaecodec"].model_identity(),
        "machine": machine_info(),
        "curves": curves, "bd": bd,
        "bd_psnr_refined_vs_plain": bd_quality(curves["plain"]["bpp"], curves["plain"]["psnr"],
                                               curves["refined"]["bpp"], curves["refined"]["psnr"]),
        "classical_run": classical_run, "errors": errors,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "refine_per_image.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "refine.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "refine.md").write_text(markdown(summary))
    click.echo(markdown(summary))


if __name__ == "__main__":
    main()
