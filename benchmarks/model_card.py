"""Write a shipped model's card ``pretrained/<name>.md`` from its weights and the committed benchmark results.

    python -m benchmarks.model_card [--model default] [--results benchmarks/results]

Every figure comes from ``rd_summary.json``, ``refine.json`` and ``speed.json`` (run ``make bench`` first) or from the
training history stored in the weights file; nothing is typed in by hand.
"""

import csv
import json
from pathlib import Path

import click

from vaecodec.latent_codecs.channel_conditional import CONTEXT_HIDDEN, SPATIAL_KERNEL, channel_groups
from vaecodec.model import LAMBDAS, ModelConfig
from vaecodec.zoo import read_weights, weights_path

CARD_CODECS = {"jpeg-420": "JPEG 4:2:0", "webp": "WebP", "avif-444": "AVIF 4:4:4", "heic-444": "HEVC intra 4:4:4"}
TRAIN_COMMAND = ("vaecodec train --data ../shared/datasets/train --out runs/default --steps {steps} "
                 "--lr {lr} --channels {n} --latent-channels {m} --hyper-channels {h} --device cpu")


def parameter_count(weights: dict) -> int:
    """Learned numbers in the weights (layout of vaecodec/weights.py); the frozen entropy tables not counted."""
    def count(value) -> int:
        if isinstance(value, dict):
            return sum(count(v) for k, v in value.items() if k not in ("offsets", "table_low", "frequencies"))
        return value.numel() if hasattr(value, "numel") else 0

    return count({k: weights[k] for k in ("transforms", "gains", "latent_codec")})


def round_commands(rounds: list) -> list:
    """The `vaecodec train` command of each training round, with the options that round changed."""
    commands = []
    previous_ladder, previous_channels, previous_latents = LAMBDAS, None, None
    for round_info in rounds:
        run = round_info["config"]
        model = run["model"]
        command = TRAIN_COMMAND.format(steps=run["steps"], lr=run["learning_rate"], n=model["channels"],
                                       m=model["latent_channels"], h=model["hyper_channels"])
        if run.get("init"):  # the width comes from the weights fine-tuned
            command = command.split(" --channels")[0] + f" --device cpu --init {Path(run['init']).stem}"
        if (run["patch"], run["batch"]) != (128, 8):
            command += f" --patch {run['patch']} --batch {run['batch']}"
        ladder = ModelConfig(**model).lambdas
        if ladder != previous_ladder:  # this round chose its own ladder
            command += " --lambdas " + ",".join(f"{v:g}" for v in ladder)
        previous_ladder = ladder
        if run.get("init") and previous_channels not in (None, model["channels"]):  # this round widened g_a, g_s
            command += f" --channels {model['channels']}"
        if run.get("init") and previous_latents not in (None, model["latent_channels"]):  # this round widened y
            command += f" --latent-channels {model['latent_channels']}"
        previous_channels, previous_latents = model["channels"], model["latent_channels"]
        if run.get("level_weighting", 0.5) != 0.5:
            command += f" --level-weighting {run['level_weighting']:g}"
        if model.get("latent_codec", "hyperprior") != "hyperprior":
            command += f" --latent-codec {model['latent_codec']}"
        if run.get("clip_norm", 1.0) != 1.0:
            command += f" --clip-norm {run['clip_norm']:g}"
        if run.get("adam_epsilon", 1e-8) != 1e-8:
            command += f" --adam-epsilon {run['adam_epsilon']:g}"
        if run.get("average_steps"):
            command += f" --average-steps {run['average_steps']}"
        if run.get("gray_fraction"):
            command += f" --gray-fraction {run['gray_fraction']:g}"
        if run.get("decay_steps") is not None:
            command += f" --decay-steps {run['decay_steps']}"
        elif run.get("decay_at", 0.85) != 0.85:
            command += f" --decay-at {run['decay_at']:g}"
        run_dir = Path(round_info["run"]).as_posix().split("/main/")[-1]
        commands.append(command.replace("--out runs/default", f"--out {run_dir}"))
    return commands


