"""What the trained context networks of a channel-conditional model (and the spatial networks of a checkerboard
one) take off its rate, export by export.

    python -m benchmarks.context_share WEIGHTS... [--data ../shared/datasets/train] [--out benchmarks/results/context_share]

For each weights file (a name or a .pt path): the model's estimated bits on the held-out crops that ``vaecodec
train`` validates on (256x256 centres of the 16 photos it holds out), at every level, with the context
networks' corrections and with them set to zero; the same transforms, h_s and z prior. The change says how much
of the rate the jointly trained context networks carry. For a checkerboard model the spatial networks alone are
also set to zero, which says how much of that the second pass within each group carries. It overstates what
they add against a hyperprior trained alone (h_s may have learnt to leave work to the corrections), and it is
a model estimate (the noisy likelihood of training), not file sizes. Writes OUT.json and OUT.md.
"""

import copy
import datetime
import json
from pathlib import Path

import click
import torch

from vaecodec.model import rate_distortion_loss
from vaecodec.train.data import list_images, split_validation, validation_crops
from vaecodec.train.export import model_from_weights
from vaecodec.train.loop import RunConfig
from vaecodec.zoo import read_weights, weights_path

VALIDATION_IMAGES = RunConfig.validation_images  # the photos training holds out (its default)


@torch.no_grad()
def estimated_bits(model, x: torch.Tensor, level: int, seed: int = 0) -> float:
    """Estimated bits per pixel of ``x`` at ``level`` (y and z, as training counts them), with the training
    forward's noise seeded."""
    torch.manual_seed(seed)
    levels = torch.full((len(x),), float(level))
    return rate_distortion_loss(x, model(x, levels), levels, model.config.lambdas)["bpp"].item()


def steps_with_context(weights_file: dict) -> int:
    """Training steps of every round that trained context networks (a channel-conditional model, with or without
    the checkerboard): a run restarted from a shipped export is a round of its own."""
    return sum(int(round_["steps"]) for round_ in weights_file["training"]["rounds"]
               if round_["config"].get("model", {}).get("latent_codec") in ("channel-conditional",
                                                                           "channel-checkerboard"))


def _without(model, *networks: str):
    """A copy of ``model`` whose ``networks`` (its latent codec's "context" and/or "spatial" lists) correct
    nothing."""
    copied = copy.deepcopy(model)
    for name in networks:
        for network in getattr(copied.latent_codec, name):
            network.zero_output_layer()
    return copied


def context_share(model, x: torch.Tensor) -> dict:
    """{"levels": {level: {"with", "without", "change_percent"}}, "overall_percent", "spatial_percent"}; levels
    from 1; "spatial_percent" (the spatial networks alone set to zero) is None for a model without them."""
    without = _without(model, "context", "spatial")
    levels = {}
    for level in range(model.config.levels):
        with_context, without_context = estimated_bits(model, x, level), estimated_bits(without, x, level)
        levels[level + 1] = {"with": round(with_context, 5), "without": round(without_context, 5),
                             "change_percent": round(100 * (with_context / without_context - 1), 2)}
    total_with = sum(v["with"] for v in levels.values())
    total_without = sum(v["without"] for v in levels.values())
    spatial_percent = None
    if model.latent_codec.checkerboard:
        without_spatial = _without(model, "spatial")
        total_without_spatial = sum(estimated_bits(without_spatial, x, level) for level in range(model.config.levels))
        spatial_percent = round(100 * (total_with / total_without_spatial - 1), 2)
    return {"levels": levels, "overall_percent": round(100 * (total_with / total_without - 1), 2),
            "spatial_percent": spatial_percent}


def _markdown(report: dict) -> str:
    levels = sorted(report["models"][0]["levels"], key=int)
    lines = ["# Context networks' share of the rate, export by export", "",
             f"{report['date'][:10]}. Each model's estimated bits on the held-out crops (256x256 centres of the "
             f"{VALIDATION_IMAGES} photos training holds out, all levels) with its context networks' corrections, "
             "against the same model with the corrections set to zero. Negative: the contexts save that much. A "
             "model estimate (training's noisy likelihood), not file sizes; it overstates what the contexts add "
             "against a hyperprior trained alone, since h_s may leave work to them. Last column: a checkerboard "
             "model's spatial networks alone set to zero (part of the overall change).", "",
             "| model | steps with context networks | " + " | ".join(f"level {v}" for v in levels)
             + " | overall | spatial networks |",
             "|---|---:|" + "---:|" * (len(levels) + 2)]
    for model in report["models"]:
        cells = [f"{model['levels'][v]['change_percent']:+.2f}%" for v in levels]
        spatial = model.get("spatial_percent")
        lines.append(f"| {model['model']} | {model['steps']:,} | " + " | ".join(cells)
                     + f" | **{model['overall_percent']:+.2f}%** | "
                     + ("—" if spatial is None else f"{spatial:+.2f}%") + " |")
    lines += ["", f"Regenerate: `{report['command']}`", ""]
    return "\n".join(lines)


@click.command()
@click.argument("weights", nargs=-1, required=True)
@click.option("--data", type=click.Path(exists=True, file_okay=False), default="../shared/datasets/train",
              show_default=True, help="Training folder (its held-out photos are measured).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("benchmarks/results/context_share"), show_default=True)
def main(weights, data, threads, out):
    torch.set_num_threads(threads)
    _, held_out = split_validation(list_images([data]), VALIDATION_IMAGES)
    x = validation_crops(held_out)
    models = []
    for name in weights:
        path = weights_path(name)
        weights_file = read_weights(path)[0]
        model = model_from_weights(weights_file).eval()
        if not hasattr(model.latent_codec, "context"):
            raise click.UsageError(f"{name}: not a channel-conditional model")
        result = context_share(model, x)
        models.append({"model": f"{weights_file['name']} ({Path(path).name})",
                       "steps": steps_with_context(weights_file), **result})
        spatial = "" if result["spatial_percent"] is None else f" (spatial {result['spatial_percent']:+.2f}%)"
        click.echo(f"{Path(path).name}: {result['overall_percent']:+.2f}%{spatial}", err=True)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "models": models,
              "weights": list(weights), "command": "python -m benchmarks.context_share " + " ".join(weights)}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(_markdown(report))


if __name__ == "__main__":
    main()
