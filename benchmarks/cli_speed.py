"""Whole-process times of the vaecodec command, next to a WebP encoder and decoder run the same way.

    python -m benchmarks.cli_speed [--image ../shared/datasets/kodak/kodim23.png] [--repeats 7]
                                   [--out benchmarks/results]

What a user waits for at the shell: each command is a fresh process, timed from start to exit (interpreter
start, imports, model loading, coding, writing the file). The commands run round-robin, so a change in the
machine's load touches every row alike; the table gives the median, minimum and maximum of --repeats runs,
and the load average over the run, since a busy machine slows every row. The peer rows are Pillow's WebP
encoder and decoder (libwebp, as cwebp and dwebp use it), each a Python process that imports Pillow, codes
the same image and writes the file; cwebp/dwebp themselves are timed too where they are installed. An empty
Python process (`python -c pass`) is the floor every Python command pays, and one that imports torch the floor
of every command that runs the model.

The rows marked "(server running)" are the same commands with a `vaecodec server` running (started by the
row "vaecodec server start", timed from the command to a server that answers, and stopped after each round),
in a runtime directory of the benchmark's own; the other vaecodec rows run with VAECODEC_NO_SERVER=1, so a
server the user has running changes nothing. For these rows the CPU column adds the server's CPU time to the
client's.

Writes cli_speed.json and cli_speed.md to --out.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from benchmarks.rd import machine_info
from vaecodec_cli import client

DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak" / "kodim23.png"
WEBP_QUALITY = 80  # cwebp's default is 75; the time hardly depends on it
START_ROW = "vaecodec server start"
SERVED_ROWS = ("vaecodec compress (server running)", "vaecodec decompress (server running)")


def vaecodec_command() -> list:
    script = Path(sys.executable).parent / "vaecodec"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vaecodec_cli.main"]


def commands(image: Path, work: Path) -> dict:
    """name -> argv of every row, in table order."""
    vaecodec = vaecodec_command()
    python = sys.executable
    rows = {
        "python -c pass (floor)": [python, "-c", "pass"],
        "python -c 'import torch' (floor of the model commands)": [python, "-c", "import torch"],
        "vaecodec --help": vaecodec + ["--help"],
        "vaecodec --version": vaecodec + ["--version"],
        "vaecodec info": vaecodec + ["info", str(work / "image.vae")],
        "vaecodec compress": vaecodec + ["compress", str(image), "-o", str(work / "out.vae"), "--force"],
        "vaecodec decompress": vaecodec + ["decompress", str(work / "image.vae"), "-o", str(work / "out.png"),
                                           "--force"],
        START_ROW: vaecodec + ["server", "start"],
        SERVED_ROWS[0]: vaecodec + ["compress", str(image), "-o", str(work / "out-served.vae"), "--force"],
        SERVED_ROWS[1]: vaecodec + ["decompress", str(work / "image.vae"), "-o", str(work / "out-served.png"),
                                    "--force"],
        "Pillow WebP encode (process)": [python, "-c", "import sys; from PIL import Image; "
                                         f"Image.open(sys.argv[1]).save(sys.argv[2], 'WEBP', quality={WEBP_QUALITY})",
                                         str(image), str(work / "out.webp")],
        "Pillow WebP decode (process)": [python, "-c", "import sys; from PIL import Image; "
                                         "Image.open(sys.argv[1]).save(sys.argv[2])",
                                         str(work / "image.webp"), str(work / "out-webp.png")],
    }
    if shutil.which("cwebp") and shutil.which("dwebp"):
        rows["cwebp"] = ["cwebp", "-quiet", "-q", str(WEBP_QUALITY), str(image), "-o", str(work / "out2.webp")]
        rows["dwebp"] = ["dwebp", "-quiet", str(work / "image.webp"), "-o", str(work / "out2.png")]
    return rows


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_of_process(pid: int) -> float:
    """CPU seconds (user + system) of a process that is not our child, with its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def run_once(argv: list, environment: dict, server_pid: int | None = None) -> tuple:
    """(wall seconds, CPU seconds of the process: user + system, all its threads; with ``server_pid``, plus
    what that server spent meanwhile)."""
    server_before = cpu_of_process(server_pid) if server_pid else 0.0
    cpu_before, started = cpu_of_children(), time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment)
    seconds, cpu = time.perf_counter() - started, cpu_of_children() - cpu_before
    if done.returncode != 0:
        raise click.ClickException(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace').strip()}")
    if server_pid:
        cpu += cpu_of_process(server_pid) - server_before
    return seconds, cpu


class Server:
    """The benchmark's own `vaecodec server`, in a private runtime directory under ``work``."""

    def __init__(self, work: Path):
        runtime = work / "runtime"
        runtime.mkdir(mode=0o700)
        self.directory = runtime / "vaecodec"
        self.environment = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
        self.environment.pop(client.NO_SERVER_VARIABLE, None)

    def status(self):
        return client.ask(self.directory, "status")

    def stop(self, served_rows: int | None = None) -> None:
        """Stop it, checking first that it ran ``served_rows`` commands (none went to a process of its own)."""
        status = self.status()
        if status is None:
            return
        if served_rows is not None and status["served"] != served_rows:
            raise click.ClickException(f"the server ran {status['served']} of {served_rows} commands, the others "
                                       f"ran without it: were sources edited during the run?")
        subprocess.run(vaecodec_command() + ["server", "stop"], env=self.environment, check=True,
                       stdout=subprocess.DEVNULL)


def measure(image: Path, repeats: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="vaecodec-cli-speed-") as folder:
        work = Path(folder)
        subprocess.run(vaecodec_command() + ["compress", str(image), "-o", str(work / "image.vae"), "--quiet"],
                       check=True)
        from PIL import Image

        Image.open(image).save(work / "image.webp", "WEBP", quality=WEBP_QUALITY)
        rows = commands(image, work)
        server = Server(work)
        own_process = {**os.environ, client.NO_SERVER_VARIABLE: "1"}
        times = {name: [] for name in rows}
        cpu = {name: [] for name in rows}

        def one_round(record: bool) -> None:
            server_pid = None
            for name, argv in rows.items():
                if name == START_ROW:
                    seconds, cpu_seconds = run_once(argv, server.environment)
                    server_pid = server.status()["pid"]
                    cpu_seconds += cpu_of_process(server_pid)  # its start: importing torch, loading the model
                elif name in SERVED_ROWS:
                    seconds, cpu_seconds = run_once(argv, server.environment, server_pid)
                else:
                    seconds, cpu_seconds = run_once(argv, own_process)
                if record:
                    times[name].append(seconds)
                    cpu[name].append(cpu_seconds)
            server.stop(served_rows=len(SERVED_ROWS))

        try:
            one_round(record=False)  # a warm-up: the first run also reads files into the page cache
            load_before = os.getloadavg()
            for _ in range(repeats):
                one_round(record=True)
            load_after = os.getloadavg()
        finally:
            server.stop()
        sizes = {"vaecodec": (work / "image.vae").stat().st_size, "webp": (work / "image.webp").stat().st_size}
    return {
        "rows": {name: {"median_s": round(statistics.median(values), 3), "min_s": round(min(values), 3),
                        "max_s": round(max(values), 3), "runs": [round(v, 3) for v in values],
                        "median_cpu_s": round(statistics.median(cpu[name]), 3)}
                 for name, values in times.items()},
        "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)],
        "file_bytes": sizes,
    }


def markdown(result: dict) -> str:
    run = result["run"]
    load = result["load_average_1min"]
    lines = [
        "# Whole-process command times",
        "",
        f"Run {run['date']} on {run['machine'].get('cpu', 'unknown CPU')} ({run['machine']['cpu_count']} cores), "
        f"image {run['image']}, {run['repeats']} runs of each command, round-robin after a warm-up. "
        f"1-minute load average {load[0]} at the start and {load[1]} at the end: on a busy machine every row is "
        f"slower than on an idle one, the ratios less so. CPU s is the process's own user + system time over "
        f"all its threads, which a busy machine inflates much less than the wall time. The rows \"(server "
        f"running)\" ran with a `vaecodec server` started by the row \"{START_ROW}\" (from the command to a "
        f"server that answers: torch imported, model loaded); their CPU s adds the server's to the client's.",
        "",
        "| command | median s | min s | max s | median CPU s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} | "
                     f"{row['median_cpu_s']:.3f} |")
    sizes = result["file_bytes"]
    lines += ["", f"Files: .vae {sizes['vaecodec']} bytes (quality 5), WebP {sizes['webp']} bytes "
                  f"(quality {WEBP_QUALITY}). Regenerate with `python -m benchmarks.cli_speed`.", ""]
    return "\n".join(lines)


@click.command()
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=DEFAULT_IMAGE,
              show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=7, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(__file__).resolve().parent / "results", show_default=True)
def main(image: Path, repeats: int, out_dir: Path):
    result = measure(image, repeats)
    result["run"] = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "image": image.name,
                     "repeats": repeats, "machine": machine_info()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cli_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "cli_speed.md").write_text(markdown(result))
    click.echo(markdown(result))


if __name__ == "__main__":
    main()
