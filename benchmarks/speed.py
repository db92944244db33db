"""Speed and memory benchmark of vaecodec, with classical codecs timed in the same run for ratios.

    python -m benchmarks.speed --data ../shared/datasets/kodak [--quick] [--threads N] [--out benchmarks/results]

1. Latency per image: vaecodec encode and decode at one quality, median of --repeats runs, split into
   transform time (neural networks) and entropy-coding time as the codec's own `timings` counts them; on one
   torch thread, and again on --threads threads.
2. The same latencies for JPEG 4:2:0, WebP and AVIF 4:4:4 (one thread each), each at the quality whose file
   size on that image is nearest to vaecodec's, so the ratios compare equal rates measured in one run.
3. Batch throughput (images/s): compress/decompress one image at a time in a loop, then compress_batch /
   decompress_batch at several (batch size, workers) settings, with the seconds spent in transforms and in
   entropy coding (summed over threads), the speed-up over one at a time in the same run, and whether the
   bytes were identical; on the CPU with --threads threads, and on CUDA when there is a GPU.
4. Peak resident memory of one encode and one decode of a Kodak image and of a 6000x4000 image, each in a
   fresh process, next to a process that only loads the model and the image. The peak is the process's own
   VmHWM from /proc: ru_maxrss of a child is no good here, as Linux carries the parent's high-water mark
   (this process's, with torch loaded) over fork and exec into it.
5. Folder jobs: `vaecodec compress DIR` and `decompress DIR` over the Kodak folder in one process (torch on
   all cores), on worker processes (one per core, one thread each) and on a local Ray instance, interleaved
   in rounds so that load from other processes falls on all three alike; images/s of the job (the
   command's own summary, from the model loaded or the cluster reached) and of the whole command, and the
   CPU time the command and its processes used per image, with the cores it kept busy on average: a way
   that runs on several cores can only beat one process when the machine gives it more than one.

Writes speed.json and speed.md to --out, and folder_jobs.json and folder_jobs.md; --only-folder-jobs
measures part 5 alone.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from PIL import Image

from benchmarks.codecs import CODECS, library_versions
from benchmarks.rd import machine_info

COMPARED_CODECS = ("jpeg-420", "webp", "avif-444")
QUALITY_RANGE = {"jpeg-420": (1, 95), "webp": (0, 100), "avif-444": (0, 100)}
# (batch size, entropy-coding worker threads) of the batch API; issue 5 asks for batch sizes 1, 8 and 32.
BATCH_SETTINGS = ((8, 1), (1, 2), (8, 2), (32, 2), (8, 4))
QUICK_BATCH_SETTINGS = ((4, 1), (4, 2))
LARGE_SIZE = (6000, 4000)
QUICK_LARGE_SIZE = (1500, 1000)
QUICK_IMAGES = 2


# ---- vaecodec latency with its transform / entropy split ----


def timed_call(codec, call) -> tuple[object, dict]:
    """Run call() once: its result and {'total', 'transform', 'entropy'} seconds.

    The split is the difference of the codec's accumulated `timings` (transform = g_a, h_a, g_s;
    entropy = range coding including the integer hyper-synthesis that gives the coder its scales).
    """
    transform_before, entropy_before = codec.timings.transform, codec.timings.entropy
    start = time.perf_counter()
    result = call()
    total = time.perf_counter() - start
    return result, {
        "total": total,
        "transform": codec.timings.transform - transform_before,
        "entropy": codec.timings.entropy - entropy_before,
    }


def median_seconds(codec, call, repeats: int) -> tuple[object, dict]:
    """call()'s result and the per-field median of its timings over `repeats` runs (after one warm-up)."""
    result, _ = timed_call(codec, call)
    runs = [timed_call(codec, call)[1] for _ in range(repeats)]
    return result, {field: statistics.median(run[field] for run in runs) for field in runs[0]}


def vaecodec_latency(codec, image: Image.Image, quality: float, repeats: int) -> dict:
    data, encode = median_seconds(codec, lambda: codec.compress(image, quality=quality), repeats)
    _, decode = median_seconds(codec, lambda: codec.decompress(data), repeats)
    return {
        "bpp": 8 * len(data) / (image.width * image.height),
        "encode_s": encode["total"],
        "encode_transform_s": encode["transform"],
        "encode_entropy_s": encode["entropy"],
        "decode_s": decode["total"],
        "decode_transform_s": decode["transform"],
        "decode_entropy_s": decode["entropy"],
    }


