"""Training as a feature: a tiny model learns, resume is exact, export produces a working codec."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vaecodec
from vaecodec.model import HyperpriorVAE, ModelConfig
from vaecodec.train.export import export_run, level_of_quality, model_from_weights
from vaecodec.train.loop import RunConfig, Trainer
from vaecodec.zoo import read_weights

TRAIN = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "train" / "cset5"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Five small training photos (downscaled copies, to keep the test fast)."""
    folder = tmp_path_factory.mktemp("train")
    for path in sorted(TRAIN.glob("*.png")):
        with Image.open(path) as image:
            image.convert("RGB").resize((128, 128)).save(folder / path.name)
    return folder


def tiny_config(data_dir, steps) -> RunConfig:
    return RunConfig(data=[str(data_dir)], steps=steps, patch=64, batch=2, learning_rate=1e-3,
                     validation_images=1, validate_every=10_000, log_every=1, pool_crop=96, crops_per_image=2,
                     pool_steps=1000, threads=1, model=ModelConfig(8, 16, 8).to_dict())


def run_and_collect(trainer, stop_at=None):
    losses = []

    def progress(stats):
        losses.append(stats["loss"])
        if stop_at is not None and stats["step"] >= stop_at:
            trainer.request_stop()

    trainer.run(progress)
    return losses


def test_loss_goes_down(data_dir, tmp_path):
    losses = run_and_collect(Trainer(tmp_path / "run", tiny_config(data_dir, 40)))
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])


