"""The vaecodec command line: outputs, refusals, and how every kind of bad input ends.

Most tests run the click commands in-process with the real default model; two run the installed
``vaecodec`` script to prove that what a user sees is one error line, not a traceback.
"""

import itertools
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vaecodec
from vaecodec import container, zoo
from vaecodec.errors import InvalidFile, ModelMismatch, UnsupportedImage, UnsupportedVersion, UsageError
from vaecodec_cli.batch import code_in_order, prepare_ahead
from vaecodec_cli.demo import demo
from vaecodec_cli.files import Job, write_atomically
from vaecodec_cli.main import cli

SCRIPT = Path(sys.executable).parent / "vaecodec"
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # A training job shares this machine's cores; the tiny test images gain nothing from more threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_progress_lines(monkeypatch):
    # Without a terminal, a command that runs over 5 s prints a progress line to stderr; on a busy test machine
    # that would add lines to the one error line these tests count.
    monkeypatch.setenv("VAECODEC_PROGRESS_SECONDS", "0")


@pytest.fixture(scope="module")
def compressed() -> bytes:
    """A valid .vae file of the 96x64 test crop (the same pixels as the small_png fixture)."""
    image = Image.open(Path(__file__).resolve().parents[2] / "shared/datasets/kodak/kodim23.png")
    return vaecodec.load("default", device="cpu").compress(image.convert("RGB").crop((300, 100, 396, 164)))


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def error_lines(result) -> list:
    return result.stderr.splitlines()


