"""Export a training run to shipped weights: freeze the entropy models, drop optimizer state, verify.

Steps: load the run's checkpoint; fit the factorized prior's tail quantiles to convergence (cheap, no data:
the medians, which the hyper-synthesis was trained against, stay as trained); quantize h_s to integers;
build the integer frequency tables; precompute the gains of every quality index; store the float transforms
in fp16; save. Then reload the file as a ``Codec`` and check on held-out training images that real file
sizes match the model's estimated rate and that decoding reproduces the symbols exactly.
"""

import json
import math
import time
from pathlib import Path

import torch

from .. import container
from ..codec import Codec
from ..container import QUALITY_LEVELS, QUALITY_STEP
from ..entropy.tables import PRECISION
from ..integer_net import (ACTIVATION_FRAC_BITS, MEAN_GAIN_FRAC_BITS, MEAN_GAIN_UNIT, SCALE_SHIFT_UNIT,
                           WEIGHT_FRAC_BITS)
from ..model import HyperpriorVAE, ModelConfig
from ..zoo import archive_release, read_weights, save_weights
from .checkpoint import load as load_checkpoint
from .data import list_images, load_rgb, split_validation

TRANSFORM_PREFIXES = ("g_a.", "g_s.", "h_a.")


def fit_tail_quantiles(model: HyperpriorVAE, steps: int = 3000):
    """Move the lower and upper quantiles of the z prior to their targets; the medians are left alone."""
    quantiles = model.z_prior.quantiles
    optimizer = torch.optim.Adam([quantiles], lr=0.05)
    keep_median = torch.tensor([1.0, 0.0, 1.0])
    for _ in range(steps):
        optimizer.zero_grad()
        model.z_prior.quantile_loss().backward()
        quantiles.grad *= keep_median
        optimizer.step()
    return model.z_prior.quantile_loss().item()


def level_of_quality() -> torch.Tensor:
    """Zero-based (fractional) training level of each quality index."""
    return torch.tensor([index * QUALITY_STEP for index in range(QUALITY_LEVELS)], dtype=torch.float64)


def quality_gains(model: HyperpriorVAE) -> tuple:
    gain, inverse_gain = model.gains(level_of_quality().float())
    return gain[:, :, 0, 0].detach().float(), inverse_gain[:, :, 0, 0].detach().float()


def build_weights(model: HyperpriorVAE, name: str, fp16: bool, training: dict) -> dict:
    state = model.state_dict()
    dtype = torch.float16 if fp16 else torch.float32
    transforms = {k: v.to(dtype) for k, v in state.items() if k.startswith(TRANSFORM_PREFIXES)}
    gain, inverse_gain = quality_gains(model)
    z_tables = model.z_prior.export_tables(PRECISION)
    y_tables = model.y_conditional.export_tables(PRECISION)
    return {
        "name": name,
        "config": model.config.to_dict(),
        "transforms": transforms,
        "gain": gain,
        "inverse_gain": inverse_gain,
        "hyper_synthesis": model.h_s.export_integer_tables(level_of_quality()),
        "z_prior": {k: v.float() for k, v in model.z_prior.state_dict().items()},  # for --init fine-tuning
        "z_offsets": torch.from_numpy(z_tables["offsets"]),
        "z_table_low": torch.from_numpy(z_tables["table_low"]),
        "z_frequencies": torch.from_numpy(z_tables["frequencies"]),
        "y_table_low": torch.from_numpy(y_tables["table_low"]),
        "y_frequencies": torch.from_numpy(y_tables["frequencies"]),
        "training": training,
    }


def model_from_weights(weights: dict) -> HyperpriorVAE:
    """Rebuild a trainable float model from shipped weights (for ``vaecodec train --init``)."""
    model = HyperpriorVAE(ModelConfig(**weights["config"]))
    state = {k: v.float() for k, v in weights["transforms"].items()}
    state.update({f"z_prior.{k}": v for k, v in weights["z_prior"].items()})
    hyper = weights["hyper_synthesis"]
    for i, spec in enumerate(model.h_s.specs):
        state[f"h_s.convs.{i}.weight"] = hyper[f"layer{i}.weight"].double() / 2**WEIGHT_FRAC_BITS
        bias_unit = 2 ** (WEIGHT_FRAC_BITS + spec.in_frac_bits)
        state[f"h_s.convs.{i}.bias"] = hyper[f"layer{i}.bias"].double() / bias_unit
    steps_per_level = round(1 / QUALITY_STEP)
    state["h_s.level_scale_shift"] = hyper["scale_shift"][::steps_per_level].double() / (
        2**ACTIVATION_FRAC_BITS * SCALE_SHIFT_UNIT)
    state["h_s.level_log_mean_gain"] = (hyper["mean_gain"][::steps_per_level].double()
                                        / 2**MEAN_GAIN_FRAC_BITS).log() / MEAN_GAIN_UNIT
    state["log_gain"] = weights["gain"][::steps_per_level].log()
    state["log_inverse_gain"] = weights["inverse_gain"][::steps_per_level].log()
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model