def test_resume_reproduces_the_uninterrupted_run(data_dir, tmp_path):
    straight_trainer = Trainer(tmp_path / "straight", tiny_config(data_dir, 12))
    straight = run_and_collect(straight_trainer)
    first = run_and_collect(Trainer(tmp_path / "interrupted", tiny_config(data_dir, 12)), stop_at=5)
    resumed_trainer = Trainer(tmp_path / "interrupted", tiny_config(data_dir, 12), resume=True)
    assert resumed_trainer.step == 5
    second = run_and_collect(resumed_trainer)
    assert len(first + second) == len(straight)
    # Same data, noise, optimizer moments and schedule: the runs agree to float32 rounding (oneDNN may pick
    # other channels_last kernels in a fresh process); a lost RNG or optimizer state would differ by far more.
    np.testing.assert_allclose(first + second, straight, rtol=1e-5)
    resumed_state = resumed_trainer.model.state_dict()
    for name, value in straight_trainer.model.state_dict().items():
        torch.testing.assert_close(resumed_state[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_a_step_does_not_depend_on_gradients_left_from_the_step_before(data_dir, tmp_path):
    """The prior's tails train on their own loss after the main step, so their gradient is still there when
    the next step clips its gradient norm. It once entered that norm: in a long run it was ~600 against a main
    norm of ~3, so every step was scaled by it, except the first step after a resume (a fresh process has no
    leftover gradient), which came out ~170x larger and set the model back by about 1000 steps."""
    trainers = [Trainer(tmp_path / name, tiny_config(data_dir, 3)) for name in ("clean", "leftover")]
    trainers[1].model.load_state_dict(trainers[0].model.state_dict())
    for parameter in trainers[1].model.latent_codec.auxiliary_parameters():
        parameter.grad = torch.full_like(parameter, 1e4)  # as large a leftover as a sharp prior gives
    for trainer in trainers:
        torch.manual_seed(0)  # the same noise in both
        trainer.train_step()
    leftover = trainers[1].model.state_dict()
    for name, value in trainers[0].model.state_dict().items():
        torch.testing.assert_close(leftover[name], value, msg=name)


def test_export_loads_and_round_trips_and_can_seed_a_new_run(data_dir, tmp_path):
    run_and_collect(Trainer(tmp_path / "run", tiny_config(data_dir, 5)))
    report = export_run(tmp_path / "run", tmp_path / "tiny.pt", verify_images=1)
    assert report["symbols_identical"] and report["checks"]
    assert "optimizer" not in read_weights(tmp_path / "tiny.pt")[0]
    codec = vaecodec.load(str(tmp_path / "tiny.pt"), device="cpu")
    image = Image.open(next(data_dir.glob("*.png")))
    decoded = codec.decompress(codec.compress(image, 3.5))
    assert decoded.size == image.size
    shipped = read_weights(tmp_path / "tiny.pt")[0]
    model = model_from_weights(shipped)
    assert torch.isfinite(model.log_gain).all()
    # the rebuilt h_s exports the shipped integers again (per-level tables at the trained levels)
    rebuilt = model.latent_codec.h_s.export_integer_tables(level_of_quality())
    for key, table in shipped["latent_codec"]["h_s"].items():
        at_trained_levels = slice(None, None, 4) if key in ("scale_shift", "mean_gain") else slice(None)
        assert torch.equal(rebuilt[key][at_trained_levels], table[at_trained_levels]), key


def test_closing_the_crop_pool_stops_its_background_build_and_batches_still_come(data_dir):
    from vaecodec.train.data import CropPool, list_images

    pool = CropPool(list_images([data_dir]), pool_crop=96, crops_per_image=2, pool_steps=2)
    generator = torch.Generator().manual_seed(0)
    first = pool.batch(0, 2, 64, generator)  # serves pool 0 and starts building pool 1 in the background
    builder = pool._next[1]
    pool.close()
    assert not builder.is_alive() and pool._next is None
    assert pool.batch(1, 2, 64, generator).shape == first.shape  # still pool 0
    assert pool.batch(2, 2, 64, generator).shape == first.shape  # pool 1, built again after the close


def test_a_gray_fraction_turns_that_share_of_crops_gray_as_the_codec_sees_gray_photos(data_dir):
    from vaecodec.images import image_to_tensor
    from vaecodec.train.data import CropPool, list_images, to_gray

    pool = CropPool(list_images([data_dir]), pool_crop=96, crops_per_image=2, pool_steps=1000)
    plain = pool.batch(0, 64, 32, torch.Generator().manual_seed(0))
    assert (plain[:, 0] != plain[:, 1]).any(dim=(1, 2)).all()  # colour photos: no crop is gray by chance
    mixed = pool.batch(0, 64, 32, torch.Generator().manual_seed(0), gray_fraction=0.25)
    gray = ((mixed[:, 0] == mixed[:, 1]) & (mixed[:, 1] == mixed[:, 2])).all(dim=2).all(dim=1)
    assert 4 <= int(gray.sum()) <= 32
    assert torch.equal(mixed[~gray], plain[~gray])  # the same crops, only some turned gray
    pool.close()
    # the gray crop is what the codec codes for the photo converted to grayscale by Pillow (within a rounding step)
    crop = (plain[:1] * 255).round().to(torch.uint8)
    pillow = image_to_tensor(Image.fromarray(crop[0].permute(1, 2, 0).numpy()).convert("L"))
    assert (to_gray(crop).float().div(255) - pillow).abs().max() <= 1 / 255 + 1e-6


def test_checkpoints_are_split_into_small_parts_and_swapped_atomically(tmp_path, monkeypatch):
    from vaecodec.train import checkpoint

    monkeypatch.setattr(checkpoint, "PART_BYTES", 100_000)
    first = {"step": 1, "weights": torch.randn(100_000)}
    checkpoint.save(first, tmp_path)
    parts = sorted(checkpoint.location(tmp_path).iterdir())
    assert len(parts) >= 4 and all(part.stat().st_size <= 100_000 for part in parts)
    second = {"step": 2, "weights": torch.randn(100_000)}
    checkpoint.save(second, tmp_path)
    # a save cut off after the old folder moved aside and before the new one moved in
    (tmp_path / checkpoint.FOLDER).rename(tmp_path / checkpoint.PREVIOUS)
    (tmp_path / checkpoint.PENDING).mkdir()
    (tmp_path / checkpoint.PENDING / "part-000").write_bytes(b"half")
    loaded = checkpoint.load(tmp_path)
    assert loaded["step"] == 2 and torch.equal(loaded["weights"], second["weights"])
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    torch.save(first, legacy / checkpoint.LEGACY)  # runs from before the split
    assert checkpoint.exists(legacy) and checkpoint.load(legacy)["step"] == 1


def test_a_run_can_choose_its_lambda_ladder_and_the_weights_keep_it(data_dir, tmp_path):
    ladder = (0.0004, 0.001, 0.0025, 0.0065, 0.017, 0.045, 0.115, 0.3)
    config = tiny_config(data_dir, 3)
    config.model = ModelConfig(8, 16, 8, lambdas=ladder).to_dict()
    run_and_collect(Trainer(tmp_path / "run", config))
    export_run(tmp_path / "run", tmp_path / "tiny.pt", verify_images=1)
    assert model_from_weights(read_weights(tmp_path / "tiny.pt")[0]).config.lambdas == ladder
    # weights from before the ladder was configurable train on CompressAI's
    assert ModelConfig(**{k: v for k, v in ModelConfig().to_dict().items() if k != "lambdas"}).lambdas[0] == 0.0018
    with pytest.raises(ValueError):
        ModelConfig(lambdas=(0.1, 0.2))


def test_the_loss_weighs_each_image_by_its_own_level_lambda():
    from vaecodec.model import rate_distortion_loss

    x = torch.zeros(2, 3, 8, 8)
    output = {"x_hat": torch.full_like(x, 0.1), "likelihoods": {"z": torch.ones(2, 1), "y": torch.ones(2, 1)}}
    ladder = (1.0, 2.0)
    loss = rate_distortion_loss(x, output, torch.tensor([0.0, 1.0]), ladder)["loss"]
    assert loss.item() == pytest.approx((1.0 + 2.0) / 2 * 255**2 * 0.01)


def test_a_new_ladder_moves_the_per_level_tables_along_their_lines_in_log_lambda():
    from vaecodec.train.ladder import resample_levels, with_lambdas

    old = (0.001, 0.002, 0.004, 0.008)
    new = (0.00025, 0.003, 0.008, 0.032)  # below, inside, on, and above the old ladder
    log_old = torch.tensor(old, dtype=torch.float64).log()

    def line(log_lambda):  # two channels, each a straight line in log lambda
        return torch.stack([0.5 * log_lambda + 1, -0.25 * log_lambda])

    table = torch.stack([line(v) for v in log_old])
    moved = resample_levels(table, old, new)
    expected = torch.stack([line(v) for v in torch.tensor(new, dtype=torch.float64).log()])
    assert torch.allclose(moved, expected, atol=1e-9)

    model = HyperpriorVAE(ModelConfig(8, 16, 8))
    per_level = model.per_level_parameters()  # the model names them; its latent codec names h_s's
    assert per_level == ("log_gain", "log_inverse_gain", "latent_codec.h_s.level_scale_shift",
                         "latent_codec.h_s.level_log_mean_gain")
    context = HyperpriorVAE(ModelConfig(8, 16, 8, latent_codec="channel-conditional"))
    assert context.per_level_parameters() == per_level  # inherited by the channel-conditional codec
    assert with_lambdas(context, (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128)).config.lambdas[0] == 0.001
    ladder = tuple(v * 0.5 for v in model.config.lambdas)
    retargeted = with_lambdas(model, ladder)
    assert retargeted.config.lambdas == ladder
    for name, value in model.state_dict().items():
        if name not in per_level:
            assert torch.equal(retargeted.state_dict()[name], value), name
    # halving every lambda lowers every level's gain (coarser quantization, fewer bits)
    assert (retargeted.log_gain.mean(1) < model.log_gain.mean(1)).all()


def test_widening_the_latents_keeps_the_reconstructions_and_trains_the_new_channels():
    from vaecodec.train.widen import with_latent_channels

    torch.manual_seed(0)
    model = HyperpriorVAE(ModelConfig(8, 16, 8)).eval()
    with torch.no_grad():  # latents of a trained model's size (an untrained g_a's are all below one step)
        model.g_a[6].weight *= 100
    widened = with_latent_channels(model, 24, calibration=torch.rand(2, 3, 64, 64)).eval()
    assert widened.config.latent_channels == 24
    x = torch.rand(2, 3, 64, 64)
    levels = torch.tensor([0.0, 7.0])
    with torch.no_grad():
        before, after = model(x, levels), widened(x, levels)
        assert torch.allclose(before["x_hat"], after["x_hat"], atol=1e-5)  # g_s reads the new channels with 0
        y = widened.analysis(x, levels)
        assert y[:, 16:].abs().sum() > 0  # ... but they carry symbols, so that its readout can learn
        hyperprior = widened.latent_codec
        z_symbols = torch.round(hyperprior.h_a(y) - hyperprior.z_codec.prior.medians[None, :, None, None])
        mean, scale_position = hyperprior.h_s(z_symbols, levels)
        old_mean, old_scale_position = model.latent_codec.h_s(z_symbols, levels)
        assert torch.equal(mean[:, :16], old_mean) and torch.equal(scale_position[:, :16], old_scale_position)
        assert torch.equal(mean[:, 16:], torch.zeros_like(mean[:, 16:]))
        # each new channel's scale follows its spread: larger at the level with the larger gain
        assert (scale_position[1, 16:].mean() > scale_position[0, 16:].mean())
    with pytest.raises(ValueError):
        with_latent_channels(model, 12, calibration=x)

    # the distortion gradient reaches g_s's readout of the new channels
    widened.train()
    (widened(x, levels)["x_hat"] - x).pow(2).mean().backward()
    assert widened.g_s[0].weight.grad[16:].abs().sum() > 0


@pytest.mark.parametrize("latent_codec", ["channel-conditional", "channel-checkerboard"])
def test_widening_a_channel_conditional_model_keeps_its_context_networks_and_adds_a_group(latent_codec):
    from vaecodec.train.widen import with_latent_channels

    torch.manual_seed(0)
    model = HyperpriorVAE(ModelConfig(8, 128, 8, latent_codec=latent_codec)).eval()
    networks = list(model.latent_codec.context) + list(model.latent_codec.spatial)
    with torch.no_grad():
        model.g_a[6].weight *= 100
        for network in networks:  # corrections of a trained model, not zero
            for parameter in network.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
    widened = with_latent_channels(model, 144, calibration=torch.rand(2, 3, 64, 64)).eval()
    assert widened.latent_codec.groups == (16, 16, 32, 64, 16)
    old_state, new_state = model.state_dict(), widened.state_dict()
    for name, value in old_state.items():
        if name.startswith(("latent_codec.context.", "latent_codec.spatial.")):
            assert torch.equal(new_state[name], value), name
    new_networks = [widened.latent_codec.context[3]] + list(widened.latent_codec.spatial[4:])
    assert len(new_networks) == (2 if latent_codec == "channel-checkerboard" else 1)
    for network in new_networks:
        assert all(p.abs().sum() == 0 for p in network.convs[-1].parameters())  # zero corrections
    x = torch.rand(2, 3, 64, 64)
    levels = torch.tensor([0.0, 7.0])
    with torch.no_grad():
        # the likelihoods are of noisy latents: the same seed draws the same noise for the first groups
        torch.manual_seed(1)
        before = model(x, levels)
        torch.manual_seed(1)
        after = widened(x, levels)
        assert torch.allclose(before["x_hat"], after["x_hat"], atol=1e-5)
        # the old channels are coded as before: same likelihoods, the new group only adds its own
        old_y, new_y = before["likelihoods"]["y"], after["likelihoods"]["y"]
        assert torch.allclose(new_y[:, :128], old_y, rtol=1e-4)


def test_widening_the_transforms_keeps_their_outputs_and_lets_the_copies_drift_apart():
    from vaecodec.train.widen import with_channels

    torch.manual_seed(0)
    model = HyperpriorVAE(ModelConfig(8, 16, 8)).eval()
    with torch.no_grad():  # pools across units, as in a trained GDN (a fresh one divides each unit by itself)
        for gdn in (*model.g_a[1::2], *model.g_s[1::2]):
            gdn.gamma.add_(0.3 * torch.rand_like(gdn.gamma))
    widened = with_channels(model, 13).eval()
    assert widened.config.channels == 13 and widened.g_a[2].weight.shape == (13, 13, 5, 5)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        y = model.g_a(x)
        assert torch.allclose(widened.g_a(x), y, rtol=1e-4, atol=1e-5 * y.abs().max())
        x_hat = model.g_s(y)
        assert torch.allclose(widened.g_s(y), x_hat, rtol=1e-4, atol=1e-5 * x_hat.abs().max())
    with pytest.raises(ValueError):
        with_channels(model, 6)

    # each new unit starts as a copy of an old one but is read with other weights, so it gets its own gradient
    filters = widened.g_a[0].weight.detach()
    copied = [next(j for j in range(8) if torch.equal(filters[i], filters[j])) for i in range(8, 13)]
    widened.train()
    (widened.g_s(widened.g_a(x)) - x).pow(2).mean().backward()
    gradient = widened.g_a[0].weight.grad
    for new_unit, old_unit in zip(range(8, 13), copied):
        assert not torch.allclose(gradient[new_unit], gradient[old_unit])


def test_train_init_can_widen_the_transforms_and_latents_of_shipped_weights(data_dir, tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    run_and_collect(Trainer(tmp_path / "run", tiny_config(data_dir, 2)))
    export_run(tmp_path / "run", tmp_path / "tiny.pt", verify_images=0)
    result = CliRunner().invoke(cli, ["train", "--data", str(data_dir), "--out", str(tmp_path / "wide"),
                                       "--init", str(tmp_path / "tiny.pt"), "--channels", "12", "--latent-channels", "24",
                                       "--steps", "2", "--patch", "64", "--batch", "2", "--threads", "1",
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = export_run(tmp_path / "wide", tmp_path / "wide.pt", verify_images=1)
    assert report["symbols_identical"]
    codec = vaecodec.load(str(tmp_path / "wide.pt"), device="cpu")
    assert (codec.config.channels, codec.config.latent_channels) == (12, 24)
    history = read_weights(tmp_path / "wide.pt")[0]["training"]["rounds"]  # the init's round, then this one
    assert [Path(r["run"]).name for r in history] == ["run", "wide"]
    image = Image.open(next(data_dir.glob("*.png")))
    assert codec.decompress(codec.compress(image, 8)).size == image.size


def test_a_data_folder_without_images_is_one_error_line_and_leaves_no_run_folder(tmp_path):
    from click.testing import CliRunner

    from vaecodec_cli.main import cli

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("no images here")
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "photos"), "--out", str(tmp_path / "run"),
                                      "--steps", "2"])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert "no training images" in result.stderr and str(tmp_path / "photos") in result.stderr
    assert not (tmp_path / "run").exists()


def test_exporting_a_run_again_replaces_its_round_and_a_new_run_adds_one(data_dir, tmp_path):
    config = tiny_config(data_dir, 4)
    config.validate_every = 2
    run_and_collect(Trainer(tmp_path / "run", config))
    export_run(tmp_path / "run", tmp_path / "tiny.pt", verify_images=0)
    # the run goes on, and a copy of it (as a shipped export's decayed copy is) is exported over the release
    resumed = tiny_config(data_dir, 6)
    resumed.validate_every = 2
    run_and_collect(Trainer(tmp_path / "run", resumed, resume=True))
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    export_run(tmp_path / "copy", tmp_path / "tiny.pt", verify_images=0)
    history = read_weights(tmp_path / "tiny.pt")[0]["training"]["rounds"]
    assert [(Path(r["run"]).name, r["steps"]) for r in history] == [("copy", 6)]
    # a new run from those weights is a round of its own
    fresh = tiny_config(data_dir, 2)
    fresh.validate_every, fresh.seed, fresh.init = 2, 1, str(tmp_path / "tiny.pt")
    run_and_collect(Trainer(tmp_path / "next", fresh))
    export_run(tmp_path / "next", tmp_path / "next.pt", verify_images=0)
    history = read_weights(tmp_path / "next.pt")[0]["training"]["rounds"]
    assert [Path(r["run"]).name for r in history] == ["copy", "next"]


def test_the_weight_average_follows_the_weights_survives_a_resume_and_is_what_export_average_ships(
        data_dir, tmp_path):
    config = tiny_config(data_dir, 6)
    config.average_steps = 4
    trainer = Trainer(tmp_path / "run", config)
    name = "g_a.0.weight"
    expected = trainer.model.state_dict()[name].clone()

    def progress(stats):  # the average, by hand: each step moves it a quarter of the way to the new weights
        expected.lerp_(trainer.model.state_dict()[name], 1 / 4)
        if stats["step"] == 3:
            trainer.request_stop()

    trainer.run(progress)
    resumed = Trainer(tmp_path / "run", config, resume=True)
    torch.testing.assert_close(resumed.averaged.average[name], expected)
    resumed.run(lambda stats: expected.lerp_(resumed.model.state_dict()[name], 1 / 4))
    assert resumed.step == 6
    torch.testing.assert_close(resumed.averaged.average[name], expected)
    assert not torch.allclose(expected, resumed.model.state_dict()[name])

    export_run(tmp_path / "run", tmp_path / "average.pt", fp16=False, verify_images=1, average=True)
    shipped = model_from_weights(read_weights(tmp_path / "average.pt")[0]).state_dict()[name]
    torch.testing.assert_close(shipped, expected)
    # a run that keeps no average says so instead of exporting its plain weights
    run_and_collect(Trainer(tmp_path / "plain", tiny_config(data_dir, 1)))
    with pytest.raises(vaecodec.errors.UsageError, match="keeps no weight average"):
        export_run(tmp_path / "plain", tmp_path / "plain.pt", verify_images=0, average=True)
    assert not (tmp_path / "plain.pt").exists()
    # such a run, resumed with an average, starts it from the weights it resumes with
    resumed = Trainer(tmp_path / "plain", config, resume=True)
    for name, value in resumed.averaged.average.items():
        torch.testing.assert_close(value, resumed.model.state_dict()[name], rtol=0, atol=0, msg=name)
