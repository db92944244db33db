"""Tests of the benchmark code: the Bjøntegaard metric on hand-checkable curves, the metrics and codec
wrappers on a small synthetic image, and one --quick run of the RD pipeline end to end."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from benchmarks.bdrate import bd_quality, bd_rate, msssim_to_db
from benchmarks.codecs import CODECS, PillowCodec, library_versions
from benchmarks.rd import psnr_rgb8
from benchmarks.speed import quality_nearest_bpp, timed_call

REPO = Path(__file__).resolve().parent.parent
KODAK = REPO.parent / "shared" / "datasets" / "kodak"

RATES = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
PSNR = np.array([28.0, 31.0, 33.5, 35.5, 37.0])  # concave, like a real codec's curve


# ---- Bjøntegaard ----


def test_half_the_rate_at_every_quality_is_minus_50_percent():
    assert bd_rate(RATES, PSNR, RATES * 0.5, PSNR) == pytest.approx(-50.0, abs=1e-9)


def test_double_the_rate_is_plus_100_percent_and_same_curve_is_zero():
    assert bd_rate(RATES, PSNR, RATES * 2, PSNR) == pytest.approx(100.0, abs=1e-9)
    assert bd_rate(RATES, PSNR, RATES, PSNR) == pytest.approx(0.0, abs=1e-9)


def test_psnr_shift_on_a_log_linear_curve():
    # 10 dB per doubling of the rate: a curve 10 dB higher reaches each PSNR at half the rate
    psnr = 30 + 10 * np.log2(RATES / RATES[0])
    assert bd_rate(RATES, psnr, RATES, psnr + 10) == pytest.approx(-50.0, abs=1e-9)
    assert bd_quality(RATES, psnr, RATES, psnr + 10) == pytest.approx(10.0, abs=1e-9)
    # a 1 dB shift: the rate falls by 2 ** (-1/10) at every PSNR
    assert bd_rate(RATES, psnr, RATES, psnr + 1) == pytest.approx((2 ** -0.1 - 1) * 100, abs=1e-9)


def test_point_order_does_not_matter():
    order = [3, 0, 4, 1, 2]
    assert bd_rate(RATES[order], PSNR[order], RATES * 0.5, PSNR) == pytest.approx(-50.0, abs=1e-9)


def test_curves_that_do_not_overlap_have_no_delta():
    assert math.isnan(bd_rate(RATES, PSNR, RATES, PSNR + 20))
    assert math.isnan(bd_quality(RATES, PSNR, RATES * 100, PSNR))


def test_three_points_fall_back_to_a_lower_degree():
    assert bd_rate(RATES[:3], PSNR[:3], RATES[:3] * 0.5, PSNR[:3]) == pytest.approx(-50.0, abs=1e-9)
    assert math.isnan(bd_rate(RATES[:1], PSNR[:1], RATES[:3], PSNR[:3]))


def test_non_finite_points_are_ignored():
    rates = np.append(RATES, 5.0)
    psnr = np.append(PSNR, math.inf)  # a lossless point
    assert bd_rate(rates, psnr, RATES * 0.5, PSNR) == pytest.approx(-50.0, abs=1e-9)


def test_msssim_in_decibels():
    assert msssim_to_db(0.99) == pytest.approx(20.0)
    assert msssim_to_db([0.9, 0.999]) == pytest.approx([10.0, 30.0])


# ---- metrics and codec wrappers ----


def test_psnr_of_an_off_by_one_image():
    original = np.full((8, 8, 3), 100, dtype=np.uint8)
    assert psnr_rgb8(original, original + 1) == pytest.approx(20 * math.log10(255))
    assert psnr_rgb8(original, original) == math.inf


def synthetic_image(width=96, height=64) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.mark.parametrize("name", [name for name, codec in CODECS.items() if isinstance(codec, PillowCodec)])
def test_classical_codec_round_trip(name):
    codec = CODECS[name]
    if codec.unavailable_reason():
        pytest.skip(codec.unavailable_reason())
    image = synthetic_image()
    sizes = []
    for setting in (codec.quick_settings[0], codec.quick_settings[-1]):
        data = codec.encode(image, setting)
        decoded = codec.decode(data)
        assert decoded.mode == "RGB" and decoded.size == image.size
        assert psnr_rgb8(np.asarray(image), np.asarray(decoded)) > 15
        sizes.append(len(data))
    assert sizes[0] < sizes[1], "the sweep goes from low to high rate"


def test_versions_name_every_library():
    versions = library_versions()
    for library in ("Pillow", "libjpeg-turbo", "libwebp", "pillow-heif", "pillow-jxl-plugin", "torch"):
        assert library in versions


def test_quality_search_finds_the_nearest_rate():
    jpeg = CODECS["jpeg-420"]
    image = synthetic_image(256, 256)
    target = 8 * len(jpeg.encode(image, 50)) / (256 * 256)
    quality, bpp = quality_nearest_bpp(jpeg, image, target, 1, 95)
    assert bpp == pytest.approx(target, rel=0.02)


def test_timed_call_splits_by_the_codecs_timings():
    codec = SimpleNamespace(timings=SimpleNamespace(transform=1.0, entropy=2.0))

    def work():
        codec.timings.transform += 0.25
        codec.timings.entropy += 0.5
        return "done"

    result, seconds = timed_call(codec, work)
    assert result == "done"
    assert seconds["transform"] == pytest.approx(0.25) and seconds["entropy"] == pytest.approx(0.5)
    assert seconds["total"] >= 0


# ---- the pipeline ----


def test_quick_rd_run_writes_every_result(tmp_path):
    pytest.importorskip("pytorch_msssim")
    pytest.importorskip("matplotlib")
    if not KODAK.is_dir():
        pytest.skip(f"{KODAK} not present")
    command = [sys.executable, "-m", "benchmarks.rd", "--data", str(KODAK), "--quick", "--workers", "2",
               "--codecs", "jpeg-420,vaecodec", "--out", str(tmp_path)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr

    summary = json.loads((tmp_path / "rd_summary.json").read_text())
    assert summary["quick"] and summary["images"] == 2
    assert summary["codecs"]["jpeg-420"]["status"] == "measured"
    assert summary["codecs"]["vaecodec"]["status"] in ("measured", "skipped")
    measured = [name for name, codec in summary["codecs"].items() if codec["status"] == "measured"]
    for name in measured:
        points = summary["codecs"][name]["points"]
        assert len(points) == 3 and all(point["images"] == 2 for point in points)
        assert 0 < points[0]["bpp"] < points[-1]["bpp"]
    assert "BPG 4:4:4 x265" in summary["published"]
    assert summary["bd"]["codecs_vs_sanity"]["jpeg-420"]["bd_rate_psnr_percent"] > 0  # JPEG is worse than BPG
    if "vaecodec" in measured:
        assert set(summary["bd"]["against"]) >= {"jpeg-420", "VTM intra 4:4:4"}

    with (tmp_path / "rd_per_image.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 * 3 * len(measured)
    assert all(float(row["psnr"]) > 15 and 0 < float(row["msssim"]) <= 1 for row in rows)
    report = (tmp_path / "rd.md").read_text()
    assert "BD-rate" in report and "published" in report
    assert (tmp_path / "rd.png").stat().st_size > 10_000


def test_refine_benchmark_pairs_both_encoders_and_reads_classical_curves_of_the_same_images(tmp_path):
    if not KODAK.is_dir():
        pytest.skip(f"{KODAK} not present")
    classical = tmp_path / "rd"
    classical.mkdir()
    (classical / "rd_summary.json").write_text(json.dumps({"date": "2026-01-01T00:00:00"}))
    with (classical / "rd_per_image.csv").open("w", newline="") as file:  # a made-up JPEG curve for kodim01
        writer = csv.writer(file)
        writer.writerow(["image", "codec", "setting", "bpp", "psnr", "encode_s"])
        for setting, bpp, psnr in [(10, 0.2, 22.0), (40, 0.6, 26.0), (80, 1.4, 30.0), (95, 3.0, 36.0)]:
            writer.writerow(["kodim01", "jpeg-420", setting, bpp, psnr, 0.01])
            writer.writerow(["kodim02", "webp", setting, bpp, psnr, 0.01])  # not the same images: left out
    command = [sys.executable, "-m", "benchmarks.refine", "--data", str(KODAK), "--images", "1", "--steps", "2",
               "--workers", "1", "--out", str(tmp_path), "--classical", str(classical)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr

    summary = json.loads((tmp_path / "refine.json").read_text())
    assert summary["images"] == 1 and summary["steps"] == 2 and summary["classical_run"] == "2026-01-01T00:00:00"
    assert set(summary["bd"]) == {"vaecodec, plain encoder (this run)", "jpeg-420"}
    for encoder in ("plain", "refined"):
        curve = summary["curves"][encoder]
        assert curve["setting"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
        assert all(a < b for a, b in zip(curve["bpp"], curve["bpp"][1:]))
    with (tmp_path / "refine_per_image.csv").open() as file:
        assert len(list(csv.DictReader(file))) == 16
    assert "| 8 |" in (tmp_path / "refine.md").read_text()


def test_ceiling_reports_every_level_with_finite_psnr_and_spread():
    import torch

    from benchmarks.ceiling import measure
    from vaecodec.model import HyperpriorVAE, ModelConfig

    torch.manual_seed(0)
    model = HyperpriorVAE(ModelConfig(8, 16, 8)).eval()
    rows = measure(model, torch.rand(2, 3, 64, 64))
    assert [r["level"] for r in rows] == list(range(1, 9))
    for row in rows:
        assert math.isfinite(row["psnr_unquantized"]) and math.isfinite(row["psnr_rounded"])
        assert 0 <= row["channels_over_one_step"] <= 16
    # larger gains spread y over more quantization steps
    assert rows[-1]["smallest_channel_std"] >= rows[0]["smallest_channel_std"]


def test_model_card_commands_name_what_each_round_changed():
    from benchmarks.model_card import round_commands

    model = {"channels": 64, "latent_channels": 128, "hyper_channels": 64, "levels": 8,
             "lambdas": [0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483, 0.0932, 0.18]}
    first = {"run": "/work/main/runs/default", "config": {"steps": 100, "learning_rate": 3e-4, "patch": 128,
                                                            "batch": 8, "model": model}}
    wider = {**model, "channels": 128, "latent_channels": 192}
    second = {"run": "/work/main/runs/wide", "config": {"steps": 50, "learning_rate": 1e-4, "patch": 256, "batch": 4,
                                                         "model": wider, "init": "pretrained/mshp-n64.pt",
                                                         "level_weighting": 0.25, "clip_norm": 100.0,
                                                         "adam_epsilon": 5.886e-6, "average_steps": 1000}}
    new_run, widening = round_commands([first, second])
    assert "--channels 64 --latent-channels 128 --hyper-channels 64" in new_run and "--init" not in new_run
    assert widening == ("vaecodec train --data ../shared/datasets/train --out runs/wide --steps 50 --lr 0.0001 "
                        "--device cpu --init mshp-n64 --patch 256 --batch 4 --channels 128 --latent-channels 192 "
                        "--level-weighting 0.25 --clip-norm 100 --adam-epsilon 5.886e-06 --average-steps 1000")


def test_context_share_counts_every_channel_conditional_round():
    from benchmarks.context_share import steps_with_context

    def round_(steps, latent_codec=None):
        model = {"channels": 64} if latent_codec is None else {"channels": 64, "latent_codec": latent_codec}
        return {"steps": steps, "config": {"model": model}}

    # a hyperprior round, then the long run and its restart from the shipped export: the restart's own steps
    # are not all the steps the context networks trained
    rounds = [round_(7131), round_(7131, "hyperprior"), round_(71265, "channel-conditional"),
              round_(7615, "channel-conditional")]
    assert steps_with_context({"training": {"rounds": rounds}}) == 78880


def test_round_record_rounds_once_to_the_digits_the_model_card_shows():
    from benchmarks.rounds import round_record

    points = [{"setting": q, "bpp": bpp, "psnr": psnr}
              for q, bpp, psnr in ((1.0, 0.03684, 23.4216), (1.5, 0.05, 24.0), (8.0, 1.61349, 34.9587))]
    summary = {"codecs": {"vaecodec": {"points": points}}, "date": "2026-11-28T22:44:01",
               "vaecodec_model": {"training_rounds": 7, "hash": "37a90807"},
               "bd": {"against": {"jpeg-420": {"bd_rate_psnr_percent": -40.05369}, "webp": {}}}}
    record = round_record(summary)
    assert record["bpp"] == [0.037, 1.613] and record["psnr"] == [23.42, 34.96]
    assert record["bd_rate_psnr_percent"] == {"jpeg-420": -40.1}  # as rd.md prints it; webp had no overlap


# ---- context probe ----

TRAIN_PHOTOS = REPO.parent / "shared" / "datasets" / "train"


def test_context_probe_report_starts_every_variant_at_no_change(tmp_path):
    from click.testing import CliRunner

    from benchmarks.context_probe import REPORTED_LEVELS, VARIANTS, main

    if not TRAIN_PHOTOS.is_dir():
        pytest.skip(f"{TRAIN_PHOTOS} not present")
    out = tmp_path / "probe"
    result = CliRunner().invoke(main, ["--steps", "2", "--crops", "4", "--crop", "64", "--lrp-crop", "64",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["model"]["name"] == "mshp-n64" and len(report["model"]["hash"]) == 8
    assert report["training_crops"] == 4 and report["held_out_crops"] == 64 and report["steps"] == 2
    assert [variant["title"] for variant in report["variants"]] == list(VARIANTS)
    keys = [str(quality) for quality in REPORTED_LEVELS]
    for variant in report["variants"]:
        assert [row["step"] for row in variant["curve"]] == [0, 1, 2]
        total = "overall" if variant["measured"] == "rate_change_percent" else "mean"
        for crops in ("held_out", "training"):
            changes = variant["curve"][0][crops]
            assert set(changes) == set(keys) | {total}
            assert all(value == 0 for value in changes.values()), variant["title"]  # output layers start at zero
    assert report["own_context_networks"] is None  # the shipped hyperprior has none
    text = out.with_suffix(".md").read_text()
    assert "before any joint training" in text and all(f". {title}" in text for title in VARIANTS)


def test_context_probe_integer_corrections_are_the_coders():
    """The probe measures the integer context networks exactly as the channel-conditional coder runs them."""
    import torch

    from benchmarks import context_probe as probe
    from vaecodec.latent_codecs.channel_conditional import ChannelConditionalCoder
    from vaecodec.quality import QUALITY_INDEXES_PER_LEVEL, index_levels

    model, _ = probe.load_weights("mshp-n64")
    torch.manual_seed(0)
    variant = probe.integer_channel_context(model.config)
    for network in variant.networks:  # corrections well away from zero, as after training
        torch.nn.init.normal_(network.convs[-1].weight, std=0.02)
        torch.nn.init.normal_(network.convs[-1].bias, std=0.2)
    model.latent_codec.context = variant.networks
    coder = ChannelConditionalCoder(model.latent_codec.export_tables(index_levels()), model.config, torch.device("cpu"))
    texture = torch.nn.functional.interpolate(torch.rand(2, 3, 16, 16), size=128, mode="bicubic")
    latents = probe.analyse(model, (texture.clamp(0, 1) * 255).round().to(torch.uint8))
    for quality in (1, 5, 8):
        side = probe.hyperprior_side(model, latents, probe.at_level(len(latents), quality), torch.float64)
        mean, position = variant.means_and_positions(side, torch.float64)
        assert not torch.equal(mean, side.mean) and not torch.equal(position, side.position)
        quality_index = torch.full((len(latents),), (quality - 1) * QUALITY_INDEXES_PER_LEVEL)
        coded = coder.quantize(side.y, quality_index)
        assert torch.equal(coded.y, torch.round(side.y - mean).long())
        assert torch.equal(coded.y_table_index, torch.floor(position + 0.5).long())


@pytest.mark.parametrize("latent_codec", ["channel-conditional", "channel-checkerboard"])
def test_context_share_is_nothing_for_zero_corrections_and_something_for_trained_ones(latent_codec):
    import torch

    from benchmarks.context_share import context_share
    from vaecodec.model import VAE, ModelConfig

    torch.manual_seed(0)
    model = VAE(ModelConfig(8, 16, 8, latent_codec=latent_codec)).eval()
    with torch.no_grad():
        model.g_a[6].weight *= 100  # latents of a trained model's size, so that the corrections matter
    x = torch.rand(2, 3, 64, 64)
    untrained = context_share(model, x)  # the context networks start at zero corrections
    assert sorted(untrained["levels"]) == list(range(1, 9)) and untrained["overall_percent"] == 0
    assert untrained["spatial_percent"] == (0 if latent_codec == "channel-checkerboard" else None)
    with torch.no_grad():
        for parameter in model.latent_codec.context.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    trained_channels = context_share(model, x)
    assert trained_channels["overall_percent"] != 0
    if latent_codec == "channel-checkerboard":
        assert trained_channels["spatial_percent"] == 0  # the spatial networks still correct nothing
        with torch.no_grad():
            for parameter in model.latent_codec.spatial.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        assert context_share(model, x)["spatial_percent"] != 0


def test_context_model_report_says_how_the_context_networks_started():
    from benchmarks.context_model import start_of_context

    fresh = {"init_latent_codec": "hyperprior", "latent_codec": "channel-checkerboard"}
    assert "start at zero" in start_of_context(fresh) and "position" not in start_of_context(fresh)
    slowed = start_of_context({**fresh, "context_position_rate": 0.125})
    assert "x0.125" in slowed and "--context-position-rate" in slowed
    kept = start_of_context({"init_latent_codec": "channel-checkerboard", "latent_codec": "channel-checkerboard"})
    assert "keeps their context networks, spatial ones included" in kept