def verify(codec: Codec, images: list, qualities=(1.0, 4.0, 8.0)) -> list:
    """Real size vs estimated rate, and exact symbol round trip, for each image and quality.

    ``overhead`` compares the range-coded payload with the model's estimate (how faithfully the integer
    tables and the coder realise the trained rate); ``file_overhead`` adds the container's fixed header
    (about 30 bytes), which dominates only for files of a few kilobytes.
    """
    rows = []
    for path in images:
        image = load_rgb(path)
        for quality in qualities:
            latents = codec.encode_latents(image, quality)
            data = codec.latents_to_bytes(latents)
            decoded = codec.bytes_to_latents(data)
            payload_bytes = len(container.unpack(data)[1])
            estimated_bytes = codec.estimated_bits(latents) / 8
            rows.append({
                "image": Path(path).name, "quality": quality, "bytes": len(data),
                "payload_bytes": payload_bytes, "estimated_bytes": round(estimated_bytes, 1),
                "overhead": round(payload_bytes / estimated_bytes - 1, 5),
                "file_overhead": round(len(data) / estimated_bytes - 1, 5),
                "symbols_identical": bool(decoded == latents),
            })
    return rows


def export_run(run_dir, out_path, name: str = None, fp16: bool = True, verify_images: int = 4) -> dict:
    """Export ``run_dir``'s checkpoint to ``out_path`` (a .pt file); returns a report dict."""
    run_dir, out_path = Path(run_dir), Path(out_path)
    config = json.loads((run_dir / "config.json").read_text())
    checkpoint = load_checkpoint(run_dir)
    model = HyperpriorVAE(ModelConfig(**config["model"]))
    model.load_state_dict(checkpoint["model"])
    started = time.time()
    quantile_loss = fit_tail_quantiles(model)
    name = name or out_path.stem
    # the earlier rounds: those of the release being replaced, else those of the weights the run started from
    history = _training_rounds(out_path) or _training_rounds(config.get("init"))
    history.append({"run": str(run_dir), "steps": checkpoint["step"], "config": config,
                    "hardware": config.get("hardware", ""),
                    "log_tail": _log_summary(run_dir)})
    training = {"rounds": history}
    weights = build_weights(model, name, fp16, training)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.exists():  # files written by the release being replaced must stay decodable
        archive_release(out_path)
    save_weights(weights, out_path)

    codec = Codec(*read_weights(out_path), torch.device("cpu"))
    _, held_out = split_validation(list_images(config["data"]), config.get("validation_images", 16))
    checks = verify(codec, held_out[:verify_images]) if held_out else []
    report = {
        "weights": str(out_path), "bytes": out_path.stat().st_size, "model_hash": codec.model_hash.hex(),
        "quantile_loss": quantile_loss, "export_seconds": round(time.time() - started, 1), "checks": checks,
        "max_overhead": max((c["overhead"] for c in checks), default=math.nan),
        "symbols_identical": all(c["symbols_identical"] for c in checks),
    }
    return report


def _training_rounds(weights_file) -> list:
    """The training history stored in a weights file; empty if there is no readable file."""
    if not weights_file or not Path(weights_file).exists():
        return []
    try:
        return list(read_weights(weights_file)[0].get("training", {}).get("rounds", []))
    except Exception:  # an unreadable file has no history to keep; export then starts a new one
        return []


LOG_GAP_SECONDS = 600  # a longer silence between logged steps is a stop (and a later resume), not training


def _log_summary(run_dir: Path) -> dict:
    """Training time and the held-out validations of a run, from its log.jsonl.

    ``training_seconds`` adds up the intervals between logged steps, leaving out the gaps where the run was
    stopped; ``gpu_training_seconds`` is the part of it spent in GPU rounds merged into the run (records
    marked ``"device": "cuda"``). Each validation carries the training hours at which it ran, for the model
    card's learning curve.
    """
    log = run_dir / "log.jsonl"
    if not log.exists():
        return {}
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    times = [r["time"] for r in records if "time" in r]
    seconds, gpu_seconds, previous, curve = 0.0, 0.0, None, []
    for record in records:
        if "time" in record:
            interval = record["time"] - previous if previous is not None else 0
            if 0 < interval <= LOG_GAP_SECONDS:
                seconds += interval
                if record.get("device") == "cuda":  # steps merged in from a GPU round
                    gpu_seconds += interval
            previous = record["time"]
        elif "validation" in record:
            curve.append({"step": record["step"], "hours": round(seconds / 3600, 3),
                          "gpu_hours": round(gpu_seconds / 3600, 3), "validation": record["validation"]})
    return {"logged_wall_seconds": round(times[-1] - times[0], 1) if len(times) > 1 else 0,
            "training_seconds": round(seconds, 1), "gpu_training_seconds": round(gpu_seconds, 1),
            "last_validation": curve[-1] if curve else None,
            "validations": curve}