# ---- classical codecs at a matching rate ----


def quality_nearest_bpp(codec, image: Image.Image, target_bpp: float, low: int, high: int) -> tuple[int, float]:
    """Bisect the integer quality range for the file whose bpp is nearest target_bpp: (quality, bpp)."""
    pixels = image.width * image.height
    tried = {}
    while low <= high:
        quality = (low + high) // 2
        tried[quality] = 8 * len(codec.encode(image, quality)) / pixels
        if tried[quality] < target_bpp:
            low = quality + 1
        else:
            high = quality - 1
    return min(tried.items(), key=lambda item: abs(item[1] - target_bpp))


def classical_latency(codec, image: Image.Image, quality: int, repeats: int) -> dict:
    def seconds(call):
        call()  # warm-up
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    data = codec.encode(image, quality)
    return {
        "quality": quality,
        "bpp": 8 * len(data) / (image.width * image.height),
        "encode_s": seconds(lambda: codec.encode(image, quality)),
        "decode_s": seconds(lambda: codec.decode(data)),
    }


# ---- batch throughput ----


def batch_throughput(codec, images: list, quality: float, settings) -> dict:
    """Images/s over all `images`: one at a time (compress/decompress in a loop) and through the batch API
    at each (batch size, workers) setting, with the seconds spent in transforms and in entropy coding (summed
    over threads), after a warm-up. Also checks that every setting wrote the same bytes as one at a time."""
    codec.decompress_batch(codec.compress_batch(images[:1], quality=quality, batch_size=1), batch_size=1)

    def measure(encode_all, decode_all) -> tuple[list, dict]:
        """The encoded files and the entry for one way of coding all the images."""
        encoded, encode = timed_call(codec, encode_all)
        _, decode = timed_call(codec, lambda: decode_all(encoded))
        return encoded, {
            "images": len(images),
            "encode_images_per_s": len(images) / encode["total"],
            "decode_images_per_s": len(images) / decode["total"],
            "encode_transform_s": encode["transform"], "encode_entropy_s": encode["entropy"],
            "decode_transform_s": decode["transform"], "decode_entropy_s": decode["entropy"],
        }

    results = {}
    alone, results["one at a time"] = measure(lambda: [codec.compress(image, quality) for image in images],
                                              lambda datas: [codec.decompress(data) for data in datas])
    for batch_size, workers in settings:
        encoded, entry = measure(lambda: codec.compress_batch(images, quality, batch_size, workers),
                                 lambda datas: codec.decompress_batch(datas, batch_size, workers))
        entry["same_bytes_as_one_at_a_time"] = encoded == alone
        results[f"batch {batch_size}, {workers} worker{'s' if workers > 1 else ''}"] = entry
    return results


def command_line_throughput(image_paths: list, quality: float) -> dict:
    """Files/s of the `vaecodec` command: one process per file (a shell loop) against one folder job, for
    compress and decompress, and whether both ways wrote identical files."""
    script = str(Path(sys.executable).with_name("vaecodec"))

    def run(*arguments) -> None:
        subprocess.run([script, *map(str, arguments)], check=True, capture_output=True)

    def timed(call) -> float:
        started = time.perf_counter()
        call()
        return time.perf_counter() - started

    result = {"files": len(image_paths)}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        sources = scratch / "images"
        sources.mkdir()
        for path in image_paths:
            shutil.copyfile(path, sources / path.name)
        loop_vae, job_vae, loop_png, job_png = (scratch / name for name in ("loop_vae", "job_vae", "loop_png", "job_png"))
        loop_vae.mkdir(), loop_png.mkdir()
        result["compress_one_process_per_file_s"] = timed(lambda: [
            run("compress", path, "-q", quality, "-o", loop_vae / f"{path.stem}.vae") for path in sorted(sources.iterdir())])
        result["compress_folder_job_s"] = timed(lambda: run("compress", sources, "-q", quality, "-o", job_vae))
        result["decompress_one_process_per_file_s"] = timed(lambda: [
            run("decompress", path, "-o", loop_png / f"{path.stem}.png") for path in sorted(loop_vae.iterdir())])
        result["decompress_folder_job_s"] = timed(lambda: run("decompress", job_vae, "-o", job_png))
        result["identical_files"] = all(
            (loop_vae / path.name).read_bytes() == path.read_bytes() for path in job_vae.iterdir()) and all(
            (loop_png / path.name).read_bytes() == path.read_bytes() for path in job_png.iterdir())
    return result


