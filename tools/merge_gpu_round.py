"""Merge a GPU round back into the CPU run it was carried from, so that one run goes on across machines.

    python tools/merge_gpu_round.py ROUND_DIR --run ../runs/cb64 [--carry .carry]

ROUND_DIR holds what ``tools/gpu_round.sh`` returned: ``checkpoint/part-*``, ``config.json``, ``log.jsonl``.
The GPU round started from ``.carry/init.pt``, the CPU run's state at the step recorded in
``.carry/init.json``. Stop the CPU run before carrying it (``make train-stop``) and keep it stopped until
this merge: the merge refuses a run whose checkpoint has moved past that step, since the GPU round did not
see those steps. The merge
  - takes the GPU round's model and optimizer moments into the run's checkpoint (the run's own random
    streams and crop pools go on), advancing the run's step by the GPU round's steps;
  - appends the GPU round's log to the run's log, steps shifted and each record marked ``"device": "cuda"``,
    so the model card counts those hours as GPU hours;
  - keeps the replaced checkpoint as ``checkpoint.before-gpu-round``.
Then ``make train`` resumes the run on the CPU.
"""

import json
import shutil
import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vaecodec.train import checkpoint  # noqa: E402


@click.command()
@click.argument("round_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--carry", default=".carry", type=click.Path(file_okay=False))
def main(round_dir, run_dir, carry):
    round_dir, run_dir = Path(round_dir), Path(run_dir)
    carried = json.loads((Path(carry) / "init.json").read_text())
    if Path(carried["run"]).resolve() != run_dir.resolve():
        raise click.ClickException(f"the GPU round was carried from {carried['run']}, not {run_dir}")
    cpu_state = checkpoint.load(run_dir)
    if cpu_state["step"] != carried["step"]:
        raise click.ClickException(f"{run_dir} is at step {cpu_state['step']}, but the GPU round started from step "
                                   f"{carried['step']}: the run went on meanwhile, so the round cannot be merged")
    gpu_state = checkpoint.load(round_dir)
    mismatched = [key for key, value in cpu_state["model"].items()
                  if key not in gpu_state["model"] or gpu_state["model"][key].shape != value.shape]
    if mismatched or len(gpu_state["model"]) != len(cpu_state["model"]):
        raise click.ClickException(f"the GPU round trained another architecture (first differing: "
                                   f"{(mismatched or ['extra parameters'])[0]})")
    merged = {**cpu_state, "step": cpu_state["step"] + gpu_state["step"], "model": gpu_state["model"],
              "optimizer": gpu_state["optimizer"], "quantile_optimizer": gpu_state["quantile_optimizer"]}
    # the run's weight average is of the weights before the round: the round's own replaces it, and without
    # one the resumed run starts its average again from the round's weights
    merged.pop("average", None)
    if "average" in gpu_state:
        merged["average"] = gpu_state["average"]
    backup = run_dir / "checkpoint.before-gpu-round"
    shutil.rmtree(backup, ignore_errors=True)
    shutil.copytree(checkpoint.location(run_dir), backup)
    checkpoint.save(merged, run_dir)
    gpu_log = round_dir / "log.jsonl"
    records = [json.loads(line) for line in gpu_log.read_text().splitlines() if line.strip()] if gpu_log.exists() else []
    with open(run_dir / "log.jsonl", "a") as log:
        for record in records:
            log.write(json.dumps({**record, "step": record["step"] + cpu_state["step"], "device": "cuda"}) + "\n")
    click.echo(f"{run_dir}: step {cpu_state['step']} -> {merged['step']} with the GPU round's weights; "
               f"{len(records)} log records added; the replaced checkpoint is in {backup}")


if __name__ == "__main__":
    main()
