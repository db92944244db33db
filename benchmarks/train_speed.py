"""Training throughput: steps/s and pixels/s of the real training step, fp32 against bf16 autocast.

    python -m benchmarks.train_speed --data ../shared/datasets/train [--steps 20] [--train-steps 200]
                                     [--out benchmarks/results]

1. Speed. Each configuration (width N, latents M, patch, batch, precision) builds a ``Trainer`` on a small subset of the
training photos in a temporary run folder, runs a few warm-up steps, then times ``--steps`` optimizer steps
(crop batch, forward, rate-distortion loss, backward, both optimizers: everything a run does per step except
validation and checkpoints). All configurations are measured in one run, so their ratios hold even on a busy
machine; the absolute figures do not.
2. Where the time goes: torch.profiler over a few steps of the run's configuration (n128/m192, bf16), the
   operators with the most self CPU time and their share.
3. Does bf16 train as well? From the shipped weights, ``--train-steps`` steps of the shipped recipe are run in
   fp32 and in bf16 on the same crops (same seed), and in fp32 again with another seed to show the run-to-run
   noise; each is then validated in fp32 on held-out training photos (never Kodak): per-level bpp, PSNR and
   the mean rate-distortion objective.

Writes train_speed.json and train_speed.md to --out.
"""

from __future__ import annotations

import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import torch

from benchmarks.rd import machine_info

# (label, channels N, latent channels M, patch, batch, precision, torch.compile); the first row is the reference.
CONFIGURATIONS = [
    ("shipped n64/m128, fp32", 64, 128, 256, 4, "fp32", False),
    ("shipped n64/m128, bf16", 64, 128, 256, 4, "bf16", False),
    ("shipped n64/m128, bf16, batch 8", 64, 128, 256, 8, "bf16", False),
    ("n128/m192, fp32", 128, 192, 256, 4, "fp32", False),
    ("n128/m192, bf16", 128, 192, 256, 4, "bf16", False),
    ("n128/m192, bf16, 1 thread", 128, 192, 256, 4, "bf16", False),
]
COMPILED = ("n128/m192, bf16, torch.compile", 128, 192, 256, 4, "bf16", True)  # --with-compile: slow to build


def time_configuration(files, channels, latent_channels, patch, batch, precision, compiled, steps, threads) -> dict:
    from vaecodec.model import ModelConfig
    from vaecodec.train.loop import RunConfig, Trainer

    model = ModelConfig(channels=channels, latent_channels=latent_channels).to_dict()
    with tempfile.TemporaryDirectory() as run_dir:
        config = RunConfig(data=[], model=model, patch=patch, batch=batch, precision=precision, threads=threads,
                           compile=compiled, validation_images=0, log_every=10**9, pool_steps=10**9, crops_per_image=2)
        trainer = Trainer(run_dir, config, files=files)
        try:
            for _ in range(3):  # warm-up: first pool, allocator, oneDNN primitive caches, compilation
                trainer.train_step()
            durations = []
            for _ in range(steps):
                started = time.perf_counter()
                trainer.train_step()
                durations.append(time.perf_counter() - started)
        finally:
            trainer.pool.close()
    seconds = statistics.median(durations)
    return {"seconds_per_step": round(seconds, 4), "steps_per_second": round(1 / seconds, 3),
            "pixels_per_second": round(batch * patch * patch / seconds)}


def profile_step(files, steps: int, threads: int) -> list:
    """The operators with the most self CPU time over ``steps`` bf16 steps of n128/m192, with their share."""
    from torch.profiler import ProfilerActivity, profile

    from vaecodec.model import ModelConfig
    from vaecodec.train.loop import RunConfig, Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        config = RunConfig(data=[], model=ModelConfig(128, 192).to_dict(), patch=256, batch=4, precision="bf16",
                           threads=threads, validation_images=0, log_every=10**9, pool_steps=10**9,
                           crops_per_image=2)
        trainer = Trainer(run_dir, config, files=files)
        try:
            for _ in range(2):
                trainer.train_step()
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                for _ in range(steps):
                    trainer.train_step()
        finally:
            trainer.pool.close()
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"operator": e.key, "share_percent": round(100 * e.self_cpu_time_total / total, 1),
             "calls_per_step": round(e.count / steps, 1)} for e in events[:12]]