# ---- folder jobs: one process, worker processes, Ray ----


def folder_job_ways(cores: int) -> dict:
    """name -> (processes x threads, extra command-line arguments) of each way to run a folder job."""
    ways = {"one process": (f"1 x {cores}", ["--workers", "1"]),
            "worker processes": (f"{cores} x 1", ["--workers", str(cores)])}
    try:
        import ray  # noqa: F401
    except ImportError:
        return ways
    return {**ways, "Ray, local instance": (f"{cores} actors x 1", ["--ray"])}


def folder_job_throughput(image_paths: list, quality: float, rounds: int) -> dict:
    """Compress and decompress the folder of ``image_paths`` each way, ``rounds`` times, interleaved; per way
    and direction: images/s of the job (the command's summary line) and of the whole command (wall clock,
    with interpreter start, model loading and, for Ray, starting the instance), the best round of each
    (the one least slowed by other processes), and whether the files are identical to one process's."""
    script = str(Path(sys.executable).with_name("vaecodec"))
    ways = folder_job_ways(os.cpu_count() or 1)
    result = {"images": len(image_paths), "rounds": rounds, "ways": {}}
    if "Ray, local instance" not in ways:
        result["ray_skipped"] = "ray is not installed (pip install vaecodec[ray])"
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        sources = scratch / "kodak"
        sources.mkdir()
        for path in image_paths:
            shutil.copyfile(path, sources / path.name)
        runs = {name: {"compress": [], "decompress": []} for name in ways}
        for round_index, direction in itertools.product(range(rounds), ("compress", "decompress")):
            for name, (_, arguments) in ways.items():  # the ways take turns, within a minute or two of each other
                out = scratch / f"round{round_index}-{list(ways).index(name)}"
                source, target = (sources, out / "vae") if direction == "compress" else (out / "vae", out / "png")
                extra = ["-q", str(quality)] if direction == "compress" else []
                started, cpu_before = time.perf_counter(), children_cpu_s()
                finished = subprocess.run([script, direction, str(source), "-o", str(target), *extra, *arguments],
                                          capture_output=True, text=True)
                wall, cpu = time.perf_counter() - started, children_cpu_s() - cpu_before
                if finished.returncode != 0:
                    raise RuntimeError(f"{name} {direction} failed:\n{finished.stderr[-2000:]}")
                job_rate = float(re.search(r"([0-9.]+) images/s", finished.stdout).group(1))
                files = {path.relative_to(target).as_posix(): path.read_bytes()
                         for path in sorted(target.rglob("*")) if path.is_file()}
                runs[name][direction].append({"job_images_per_s": job_rate,
                                              "command_images_per_s": len(image_paths) / wall,
                                              "command_s": wall, "cpu_s": cpu, "cores_busy": cpu / wall,
                                              "files": files})
        reference = runs["one process"]
        for name, (layout, _) in ways.items():
            entry = {"processes_x_threads": layout}
            for direction, rows in runs[name].items():
                best = max(rows, key=lambda row: row["command_images_per_s"])
                entry[direction] = {
                    "job_images_per_s": max(row["job_images_per_s"] for row in rows),
                    "command_images_per_s": best["command_images_per_s"],
                    "cpu_s_per_image": min(row["cpu_s"] for row in rows) / len(image_paths),
                    "cores_busy": best["cores_busy"],  # in the round of the best command time
                    "rounds": [{key: value for key, value in row.items() if key != "files"} for row in rows],
                    "same_files_as_one_process": all(row["files"] == reference[direction][0]["files"] for row in rows),
                }
            result["ways"][name] = entry
    return result


