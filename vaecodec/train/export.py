"""Export a training run to shipped weights: freeze the entropy models, drop optimizer state, verify.

Steps: load the run's checkpoint; let the latent codec finish its training (for the hyperprior: fit the z
prior's tail quantiles to convergence, cheap and without data) and export its integer tables; precompute the
gains of every quality index; store the float transforms in fp16; save in the layout of ``weights.py``. Then reload the file as a ``Codec`` and check on held-out training images that real file
sizes match the model's estimated rate and that decoding reproduces the symbols exactly.
"""

import json
import math
import time
from pathlib import Path

import torch

from .. import container
from ..codec import Codec
from ..errors import UsageError
from ..model import VAE, ModelConfig
from ..quality import index_levels as level_of_quality  # noqa: F401 (the name tests and tools know)
from ..weights import model_of_weights as model_from_weights  # noqa: F401
from ..weights import read_weights, save_weights, weights_of_model
from ..zoo import archive_release
from .checkpoint import load as load_checkpoint
from .data import list_images, load_rgb, split_validation


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


def export_run(run_dir, out_path, name: str = None, fp16: bool = True, verify_images: int = 4,
               average: bool = False) -> dict:
    """Export ``run_dir``'s checkpoint to ``out_path`` (a .pt file); returns a report dict. ``average``
    exports the run's moving average of the weights (``average_steps``) instead of its current weights."""
    run_dir, out_path = Path(run_dir), Path(out_path)
    config = json.loads((run_dir / "config.json").read_text())
    checkpoint = load_checkpoint(run_dir)
    state = checkpoint["model"]
    if average:
        if "average" not in checkpoint:
            raise UsageError(f"{run_dir} keeps no weight average (train it with --average-steps)")
        state = {**state, **checkpoint["average"]}  # the averaged parameters over the run's current ones
    model = VAE(ModelConfig(**config["model"]))
    model.load_state_dict(state)  # runs from before the latent codecs too (model.LEGACY_PREFIXES)
    started = time.time()
    quantile_loss = model.latent_codec.finish_training()
    name = name or out_path.stem
    # the earlier rounds: those of the release being replaced, else those of the weights the run started from
    history = _training_rounds(out_path) or _training_rounds(config.get("init"))
    this_round = {"run": str(run_dir), "steps": checkpoint["step"], "config": config,
                  "hardware": config.get("hardware", ""), "log_tail": _log_summary(run_dir)}
    if history and _same_run(history[-1], this_round):
        history[-1] = this_round  # a later export of the same run: its log holds the earlier one's steps
    else:
        history.append(this_round)
    training = {"rounds": history}
    weights = weights_of_model(model, name, fp16, training)
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


def _same_run(earlier: dict, later: dict) -> bool:
    """Whether two recorded rounds are exports of one run (or of copies of it, such as the copy a shipped
    export decays in): their logs begin with the same held-out validation, step and figures. A new run, even
    from the same weights, sees other crops and validates differently."""
    first = _first_validation(earlier)
    return first is not None and first == _first_validation(later)


def _first_validation(round_record: dict):
    """(step, per-level figures) of the first held-out validation in a round's log, or None."""
    validations = (round_record.get("log_tail") or {}).get("validations")
    return (validations[0]["step"], validations[0]["validation"]) if validations else None


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