CURVE_ROWS_PER_ROUND = 8  # validations shown per round in the card (evenly spaced, always the last)


def learning_curve(rounds_trained: list) -> list:
    """Held-out validations of every round against cumulative CPU and GPU training hours.

    Each round's hours come from its log (``training_seconds``, the stops left out; rounds exported before that
    was recorded count their logged wall time); hardware naming a CPU counts as CPU, anything else as GPU, and
    within a CPU run the steps merged in from GPU rounds count as GPU hours.
    """
    points, cpu_hours, gpu_hours = [], 0.0, 0.0
    for number, round_info in enumerate(rounds_trained, start=1):
        log = round_info.get("log_tail", {}) or {}
        seconds = log.get("training_seconds", log.get("logged_wall_seconds", 0))
        merged_gpu_seconds = log.get("gpu_training_seconds", 0)  # GPU rounds merged into a CPU run
        on_gpu = "CPU" not in round_info.get("hardware", "CPU")
        curve = log.get("validations") or ([{**log["last_validation"], "hours": seconds / 3600}]
                                           if log.get("last_validation") else [])
        for point in curve:
            hours, merged = point["hours"], point.get("gpu_hours", 0)
            points.append({"round": number, "step": point["step"],
                           "cpu_hours": cpu_hours + (0 if on_gpu else hours - merged),
                           "gpu_hours": gpu_hours + (hours if on_gpu else merged),
                           "validation": point["validation"]})
        cpu_hours += 0 if on_gpu else (seconds - merged_gpu_seconds) / 3600
        gpu_hours += seconds / 3600 if on_gpu else merged_gpu_seconds / 3600
    return points


