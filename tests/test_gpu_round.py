"""A GPU training round as one call, run here on the CPU: carry a CPU run, train, return, merge it back."""

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from tests.test_training import data_dir, run_and_collect, tiny_config  # noqa: F401 (data_dir is a fixture)
from tools.merge_gpu_round import main as merge
from tools.prepare_carry import carry_run
from vaecodec.train import checkpoint
from vaecodec.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]


def test_a_round_goes_on_from_the_carried_run_and_merges_back_into_it(data_dir, tmp_path):
    cpu_run = tmp_path / "cpu-run"
    config = tiny_config(data_dir, 3)
    config.average_steps = 4
    run_and_collect(Trainer(cpu_run, config))
    device_tree = tmp_path / "device"  # the copy of the working tree the GPU machine gets
    carry = device_tree / ".carry"
    carry_run(cpu_run, carry)
    (carry / "train").symlink_to(data_dir)
    out = tmp_path / "out"
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "DEVICE": "cpu",
                   "OUT": str(out), "NAME": "tiny", "LIMIT_S": "300"}
    result = subprocess.run(["bash", str(ROOT / "tools" / "gpu_round.sh"), "round", "--init", ".carry/init.pt",
                             "--steps", "60", "--patch", "64", "--batch", "2", "--threads", "1"],
                            cwd=device_tree, env=environment, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "symbols identical True" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "config.json", "log.jsonl", "tiny.pt"]
    assert len(list(out.rglob("*"))) - 1 <= 8  # files that come back from the machine

    merged = CliRunner().invoke(merge, [str(out), "--run", str(cpu_run), "--carry", str(carry)])
    assert merged.exit_code == 0, merged.output
    state = checkpoint.load(cpu_run)
    assert state["step"] == 3 + 60
    round_state = checkpoint.load(out)
    for key, value in round_state["model"].items():
        assert (state["model"][key] == value).all(), key
    assert "average" not in state  # the CPU run's average was of the weights before the round
    log = [json.loads(line) for line in (cpu_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("device") == "cuda"] == [3 + 50]  # logged every 50 steps
    # merging again is refused: the run is no longer at the step the round started from
    again = CliRunner().invoke(merge, [str(out), "--run", str(cpu_run), "--carry", str(carry)])
    assert again.exit_code != 0 and "went on meanwhile" in again.output