def children_cpu_s() -> float:
    """User and system CPU seconds of the finished child processes (and of the processes they waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def autogroup_enabled() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def folder_jobs_report(result: dict) -> str:
    folder = result["folder_jobs"]
    lines = [
        "# vaecodec folder jobs: one process, worker processes, Ray",
        "",
        f"Run {result['date']} on {result['machine'].get('cpu', '?')} ({result['machine']['cpu_count']} cores), "
        f"`{result['command']}`: `vaecodec compress DIR` and `decompress DIR` over {folder['images']} Kodak images, "
        f"quality {result['quality']}, {folder['rounds']} rounds interleaved, best round of each. Load average "
        f"(1 min) {result['load_average'][0]:.1f} at the start and {result['load_average_after'][0]:.1f} at the "
        "end: other processes shared the cores, so the figures compare the ways with each other, not with other "
        "machines.",
        "",
        "Job images/s: the command's own summary, counted from the model loaded (Ray: from the cluster reached, so "
        "it includes starting the actors). Command images/s: images over the wall clock of the whole command, "
        "with Python start-up, model loading and, for Ray, starting a local instance. Speed-up: job images/s "
        "against one process, in the same run.",
        "",
        "| way | processes x threads | compress img/s, job | speed-up | compress img/s, command "
        "| decompress img/s, job | speed-up | decompress img/s, command | same files as one process |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    one = folder["ways"]["one process"]
    for name, entry in folder["ways"].items():
        compress, decompress = entry["compress"], entry["decompress"]
        same = compress["same_files_as_one_process"] and decompress["same_files_as_one_process"]
        lines.append(
            f"| {name} | {entry['processes_x_threads']} | {compress['job_images_per_s']:.2f} "
            f"| {compress['job_images_per_s'] / one['compress']['job_images_per_s']:.2f}x "
            f"| {compress['command_images_per_s']:.2f} | {decompress['job_images_per_s']:.2f} "
            f"| {decompress['job_images_per_s'] / one['decompress']['job_images_per_s']:.2f}x "
            f"| {decompress['command_images_per_s']:.2f} | {'yes' if same else 'NO'} |")
    if "ray_skipped" in folder:
        lines.append(f"| Ray | skipped: {folder['ray_skipped']} | | | | | | | |")
    lines += [
        "",
        "Where the time went: CPU seconds per image of the command and the processes it waited for (its worker "
        "processes; for Ray, whatever of the local instance it reaped, so possibly less than all), the least of "
        "the rounds, and the cores that the command kept busy on average (CPU time over wall time, in its "
        "fastest round). A way that spreads the work over two cores can only be faster when the machine lets "
        "it have more than one core.",
        "",
        "| way | compress CPU s/image | compress cores busy | decompress CPU s/image | decompress cores busy |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, entry in folder["ways"].items():
        compress, decompress = entry["compress"], entry["decompress"]
        if "cpu_s_per_image" in compress:
            lines.append(f"| {name} | {compress['cpu_s_per_image']:.2f} | {compress['cores_busy']:.2f} "
                         f"| {decompress['cpu_s_per_image']:.2f} | {decompress['cores_busy']:.2f} |")
    if result.get("sched_autogroup"):
        lines += ["", "This Linux groups processes by session for scheduling (`kernel.sched_autogroup_enabled` = 1): "
                  "when other sessions keep the cores busy, each session gets its share of the cores however many "
                  "processes or threads it runs, and the benchmark's commands all run in its one session."]
    return "\n".join(lines) + "\n"


def measure_folder_jobs(image_paths: list, quality: float, rounds: int, out_dir: Path) -> dict:
    """Part 5 alone, written to folder_jobs.json and folder_jobs.md; returns its result."""
    from benchmarks.rd import machine_info

    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": "python -m benchmarks.speed " + " ".join(sys.argv[1:]),
              "machine": machine_info(), "quality": quality, "load_average": os.getloadavg(),
              "sched_autogroup": autogroup_enabled()}
    result["folder_jobs"] = folder_job_throughput(image_paths, quality, rounds)
    result["load_average_after"] = os.getloadavg()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "folder_jobs.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "folder_jobs.md").write_text(folder_jobs_report(result))
    return result


# ---- peak memory, one fresh process per case ----


def rss_case_main(case: str, source: str, width: int, height: int, vae_path: str, quality: float, threads: int):
    """Body of one measuring process: load the model and the image, then do `case` (load / encode / decode)."""
    import torch

    import vaecodec

    torch.set_num_threads(threads)
    codec = vaecodec.load("default", device="cpu")
    if case == "decode":
        codec.decompress(Path(vae_path).read_bytes())
        return
    image = Image.open(source).convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    if case == "encode":
        Path(vae_path).write_bytes(codec.compress(image, quality=quality))


def print_peak_rss() -> None:
    """Print this process's peak resident set size (kB), as the last line, for peak_rss_mib to read."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(f"peak_rss_kb {line.split()[1]}")


