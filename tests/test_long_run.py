"""The long training run: one command that starts or resumes it, bf16 steps, and its learning curve."""

import json

import torch
from click.testing import CliRunner

from benchmarks.model_card import learning_curve
from cli.main import cli
from vaecodec.model import HyperpriorVAE, ModelConfig
from vaecodec.train.export import _log_summary, export_run
from vaecodec.train.loop import RunConfig, Trainer, resolve_precision
from tests.test_training import data_dir, run_and_collect, tiny_config  # noqa: F401 (data_dir is a fixture)


def test_resume_or_start_starts_a_missing_run_then_resumes_it_ignoring_the_new_run_options(data_dir, tmp_path):
    run_and_collect(Trainer(tmp_path / "seed", tiny_config(data_dir, 2)))
    export_run(tmp_path / "seed", tmp_path / "seed.pt", verify_images=0)
    command = ["train", "--data", str(data_dir), "--out", str(tmp_path / "long"), "--resume-or-start",
               "--init", str(tmp_path / "seed.pt"), "--channels", "12", "--steps", "3", "--decay-at", "1",
               "--patch", "64", "--batch", "2", "--clip-norm", "100", "--adam-epsilon", "5e-6", "--threads", "1",
               "--device", "cpu"]
    first = CliRunner().invoke(cli, command)
    assert first.exit_code == 0, first.output
    config = json.loads((tmp_path / "long" / "config.json").read_text())
    assert config["model"]["channels"] == 12 and config["decay_at"] == 1
    assert config["clip_norm"] == 100 and config["adam_epsilon"] == 5e-6
    # the same command again resumes (widening again would fail: the run is already 12 wide) and may extend it
    second = CliRunner().invoke(cli, command[:command.index("--steps")] + ["--steps", "5"] +
                                command[command.index("--steps") + 2:])
    assert second.exit_code == 0, second.output
    assert "step 3 of 5" in second.output
    assert "stopped at step 5" in second.output
    # a copy decayed for an export states its schedule directly: the last 2 of 7 steps at lr ÷10
    decayed = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "long"), "--resume", "--steps", "7",
                                       "--decay-steps", "2", "--device", "cpu"])
    assert decayed.exit_code == 0, decayed.output
    config = RunConfig(**json.loads((tmp_path / "long" / "config.json").read_text()))
    assert [config.learning_rate_at(step) / config.learning_rate for step in (4, 5, 6)] == [1.0, 0.1, 0.1]
    both = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "long"), "--resume", "--decay-at", "1",
                                    "--decay-steps", "2"])
    assert both.exit_code != 0 and "give one" in both.output


def test_bf16_steps_keep_the_rate_terms_in_float32_and_train():
    model = HyperpriorVAE(ModelConfig(8, 16, 8))
    x = torch.rand(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(x, torch.tensor([0.0, 7.0]))
    assert all(likelihood.dtype == torch.float32 for likelihood in output["likelihoods"].values())
    assert output["x_hat"].dtype == torch.float32
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"


def test_training_hours_leave_out_the_stops_and_the_curve_splits_cpu_from_gpu_hours(tmp_path):
    records = [{"step": 50, "time": 1000.0}, {"step": 100, "time": 1100.0},
               {"step": 100, "validation": {"1": {"bpp": 0.5, "psnr": 25.0}}},
               {"step": 150, "time": 90_000.0},  # resumed the next day: the gap is no training
               {"step": 200, "time": 90_260.0},
               {"step": 200, "validation": {"1": {"bpp": 0.4, "psnr": 25.5}}}]
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    summary = _log_summary(tmp_path)
    assert summary["training_seconds"] == 360
    assert [p["hours"] for p in summary["validations"]] == [round(100 / 3600, 3), 0.1]
    rounds = [{"hardware": "2-core CPU, 2 threads", "log_tail": summary},
              {"hardware": "NVIDIA H200, mixed precision", "log_tail": summary}]
    curve = learning_curve(rounds)
    assert [(p["round"], round(p["cpu_hours"], 3), round(p["gpu_hours"], 3)) for p in curve] == [
        (1, 0.028, 0), (1, 0.1, 0), (2, 0.1, 0.028), (2, 0.1, 0.1)]


def test_the_card_shows_a_few_evenly_spaced_validations_per_round_ending_with_the_last_once():
    from benchmarks.model_card import _thinned

    for count in (1, 2, 9, 100):
        points = [{"round": 1, "step": step} for step in range(count)]
        steps = [p["step"] for p in _thinned(points, 8)]
        assert len(steps) == len(set(steps)) <= 8 and steps[0] == 0 and steps[-1] == count - 1
