"""Worker processes (vaecodec.parallel): the same bytes and pixels as one process, errors in place, order kept."""

import pytest
from PIL import Image

import vaecodec
from vaecodec.errors import UnsupportedImage, VaecodecError
from vaecodec.parallel import CodecPool, default_workers

from conftest import KODAK


@pytest.fixture(scope="module")
def codec():
    return vaecodec.load("default", device="cpu")


@pytest.fixture(scope="module")
def images():
    """Small crops of different sizes, and a grayscale one: real content, quick to code."""
    source = Image.open(KODAK / "kodim23.png").convert("RGB")
    crops = [source.crop((x, 100, x + width, 100 + height))
             for x, width, height in ((300, 96, 64), (100, 64, 80), (500, 70, 50), (200, 128, 64))]
    crops.append(crops[0].convert("L"))
    return crops


def test_workers_write_the_bytes_and_pixels_of_one_process(codec, images):
    alone = [codec.compress(image, quality=3) for image in images]
    with CodecPool(workers=2, codec=codec) as pool:
        assert pool.compress_batch(images, quality=3) == alone
        decoded = pool.decompress_batch(alone)
    for image, data in zip(decoded, alone):
        expected = codec.decompress(data)
        assert image.mode == expected.mode and image.tobytes() == expected.tobytes()


def test_a_bad_item_yields_its_error_in_its_place(codec, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    items = [images[0], bad, images[1], images[2], images[3]]
    with CodecPool(workers=2, codec=codec) as pool:
        outcomes = list(pool.iter_compress_timed(items, quality=3))
        with pytest.raises(UnsupportedImage):
            pool.compress_batch(items, quality=3)
        decoded = list(pool.iter_decompress_timed([outcomes[0][0], b"VAE garbage"], image_format="PNG"))
    assert isinstance(outcomes[1], UnsupportedImage) and "bad.png" in str(outcomes[1])
    assert [data for data, _ in outcomes[:1] + outcomes[2:]] == [codec.compress(images[i], quality=3) for i in (0, 1, 2, 3)]
    assert all(seconds > 0 for _, seconds in outcomes[:1] + outcomes[2:])
    assert decoded[0][0].startswith(b"\x89PNG") and isinstance(decoded[1], VaecodecError)


def test_workers_load_the_model_themselves_when_given_none(images):
    with CodecPool(workers=2, model="default", device="cpu") as pool:
        assert len(pool.compress_batch(images[:2], quality=3)) == 2


def test_default_is_one_worker_per_core_on_the_cpu(monkeypatch):
    monkeypatch.setattr("vaecodec.parallel.cpu_count", lambda: 2)
    assert default_workers("cpu") == 2
    monkeypatch.setattr("vaecodec.parallel.cpu_count", lambda: 64)
    assert default_workers("cpu") == 4  # capped: each worker holds a model


# -- the command line's folder jobs --------------------------------------------------------------------------------

def run(*args):
    from click.testing import CliRunner

    from vaecodec_cli.main import cli

    return CliRunner().invoke(cli, [str(arg) for arg in args])


def files_in(folder) -> dict:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def report(result, output) -> list:
    """The per-file lines without their times or the output folder, and the error lines (not the progress
    lines a slow run prints)."""
    lines = [line.rsplit(", ", 1)[0].replace(str(output), "OUT") for line in result.stdout.splitlines()
             if " -> " in line]
    return lines + [line for line in result.stderr.splitlines() if line.startswith("vaecodec: error: ")]


def test_folder_job_on_workers_writes_and_reports_as_one_process(images, tmp_path):
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    for index, image in enumerate(images):
        image.save(folder / ("a" if index % 2 else "") / f"{index}.png")
    (folder / "a" / "bad.png").write_bytes(b"not a png")

    one = run("compress", folder, "-o", tmp_path / "one", "-q", 3, "--workers", 1)
    two = run("compress", folder, "-o", tmp_path / "two", "-q", 3, "--workers", 2)
    assert one.exit_code == two.exit_code == UnsupportedImage.exit_code
    assert report(two, tmp_path / "two") == report(one, tmp_path / "one") and len(report(one, tmp_path / "one")) == len(images) + 1
    assert files_in(tmp_path / "two") == files_in(tmp_path / "one")

    one = run("decompress", tmp_path / "one", "-o", tmp_path / "one_png", "--workers", 1)
    two = run("decompress", tmp_path / "one", "-o", tmp_path / "two_png", "--workers", 2)
    assert one.exit_code == two.exit_code == 0
    assert report(two, tmp_path / "two_png") == report(one, tmp_path / "one_png")
    assert files_in(tmp_path / "two_png") == files_in(tmp_path / "one_png")


def test_ctrl_c_stops_a_job_on_workers_and_leaves_only_whole_files(tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from vaecodec import container

    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted(KODAK.glob("*.png"))[:12]:
        shutil.copyfile(path, folder / path.name)
    # A test run started in the background by a shell inherits SIGINT ignored, and so would the command (Python
    # then never raises KeyboardInterrupt): give it the disposition a terminal's foreground job has.
    job = subprocess.Popen([sys.executable, "-m", "vaecodec_cli.main", "compress", str(folder), "-o", str(tmp_path / "out"),
                            "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert " -> " in job.stdout.readline()  # one file written: the workers are busy with the next ones
    os.killpg(job.pid, signal.SIGINT)  # as Ctrl-C does: to the command and its workers
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 130 and "Traceback" not in stderr, stderr
    written = sorted((tmp_path / "out").iterdir())
    assert 1 <= len(written) < 12 and all(path.suffix == ".vae" for path in written)  # no temporary files
    for path in written:
        container.unpack(path.read_bytes())  # each one whole (the CRC covers the file)
