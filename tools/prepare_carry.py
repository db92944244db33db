"""Build ``.carry/``: what a training call on the lent GPU machine needs and the machine lacks.

    python tools/prepare_carry.py [--data ../shared/datasets/train] [--out .carry] [--run ../runs/cb64]

The device machine gets a copy of the working tree (at most 64 MiB with the carried paths) but not
``../shared``, and its Python has torch, numpy, click and Pillow but not constriction, with no internet.
So this writes
  - ``.carry/train/``: every training photo re-saved as WebP quality 85 with its long side at most 576 px
    (about 29 MiB for the 753 photos; training downscales by a random factor anyway, and its crops are 256 px;
    ``--long-side`` trades size for detail when the tracked tree grows);
  - ``.carry/whl/``: the constriction wheel for CPython 3.12 on manylinux x86_64 (``pip download``);
  - with ``--run``: ``.carry/init.pt``, the CPU run's current state exported (the GPU round starts from it
    with ``--init .carry/init.pt``), and ``.carry/init.json`` naming the run and its step, so that
    ``tools/merge_gpu_round.py`` can check that the run has not moved on before it takes the GPU's result.
``.carry`` is listed in ``.gitignore``; pass it to the device in ``carry``. See README, "Training on a GPU".
"""

import subprocess
import sys
from pathlib import Path

import click
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vaecodec.train.data import list_images, load_rgb  # noqa: E402

LONG_SIDE = 576
WEBP_QUALITY = 85
CONSTRICTION = "constriction==0.5.0"
DEVICE_TREE_MIB = 64  # what the device machine takes: working tree plus carried paths


def carry_run(run: Path, out: Path):
    import json

    from vaecodec.train import checkpoint
    from vaecodec.train.export import export_run

    out.mkdir(parents=True, exist_ok=True)
    (out / "init.pt").unlink(missing_ok=True)
    export_run(run, out / "init.pt", verify_images=0)
    step = checkpoint.load(run)["step"]
    (out / "init.json").write_text(json.dumps({"run": str(run.resolve()), "step": step}) + "\n")
    click.echo(f"{out}/init.pt: {run} at step {step}", err=True)


@click.command()
@click.option("--data", default="../shared/datasets/train", type=click.Path(exists=True, file_okay=False))
@click.option("--out", default=".carry", type=click.Path(file_okay=False))
@click.option("--long-side", default=LONG_SIDE, show_default=True,
              help="Longest image side; lower it when the tracked tree has grown and the total exceeds 64 MiB.")
@click.option("--run", default=None, type=click.Path(exists=True, file_okay=False),
              help="The CPU run to continue on the GPU (stop it first: make train-stop).")
def main(data, out, long_side, run):
    data, out = Path(data), Path(out)
    if run:
        carry_run(Path(run), out)
    train = out / "train"
    files = list_images([data])
    with click.progressbar(files, label="training photos", file=sys.stderr) as bar:
        for path in bar:
            target = train / path.relative_to(data).with_suffix(".webp")
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            image = load_rgb(path)
            image.thumbnail((long_side, long_side), Image.LANCZOS)
            image.save(target, quality=WEBP_QUALITY)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--platform", "manylinux2014_x86_64", "-d", str(out / "whl"),
                    CONSTRICTION], check=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    tracked = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True).stdout.split(b"\0")
    tree = sum(Path(name.decode()).stat().st_size for name in tracked if name and Path(name.decode()).is_file())
    total = (size + tree) / 2**20
    click.echo(f"{out}: {len(files)} photos and the constriction wheel, {size / 2**20:.1f} MiB; with the tracked "
               f"tree {total:.1f} MiB of the device's {DEVICE_TREE_MIB} MiB"
               + ("" if total <= DEVICE_TREE_MIB else ": too large, rebuild with a smaller --long-side"), err=True)


if __name__ == "__main__":
    main()
