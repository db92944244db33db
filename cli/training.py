"""`vaecodec train` and `vaecodec export`: training runs as a product feature."""

import json
from dataclasses import fields
from pathlib import Path

import click

from vaecodec.errors import UsageError


@click.command()
@click.option("--data", "data_dirs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of training images (repeatable). Never Kodak.")
@click.option("--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--steps", type=int, default=None, help="Total optimizer steps of the run.")
@click.option("--patch", type=int, default=None, help="Training crop size (default 128).")
@click.option("--batch", type=int, default=None, help="Crops per step (default 8).")
@click.option("--lr", "learning_rate", type=float, default=None, help="Adam learning rate (default 2e-4).")
@click.option("--threads", type=int, default=None, help="CPU threads (default 2).")
@click.option("--level-weighting", type=float, default=None,
              help="Weigh each crop's loss by (λ_mid/λ)^this (default 0.5; 0 lets the high-λ levels, whose "
                   "gradients are largest, lead the shared transforms).")
@click.option("--clip-norm", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Clip the main gradient's norm to this (default 1, which every step reaches: the gradient is "
                   "normalised; the long run uses 100, a guard against outliers only).")
@click.option("--adam-epsilon", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Adam's epsilon, in units of the clipped gradient (default 1e-8).")
@click.option("--average-steps", type=click.IntRange(min=0), default=None,
              help="Also keep a moving average of the weights over about this many steps, for `vaecodec export "
                   "--average` (default 0: none; on --resume, a run without one starts it from its weights).")
@click.option("--gray-fraction", type=float, default=None,
              help="Share of training crops turned grayscale, so gray photos learn to cost less (default 0).")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@click.option("--resume-or-start", is_flag=True,
              help="Resume --out if it holds a run, else start it with the other options (one command that "
                   "keeps a long run going: the new-run options are ignored while the run exists).")
@click.option("--precision", default=None, type=click.Choice(["auto", "bf16", "fp32"]),
              help="bf16 autocasts the transforms (about 2x faster on CPUs with AVX512-BF16 or AMX, and on "
                   "GPUs); auto (default) picks bf16 where the hardware has it.")
@click.option("--compile", "compiled", is_flag=True, default=None,
              help="Run the training forward pass through torch.compile (measure it first: "
                   "python -m benchmarks.train_speed).")
@click.option("--decay-at", type=float, default=None,
              help="Fraction of --steps after which the learning rate drops 10x (default 0.85; 1 keeps it "
                   "constant, for a run of open-ended length).")
@click.option("--decay-steps", type=click.IntRange(min=0), default=None,
              help="Train the last this many of --steps at the learning rate ÷10 instead (how a copy of a "
                   "constant-rate run is decayed for an export: --resume --steps STEP+2400 --decay-steps 2400).")
@click.option("--init", "init_weights", default=None, help="Fine-tune from shipped weights (name or .pt path).")
@click.option("--latent-codec", default=None,
              type=click.Choice(["hyperprior", "channel-conditional", "channel-checkerboard"]),
              help="Entropy model between the transforms (new runs; default: the init model's, else hyperprior). "
                   "channel-conditional from a hyperprior --init starts with zero context corrections, coding "
                   "exactly as the init model; channel-checkerboard adds a spatial context within each channel "
                   "group, also starting at zero.")
@click.option("--context-position-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Adam's step on the context networks' scale-position weights relative to their other weights "
                   "(new runs; default 1; 0.125 learned faster in docs/notes.md). With --init the networks keep "
                   "their weights: the model codes as before.")
@click.option("--channels", type=int, default=None,
              help="Width N of g_a and g_s (new runs; with --init, more than the init model's widens them, "
                   "keeping its outputs: see vaecodec/train/widen.py).")
@click.option("--latent-channels", type=int, default=None,
              help="Channels of y (new runs; with --init, more than the init model's widens it, keeping its "
                   "outputs: see vaecodec/train/widen.py).")
@click.option("--hyper-channels", type=int, default=None, help="Channels of z (new runs only).")
@click.option("--lambdas", default=None,
              help="Comma-separated λ of the 8 levels, lowest first (new runs; with --init the per-level "
                   "tables are moved to the new ladder first). Default: the init model's, else CompressAI's "
                   "0.0018…0.18.")
def train(data_dirs, run_dir, steps, patch, batch, learning_rate, threads, level_weighting, clip_norm, adam_epsilon,
          average_steps, gray_fraction, device, resume, resume_or_start, precision, compiled, decay_at,
          decay_steps, init_weights, latent_codec, context_position_rate, channels, latent_channels, hyper_channels,
          lambdas):
    """Train a variable-rate model (all 8 quality levels in one run).

    Checkpoints every few minutes and on Ctrl-C; --resume continues exactly.

    \b
    Examples:
      vaecodec train --data ../shared/datasets/train --out runs/new --steps 20000
      vaecodec train --out runs/new --resume
      vaecodec train --out runs/ship --resume --steps 52400 --decay-steps 2400
      vaecodec train --data ../shared/datasets/train --out ~/runs/long --resume-or-start \\
          --init default --steps 1000000 --decay-at 1
      vaecodec train --data ../shared/datasets/train --out runs/round2 --init default --steps 5000
      vaecodec train --data ../shared/datasets/train --out runs/cc --init default --steps 5000 \\
          --latent-codec channel-conditional
      vaecodec train --data ../shared/datasets/train --out runs/wide --init default \\
          --channels 128 --latent-channels 192
      vaecodec train --data ../shared/datasets/train --out runs/round4 --init default \\
          --lambdas 0.00015,0.00046293,0.0014287,0.0044092,0.013608,0.041996,0.12961,0.4
    """
    import torch

    from vaecodec.codec import resolve_device
    from vaecodec.model import ModelConfig
    from vaecodec.train import checkpoint
    from vaecodec.train.loop import RunConfig, Trainer

    run_path = Path(run_dir)
    overrides = {"steps": steps, "patch": patch, "batch": batch, "learning_rate": learning_rate, "threads": threads,
                 "level_weighting": level_weighting, "clip_norm": clip_norm, "adam_epsilon": adam_epsilon,
                 "average_steps": average_steps, "gray_fraction": gray_fraction, "precision": precision,
                 "decay_at": decay_at, "decay_steps": decay_steps, "compile": compiled}
    if decay_at is not None and decay_steps is not None:
        raise UsageError("--decay-at and --decay-steps both say where the learning rate drops; give one")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if decay_at is not None:  # a resumed run's saved --decay-steps would otherwise still win
        overrides["decay_steps"] = None
    init_state = None
    if resume_or_start:
        resume = checkpoint.exists(run_path)
        if resume:  # the run fixed these when it started
            lambdas = channels = latent_channels = hyper_channels = init_weights = latent_codec = None
            context_position_rate = None
    if resume:
        if latent_codec is not None:
            raise UsageError("--latent-codec is fixed when a run starts; it cannot change on --resume")
        if context_position_rate is not None:
            raise UsageError("--context-position-rate is fixed when a run starts; it cannot change on --resume")
        if lambdas is not None:
            raise UsageError("--lambdas is fixed when a run starts; it cannot change on --resume")
        if not checkpoint.exists(run_path):
            raise UsageError(f"{run_dir} has no checkpoint to resume")
        saved = json.loads((run_path / "config.json").read_text())
        config = RunConfig(**{**saved, **overrides})
        (run_path / "config.json").write_text(json.dumps({f.name: getattr(config, f.name) for f in fields(config)},
                                                          indent=2))
    else:
        if not data_dirs:
            raise UsageError("--data is required for a new run")
        if checkpoint.exists(run_path):
            raise UsageError(f"{run_dir} already holds a run: use --resume, or another --out")
        model = ModelConfig().to_dict()
        ladder = _parse_lambdas(lambdas, model["levels"]) if lambdas is not None else None
        if init_weights:
            from vaecodec.train.export import model_from_weights
            from vaecodec.train.ladder import with_lambdas
            from vaecodec.zoo import read_weights, weights_path

            path = weights_path(init_weights)
            pretrained = model_from_weights(read_weights(path)[0])
            if ladder is not None:  # start each level's tables near where the new lambda wants them
                pretrained = with_lambdas(pretrained, ladder)
            if channels is not None:
                pretrained = _with_channels(pretrained, channels)
                channels = None  # used up: the widened model carries it into the config
            if latent_channels is not None:
                pretrained = _widened(pretrained, latent_channels, data_dirs)
                latent_channels = None
            if latent_codec is not None and latent_codec != pretrained.config.latent_codec:
                pretrained = _with_latent_codec(pretrained, latent_codec)
            if context_position_rate is not None:
                pretrained = _with_context_position_rate(pretrained, context_position_rate)
                context_position_rate = None  # used up, as the widths above
            model, init_state = pretrained.config.to_dict(), pretrained.state_dict()
            overrides["init"] = str(path)
        else:
            if ladder is not None:
                model["lambdas"] = ladder
            if latent_codec is not None:
                model["latent_codec"] = latent_codec
        if context_position_rate is not None:
            model["context_position_rate"] = context_position_rate
        for key, value in (("channels", channels), ("latent_channels", latent_channels),
                           ("hyper_channels", hyper_channels)):
            if value is not None:
                if init_weights:
                    raise UsageError("--init fixes the width of z; drop --hyper-channels")
                model[key] = value
        config = RunConfig(data=[str(Path(d).resolve()) for d in data_dirs], model=model, **overrides)

    trainer = Trainer(run_path, config, device=str(resolve_device(device)), resume=resume, init_state=init_state)
    click.echo(f"run {run_dir}: step {trainer.step} of {config.steps}, {torch.get_num_threads()} threads, "
               f"device {trainer.device}", err=True)

    from .progress import TrainingStatus  # a bar on a terminal, a plain line every ~30 s in a log

    with TrainingStatus(trainer.step, config.steps) as progress:
        trainer.run(progress)
    click.echo(f"stopped at step {trainer.step}; checkpoint in {checkpoint.location(run_path)}", err=True)


def _with_channels(model, channels: int):
    from vaecodec.train.widen import with_channels

    if channels < model.config.channels:
        raise UsageError(f"--channels {channels} is fewer than the init model's {model.config.channels}; "
                         f"the transforms can only be widened")
    return with_channels(model, channels)


def _with_latent_codec(model, latent_codec: str):
    """The model with another latent codec: every parameter the two codecs share carried over, the new
    codec's own parameters as it initialises them (the channel-conditional codec: zero corrections)."""
    import dataclasses

    from vaecodec.model import VAE

    converted = VAE(dataclasses.replace(model.config, latent_codec=latent_codec))
    result = converted.load_state_dict(model.state_dict(), strict=False)
    unshared = result.missing_keys + result.unexpected_keys
    if any(not key.startswith("latent_codec.") for key in unshared):
        raise UsageError(f"--latent-codec {latent_codec}: the init model's parameters do not carry over")
    return converted


def _with_context_position_rate(model, rate: float):
    """The model with its context networks' scale-position weights parameterised for ``rate``: the same
    weights, so it codes exactly as before."""
    import dataclasses

    from vaecodec.model import VAE

    if not hasattr(model.latent_codec, "context"):
        raise UsageError(f"--context-position-rate: the init model's {model.config.latent_codec} latent codec has "
                         f"no context networks (add --latent-codec channel-conditional)")
    converted = VAE(dataclasses.replace(model.config, context_position_rate=rate))
    converted.load_state_dict(model.state_dict())
    for (_, network), (_, before) in zip(converted.latent_codec.named_context_networks(),
                                         model.latent_codec.named_context_networks()):
        network.keep_weights_of(before)
    return converted


def _widened(model, latent_channels: int, data_dirs):
    from vaecodec.train.data import list_images, validation_crops
    from vaecodec.train.widen import with_latent_channels

    if latent_channels < model.config.latent_channels:
        raise UsageError(f"--latent-channels {latent_channels} is fewer than the init model's "
                         f"{model.config.latent_channels}; latents can only be widened")
    files = list_images(data_dirs)
    if not files:
        raise UsageError("--data holds no images to calibrate the new latent channels on")
    return with_latent_channels(model, latent_channels, validation_crops(files[:: max(1, len(files) // 8)][:8]))


def _parse_lambdas(text: str, levels: int) -> list:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--lambdas: {text!r} is not a comma-separated list of numbers") from None
    if len(values) != levels or any(not v > 0 for v in values) or values != sorted(values):
        raise UsageError(f"--lambdas needs {levels} positive values in increasing order, got {text!r}")
    return values


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Weights file to write, e.g. pretrained/mshp-n64.pt")
@click.option("--name", default=None, help="Model name stored in .vae headers (default: the file stem).")
@click.option("--fp32", is_flag=True, help="Store the transforms in float32 instead of float16.")
@click.option("--verify-images", type=int, default=4, help="Held-out images checked after export.")
@click.option("-f", "--force", is_flag=True,
              help="Replace an existing weights file (its release is kept in archive/ beside it).")
@click.option("--average", is_flag=True,
              help="Export the run's moving average of the weights (a run trained with --average-steps).")
def export(run_dir, output, name, fp32, verify_images, force, average):
    """Freeze a run into shipped weights (no optimizer state) and verify them.

    \b
    Example:
      vaecodec export runs/new -o pretrained/mshp-n64.pt
    """
    from vaecodec.train import checkpoint
    from vaecodec.train.export import export_run

    if Path(output).exists() and not force:
        raise UsageError(f"{output} exists; export to a new file, or use --force to replace it (the release it "
                         f"holds is then kept in {Path(output).parent / 'archive'}, so its .vae files stay decodable)")
    if not checkpoint.exists(run_dir):
        raise UsageError(f"{run_dir} has no checkpoint")
    report = export_run(run_dir, output, name=name, fp16=not fp32, verify_images=verify_images, average=average)
    click.echo(json.dumps(report, indent=2))
    if not report["symbols_identical"] or report["max_overhead"] > 0.01:
        raise UsageError("verification failed: see the report above")
