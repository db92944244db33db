"""A quality means the same fidelity for gray and colour photos: grayscale images are coded GRAY_QUALITY_OFFSET
quality indexes lower (vaecodec/quality.py), the header says so, and files coded before still decode as before."""

import io

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vaecodec
import vaecodec.pillow
from vaecodec import container
from vaecodec.quality import GRAY_QUALITY_OFFSET, QUALITY_INDEXES, coded_quality_index, quality_to_index
from vaecodec.targeting import Search, compress_to_psnr, compress_to_size, psnr
from vaecodec_cli.main import cli

from conftest import KODAK


@pytest.fixture(scope="module")
def codec():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a training job shares this machine's cores; small crops gain nothing from more
    yield vaecodec.load("default", device="cpu")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def colour():
    return Image.open(KODAK / "kodim08.png").convert("RGB").crop((100, 100, 196, 164))


@pytest.fixture(scope="module")
def gray(colour):
    return colour.convert("L")


def header(data: bytes):
    return container.unpack(data)[0]


def test_the_rule_lowers_only_gray_and_stops_at_the_lowest_index():
    assert GRAY_QUALITY_OFFSET > 0
    for index in range(QUALITY_INDEXES):
        assert coded_quality_index(index, "RGB") == index
        assert coded_quality_index(index, "L") == max(0, index - GRAY_QUALITY_OFFSET)
        assert coded_quality_index(index, "L", gray_offset=False) == index


def test_a_gray_image_is_coded_lower_and_its_header_says_so_colour_unchanged(codec, colour, gray):
    index = quality_to_index(5)
    assert header(codec.compress(colour, 5)).quality_index == index
    lowered = codec.compress(gray, 5)
    assert header(lowered).quality_index == index - GRAY_QUALITY_OFFSET and header(lowered).mode == "L"
    assert header(codec.compress(gray, 1)).quality_index == 0  # nothing below the lowest quality
    full = codec.compress(gray, 5, gray_offset=False)
    assert header(full).quality_index == index and len(lowered) < len(full)
    # the latents API, batches and lazy iterators go through the same rule: the same bytes
    assert codec.latents_to_bytes(codec.encode_latents(gray, 5)) == lowered
    assert codec.encode_latents(gray, 5, gray_offset=False).header.quality_index == index
    mixed = [colour, gray, colour.crop((0, 0, 64, 48)).convert("L")]
    alone = [codec.compress(image, 5) for image in mixed]
    assert codec.compress_batch(mixed, 5, batch_size=3) == alone
    assert list(codec.iter_compress(mixed, 5, batch_size=2)) == alone
    assert [data for data, _ in codec.iter_compress_timed(mixed, 5, batch_size=3)] == alone


def test_a_gray_file_coded_at_the_full_index_decodes_as_before(codec, gray):
    """A file written before the rule: coded at the quality index asked for, as the search's lower-level coder
    still codes any index exactly."""
    index = quality_to_index(5)
    search = Search(codec, gray)
    old = search.file(index)
    assert header(old).quality_index == index and header(old).mode == "L"
    assert old == codec.compress(gray, 5, gray_offset=False)
    decoded = codec.decompress(old)
    expected = codec.decode_latents(search.latents(index))  # the decoder of those symbols, not re-encoded
    assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), np.asarray(expected))
    assert psnr(gray, decoded) == pytest.approx(search.psnr(index))
    assert psnr(gray, decoded) > psnr(gray, codec.decompress(codec.compress(gray, 5)))  # the full index: finer
    vaecodec.pillow.use(codec)
    with Image.open(io.BytesIO(old)) as opened:
        assert opened.info["quality"] == 5.0 and opened.tobytes() == decoded.tobytes()


