"""The weights file: its layout, its versions, and the one place it is read, checked and written.

A weights file ``<name>.pt`` is a plain dict of tensors, strings and numbers, saved with ``torch.save`` and
read with ``torch.load(weights_only=True)`` (no arbitrary unpickling). Version 2, what exports write:

    format         "vaecodec-weights/2"
    name           model name, written into every .vae header
    config         ModelConfig fields; ``latent_codec`` names the latent codec type ("hyperprior")
    transforms     state dicts of the analysis and synthesis transforms: g_a.*, g_s.* (fp16 floats)
    gains          {"gain", "inverse_gain"}: float32 (QUALITY_INDEXES, M), y's per-channel gains at every
                   quality index
    latent_codec   what the latent codec exported (``LatentCodec.export_tables``); for "hyperprior":
                   {"h_a": float weights, "h_s": integer tables (integer_net.py), "z": {offsets, table_low,
                   frequencies, state}, "y": {table_low, frequencies}} (latent_codecs/hyperprior.py)
    training       dict with the training history (informational)

Version 1 ("vaecodec-weights/1", the shipped mshp-n64 releases) kept the same contents in a flat layout;
``read_weights`` converts it to version 2 in memory. The file itself is never rewritten: the model hash
written into .vae files is the first 4 bytes of the SHA-256 of the file's bytes (``zoo.py``).

Reading is strict: unknown or missing entries, config fields or transform tensors are an InvalidFile, never
silently ignored. A new latent codec needs nothing here: its type name in the config selects its classes
(``latent_codecs.LATENT_CODECS``), and its own coder checks the tables it exported.

``model_type`` reads the latent codec type alone, without torch, for ``vaecodec info``: so this module
imports torch and the model only inside the functions that make tensors or modules.
"""

from __future__ import annotations

import hashlib
import os
import pickletools
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InvalidFile
from .quality import QUALITY_INDEXES, QUALITY_INDEXES_PER_LEVEL, index_levels

if TYPE_CHECKING:  # annotations only; imported where they are used
    import torch

    from .model import VAE, ModelConfig

FORMAT = "vaecodec-weights/2"
FORMAT_V1 = "vaecodec-weights/1"
KEYS = {"format", "name", "config", "transforms", "gains", "latent_codec", "training"}
KEYS_V1 = {"format", "name", "config", "transforms", "gain", "inverse_gain", "hyper_synthesis", "z_prior",
           "z_offsets", "z_table_low", "z_frequencies", "y_table_low", "y_frequencies", "training"}
TRANSFORMS = ("g_a", "g_s")


def read_weights(path) -> tuple:
    """(weights dict in the version 2 layout, 4-byte model hash) of a weights file of any version."""
    import torch

    data = Path(path).read_bytes()
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged download should read as such, not as a traceback
        raise InvalidFile(f"{path}: not a readable vaecodec weights file ({error.__class__.__name__})") from None
    if not isinstance(weights, dict) or weights.get("format") not in (FORMAT, FORMAT_V1):
        raise InvalidFile(f"{path}: not a {FORMAT} (or {FORMAT_V1}) file")
    weights = _from_v1(weights, path) if weights["format"] == FORMAT_V1 else weights
    _check_keys(weights, KEYS, path, "entries")
    _check_keys(weights["gains"], {"gain", "inverse_gain"}, path, "gains")
    model_config(weights)  # checks the config's fields
    return weights, hashlib.sha256(data).digest()[:4]


def save_weights(weights: dict, path):
    """Write a version 2 weights dict (``format`` is added), atomically."""
    import torch

    _check_keys({"format": FORMAT, **weights}, KEYS, path, "entries")
    path = Path(path)
    temporary = path.with_suffix(".pt.tmp")
    torch.save({"format": FORMAT, **weights}, temporary)
    os.replace(temporary, path)


def model_config(weights: dict) -> ModelConfig:
    from .model import ModelConfig

    try:
        return ModelConfig(**weights["config"])
    except (TypeError, ValueError) as error:
        raise InvalidFile(f"weights of model {weights.get('name')}: bad config ({error})") from None


def load_transforms(weights: dict, config: ModelConfig, device: torch.device) -> tuple:
    """(g_a, g_s) with the stored weights, on ``device``, float32 channels-last, in eval mode, frozen.

    The stored tensors are assigned to the modules (no copy), each converted once, straight to the layout
    the transforms run in (on a busy CPU every copy waits for a free core). The modules are built on the CPU,
    not under ``torch.device("meta")``: that context imports torch's compiler stack, about 1.4 s a process."""
    import torch

    from .model import analysis_transform, synthesis_transform

    transforms = weights["transforms"]
    prefixes = tuple(f"{name}." for name in TRANSFORMS)
    stray = sorted(k for k in transforms if not k.startswith(prefixes))
    if stray:
        raise InvalidFile(f"weights of model {weights['name']} have unknown transform tensors ({', '.join(stray)})")
    modules = []
    built = (analysis_transform(config), synthesis_transform(config))
    for name, module in zip(TRANSFORMS, built):
        state = {k[len(name) + 1:]: v.to(device, torch.float32, memory_format=torch.channels_last if v.dim() == 4
                                         else torch.preserve_format)
                 for k, v in transforms.items() if k.startswith(name + ".")}
        try:
            module.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:
            raise InvalidFile(f"weights of model {weights['name']}: {name} does not fit the config "
                              f"({str(error).splitlines()[0]})") from None
        modules.append(module.eval().requires_grad_(False).to(memory_format=torch.channels_last))
    return tuple(modules)


