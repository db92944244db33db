"""compress --size / --psnr: the quality found is the best one for the goal, checked against real files."""

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vaecodec
from vaecodec.container import QUALITY_STEP, unpack
from vaecodec.errors import UsageError
from vaecodec.targeting import compress_to_psnr, compress_to_size, last_true, psnr
from vaecodec_cli.main import cli


@pytest.fixture(scope="module")
def codec():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield vaecodec.load("default", device="cpu")
    torch.set_num_threads(threads)


@pytest.fixture
def image(small_png):
    return Image.open(small_png).convert("RGB")


def test_bisection_finds_the_last_true_index():
    for boundary in range(-1, 29):
        found, trials = last_true(lambda i: i <= boundary, 0, 28)
        assert found == (boundary if boundary >= 0 else None) and trials <= 5


def test_size_goal_gives_the_largest_quality_that_fits(codec, image):
    middle = len(codec.compress(image, quality=5))
    choice = compress_to_size(codec, image, middle + 50)
    assert choice.data == codec.compress(image, quality=choice.quality)  # the bytes compress writes
    assert len(choice.data) <= middle + 50 and choice.quality >= 5
    if choice.quality < 8:
        assert len(codec.compress(image, quality=choice.quality + QUALITY_STEP)) > middle + 50
    with pytest.raises(UsageError, match="even quality 1"):
        compress_to_size(codec, image, 10)


def test_psnr_goal_gives_the_smallest_quality_that_reaches_it(codec, image):
    choice = compress_to_psnr(codec, image, 30.0)
    decoded = codec.decompress(choice.data)
    assert psnr(image, decoded) == pytest.approx(choice.psnr) and choice.psnr >= 30.0
    if choice.quality > 1:
        lower = codec.decompress(codec.compress(image, quality=choice.quality - QUALITY_STEP))
        assert psnr(image, lower) < 30.0
    with pytest.raises(UsageError, match="even quality 8"):
        compress_to_psnr(codec, image, 80.0)


def test_the_command_prints_the_quality_chosen_and_refuses_two_goals(small_png, tmp_path, monkeypatch):
    monkeypatch.setenv("VAECODEC_PROGRESS_SECONDS", "0")
    result = CliRunner().invoke(cli, ["compress", str(small_png), "-o", str(tmp_path / "x.vae"), "--size", "900"])
    assert result.exit_code == 0, result.output
    header, _ = unpack((tmp_path / "x.vae").read_bytes())
    assert f"quality {header.quality:g} (fits 900 bytes" in result.stdout
    assert (tmp_path / "x.vae").stat().st_size <= 900

    result = CliRunner().invoke(cli, ["compress", str(small_png), "-o", str(tmp_path / "y.vae"), "--size", "900",
                                      "-q", "3"])
    assert result.exit_code == UsageError.exit_code and "give one of them" in result.stderr
    result = CliRunner().invoke(cli, ["compress", str(small_png), "-o", str(tmp_path / "y.vae"), "--size", "10"])
    assert result.exit_code == UsageError.exit_code and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "y.vae").exists()