def train_and_validate(files, init_weights, precision, seed, steps, learning_rate, threads, batch=4) -> dict:
    """Fine-tune the shipped model for ``steps`` steps of ``batch`` crops, then validate it in fp32 on the
    held-out photos."""
    from vaecodec.train.export import model_from_weights
    from vaecodec.train.loop import RunConfig, Trainer
    from vaecodec.zoo import read_weights, weights_path

    model = model_from_weights(read_weights(weights_path(init_weights))[0])
    with tempfile.TemporaryDirectory() as run_dir:
        config = RunConfig(data=[], model=model.config.to_dict(), patch=256, batch=batch, precision=precision,
                           threads=threads, seed=seed, learning_rate=learning_rate, log_every=10**9,
                           validate_every=10**9, pool_steps=10**9, crops_per_image=2, validation_images=16)
        trainer = Trainer(run_dir, config, init_state=model.state_dict(), files=files)
        try:
            started = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            seconds = time.perf_counter() - started
            validation = trainer.validate()["validation"]
        finally:
            trainer.pool.close()
    lambdas = model.config.lambdas
    objective = statistics.mean(lambdas[int(level) - 1] * 255**2 * 10 ** (-v["psnr"] / 10) + v["bpp"]
                                for level, v in validation.items())
    return {"precision": precision, "seed": seed, "batch": batch, "steps": steps, "seconds": round(seconds, 1),
            "objective": round(objective, 5), "levels": validation}


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="Training photos.")
@click.option("--steps", default=20, help="Timed steps per configuration (median reported).")
@click.option("--threads", default=2, help="Torch threads.")
@click.option("--images", default=16, help="Photos the crop pool is built from.")
@click.option("--train-steps", default=200, help="Fine-tuning steps per precision in the training check.")
@click.option("--with-compile", is_flag=True, help="Also time torch.compile (its compilation takes minutes).")
@click.option("--out", default="benchmarks/results", type=click.Path(file_okay=False))
def main(data, steps, threads, images, train_steps, with_compile, out):
    from vaecodec.train.data import list_images

    all_files = list_images([data])
    files = all_files[:images]
    rows = []
    for label, channels, latent_channels, patch, batch, precision, compiled in (
            CONFIGURATIONS + [COMPILED] * with_compile):
        row_threads = 1 if label.endswith("1 thread") else threads
        result = time_configuration(files, channels, latent_channels, patch, batch, precision, compiled, steps,
                                    row_threads)
        rows.append({"configuration": label, "channels": channels, "latent_channels": latent_channels,
                     "patch": patch, "batch": batch, "precision": precision, "compile": compiled,
                     "threads": row_threads, **result})
        click.echo(f"{label}: {result}", err=True)
    reference = rows[0]["pixels_per_second"]
    for row in rows:
        row["pixel_throughput_vs_reference"] = round(row["pixels_per_second"] / reference, 2)
    operators = profile_step(files, 4, threads)
    checks = []
    # the last run sees the same number of pixels in half the steps: the configuration the long run uses
    for precision, seed, batch in (("fp32", 0, 4), ("bf16", 0, 4), ("fp32", 1, 4), ("bf16", 0, 8)):
        checks.append(train_and_validate(all_files, "default", precision, seed, train_steps * 4 // batch, 1e-4,
                                         threads, batch))
        click.echo(f"{precision} seed {seed} batch {batch}: objective {checks[-1]['objective']}", err=True)
    report = {"date": datetime.date.today().isoformat(), "machine": machine_info(), "threads": threads,
              "torch": torch.__version__, "timed_steps": steps, "rows": rows, "profile": operators,
              "training_check": {"init": "default", "steps": train_steps, "learning_rate": 1e-4,
                                 "patch": 256, "batch": 4, "runs": checks}}
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    (out_path / "train_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Training step throughput",
        "",
        f"{report['date']}, torch {report['torch']}; median of {steps} steps after 3 "
        f"warm-up steps, all rows in one run. Reference: the first row.",
        "",
        "| configuration | threads | patch × batch | s/step | steps/s | pixels/s | × reference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['configuration']} | {row['threads']} | {row['patch']}×{row['batch']} | {row['seconds_per_step']} | "
                     f"{row['steps_per_second']} | {row['pixels_per_second']:,} | "
                     f"{row['pixel_throughput_vs_reference']} |")
    lines += ["", "## Where the time goes", "",
              "Self CPU time of the busiest operators over 4 steps of n128/m192 in bf16 (torch.profiler):", "",
              "| operator | share | calls per step |", "|---|---:|---:|"]
    lines += [f"| {o['operator']} | {o['share_percent']}% | {o['calls_per_step']} |" for o in operators]
    lines += ["", "## Does bf16 train as well?", "",
              f"{train_steps} steps from the shipped weights (lr 1e-4, patch 256 × 4), then validation in fp32 "
              f"on 16 held-out training photos (never Kodak). The second fp32 run (seed 1, other crops) shows "
              f"the run-to-run noise; the last run sees as many pixels in {train_steps // 2} steps of 8 crops. "
              f"Objective: mean over levels of λ·255²·MSE + bpp (lower is better).", "",
              "| run | seconds | objective | " + " | ".join(f"q{level} bpp / dB" for level in checks[0]["levels"])
              + " |", "|---|---:|---:|" + "---:|" * len(checks[0]["levels"])]
    for check in checks:
        cells = " | ".join(f"{v['bpp']:.4f} / {v['psnr']:.2f}" for v in check["levels"].values())
        lines.append(f"| {check['precision']}, seed {check['seed']}, {check['steps']} × {check['batch']} | "
                     f"{check['seconds']} | {check['objective']} | "
                     f"{cells} |")
    noise = abs(checks[2]["objective"] - checks[0]["objective"])
    difference = checks[1]["objective"] - checks[0]["objective"]
    lines += ["", f"bf16 − fp32 (same crops): {difference:+.5f}; fp32 seed 1 − seed 0: "
              f"{checks[2]['objective'] - checks[0]['objective']:+.5f} "
              f"({'within' if abs(difference) <= noise else 'outside'} the seed-to-seed noise); bf16 batch 8 − fp32 "
              f"batch 4 at equal pixels: {checks[3]['objective'] - checks[0]['objective']:+.5f}.", "",
              "Regenerate: `python -m benchmarks.train_speed --data ../shared/datasets/train`", ""]
    (out_path / "train_speed.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
