"""The command line as a user meets it: instant startup, streams, resuming folder jobs, progress, and refusals.

Model-running tests use the 96x64 crop of the small_png fixture so each takes a second or two.
"""

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vaecodec
from vaecodec import container
from vaecodec.errors import UsageError
from vaecodec_cli import main as cli_main
from vaecodec_cli.main import LAZY_COMMANDS, cli
from vaecodec_cli.progress import Status, TrainingStatus
from vaecodec_cli.transfer import expand_inputs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a training job shares this machine's cores; tiny images gain nothing from more
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_progress_lines(monkeypatch):
    monkeypatch.setenv("VAECODEC_PROGRESS_SECONDS", "0")  # a slow test machine must not add lines to stderr


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(arg) for arg in args], input=input)


def files_in(folder: Path) -> set:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


# -- startup ----------------------------------------------------------------------------------------------------

def commands_in_a_fresh_process(commands: list, modules: tuple):
    """Run the vaecodec commands (argument lists, each must exit 0) in one new interpreter; returns its stdout,
    whose last line says for each of ``modules`` whether it was imported: "LOADED True False" etc."""
    script = f"""
import sys
from vaecodec_cli.main import cli
for args in {[[str(a) for a in args] for args in commands]!r}:
    try:
        cli(args, prog_name="vaecodec")
    except SystemExit as done:
        assert done.code == 0, (args, done.code)
print("LOADED", *(name in sys.modules for name in {list(modules)!r}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_version_and_info_import_neither_torch_nor_numpy(tmp_path, small_png):
    vae = tmp_path / "photo.vae"
    assert run("compress", small_png, "-o", vae).exit_code == 0
    stdout = commands_in_a_fresh_process([["--help"], ["--version"], ["info", vae], ["compress", "--help"]],
                                         ("torch", "numpy"))
    assert stdout.splitlines()[-1] == "LOADED False False"
    assert "quality:" in stdout and "send" in stdout and vaecodec.__version__ in stdout
    assert "--psnr" in stdout


def test_compress_and_decompress_load_no_more_of_torch_than_the_transforms_need(tmp_path, small_png):
    """Loading a model must not pull in torch's compiler stack (torch._dynamo, over a second per process):
    building modules under ``torch.device("meta")`` once did."""
    stdout = commands_in_a_fresh_process([["compress", small_png, "-o", tmp_path / "a.vae"],
                                          ["decompress", tmp_path / "a.vae", "-o", tmp_path / "a.png"]],
                                         ("torch", "torch._dynamo"))
    assert stdout.splitlines()[-1] == "LOADED True False"


def test_the_command_list_shows_each_lazy_command_its_own_first_line():
    for name, (_, line) in LAZY_COMMANDS.items():
        command = cli.get_command(None, name)
        assert command.get_short_help_str(limit=200) == line, name
        assert " ".join(line.split()) in " ".join(run("--help").stdout.split())


# -- streams, formats, verbosity --------------------------------------------------------------------------------

def test_standard_output_taking_part_of_each_write_gets_every_byte(monkeypatch):
    """An unbuffered stdout (python -u, PYTHONUNBUFFERED) writes to a pipe through a raw stream, which may
    take only part of a write; nothing may be dropped."""
    from vaecodec_cli.files import STANDARD_STREAM, write_output

    class Trickle(io.RawIOBase):  # a raw stream that takes at most 1000 bytes a call
        def __init__(self):
            self.received = bytearray()

        def writable(self):
            return True

        def write(self, data):
            self.received += bytes(data[:1000])
            return min(len(data), 1000)

    raw = Trickle()
    monkeypatch.setattr(sys, "stdout", type("Stdout", (), {"buffer": raw, "isatty": lambda self: False})())
    payload = bytes(range(256)) * 40
    assert write_output(STANDARD_STREAM, lambda file: file.write(payload), force=False) == len(payload)
    assert bytes(raw.received) == payload


def test_standard_input_and_output(small_png, tmp_path):
    result = run("compress", "-", "-o", "-", input=small_png.read_bytes())
    assert result.exit_code == 0, result.output
    data = result.stdout_bytes
    header, _ = container.unpack(data)
    assert (header.width, header.height) == (96, 64)
    assert "bpp" in result.stderr  # the report moves to stderr when the data takes stdout

    result = run("decompress", "-", "-o", "-", "--format", "png", input=data)
    assert result.exit_code == 0, result.output
    assert Image.open(io.BytesIO(result.stdout_bytes)).size == (96, 64)
    assert files_in(tmp_path) == {"photo.png"}

    result = run("compress", "-", input=small_png.read_bytes())
    assert result.exit_code == UsageError.exit_code and "-o" in result.stderr
    result = run("compress", "-", "-o", tmp_path / "x.vae", input=b"not an image")
    assert result.exit_code == 3 and "standard input" in result.stderr and not (tmp_path / "x.vae").exists()


def test_no_hint_invites_overwriting_the_original(small_png):
    original = small_png.read_bytes()
    assert run("compress", small_png).exit_code == 0
    result = run("decompress", small_png.with_suffix(".vae"), "-o", small_png)
    assert result.exit_code == UsageError.exit_code and "original" in result.stderr
    assert "--force" not in result.stderr and small_png.read_bytes() == original


def test_image_quality_sets_lossy_output_quality_and_avif_is_written(small_png, tmp_path):
    assert run("compress", small_png).exit_code == 0
    vae = small_png.with_suffix(".vae")
    sizes = {}
    for quality in (30, 95):
        target = tmp_path / f"q{quality}.jpg"
        assert run("decompress", vae, "-o", target, "--image-quality", quality).exit_code == 0
        sizes[quality] = target.stat().st_size
    assert sizes[30] < sizes[95]

    Image.init()
    if "AVIF" in Image.SAVE:
        assert run("decompress", vae, "-o", tmp_path / "x.avif").exit_code == 0
        assert Image.open(tmp_path / "x.avif").format == "AVIF"
    result = run("decompress", vae, "-o", tmp_path / "x.png", "--image-quality", 50)
    assert result.exit_code == UsageError.exit_code and not (tmp_path / "x.png").exists()


def test_quiet_prints_nothing_and_verbose_tells_where_time_went(small_png, tmp_path):
    result = run("compress", small_png, "-o", tmp_path / "a.vae", "--quiet")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    result = run("compress", small_png, "-o", tmp_path / "b.vae", "--verbose")
    assert result.exit_code == 0
    assert "mcc-n64" in result.stderr and "entropy coding" in result.stderr and "bpp" in result.stdout


# -- folders ----------------------------------------------------------------------------------------------------

def test_skip_existing_resumes_a_folder_job(small_png, tmp_path):
    tree = tmp_path / "photos"
    (tree / "sub").mkdir(parents=True)
    small_png.rename(tree / "a.png")
    Image.open(tree / "a.png").crop((0, 0, 40, 30)).save(tree / "sub" / "b.png")
    assert run("compress", tree, "-o", tmp_path / "out").exit_code == 0
    before = (tmp_path / "out" / "a.vae").stat().st_mtime_ns

    Image.open(tree / "a.png").crop((0, 0, 30, 20)).save(tree / "sub" / "c.png")
    result = run("compress", tree, "-o", tmp_path / "out", "--skip-existing")
    assert result.exit_code == 0, result.output
    assert "1 images, 2 skipped" in result.stdout
    assert files_in(tmp_path / "out") == {"a.vae", "sub/b.vae", "sub/c.vae"}
    assert (tmp_path / "out" / "a.vae").stat().st_mtime_ns == before
    assert run("compress", tree, "-o", tmp_path / "out").exit_code == UsageError.exit_code  # without: refused
    result = run("compress", tree, "-o", tmp_path / "out", "--skip-existing", "--model", "no-such-model")
    assert result.exit_code == 0 and result.stdout == "no images coded, 3 skipped (outputs exist)\n"  # no model

    result = run("decompress", tmp_path / "out", "--skip-existing")
    assert result.exit_code == 0 and "3 images" in result.stdout
    assert "sub/c.decoded.png" in files_in(tmp_path / "out")


def test_info_takes_folders(small_png, tmp_path):
    (tmp_path / "deep").mkdir()
    assert run("compress", small_png, "-o", tmp_path / "deep" / "x.vae").exit_code == 0
    result = run("info", tmp_path)
    assert result.exit_code == 0 and "x.vae" in result.stdout and "quality:" in result.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("info", empty).exit_code == UsageError.exit_code


def test_send_walks_subfolders_like_compress(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("1.png", "a/2.jpg", "a/b/3.vae", "a/b/.hidden.png", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [str(p.relative_to(tmp_path)) for p in expand_inputs([tmp_path])] == ["1.png", "a/2.jpg", "a/b/3.vae"]


# -- progress and times -----------------------------------------------------------------------------------------

def test_refinement_reports_its_steps_in_plain_lines_when_stderr_is_not_a_terminal(small_png, tmp_path, monkeypatch):
    monkeypatch.setenv("VAECODEC_PROGRESS_SECONDS", "0.05")
    result = run("compress", small_png, "-o", tmp_path / "x.vae", "--refine", 30)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "refinement step" in line]
    assert lines and all(line.startswith("vaecodec: compressing") and " of 30" in line for line in lines)


def test_per_file_times_in_a_batch_are_each_files_own(tmp_path):
    # Before, a batch's first file carried the whole batch's time and the others ~0 s.
    source = Image.open(Path(__file__).resolve().parents[2] / "shared/datasets/kodak/kodim23.png").convert("RGB")
    for index in range(4):
        source.crop((index * 64, 0, index * 64 + 192, 128)).save(tmp_path / f"{index}.png")
    result = run("compress", tmp_path, "-o", tmp_path / "out", "--batch-size", 4)
    assert result.exit_code == 0, result.output
    seconds = [float(line.rsplit(", ", 1)[1].rstrip(" s")) for line in result.stdout.splitlines() if "->" in line]
    assert len(seconds) == 4 and min(seconds) > 0.2 * max(seconds)


def test_status_line_names_the_file_and_step():
    stream = io.StringIO()
    status = Status(3, "compressing", stream=stream)

    class Job:
        source = Path("dir/photo.png")

    status.file_started(Job())
    status.step("refinement step", 12, 50)
    status.file_done()
    assert status.line().startswith("compressing 1 of 3 files done, photo.png: refinement step 12 of 50")


def test_training_prints_a_plain_status_line_without_a_terminal(monkeypatch):
    monkeypatch.setenv("VAECODEC_PROGRESS_SECONDS", "0.01")
    stream = io.StringIO()
    with TrainingStatus(0, 100, stream=stream) as progress:
        for step in range(1, 4):
            time.sleep(0.02)
            progress({"step": step, "loss": 1.5, "bpp": 0.5, "psnr": 30.0})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[-1].startswith("vaecodec: training step 3 loss 1.500 bpp 0.500 PSNR 30.00,")
    assert "steps/s" in lines[-1] and lines[-1].endswith("3 of 100")


# -- refusals ---------------------------------------------------------------------------------------------------

def test_export_never_replaces_weights_without_force(tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"shipped weights")
    result = run("export", tmp_path, "-o", weights)
    assert result.exit_code == UsageError.exit_code and "--force" in result.stderr
    assert weights.read_bytes() == b"shipped weights"


# -- API --------------------------------------------------------------------------------------------------------

def test_decompress_takes_a_path_as_compress_does_and_the_header_reads_as_the_cli_shows_it(small_png, tmp_path):
    codec = vaecodec.load("default", device="cpu")
    data = codec.compress(str(small_png), quality=4.25)
    (tmp_path / "photo.vae").write_bytes(data)
    expected = codec.decompress(data)
    for path in (tmp_path / "photo.vae", str(tmp_path / "photo.vae")):
        assert codec.decompress(path).tobytes() == expected.tobytes()
    header = codec.header(tmp_path / "photo.vae")
    assert repr(header) == (f"ImageHeader(model_name='{codec.model_name}', model_hash='{codec.model_hash.hex()}', "
                            f"quality=4.25, mode='RGB', width=96, height=64)")
    with pytest.raises(UsageError, match="cannot read"):
        codec.decompress(tmp_path / "missing.vae")


def test_a_tiled_image_reports_each_tile_as_it_is_done():
    codec = vaecodec.load("default", device="cpu")
    reports = []
    codec.on_progress = lambda what, done, total: reports.append((what, done, total))
    image = Image.new("RGB", (1700, 40), (90, 120, 150))  # 107 units of 16 pixels wide: two tiles of at most 96
    data = codec.compress(image)
    assert [r for r in reports if r[0] == "analysis tile"] == [("analysis tile", n, 2) for n in range(3)]
    reports.clear()
    codec.decompress(data)
    assert [r for r in reports if r[0] == "synthesis tile"] == [("synthesis tile", n, 2) for n in range(3)]
