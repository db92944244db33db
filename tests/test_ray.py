"""Folder jobs on Ray (cli/cluster.py, vaecodec/ray.py) against the plain command line, on a local Ray instance.

One Ray instance with two CPUs serves the module; images are small crops so that the actors' start-up, not
the coding, is what takes the time.
"""

import subprocess
import sys

import pytest
from click.testing import CliRunner
from PIL import Image

from vaecodec import container
from vaecodec.errors import UnsupportedImage
from vaecodec.quality import coded_quality_index, index_to_quality, quality_to_index
from vaecodec_cli.main import cli

from conftest import KODAK

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install vaecodec[ray]")


@pytest.fixture(scope="module")
def local_ray():
    import logging

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray
    ray.shutdown()


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def vaecodec_errors(result) -> list:
    """The command's own error lines (Ray's C++ core may print advice of its own on stderr)."""
    return [line for line in result.stderr.splitlines() if line.startswith("vaecodec: error: ")]


def files_in(folder) -> dict:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Images of several sizes, formats and modes in a tree, a file that is no image, and files to skip."""
    folder = tmp_path_factory.mktemp("photos")
    (folder / "a" / "b").mkdir(parents=True)
    source = Image.open(KODAK / "kodim23.png").convert("RGB")
    source.crop((300, 100, 396, 164)).save(folder / "x.png")
    source.crop((100, 50, 164, 130)).save(folder / "a" / "y.jpg", quality=90)
    source.crop((0, 0, 70, 50)).convert("L").save(folder / "a" / "b" / "gray.png")
    (folder / "a" / "bad.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"hidden files are skipped")
    return folder


@pytest.fixture(scope="module")
def plain(mixed_folder, tmp_path_factory):
    """The plain command line's outputs for the mixed folder: .vae files and their decoded PNGs."""
    out = tmp_path_factory.mktemp("plain")
    assert run("compress", mixed_folder, "-o", out / "vae", "-q", 3, "--workers", 1).exit_code == UnsupportedImage.exit_code
    assert run("decompress", out / "vae", "-o", out / "png", "--workers", 1).exit_code == 0
    return out


def test_ray_job_writes_the_files_of_the_plain_command_and_reports_the_bad_one(local_ray, mixed_folder, plain,
                                                                              tmp_path):
    result = run("compress", mixed_folder, "-o", tmp_path / "vae", "-q", 3, "--ray")
    assert result.exit_code == UnsupportedImage.exit_code, result.output
    errors = vaecodec_errors(result)
    assert len(errors) == 1 and str(mixed_folder / "a" / "bad.png") in errors[0]
    assert "3 images, 1 failed" in result.stdout
    assert files_in(tmp_path / "vae") == files_in(plain / "vae")
    gray_line, = [line for line in result.stdout.splitlines() if "gray.png" in line]  # noted as by the plain job
    assert gray_line.endswith("grayscale at the fidelity of colour quality 3)")

    result = run("decompress", tmp_path / "vae", "-o", tmp_path / "png", "--ray")
    assert result.exit_code == 0 and not vaecodec_errors(result), result.output
    assert files_in(tmp_path / "png") == files_in(plain / "png")


def test_parquet_output_holds_the_files_and_round_trips_to_the_same_pixels(local_ray, mixed_folder, plain, tmp_path):
    import pyarrow.parquet as pq

    result = run("compress", mixed_folder, "-o", tmp_path / "table", "-q", 3, "--ray", "--parquet")
    assert result.exit_code == UnsupportedImage.exit_code and len(vaecodec_errors(result)) == 1, result.output
    rows = pq.read_table(tmp_path / "table").to_pylist()
    assert [row["path"] for row in rows] == ["x.png", "a/y.jpg", "a/b/gray.png"]  # the plain job's order
    for row in rows:
        assert row["vae"] == (plain / "vae" / row["path"]).with_suffix(".vae").read_bytes()
        header, _ = container.unpack(row["vae"])
        coded = index_to_quality(coded_quality_index(quality_to_index(3), header.mode))  # gray: lower
        assert (row["width"], row["height"], row["mode"], row["quality"]) == (header.width, header.height,
                                                                              header.mode, coded)
        assert row["model_hash"] == header.model_hash.hex() and row["model_name"] == header.model_name

    result = run("decompress", tmp_path / "table", "-o", tmp_path / "png", "--ray", "--parquet")
    assert result.exit_code == 0, result.output
    assert files_in(tmp_path / "png") == files_in(plain / "png")


def test_ray_is_imported_only_when_asked_and_its_absence_is_one_line():
    # One interpreter for both checks (each start imports torch): first what importing the library and the
    # command line loads, then the command asked for --ray with ray made unimportable.
    code = ("import sys, vaecodec, vaecodec.parallel, vaecodec_cli.main, vaecodec_cli.batch; "
            "print('ray' in sys.modules, 'pyarrow' in sys.modules, flush=True); "
            "sys.modules['ray'] = None; sys.argv[0] = 'vaecodec'; vaecodec_cli.main.main()")
    finished = subprocess.run([sys.executable, "-c", code, "compress", str(KODAK), "-o", "unused", "--ray"],
                              capture_output=True, text=True)
    assert finished.stdout.split() == ["False", "False"]
    assert finished.returncode == 2
    assert finished.stderr.splitlines() == ["vaecodec: error: Ray is not installed; pip install vaecodec[ray]"]


def test_datasets_of_image_arrays_compress_and_decompress_inside_a_pipeline(local_ray):
    import numpy as np

    import vaecodec
    import vaecodec.ray

    codec = vaecodec.load("default", device="cpu")
    source = Image.open(KODAK / "kodim23.png").convert("RGB")
    images = [source.crop((300, 100, 396, 164)), source.crop((0, 0, 70, 50)).convert("L")]
    # (H, W, C) arrays, grayscale with C = 1: the layout decompress_dataset returns (Ray pads a column that
    # mixes 2-D and 3-D arrays to 3-D at the front, which no image reader could undo)
    rows = [{"path": f"{index}.png", "image": np.asarray(image).reshape(image.height, image.width, -1)}
            for index, image in enumerate(images)]
    compressed = vaecodec.ray.compress_dataset(ray.data.from_items(rows), quality=3)
    decoded = vaecodec.ray.decompress_dataset(compressed).take_all()  # one pipeline: two actor pools in a row
    assert [row["path"] for row in decoded] == ["0.png", "1.png"]
    for image, row in zip(images, decoded):
        expected = codec.decompress(codec.compress(image, quality=3))
        assert row["error"] is None and row["mode"] == image.mode
        assert np.array_equal(row["image"], np.asarray(expected).reshape(row["image"].shape))
        assert row["image"].shape[2] == (3 if image.mode == "RGB" else 1)