def assert_one_error_line(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("vaecodec: error: "), lines
    return lines[0]


def files_in(folder: Path) -> set:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def with_crc(body: bytes) -> bytes:
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def written_by_another_model(data: bytes) -> bytes:
    body = bytearray(data[:-4])
    hash_at = len(container.MAGIC) + 1 + 1 + body[len(container.MAGIC) + 1]  # magic, version, name length, name
    body[hash_at:hash_at + 4] = bytes(byte ^ 0xFF for byte in body[hash_at:hash_at + 4])
    return with_crc(body)


def from_a_newer_version(data: bytes) -> bytes:
    body = bytearray(data[:-4])
    body[len(container.MAGIC)] += 1
    return with_crc(body)


def with_bit_flipped(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


# -- round trips and file names ---------------------------------------------------------------------------------

def test_round_trip_with_default_output_names(small_png):
    result = run("compress", small_png)
    assert result.exit_code == 0, result.output
    vae = small_png.with_suffix(".vae")
    assert f"-> {vae}" in result.stdout and "96x64" in result.stdout and "bpp" in result.stdout
    original_bytes = small_png.read_bytes()
    original = Image.open(small_png).convert("RGB")

    result = run("decompress", vae)
    assert result.exit_code == 0, result.output
    decoded = Image.open(small_png.with_name("photo.decoded.png"))  # never onto the photo that was compressed
    assert decoded.format == "PNG" and decoded.mode == "RGB" and decoded.size == (96, 64)
    assert psnr(original, decoded) > 20
    assert small_png.read_bytes() == original_bytes


@pytest.mark.parametrize("size, mode", [((1, 1), "RGB"), ((33, 17), "L")])
def test_tiny_and_grayscale_images_round_trip(tmp_path, size, mode):
    source = tmp_path / "tiny.png"
    Image.new(mode, size, 120).save(source)
    assert run("compress", source, "-o", tmp_path / "tiny.vae", "-q", 8).exit_code == 0
    assert run("decompress", tmp_path / "tiny.vae", "-o", tmp_path / "decoded.png").exit_code == 0
    decoded = Image.open(tmp_path / "decoded.png")
    assert decoded.size == size and decoded.mode == mode


def test_output_option_names_a_file_or_an_existing_directory(small_png, tmp_path):
    assert run("compress", small_png, "-o", tmp_path / "named.vae").exit_code == 0
    (tmp_path / "into").mkdir()
    assert run("compress", small_png, "-o", tmp_path / "into").exit_code == 0
    assert files_in(tmp_path) == {"photo.png", "named.vae", "into/photo.vae"}


def test_decompress_picks_the_format_from_the_output_suffix_or_format_option(tmp_path, compressed):
    (tmp_path / "photo.vae").write_bytes(compressed)
    for suffix, pillow_format in [(".jpg", "JPEG"), (".webp", "WEBP"), (".tif", "TIFF")]:
        assert run("decompress", tmp_path / "photo.vae", "-o", tmp_path / f"out{suffix}").exit_code == 0
        assert Image.open(tmp_path / f"out{suffix}").format == pillow_format
    assert run("decompress", tmp_path, "--format", "bmp").exit_code == 0
    assert Image.open(tmp_path / "photo.decoded.bmp").format == "BMP"

    assert_one_error_line(run("decompress", tmp_path / "photo.vae", "-o", tmp_path / "out.xyz"), UsageError.exit_code)
    assert not (tmp_path / "out.xyz").exists()


# -- never overwrite without --force ----------------------------------------------------------------------------

def test_existing_output_is_kept_without_force_and_replaced_with_it(small_png):
    vae = small_png.with_suffix(".vae")
    vae.write_bytes(b"precious")
    line = assert_one_error_line(run("compress", small_png), UsageError.exit_code)
    assert "--force" in line
    assert vae.read_bytes() == b"precious"

    assert run("compress", small_png, "--force").exit_code == 0
    container.unpack(vae.read_bytes())  # a complete, valid file
    assert files_in(small_png.parent) == {"photo.png", "photo.vae"}  # and no temporary left behind


def test_decompress_beside_the_input_never_targets_the_original_image(small_png):
    original = small_png.read_bytes()
    assert run("compress", small_png).exit_code == 0
    assert run("decompress", small_png.with_suffix(".vae")).exit_code == 0
    line = assert_one_error_line(run("decompress", small_png.with_suffix(".vae")), UsageError.exit_code)
    assert "photo.decoded.png exists" in line and "photo.png" not in line.replace("photo.decoded.png", "")
    assert small_png.read_bytes() == original
    assert files_in(small_png.parent) == {"photo.png", "photo.vae", "photo.decoded.png"}


def test_an_interrupted_write_leaves_neither_file_nor_temporary(tmp_path):
    def write_then_interrupt(file):
        file.write(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "out.vae", write_then_interrupt, force=False)
    assert files_in(tmp_path) == set()


# -- bad .vae files ---------------------------------------------------------------------------------------------

BAD_FILES = {
    "empty": (lambda data: b"", InvalidFile),
    "random bytes": (lambda data: np.random.default_rng(0).bytes(len(data)), InvalidFile),
    "text": (lambda data: b"hello, world\n", InvalidFile),
    **{f"truncated to {n}": (lambda data, n=n: data[:n], InvalidFile) for n in (1, 3, 4, 9, 20, 40)},
    "truncated by half": (lambda data: data[:len(data) // 2], InvalidFile),
    "last byte missing": (lambda data: data[:-1], InvalidFile),
    "one byte appended": (lambda data: data + b"\0", InvalidFile),
    "bit flipped in header": (lambda data: with_bit_flipped(data, 8 * 12 + 3), InvalidFile),
    "bit flipped in payload": (lambda data: with_bit_flipped(data, 4 * len(data)), InvalidFile),
    "another model's file": (written_by_another_model, ModelMismatch),
    "newer format version": (from_a_newer_version, UnsupportedVersion),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_gives_one_error_line_its_exit_code_and_no_output(tmp_path, compressed, name):
    corrupt, error_class = BAD_FILES[name]
    (tmp_path / "bad.vae").write_bytes(corrupt(compressed))
    assert_one_error_line(run("decompress", tmp_path / "bad.vae"), error_class.exit_code)
    assert files_in(tmp_path) == {"bad.vae"}


def test_the_exit_codes_of_bad_files_are_distinct():
    codes = [InvalidFile.exit_code, UnsupportedVersion.exit_code, ModelMismatch.exit_code,
             UnsupportedImage.exit_code, UsageError.exit_code]
    assert len(set(codes)) == len(codes) and 0 not in codes and 1 not in codes


def test_every_truncation_and_every_single_bit_flip_is_detected(compressed):
    # Cheap without the model: the CRC catches them before any decoding.
    codec = vaecodec.load("default", device="cpu")
    for length in range(len(compressed)):
        with pytest.raises(InvalidFile):
            codec.header(compressed[:length])
    for bit in range(8 * len(compressed)):
        with pytest.raises(InvalidFile):
            codec.header(with_bit_flipped(compressed, bit))


# -- directories ------------------------------------------------------------------------------------------------

def test_directory_mirrors_its_tree_and_skips_a_bad_file(small_png, tmp_path):
    tree = tmp_path / "in"
    (tree / "a" / "b").mkdir(parents=True)
    small_png.rename(tree / "a" / "x.png")
    Image.new("RGB", (20, 10), (200, 30, 30)).save(tree / "a" / "b" / "y.jpg")
    (tree / "bad.png").write_bytes(b"not a png")
    (tree / "notes.txt").write_text("not an image, not looked at")
    (tree / ".hidden.png").write_bytes(b"hidden files are skipped")

    result = run("compress", tree, "-o", tmp_path / "out")
    line = assert_one_error_line(result, UnsupportedImage.exit_code)
    assert "bad.png" in line
    assert "2 images, 1 failed" in result.stdout and "images/s" in result.stdout
    assert files_in(tmp_path / "out") == {"a/x.vae", "a/b/y.vae"}

    (tmp_path / "out" / "c.vae").write_bytes(b"VAE\x01 garbage")
    result = run("decompress", tmp_path / "out", "-o", tmp_path / "restored", "--workers", 1)
    assert_one_error_line(result, InvalidFile.exit_code)
    assert files_in(tmp_path / "restored") == {"a/x.png", "a/b/y.png"}
    assert Image.open(tmp_path / "restored" / "a" / "b" / "y.png").size == (20, 10)


def test_a_file_failing_inside_a_batch_costs_only_itself(tmp_path, compressed):
    # A valid header and CRC around an undecodable payload passes codec.header and fails while decoding,
    # in the middle of a batch.
    header, _ = container.unpack(compressed)
    for name in ("a", "c", "d"):
        (tmp_path / f"{name}.vae").write_bytes(compressed)
    (tmp_path / "b.vae").write_bytes(container.pack(header, b"12345"))

    result = run("decompress", tmp_path, "--batch-size", 8)
    assert "b.vae" in assert_one_error_line(result, InvalidFile.exit_code)
    assert {"a.decoded.png", "c.decoded.png", "d.decoded.png"} <= files_in(tmp_path)
    assert "b.decoded.png" not in files_in(tmp_path)


def test_outcomes_come_in_input_order_whatever_fails_where():
    jobs = [Job(Path(str(n)), Path(f"{n}.out")) for n in range(8)]

    def prepare(job):
        if job.source.name == "2":
            raise UnsupportedImage("unreadable")
        return int(job.source.name)

    def code_one(item):
        if item == 5:
            raise InvalidFile("undecodable")
        return 10 * item

    def code_many(items):  # like the codec: batches of 3, and one bad item loses its whole batch
        items = iter(items)
        while batch := list(itertools.islice(items, 3)):
            yield from [code_one(item) for item in batch]

    outcomes = list(code_in_order(prepare_ahead(prepare, jobs, workers=2), code_many, code_one))
    assert [job.source.name for job, _ in outcomes] == [str(n) for n in range(8)]
    assert [type(outcome) if isinstance(outcome, Exception) else outcome for _, outcome in outcomes] == [
        0, 10, UnsupportedImage, 30, 40, InvalidFile, 60, 70]


def test_two_inputs_for_one_output_and_mixed_failures(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.jpg")
    result = run("compress", tmp_path)
    assert "already writes" in assert_one_error_line(result, UsageError.exit_code)
    assert (tmp_path / "x.vae").exists()

    (tmp_path / "bad.png").write_bytes(b"")
    result = run("compress", tmp_path)  # x.vae exists now (usage error) and bad.png is unreadable
    assert result.exit_code == 1 and len(error_lines(result)) == 3


# -- info -------------------------------------------------------------------------------------------------------

def test_info_prints_the_header_without_the_model(tmp_path, compressed, monkeypatch):
    (tmp_path / "photo.vae").write_bytes(compressed)
    header, payload = container.unpack(compressed)
    monkeypatch.setattr(vaecodec, "load", lambda *args, **kwargs: pytest.fail("info must not load a model"))

    rounds = zoo.read_weights(zoo.weights_path(header.model_name))[0]["training"]["rounds"]
    installed_type = rounds[-1]["config"]["model"].get("latent_codec", "hyperprior")  # the last round's codec

    result = run("info", tmp_path / "photo.vae")
    assert result.exit_code == 0 and result.stderr == ""
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines())
    fields = {name: value.strip() for name, value in fields.items()}
    assert fields == {
        "file": str(tmp_path / "photo.vae"),
        "model name": header.model_name,
        "model hash": header.model_hash.hex(),
        "model type": installed_type,  # read from the installed weights file, without loading the model
        "format version": "1",
        "quality": f"{container.DEFAULT_QUALITY:g}",
        "width": "96",
        "height": "64",
        "mode": "RGB",
        "payload bytes": str(len(payload)),
        "total bytes": str(len(compressed)),
        "bpp": f"{8 * len(compressed) / (96 * 64):.4f}",
    }

    (tmp_path / "new.vae").write_bytes(from_a_newer_version(compressed))
    assert_one_error_line(run("info", tmp_path / "new.vae"), UnsupportedVersion.exit_code)


# -- everything else ends in one line too -----------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["compress", "missing.png"],
    ["compress", "photo.png", "-q", "8.1"],
    ["compress", "photo.png", "--batch-size", "0"],
    ["compress", "photo.png", "--no-such-option"],
    ["decompress"],
])
def test_usage_errors_are_one_line_with_exit_code_2(small_png, args, monkeypatch):
    monkeypatch.chdir(small_png.parent)
    assert_one_error_line(run(*args), 2)


def test_an_unexpected_exception_is_one_line_with_exit_code_1(small_png, monkeypatch):
    def broken_load(*args, **kwargs):
        raise RuntimeError("something broke")

    monkeypatch.setattr(vaecodec, "load", broken_load)
    line = assert_one_error_line(run("compress", small_png), 1)
    assert "RuntimeError: something broke" in line


def test_ctrl_c_exits_130_quietly(small_png, monkeypatch):
    def interrupted_load(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vaecodec, "load", interrupted_load)
    result = run("compress", small_png)
    assert result.exit_code == 130 and result.stderr.strip() == ""
    assert not small_png.with_suffix(".vae").exists()


@pytest.mark.skipif(not SCRIPT.exists(), reason="needs `pip install -e .` for the vaecodec script")
@pytest.mark.parametrize("command, content, output, exit_code", [
    ("decompress", with_crc(b"VAE\x01" + b"\x00" * 20), "output.png", InvalidFile.exit_code),
    ("compress", b"\x89PNG\r\n\x1a\n truncated", "output.vae", UnsupportedImage.exit_code),
])
def test_the_installed_script_prints_one_line_not_a_traceback(tmp_path, command, content, output, exit_code):
    (tmp_path / "input").write_bytes(content)
    done = subprocess.run([SCRIPT, command, tmp_path / "input", "-o", tmp_path / output],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == exit_code
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert files_in(tmp_path) == {"input"}


def test_demo_writes_both_files_and_reports_psnr(small_png, tmp_path):
    result = CliRunner().invoke(demo, [str(small_png), "--out-dir", str(tmp_path / "demo"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert files_in(tmp_path / "demo") == {"photo.vae", "photo.decoded.png"}
    assert "PSNR" in result.stdout and "bpp" in result.stdout


@pytest.mark.parametrize("ladder", ["1,2", "a,b,c,d,e,f,g,h", "8,7,6,5,4,3,2,1", "0,1,2,3,4,5,6,7"])
def test_train_refuses_a_bad_lambda_ladder_before_starting(tmp_path, ladder):
    result = run("train", "--data", tmp_path, "--out", tmp_path / "run", "--lambdas", ladder)
    assert result.exit_code == 2 and "--lambdas" in result.output
    assert not (tmp_path / "run").exists()


def test_train_refuses_to_narrow_the_latents_of_its_init_model(tmp_path):
    result = run("train", "--data", tmp_path, "--out", tmp_path / "run", "--init", "default",
                 "--latent-channels", 64)
    assert result.exit_code == 2 and "latents can only be widened" in result.output
    assert not (tmp_path / "run").exists()


def test_refine_writes_a_smaller_or_better_file_that_decodes(small_png, tmp_path):
    assert run("compress", small_png, "-o", tmp_path / "plain.vae", "--device", "cpu").exit_code == 0
    result = run("compress", small_png, "-o", tmp_path / "refined.vae", "--device", "cpu", "--refine", 20)
    assert result.exit_code == 0, result.output
    result = run("decompress", tmp_path / "refined.vae", "-o", tmp_path / "refined.png", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "refined.vae").read_bytes() != (tmp_path / "plain.vae").read_bytes()
    assert Image.open(tmp_path / "refined.png").size == Image.open(small_png).size


def test_negative_refine_steps_are_refused_before_anything_is_written(small_png, tmp_path):
    result = run("compress", small_png, "-o", tmp_path / "out.vae", "--refine", -1)
    assert result.exit_code == 2 and "--refine" in result.output
    assert not (tmp_path / "out.vae").exists()


def test_files_of_the_earlier_default_model_decode_without_naming_it(tmp_path):
    """mshp-n64 stays installed beside the newer default: `vaecodec decompress` of a file it wrote (committed,
    from the release 684f772f) picks that release from the header, and --model default names the way out."""
    old = tmp_path / "old.vae"
    old.write_bytes((DATA / "mshp-n64-684f772f-q4.vae").read_bytes())
    header = container.unpack(old.read_bytes())[0]
    assert (header.model_name, header.model_hash.hex()) == ("mshp-n64", "684f772f")
    assert run("decompress", old, "-o", tmp_path / "old.png").exit_code == 0
    decoded = np.asarray(Image.open(tmp_path / "old.png")).astype(np.float64)
    source = np.asarray(Image.open(DATA / "kodim14-crop64.png").convert("RGB")).astype(np.float64)
    assert decoded.shape == source.shape
    assert 10 * np.log10(255**2 / np.mean((decoded - source) ** 2)) > 26.0  # 26.55 dB when it was written
    result = run("decompress", old, "-o", tmp_path / "again.png", "--model", "default")  # mcc-n64 since 78b5f811
    assert result.exit_code == ModelMismatch.exit_code and "--model mshp-n64@684f772f" in result.stderr
    assert not (tmp_path / "again.png").exists()