def _thinned(points: list, rows: int) -> list:
    """At most ``rows`` evenly spaced validations of each round, always ending with its last one."""
    shown = []
    for number in sorted({p["round"] for p in points}):
        of_round = [p for p in points if p["round"] == number]
        stride = max(1, -(-len(of_round) // rows))
        kept = range(0, len(of_round) - 1, stride)[:rows - 1]  # the last one is added below, once
        shown += [of_round[i] for i in kept] + [of_round[-1]]
    return shown


def learning_curve_lines(rounds_trained: list) -> list:
    points = learning_curve(rounds_trained)
    if not points:
        return []
    levels = list(points[-1]["validation"])
    lines = ["## Learning curve", "",
             "Held-out validation (16 training photos never trained on, 256×256 centre crops; model estimate of "
             "bpp from the noise-free rounded latents, PSNR of the decoded crops) per quality level, against "
             "cumulative training hours. Rounds exported before each validation was recorded show their end "
             "point only.", "",
             "| round | step | CPU h | GPU h | " + " | ".join(f"q{level} bpp / dB" for level in levels) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(levels)]
    for point in _thinned(points, CURVE_ROWS_PER_ROUND):
        cells = " | ".join(f"{point['validation'][level]['bpp']:.3f} / {point['validation'][level]['psnr']:.2f}"
                           if level in point["validation"] else "—" for level in levels)
        lines.append(f"| {point['round']} | {point['step']} | {point['cpu_hours']:.2f} | {point['gpu_hours']:.2f} | "
                     f"{cells} |")
    return lines + [""]


def summary_lines(latent_codec: str) -> list:
    if latent_codec == "channel-checkerboard":
        return ["Mean-scale hyperprior VAE (Minnen, Ballé, Toderici 2018) whose latents are coded in channel groups,",
                "each group's mean and scale corrected by an integer context network from the groups decoded",
                "before it (Minnen & Singh 2020, with ELIC's uneven groups, He et al. 2022), and each group coded in",
                "two checkerboard passes, the second corrected from the first's symbols (He et al. 2021); integer",
                "hyper-synthesis and context networks (Ballé, Johnston, Minnen 2019), gain units for variable rate",
                "(Cui et al. 2021)."]
    if latent_codec == "channel-conditional":
        return ["Mean-scale hyperprior VAE (Minnen, Ballé, Toderici 2018) whose latents are coded in channel groups,",
                "each group's mean and scale corrected by an integer context network from the groups decoded",
                "before it (Minnen & Singh 2020, with ELIC's uneven groups, He et al. 2022); integer hyper-synthesis",
                "and context networks (Ballé, Johnston, Minnen 2019), gain units for variable rate (Cui et al. 2021)."]
    return ["Mean-scale hyperprior VAE (Minnen, Ballé, Toderici 2018, no context model) with an integer",
            "hyper-synthesis (Ballé, Johnston, Minnen 2019) and gain units for variable rate (Cui et al. 2021)."]


def context_lines(latent_codec: str, latent_channels: int) -> list:
    if latent_codec not in ("channel-conditional", "channel-checkerboard"):
        return []
    groups = channel_groups(latent_channels)
    lines = [f"- y coded in {len(groups)} channel groups of {'/'.join(map(str, groups))} channels, one after another;"
             f" group 1 from h_s alone, each later group through a context network: integer conv 3×3 →"
             f" {CONTEXT_HIDDEN} → 1×1 {CONTEXT_HIDDEN} → 1×1, bounded ReLU, fed with h_s's mean and scale position"
             f" of the group and the symbols of the groups before it, giving integer corrections of the group's"
             f" mean and scale position"]
    if latent_codec == "channel-checkerboard":
        lines.append(f"- each group in two passes: its anchors (row + column even), then the other half, whose mean"
                     f" and scale position a spatial network corrects (integer conv {SPATIAL_KERNEL}×{SPATIAL_KERNEL} → {CONTEXT_HIDDEN} → 1×1"
                     f" {CONTEXT_HIDDEN} → 1×1) from the group's mean, scale position and anchor symbols")
    return lines


def _percent(value) -> str:
    return "no overlap" if value is None or value != value else f"{value:+.1f}%"


def render(name: str, weights: dict, model_hash: str, file_bytes: int, rd: dict, speed: dict,
           per_image: list, rounds: list = (), refine: dict = None) -> str:
    config = weights["config"]
    latent_codec = config.get("latent_codec", "hyperprior")
    lines = [f"# Model card: {name}", ""] + summary_lines(latent_codec) + [""]
    lines += [
        "## Architecture",
        f"- g_a: 4 × conv 5×5 stride 2 with GDN, widths 3 → {config['channels']} → {config['channels']} → "
        f"{config['channels']} → {config['latent_channels']} (y)",
        f"- g_s: the mirror image with transposed convolutions and inverse GDN",
        f"- h_a: conv 3×3, conv 5×5/2, conv 5×5/2 with ReLU, {config['hyper_channels']} channels (z)",
        f"- h_s: integer network, 3 × (conv 3×3), 2× pixel shuffle after the first two, bounded ReLU,",
        f"  12 fractional weight bits, 6 fractional activation bits; outputs a mean and a scale index per y element,",
        f"  then per quality and channel an integer scale-index shift and a fixed-point mean gain",
        *context_lines(latent_codec, config["latent_channels"]),
        "- z prior: non-parametric factorized density (filters 3,3,3), frozen to integer tables at export",
        "- y: Gaussian with 64 log-spaced scales 0.11…256, one integer table each (24-bit precision)",
        f"- parameters: {parameter_count(weights):,}; weights file {file_bytes / 2**20:.1f} MiB "
        f"(transforms fp16), hash {model_hash}",
        "- qualities 1…8 in steps of 0.25; trained λ (MSE on 0–255) of qualities 1…8: "
        + ", ".join(f"{v:.4g}" for v in ModelConfig(**config).lambdas),
        "",
        "## Training",
        "Data: `../shared/datasets/train` (753 photos: BSDS500, Urban100, Sun-Hays 80, Set14, Set5, McMaster,",
        "wallpapers), random downscale + 256 crops, random patches (size per round below) and flips; 16 images held",
        "out for validation.",
        "Never Kodak. Loss λ·255²·MSE + bpp, each crop at a random level, weighted by (λ_mid/λ)^level_weighting;",
        "Adam; the z prior's quantiles by their own Adam. Until 2026-11-29 the gradient left by that second Adam",
        "entered the clipped norm and, far larger than the main gradient, scaled every step by a constant, so the",
        "runs trained in effect unclipped (docs/notes.md); the long run went on with the same dynamics (its note",
        "below), and new runs clip the main gradient to norm 1. Rounds 1–5 ended with the learning",
        "rate ÷10 for their last 15% of steps; the long runs after them keep a constant learning rate and decay it",
        "only in a copy of the run that is exported (`--decay-steps` or `--decay-at`, in the round's configuration).",
        "",
        "| round | steps | patch × batch | learning rate | hardware | wall time | command |",
        "|---|---|---|---|---|---|---|",
    ]
    rounds_trained = weights.get("training", {}).get("rounds", [])
    for number, (round_info, command) in enumerate(zip(rounds_trained, round_commands(rounds_trained)), start=1):
        run = round_info["config"]
        wall = round_info.get("log_tail", {}).get("logged_wall_seconds", 0)
        lines.append(f"| {number} | {round_info['steps']} | {run['patch']} × {run['batch']} | "
                     f"{run['learning_rate']:g} | {round_info.get('hardware', 'CPU')} | {wall / 3600:.2f} h | "
                     f"`{command}` |")
        if run.get("notes"):
            lines.append(f"|   | note: {run['notes']} | | | | | |")
    lines += ["", "Export: `vaecodec export RUN_DIR -o pretrained/" + name + ".pt` (appends the round to the history; "
                  "a later export of the same run replaces its round).", ""]
    lines += learning_curve_lines(rounds_trained)
    if rounds:
        lines += ["Kodak after each round (from `benchmarks/results/rounds.json`, written by `python -m benchmarks.rounds`"
                  " after each full `benchmarks.rd` run):", "",
                  "| round | weights hash | bpp q1…q8 | PSNR q1…q8 (dB) | BD-rate vs JPEG 4:2:0 | vs WebP | vs HEVC 4:4:4 |",
                  "|---|---|---|---|---|---|---|"]
        for entry in rounds:
            bd = entry["bd_rate_psnr_percent"]
            lines.append(f"| {entry['round']} | {entry['model_hash']} | {entry['bpp'][0]:.3f}…{entry['bpp'][1]:.3f} | "
                         f"{entry['psnr'][0]:.2f}…{entry['psnr'][1]:.2f} | {_percent(bd.get('jpeg-420'))} | "
                         f"{_percent(bd.get('webp'))} | {_percent(bd.get('heic-444'))} |")
        lines.append("")

    points = {p["setting"]: p for p in rd["codecs"].get("vaecodec", {}).get("points", [])}
    lines += [
        f"## Kodak ({rd.get('images')} images), measured",
        f"Real file sizes, PSNR on the 8-bit RGB output, MS-SSIM (pytorch-msssim). From `{rd.get('command', 'python -m benchmarks.rd')}`"
        f" on {rd.get('machine', {}).get('cpu', 'this machine')}, {rd.get('date', '')}.",
        "",
        "| quality | bpp | PSNR (dB) | MS-SSIM | encode s | decode s |",
        "|---|---|---|---|---|---|",
    ]
    for setting in sorted(points):
        point = points[setting]
        if float(setting) != int(float(setting)):
            continue
        lines.append(f"| {float(setting):g} | {point['bpp']:.3f} | {point['psnr']:.2f} | {point['msssim']:.4f} | "
                     f"{point['encode_s']:.3f} | {point['decode_s']:.3f} |")
    kodim23 = [row for row in per_image if row["codec"] == "vaecodec" and row["image"].startswith("kodim23")]
    if kodim23:
        lines += ["", "kodim23 alone (what `vaecodec compress kodim23.png -q Q` gives):", "",
                  "| quality | bytes | bpp | PSNR (dB) |", "|---|---|---|---|"]
        for row in sorted(kodim23, key=lambda row: float(row["setting"])):
            if float(row["setting"]) == int(float(row["setting"])):
                lines.append(f"| {float(row['setting']):g} | {row['bytes']} | {float(row['bpp']):.3f} | "
                             f"{float(row['psnr']):.2f} |")
    lines += ["", "BD-rate of this model against codecs measured in the same run (negative: fewer bits for the "
              "same quality):", "", "| against | BD-rate (PSNR) | BD-rate (MS-SSIM dB) |", "|---|---|---|"]
    against = rd.get("bd", {}).get("against", {})
    for key, label in CARD_CODECS.items():
        entry = against.get(key)
        if entry:
            lines.append(f"| {label} | {_percent(entry['bd_rate_psnr_percent'])} | "
                         f"{_percent(entry['bd_rate_msssim_db_percent'])} |")
    for key, entry in against.items():
        if key not in CARD_CODECS and key in rd.get("published", {}):
            lines.append(f"| {key} (published) | {_percent(entry['bd_rate_psnr_percent'])} | "
                         f"{_percent(entry['bd_rate_msssim_db_percent'])} |")
    if refine and model_hash in refine.get("model", ""):
        plain, refined = refine["curves"]["plain"], refine["curves"]["refined"]
        lines += ["", f"## Encoder-side refinement (`--refine {refine['steps']}`), measured",
                  f"{refine['images']} Kodak images at qualities 1…8, plain and refined encoder in the same run "
                  f"(`python -m benchmarks.refine`, {refine['date']}); refined files decode with the plain decoder.",
                  "", "| against | plain encoder | refined encoder |", "|---|---|---|"]
        for label, entry in refine["bd"].items():
            lines.append(f"| {label} | {'—' if entry['plain'] is None else _percent(entry['plain'])} | "
                         f"{_percent(entry['refined'])} |")
        lines += ["", f"Encode time per Kodak image on one thread: {min(plain['encode_s']):.2f}–"
                  f"{max(plain['encode_s']):.2f} s plain, {min(refined['encode_s']):.0f}–"
                  f"{max(refined['encode_s']):.0f} s refined."]
    if speed:
        summary = speed.get("vaecodec_latency", {}).get("summary", {})
        lines += ["", "## Speed on this CPU (Kodak, median of repeats, from `python -m benchmarks.speed`)", "",
                  "| threads | encode ms | decode ms |", "|---|---|---|"]
        for label, row in sorted(summary.items()):
            lines.append(f"| {row['threads']} | {1000 * row['encode_s']:.0f} | {1000 * row['decode_s']:.0f} |")
    fp16_check = Path("benchmarks/results/fp16_check.txt")
    if fp16_check.exists():
        lines += ["", "Storing the transforms in fp16 instead of fp32 (5 Kodak images × qualities 1, 4, 8, same run "
                  f"exported both ways, `python -m benchmarks.fp16_check`): {fp16_check.read_text().strip()}."]
    lines += ["", "Regenerate: `make bench` (writes benchmarks/results/, records the round, writes this card).", ""]
    return "\n".join(lines)


@click.command()
@click.option("--model", default="default", show_default=True)
@click.option("--results", default="benchmarks/results", show_default=True, type=click.Path(file_okay=False))
def main(model, results):
    path = weights_path(model)
    weights, model_hash = read_weights(path)
    results = Path(results)
    rd = json.loads((results / "rd_summary.json").read_text())
    speed_path = results / "speed.json"
    speed = json.loads(speed_path.read_text()) if speed_path.exists() else {}
    with (results / "rd_per_image.csv").open() as file:
        per_image = list(csv.DictReader(file))
    rounds_path = results / "rounds.json"
    rounds = json.loads(rounds_path.read_text()) if rounds_path.exists() else []
    refine_path = results / "refine.json"
    refine = json.loads(refine_path.read_text()) if refine_path.exists() else None
    card = render(weights["name"], weights, model_hash.hex(), path.stat().st_size, rd, speed, per_image, rounds,
                  refine)
    card_path = path.with_suffix(".md")
    card_path.write_text(card)
    click.echo(f"wrote {card_path}")


if __name__ == "__main__":
    main()
