"""Rate-distortion benchmark: vaecodec against classical codecs measured in the same run, and against
published curves.

    python -m benchmarks.rd --data ../shared/datasets/kodak [--quick] [--workers 2] [--out benchmarks/results]

For every image, codec and setting: encode to the bytes of a complete file (bpp = 8 * file bytes / pixels),
decode, score the 8-bit RGB output against the original (PSNR over all three channels, MS-SSIM with
pytorch-msssim), and time encode and decode once each (wall clock, in a worker that shares the machine with
the other workers). One task is one image through one codec's whole sweep; tasks run in `--workers` spawned
processes with one thread each.

Writes to --out: rd_per_image.csv, rd_summary.json (per codec and setting the means over the images, the
BD-rate table, versions, machine), rd.md (the same as tables) and rd.png (the curves).
Curves are means over images per setting, as the published ones are; MS-SSIM in dB is taken of the mean.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import multiprocessing
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import click
import numpy as np
from PIL import Image

from benchmarks.bdrate import bd_quality, bd_rate, msssim_to_db
from benchmarks.codecs import CODECS, library_versions

REFERENCE_CODEC = "vaecodec"
QUICK_IMAGES = 2

# Published Kodak curves (means over the 24 images), in ../shared/anchors; see its README.
PUBLISHED_CURVES = {
    "bmshj2018-hyperprior (CompressAI, MSE)": "compressai-kodak/compressai-bmshj2018-hyperprior_mse_cpu.json",
    "mbt2018-mean (CompressAI, MSE)": "compressai-kodak/compressai-mbt2018-mean_mse_cpu.json",
    "BPG 4:4:4 x265": "compressai-kodak/bpg_444_x265_ycbcr.json",
    "VTM intra 4:4:4": "compressai-kodak/vtm.json",
}
SANITY_ANCHOR = "BPG 4:4:4 x265"  # every measured codec is also compared with it, to check against the ladder

CSV_COLUMNS = ["image", "codec", "setting", "width", "height", "bytes", "bpp", "psnr", "msssim", "encode_s", "decode_s"]


# ---- measuring (runs in the worker processes) ----


def set_up_worker() -> None:
    import torch

    torch.set_num_threads(1)


def measure_image_with_codec(task: tuple[str, str, tuple]) -> dict:
    """One image through one codec's sweep: {'image', 'codec', and 'rows': [...] or 'error': text}."""
    image_path, codec_name, settings = task
    result = {"image": Path(image_path).stem, "codec": codec_name}
    try:
        codec = CODECS[codec_name]
        original = Image.open(image_path).convert("RGB")
        original_pixels = np.array(original)  # writable, so torch can wrap it
        rows = []
        for setting in settings:
            start = time.perf_counter()
            data = codec.encode(original, setting)
            encode_s = time.perf_counter() - start
            start = time.perf_counter()
            decoded = codec.decode(data)
            decode_s = time.perf_counter() - start
            if decoded.size != original.size:
                raise ValueError(f"decoded size {decoded.size} differs from the original's {original.size}")
            decoded_pixels = np.array(decoded)
            rows.append(
                {
                    "image": Path(image_path).stem,
                    "codec": codec_name,
                    "setting": setting,
                    "width": original.width,
                    "height": original.height,
                    "bytes": len(data),
                    "bpp": 8 * len(data) / (original.width * original.height),
                    "psnr": psnr_rgb8(original_pixels, decoded_pixels),
                    "msssim": msssim_rgb8(original_pixels, decoded_pixels),
                    "encode_s": encode_s,
                    "decode_s": decode_s,
                }
            )
        return {**result, "rows": rows}
    except Exception:
        return {**result, "error": traceback.format_exc(limit=3)}