def test_the_compress_line_says_why_a_gray_file_has_a_lower_quality_and_quiet_stays_quiet(
        gray, colour, tmp_path, monkeypatch):
    monkeypatch.setenv("VAECODEC_PROGRESS_SECONDS", "0")
    gray.save(tmp_path / "gray.png")
    colour.save(tmp_path / "colour.png")
    runner = CliRunner()
    lowered = 5 - GRAY_QUALITY_OFFSET * container.QUALITY_STEP
    result = runner.invoke(cli, ["compress", str(tmp_path / "gray.png"), "-q", "5"])
    assert result.exit_code == 0, result.output
    assert f"bpp, quality {lowered:g} (grayscale at the fidelity of colour quality 5), " in result.stdout
    assert header((tmp_path / "gray.vae").read_bytes()).quality == lowered
    result = runner.invoke(cli, ["compress", str(tmp_path / "colour.png"), "-q", "5"])
    assert result.exit_code == 0 and ", quality " not in result.stdout and "grayscale" not in result.stdout
    result = runner.invoke(cli, ["compress", str(tmp_path / "gray.png"), "-o", str(tmp_path / "q.vae"), "--quiet"])
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""
    result = runner.invoke(cli, ["info", str(tmp_path / "gray.vae")])
    assert result.exit_code == 0 and f"quality:        {lowered:g}\n" in result.stdout


def test_the_pillow_plugin_saves_gray_at_the_lowered_quality(codec, gray, tmp_path):
    vaecodec.pillow.use(codec)
    gray.save(tmp_path / "gray.vae", quality=5)
    assert (tmp_path / "gray.vae").read_bytes() == codec.compress(gray, 5)
    with Image.open(tmp_path / "gray.vae") as opened:
        assert opened.mode == "L" and opened.info["quality"] == 5 - GRAY_QUALITY_OFFSET * container.QUALITY_STEP
    gray.save(tmp_path / "full.vae", quality=5, gray_offset=False)
    assert header((tmp_path / "full.vae").read_bytes()).quality == 5.0


def test_size_and_psnr_goals_search_every_quality_of_a_gray_image_as_coded(codec, gray):
    top = compress_to_size(codec, gray, 10**6)  # room for any quality: the top one, not lowered
    assert top.quality == 8 and header(top.data).quality_index == QUALITY_INDEXES - 1
    assert top.data == codec.compress(gray, 8, gray_offset=False)
    middle = len(codec.compress(gray, 5, gray_offset=False))
    fits = compress_to_size(codec, gray, middle)
    assert len(fits.data) <= middle and fits.quality >= 5 and header(fits.data).quality == fits.quality
    search = Search(codec, gray)
    goal = (search.psnr(quality_to_index(3)) + search.psnr(quality_to_index(6))) / 2  # reached in between
    choice = compress_to_psnr(codec, gray, goal)
    assert header(choice.data).quality == choice.quality and header(choice.data).mode == "L"
    assert choice.data == codec.compress(gray, choice.quality, gray_offset=False)
    decoded = codec.decompress(choice.data)
    assert psnr(gray, decoded) == pytest.approx(choice.psnr) and choice.psnr >= goal
    lower = codec.compress(gray, choice.quality - container.QUALITY_STEP, gray_offset=False)
    assert psnr(gray, codec.decompress(lower)) < goal


def test_the_calibration_compares_gray_at_the_lowered_index_with_colour_at_the_quality_asked():
    from benchmarks.grayscale import QUALITIES, offset_table

    # gray gains 1 dB per index and sits 2 indexes' worth above colour: the offset 2 matches at every quality
    top = max(quality_to_index(quality) for quality in QUALITIES)
    measured = {"colour": {quality_to_index(q): {"psnr": [20.0 + quality_to_index(q) - 2] * 2, "bytes": [100, 200]}
                           for q in QUALITIES},
                "gray": {index: {"psnr": [20.0 + index] * 2, "bytes": [50, 100]} for index in range(top + 1)}}
    table = offset_table(measured)
    assert table[2]["mean_abs_difference"] == 0 and min(table, key=lambda o: table[o]["mean_abs_difference"]) == 2
    at_five = table[0]["per_quality"]["5"]
    assert at_five["psnr_difference"] == 2 and at_five["gray_to_colour"] == 0.5
    assert table[8]["per_quality"]["2"]["gray_quality"] == 1.0  # clamped at the lowest quality, as the rule is