def weights_of_model(model: VAE, name: str, fp16: bool, training: dict) -> dict:
    """The version 2 weights dict of a trained model (its latent codec already prepared for export)."""
    import torch

    dtype = torch.float16 if fp16 else torch.float32
    transforms = {k: v.to(dtype) for k, v in model.state_dict().items() if k.startswith(TRANSFORMS)}
    levels = index_levels()
    gain, inverse_gain = model.gains(levels.float())
    tables = model.latent_codec.export_tables(levels)
    if "h_a" in tables:  # float weights of the encoder's hyper-analysis: stored like the transforms
        tables["h_a"] = {k: v.to(dtype) for k, v in tables["h_a"].items()}
    return {"name": name, "config": model.config.to_dict(), "transforms": transforms,
            "gains": {"gain": gain[:, :, 0, 0].detach().float(), "inverse_gain": inverse_gain[:, :, 0, 0].detach().float()},
            "latent_codec": tables, "training": training}


def model_of_weights(weights: dict) -> VAE:
    """A trainable float model from weights (to fine-tune them: ``vaecodec train --init``)."""
    from .model import VAE

    model = VAE(model_config(weights))
    state = {k: v.float() for k, v in weights["transforms"].items()}
    state["log_gain"] = weights["gains"]["gain"][::QUALITY_INDEXES_PER_LEVEL].log()
    state["log_inverse_gain"] = weights["gains"]["inverse_gain"][::QUALITY_INDEXES_PER_LEVEL].log()
    model.latent_codec.load_tables(weights["latent_codec"])
    state.update({f"latent_codec.{k}": v for k, v in model.latent_codec.state_dict().items()})
    model.load_state_dict(state)
    return model


def _from_v1(old: dict, path) -> dict:
    """The version 2 layout of a version 1 file's contents (same tensors, nested per component)."""
    import torch

    from .integer_net import MEAN_GAIN_FRAC_BITS

    _check_keys(old, KEYS_V1, path, "entries")
    hyper = dict(old["hyper_synthesis"])
    if "scale_shift" not in hyper:
        # Releases from before h_s knew the quality lack its per-quality tables; the identity tables (no
        # scale shift, mean gain 1) reproduce exactly what those weights computed.
        shape = (QUALITY_INDEXES, old["config"]["latent_channels"])
        hyper["scale_shift"] = torch.zeros(shape, dtype=torch.long)
        hyper["mean_gain"] = torch.full(shape, 2**MEAN_GAIN_FRAC_BITS, dtype=torch.long)
    transforms = old["transforms"]
    return {
        "format": FORMAT, "name": old["name"],
        "config": {**old["config"], "latent_codec": "hyperprior"},
        "transforms": {k: v for k, v in transforms.items() if not k.startswith("h_a.")},
        "gains": {"gain": old["gain"], "inverse_gain": old["inverse_gain"]},
        "latent_codec": {
            "h_a": {k[len("h_a."):]: v for k, v in transforms.items() if k.startswith("h_a.")},
            "h_s": hyper,
            "z": {"offsets": old["z_offsets"], "table_low": old["z_table_low"], "frequencies": old["z_frequencies"],
                  "state": old["z_prior"]},
            "y": {"table_low": old["y_table_low"], "frequencies": old["y_frequencies"]},
        },
        "training": old["training"],
    }


def model_type(path) -> str:
    """The latent codec type a weights file names in its config, read without torch: the strings of its
    pickled dict (``torch.save`` writes a zip holding data.pkl) are scanned, nothing is unpickled. Version 1
    files predate the entry and are all "hyperprior" (as ``_from_v1`` reads them); "unknown" when the file
    cannot be read."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
        strings = [arg for op, arg, _ in pickletools.genops(data) if isinstance(arg, str) and "UNICODE" in op.name]
    except (OSError, StopIteration, ValueError, zipfile.BadZipFile):
        return "unknown"
    if "latent_codec" in strings[:-1]:
        return strings[strings.index("latent_codec") + 1]
    return "hyperprior" if FORMAT_V1 in strings[:2] else "unknown"


def _check_keys(found: dict, expected: set, path, what: str):
    if not isinstance(found, dict) or set(found) != expected:
        have = set(found) if isinstance(found, dict) else set()
        missing, unknown = sorted(expected - have), sorted(have - expected)
        raise InvalidFile(f"{path}: weights {what} do not match the format (missing {missing or 'none'}, "
                          f"unknown {unknown or 'none'})")