def psnr_rgb8(original: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of two uint8 HxWx3 arrays, over all pixels and channels."""
    mse = np.mean((original.astype(np.float64) - decoded.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def msssim_rgb8(original: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM (pytorch-msssim, default 5 scales and Gaussian window) of two uint8 HxWx3 arrays."""
    import torch
    from pytorch_msssim import ms_ssim

    def as_batch(pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float()

    return float(ms_ssim(as_batch(original), as_batch(decoded), data_range=255))


# ---- running ----


def run_benchmark(
    image_paths: list[Path], codec_names: list[str], quick: bool, workers: int
) -> tuple[list[dict], dict[str, str], dict[str, list[str]]]:
    """Measure every available codec on every image: (rows, skipped {codec: reason}, errors {codec: [text]})."""
    skipped = {}
    tasks = []
    for name in codec_names:
        codec = CODECS[name]
        reason = codec.unavailable_reason()
        if reason is not None:
            skipped[name] = reason
            continue
        settings = codec.quick_settings if quick else codec.settings
        tasks += [(str(path), name, settings) for path in image_paths]
    # the slowest codecs first, so that no worker is left with a long task at the end
    tasks.sort(key=lambda task: task[1] not in ("vaecodec", "heic-444", "avif-444"))

    rows, errors = [], {}
    with click.progressbar(length=len(tasks), label="images x codecs", show_pos=True, item_show_func=str) as bar:
        if workers <= 1:
            set_up_worker()
            results = map(measure_image_with_codec, tasks)
            _collect(results, bar, rows, errors)
        else:
            with multiprocessing.get_context("spawn").Pool(workers, initializer=set_up_worker) as pool:
                _collect(pool.imap_unordered(measure_image_with_codec, tasks), bar, rows, errors)
    rows.sort(key=lambda row: (row["codec"], row["setting"], row["image"]))
    return rows, skipped, errors


def _collect(results, bar, rows: list, errors: dict) -> None:
    for result in results:
        if "error" in result:
            errors.setdefault(result["codec"], []).append(f"{result['image']}: {result['error']}")
        else:
            rows += result["rows"]
        bar.update(1, f"{result['image']} {result['codec']}")


# ---- summarising ----


def mean_curves(rows: list[dict]) -> dict[str, list[dict]]:
    """Per codec, per setting (in increasing order) the means over the images."""
    by_point: dict[tuple, list[dict]] = {}
    for row in rows:
        by_point.setdefault((row["codec"], row["setting"]), []).append(row)
    curves: dict[str, list[dict]] = {}
    for (codec, setting), point_rows in sorted(by_point.items(), key=lambda item: (item[0][0], item[0][1])):
        mean_msssim = float(np.mean([row["msssim"] for row in point_rows]))
        curves.setdefault(codec, []).append(
            {
                "setting": setting,
                "images": len(point_rows),
                "bpp": float(np.mean([row["bpp"] for row in point_rows])),
                "psnr": float(np.mean([row["psnr"] for row in point_rows])),
                "msssim": mean_msssim,
                "msssim_db": float(msssim_to_db(mean_msssim)),
                "encode_s": float(np.mean([row["encode_s"] for row in point_rows])),
                "decode_s": float(np.mean([row["decode_s"] for row in point_rows])),
            }
        )
    return curves


def load_published_curves(anchors_dir: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """The published curves that are present ({label: curve}) and those that are not ({label: reason})."""
    curves, missing = {}, {}
    for label, relative_path in PUBLISHED_CURVES.items():
        path = anchors_dir / relative_path
        if not path.is_file():
            missing[label] = f"{path} not found"
            continue
        results = json.loads(path.read_text())["results"]
        msssim = results.get("ms-ssim-rgb")
        curves[label] = {
            "source": str(Path("anchors") / relative_path),
            "bpp": results["bpp"],
            "psnr": results["psnr-rgb"],
            "msssim": msssim,
            "msssim_db": msssim_to_db(msssim).tolist() if msssim else None,
        }
    return curves, missing


def bd_table(test: dict, references: dict[str, dict]) -> dict[str, dict]:
    """BD-rate (PSNR and MS-SSIM dB) and BD-PSNR of the test curve against each reference curve.

    Curves are {'bpp': [...], 'psnr': [...], 'msssim_db': [...] or None}. NaN: no overlap.
    """
    table = {}
    for label, reference in references.items():
        entry = {
            "bd_rate_psnr_percent": bd_rate(reference["bpp"], reference["psnr"], test["bpp"], test["psnr"]),
            "bd_psnr_db": bd_quality(reference["bpp"], reference["psnr"], test["bpp"], test["psnr"]),
            "bd_rate_msssim_db_percent": math.nan,
        }
        if reference.get("msssim_db") is not None and test.get("msssim_db") is not None:
            entry["bd_rate_msssim_db_percent"] = bd_rate(
                reference["bpp"], reference["msssim_db"], test["bpp"], test["msssim_db"]
            )
        table[label] = entry
    return table


def as_columns(curve_points: list[dict]) -> dict[str, list]:
    return {key: [point[key] for point in curve_points] for key in ("bpp", "psnr", "msssim", "msssim_db")}


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    return info


def build_summary(rows, skipped, errors, published, published_missing, run_info) -> dict:
    curves = mean_curves(rows)
    codecs = {}
    for name, codec in CODECS.items():
        if name not in run_info["codecs_requested"]:
            continue
        entry = {"description": codec.description, "setting_name": codec.setting_name}
        if name in skipped:
            entry.update(status="skipped", reason=skipped[name])
        elif name in errors:
            entry.update(status="failed", errors=errors[name], points=curves.get(name, []))
        else:
            entry.update(status="measured", points=curves.get(name, []))
        codecs[name] = entry

    # BD-rates only from complete curves: a codec that failed on some image has means over fewer images
    measured = {name: as_columns(points) for name, points in curves.items() if name not in errors}
    references = {name: columns for name, columns in measured.items() if name != REFERENCE_CODEC}
    references.update(published)
    bd = {"reference_codec": REFERENCE_CODEC, "against": {}, "sanity_against": SANITY_ANCHOR, "codecs_vs_sanity": {}}
    if REFERENCE_CODEC in measured:
        bd["against"] = bd_table(measured[REFERENCE_CODEC], references)
    if SANITY_ANCHOR in published:
        for name, columns in measured.items():
            bd["codecs_vs_sanity"][name] = bd_table(columns, {SANITY_ANCHOR: published[SANITY_ANCHOR]})[SANITY_ANCHOR]
    versions = library_versions()
    if REFERENCE_CODEC in measured:
        versions["vaecodec model"] = CODECS[REFERENCE_CODEC].model_identity()
    return {
        **run_info,
        "machine": machine_info(),
        "versions": versions,
        "codecs": codecs,
        "published": published,
        "published_missing": published_missing,
        "bd": bd,
    }


# ---- writing ----


def _shipped_model_identity() -> dict:
    """Name and hash of the default weights, so results can be tied to the model that produced them."""
    from vaecodec.zoo import read_weights, weights_path

    weights, model_hash = read_weights(weights_path("default"))
    return {"name": weights["name"], "hash": model_hash.hex(),
            "training_rounds": len(weights.get("training", {}).get("rounds", []))}


def write_per_image_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_summary_json(summary: dict, path: Path) -> None:
    path.write_text(json.dumps(_nan_to_none(summary), indent=1) + "\n")


def _nan_to_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return value


def _delta(value, digits: int, unit: str) -> str:
    """A signed Bjøntegaard delta with its unit, or 'no overlap' for NaN/None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "no overlap"
    return f"{value:+.{digits}f} {unit}"


def _first_and_last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def markdown_report(summary: dict) -> str:
    lines = [
        "# Rate-distortion on Kodak",
        "",
        f"Run {summary['date']}: {summary['images']} images, {'quick' if summary['quick'] else 'full'} sweep, "
        f"{summary['workers']} worker processes with 1 thread each, {summary['wall_s']:.0f} s wall clock. "
        f"Machine: {summary['machine'].get('cpu', '?')}, {summary['machine']['cpu_count']} cores.",
        "",
        "bpp counts every byte of the file; PSNR is over the 8-bit RGB output; MS-SSIM is pytorch-msssim's, "
        "on a dB scale -10 log10(1 - MS-SSIM) of the mean over images. Times are single runs per image on one "
        "thread while the other workers run, so they compare codecs to each other, not to other machines. "
        "Published curves are other projects' figures (CompressAI's results; PSNR of its learned models is "
        "on float reconstructions), not measured here.",
        "",
        f"## BD-rate of {summary['bd']['reference_codec']}",
        "",
    ]
    against = summary["bd"]["against"]
    if against:
        lines += [
            "Negative: vaecodec needs fewer bits for the same quality. 'no overlap': the curves share no quality range.",
            "",
            "| against | source | BD-rate (PSNR) | BD-PSNR | BD-rate (MS-SSIM dB) |",
            "|---|---|---:|---:|---:|",
        ]
        for label, entry in against.items():
            source = "published" if label in summary["published"] else "measured here"
            lines.append(
                f"| {label} | {source} | {_delta(entry['bd_rate_psnr_percent'], 1, '%')} "
                f"| {_delta(entry['bd_psnr_db'], 2, 'dB')} | {_delta(entry['bd_rate_msssim_db_percent'], 1, '%')} |"
            )
    else:
        lines.append(f"Not computed: {summary['bd']['reference_codec']} was not measured in this run.")

    sanity = summary["bd"]["codecs_vs_sanity"]
    if sanity:
        lines += [
            "",
            f"### Each measured codec against the published {summary['bd']['sanity_against']} curve",
            "",
            "A check on the measurements: compare with the ladder in ../shared/anchors/README.md "
            "(computed from CompressAI's published runs of older library versions).",
            "",
            "| codec | BD-rate (PSNR) | BD-PSNR | BD-rate (MS-SSIM dB) |",
            "|---|---:|---:|---:|",
        ]
        for name, entry in sanity.items():
            lines.append(
                f"| {name} | {_delta(entry['bd_rate_psnr_percent'], 1, '%')} "
                f"| {_delta(entry['bd_psnr_db'], 2, 'dB')} | {_delta(entry['bd_rate_msssim_db_percent'], 1, '%')} |"
            )

    not_measured = {n: c for n, c in summary["codecs"].items() if c["status"] != "measured"}
    if not_measured or summary["published_missing"]:
        lines += ["", "## Skipped or failed", ""]
        for name, codec in not_measured.items():
            detail = codec.get("reason") or "; ".join(_first_and_last_line(error) for error in codec["errors"])
            lines.append(f"- {name}: {codec['status']}: {detail}")
        for label, reason in summary["published_missing"].items():
            lines.append(f"- published {label}: {reason}")

    lines += ["", "## Curves (means over the images)", ""]
    for name, codec in summary["codecs"].items():
        if not codec.get("points"):
            continue
        lines += [
            f"### {name}: {codec['description']}",
            "",
            f"| {codec['setting_name']} | bpp | PSNR dB | MS-SSIM | MS-SSIM dB | encode ms | decode ms |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for point in codec["points"]:
            lines.append(
                f"| {point['setting']} | {point['bpp']:.3f} | {point['psnr']:.2f} | {point['msssim']:.4f} "
                f"| {point['msssim_db']:.2f} | {1000 * point['encode_s']:.0f} | {1000 * point['decode_s']:.0f} |"
            )
        lines.append("")
    for label, curve in summary["published"].items():
        lines += [f"### {label} (published, {curve['source']})", "", "| bpp | PSNR dB | MS-SSIM dB |", "|---:|---:|---:|"]
        msssim_db = curve["msssim_db"] or [None] * len(curve["bpp"])
        for bpp, psnr, ms_db in zip(curve["bpp"], curve["psnr"], msssim_db):
            lines.append(f"| {bpp:.3f} | {psnr:.2f} | {'-' if ms_db is None else f'{ms_db:.2f}'} |")
        lines.append("")

    lines += ["## Versions", ""]
    lines += [f"- {name}: {version}" for name, version in summary["versions"].items()]
    return "\n".join(lines) + "\n"


# ---- command line ----


@click.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default="../shared/datasets/kodak", show_default=True, help="Folder of PNG images.")
@click.option("--anchors", "anchors_dir", type=click.Path(path_type=Path), default="../shared/anchors",
              show_default=True, help="Folder of published curves (see its README.md).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default="benchmarks/results",
              show_default=True)
@click.option("--quick", is_flag=True, help=f"{QUICK_IMAGES} images x 3 settings per codec.")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count(), show_default=True,
              help="Worker processes, one thread each.")
@click.option("--codecs", "codec_list", default=",".join(CODECS), show_default=True,
              help="Comma-separated codec names.")
@click.option("--images", "image_limit", type=click.IntRange(min=1), default=None,
              help="Use only the first N images.")
def main(data_dir, anchors_dir, out_dir, quick, workers, codec_list, image_limit):
    """Rate-distortion of vaecodec and classical codecs on a folder of images."""
    import torch

    torch.set_num_threads(1)
    codec_names = [name.strip() for name in codec_list.split(",") if name.strip()]
    unknown = [name for name in codec_names if name not in CODECS]
    if unknown:
        raise click.BadParameter(f"unknown codecs {unknown}; known: {list(CODECS)}", param_hint="--codecs")
    image_paths = sorted(data_dir.glob("*.png"))
    if quick:
        image_paths = image_paths[:QUICK_IMAGES]
    if image_limit:
        image_paths = image_paths[:image_limit]
    if not image_paths:
        raise click.UsageError(f"no PNG images in {data_dir}")

    started = time.perf_counter()
    rows, skipped, errors = run_benchmark(image_paths, codec_names, quick, workers)
    wall_s = time.perf_counter() - started
    published, published_missing = load_published_curves(anchors_dir)
    run_info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m benchmarks.rd " + " ".join(sys.argv[1:]),
        "images": len(image_paths),
        "image_names": [path.stem for path in image_paths],
        "quick": quick,
        "workers": workers,
        "threads_per_worker": 1,
        "wall_s": wall_s,
        "codecs_requested": codec_names,
        "vaecodec_model": _shipped_model_identity(),
    }
    summary = build_summary(rows, skipped, errors, published, published_missing, run_info)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_per_image_csv(rows, out_dir / "rd_per_image.csv")
    write_summary_json(summary, out_dir / "rd_summary.json")
    (out_dir / "rd.md").write_text(markdown_report(_nan_to_none(summary)))
    from benchmarks.plot import plot_rd

    plot_rd(_nan_to_none(summary), out_dir / "rd.png")

    click.echo(f"{len(rows)} measurements in {wall_s:.1f} s; results in {out_dir}")
    for name, reason in skipped.items():
        click.echo(f"skipped {name}: {reason}")
    for name, messages in errors.items():
        click.echo(f"FAILED {name} on {len(messages)} image(s):\n{messages[0]}", err=True)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