def peak_rss_mib(case: str, source: Path, size: tuple, vae_path: Path, quality: float, threads: int) -> dict:
    """Run one case in a fresh Python process; its peak resident set size in MiB and wall seconds."""
    code = ("import sys; from benchmarks.speed import rss_case_main, print_peak_rss; a = sys.argv[1:]; "
            "rss_case_main(a[0], a[1], int(a[2]), int(a[3]), a[4], float(a[5]), int(a[6])); print_peak_rss()")
    arguments = [case, source, size[0], size[1], vae_path, quality, threads]
    command = [sys.executable, "-c", code] + [str(argument) for argument in arguments]
    start = time.perf_counter()
    finished = subprocess.run(command, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"peak-memory case {case} {size} failed:\n{finished.stderr[-2000:]}")
    peak_kb = int(finished.stdout.strip().splitlines()[-1].split()[1])
    return {"case": case, "size": f"{size[0]}x{size[1]}", "peak_rss_mib": peak_kb / 1024,
            "wall_s": time.perf_counter() - start}


# ---- report ----


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def markdown_report(result: dict) -> str:
    threads = result["threads"]
    lines = [
        "# vaecodec speed and memory",
        "",
        f"Run {result['date']} on {result['machine'].get('cpu', '?')} ({result['machine']['cpu_count']} cores), "
        f"{result['images']} Kodak images, quality {result['quality']}, medians of {result['repeats']} runs "
        f"after a warm-up. Classical codecs run on one thread.",
        "",
        "## Latency per image (mean over images of the per-image medians)",
        "",
        "| codec | threads | bpp | encode ms | decode ms | vaecodec / codec, encode | vaecodec / codec, decode |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    vae_one = result["vaecodec_latency"]["summary"]["threads_1"]
    for label, entry in result["vaecodec_latency"]["summary"].items():
        lines.append(
            f"| vaecodec | {entry['threads']} | {entry['bpp']:.3f} | {1000 * entry['encode_s']:.1f} "
            f"| {1000 * entry['decode_s']:.1f} | | |"
        )
    for name, entry in result["classical_latency"].items():
        summary = entry["summary"]
        lines.append(
            f"| {name} | 1 | {summary['bpp']:.3f} | {1000 * summary['encode_s']:.1f} | {1000 * summary['decode_s']:.1f} "
            f"| {vae_one['encode_s'] / summary['encode_s']:.2f} | {vae_one['decode_s'] / summary['decode_s']:.2f} |"
        )
    for name, reason in result["classical_skipped"].items():
        lines.append(f"| {name} | skipped: {reason} | | | | | |")
    lines += [
        "",
        "Ratios are of mean times, one thread against one thread, at the nearest bpp on each image (the classical "
        "codec's quality is chosen per image by bisection).",
        "",
        "## vaecodec time split (one thread, mean over images)",
        "",
        "| | total ms | transform ms | entropy coding ms | other ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for direction in ("encode", "decode"):
        total = 1000 * vae_one[f"{direction}_s"]
        transform = 1000 * vae_one[f"{direction}_transform_s"]
        entropy = 1000 * vae_one[f"{direction}_entropy_s"]
        lines.append(f"| {direction} | {total:.1f} | {transform:.1f} | {entropy:.1f} | {total - transform - entropy:.1f} |")

    lines += ["", "## vaecodec per image (one thread)", "",
              "| image | bpp | encode ms | transform | entropy | decode ms | transform | entropy |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["vaecodec_latency"]["per_image"]["threads_1"]:
        lines.append(
            f"| {row['image']} | {row['bpp']:.3f} | {1000 * row['encode_s']:.1f} | {1000 * row['encode_transform_s']:.1f} "
            f"| {1000 * row['encode_entropy_s']:.1f} | {1000 * row['decode_s']:.1f} "
            f"| {1000 * row['decode_transform_s']:.1f} | {1000 * row['decode_entropy_s']:.1f} |"
        )

    lines += ["", "## Batch throughput (images/s; transform and entropy-coding seconds over the whole set, summed "
              "over threads)", "",
              "Workers entropy-code (encode) or parse and entropy-decode (decode) in threads while the transforms "
              "run; on a CPU the transforms run one image at a time on all torch threads, as single calls do. "
              "Speed-up: against one image at a time (`compress`/`decompress` in a loop) in the same run.", "",
              "| device | threads | setting | images | encode img/s | speed-up | decode img/s | speed-up "
              "| encode transform s | encode entropy s | decode transform s | decode entropy s | same bytes |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for device, by_setting in result["throughput"].items():
        if isinstance(by_setting, str):
            lines.append(f"| {device} | | | | {by_setting} | |")
            continue
        baseline = by_setting["one at a time"]
        for setting, entry in by_setting.items():
            same = entry.get("same_bytes_as_one_at_a_time")
            lines.append(
                f"| {device} | {threads if device == 'cpu' else ''} | {setting} | {entry['images']} "
                f"| {entry['encode_images_per_s']:.2f} "
                f"| {entry['encode_images_per_s'] / baseline['encode_images_per_s']:.2f}x "
                f"| {entry['decode_images_per_s']:.2f} "
                f"| {entry['decode_images_per_s'] / baseline['decode_images_per_s']:.2f}x "
                f"| {entry['encode_transform_s']:.2f} | {entry['encode_entropy_s']:.2f} "
                f"| {entry['decode_transform_s']:.2f} | {entry['decode_entropy_s']:.2f} "
                f"| {'' if same is None else ('yes' if same else 'NO')} |"
            )

    command_line = result.get("command_line")
    if command_line:
        lines += ["", f"## The `vaecodec` command on {command_line['files']} files: one process per file against one "
                  "folder job", "",
                  "| | one process per file, files/s | one folder job, files/s | speed-up |", "|---|---:|---:|---:|"]
        for direction in ("compress", "decompress"):
            loop = command_line[f"{direction}_one_process_per_file_s"]
            job = command_line[f"{direction}_folder_job_s"]
            n = command_line["files"]
            lines.append(f"| {direction} | {n / loop:.2f} | {n / job:.2f} | {loop / job:.2f}x |")
        lines += ["", "Both ways write identical files: "
                  f"{'yes' if command_line['identical_files'] else 'NO'}. Each process imports torch and loads the model; "
                  "the folder job does that once and overlaps reading, entropy coding and writing with the transforms."]

    lines += ["", f"## Peak resident memory (fresh process per case, {threads} threads)", "",
              "| image size | case | peak RSS MiB | wall s |", "|---|---|---:|---:|"]
    for entry in result["peak_rss"]:
        lines.append(f"| {entry['size']} | {entry['case']} | {entry['peak_rss_mib']:.0f} | {entry['wall_s']:.1f} |")
    if result.get("folder_jobs"):
        lines += ["", "## Folder jobs", "", "One process, worker processes and Ray, measured in this run: "
                  "[folder_jobs.md](folder_jobs.md)."]
    lines += ["", "'load' is the process that only imports, loads the model and the image: the floor under the others.",
              "", "## Versions", ""]
    lines += [f"- {name}: {version}" for name, version in result["versions"].items()]
    return "\n".join(lines) + "\n"


# ---- command line ----


@click.command()
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default="../shared/datasets/kodak", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default="benchmarks/results",
              show_default=True)
@click.option("--quick", is_flag=True, help=f"{QUICK_IMAGES} images, 1 repeat, small batches, a 1500x1000 'large' image.")
@click.option("--threads", type=click.IntRange(min=1), default=os.cpu_count(), show_default=True,
              help="torch threads for the multi-threaded latency, throughput and memory runs.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--quality", type=float, default=4.0, show_default=True, help="vaecodec quality for all runs.")
@click.option("--only-folder-jobs", is_flag=True,
              help="Measure only the folder jobs (one process, worker processes, Ray): folder_jobs.json and .md.")
@click.option("--folder-rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Rounds of the folder jobs (1 with --quick).")
def main(data_dir, out_dir, quick, threads, repeats, quality, only_folder_jobs, folder_rounds):
    """Latency, throughput and peak memory of vaecodec, with JPEG/WebP/AVIF latencies at equal bpp."""
    image_paths = sorted(data_dir.glob("*.png"))
    if quick:
        image_paths, repeats, folder_rounds = image_paths[:QUICK_IMAGES], 1, 1
    if only_folder_jobs:
        measure_folder_jobs(image_paths, quality, folder_rounds, out_dir)
        click.echo(f"results in {out_dir}")
        return

    import torch

    import vaecodec

    images = [(path.stem, Image.open(path).convert("RGB")) for path in image_paths]
    codec = vaecodec.load("default", device="cpu")

    thread_counts = sorted({1, threads})
    per_image = {f"threads_{n}": [] for n in thread_counts}
    classical = {name: [] for name in COMPARED_CODECS if CODECS[name].unavailable_reason() is None}
    skipped = {name: CODECS[name].unavailable_reason() for name in COMPARED_CODECS if name not in classical}
    with click.progressbar(images, label="latency", item_show_func=lambda item: item and item[0]) as bar:
        for name, image in bar:
            for n in thread_counts:
                torch.set_num_threads(n)
                per_image[f"threads_{n}"].append({"image": name, **vaecodec_latency(codec, image, quality, repeats)})
            target_bpp = per_image["threads_1"][-1]["bpp"]
            for codec_name in classical:
                matched_quality, _ = quality_nearest_bpp(CODECS[codec_name], image, target_bpp, *QUALITY_RANGE[codec_name])
                classical[codec_name].append(
                    {"image": name, **classical_latency(CODECS[codec_name], image, matched_quality, repeats)})

    torch.set_num_threads(threads)
    landscape = [image for _, image in images if image.width > image.height]
    batch_images = (landscape * 32)[: 4 if quick else 32]
    batch_settings = QUICK_BATCH_SETTINGS if quick else BATCH_SETTINGS
    click.echo("throughput ...")
    throughput = {"cpu": batch_throughput(codec, batch_images, quality, batch_settings)}
    if torch.cuda.is_available():
        throughput["cuda"] = batch_throughput(vaecodec.load("default", device="cuda"), batch_images, quality,
                                             batch_settings)
    else:
        throughput["cuda"] = "no CUDA device"

    click.echo("command line ...")
    command_line = command_line_throughput(image_paths[: 2 if quick else 8], quality)

    click.echo("folder jobs ...")
    folder_jobs = measure_folder_jobs(image_paths, quality, folder_rounds, out_dir)["folder_jobs"]

    click.echo("peak memory ...")
    peak_rss = []
    large_size = QUICK_LARGE_SIZE if quick else LARGE_SIZE
    with tempfile.TemporaryDirectory() as scratch:
        for size in (images[0][1].size, large_size):
            vae_path = Path(scratch) / f"{size[0]}x{size[1]}.vae"
            for case in ("load", "encode", "decode"):
                peak_rss.append(peak_rss_mib(case, image_paths[0], size, vae_path, quality, threads))

    summaries = {}
    for label, rows in per_image.items():
        summaries[label] = {"threads": int(label.split("_")[1]),
                            **{key: mean(row[key] for row in rows) for key in rows[0] if key != "image"}}
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m benchmarks.speed " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "versions": {**library_versions(), "vaecodec model": f"{codec.model_name} (hash {codec.model_hash.hex()})"},
        "images": len(images),
        "quality": quality,
        "repeats": repeats,
        "threads": threads,
        "vaecodec_latency": {"per_image": per_image, "summary": summaries},
        "classical_latency": {
            name: {"description": CODECS[name].description, "per_image": rows,
                   "summary": {key: mean(row[key] for row in rows) for key in ("bpp", "encode_s", "decode_s")}}
            for name, rows in classical.items()
        },
        "classical_skipped": skipped,
        "throughput": throughput,
        "command_line": command_line,
        "folder_jobs": folder_jobs,
        "peak_rss": peak_rss,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / "speed.md").write_text(markdown_report(result))
    click.echo(f"results in {out_dir}")


if __name__ == "__main__":
    main()
