"""Shipped weights: where they live, their file format, and their identity hash.

A weights file ``pretrained/<name>.pt`` holds one model; its layout is ``weights.py``'s business.
The model hash written into .vae files is the first 4 bytes of the SHA-256 of the file, so a .vae file is
only decoded by exactly the weights that wrote it. The package ships only the current models. When
``vaecodec export --force`` replaces a weights file, the release it replaces is kept, byte for byte, as
``archive/<name>-<hash>.pt`` beside it, on that machine only (pretrained/archive/ is neither packaged nor
tracked; git history keeps every shipped release). ``"<name>@<hash>"`` loads such a release from any model
folder; a file written by a release that is installed nowhere is refused with an error that names it.
"""

import hashlib
import os
import re
import shutil
from pathlib import Path

from .container import is_model_name
from .errors import ModelNotFound, printable

ALIASES = {"default": "mcc-n64"}
PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained"
MODEL_HASH = re.compile(r"[0-9a-fA-F]{8}")
ARCHIVE = "archive"  # sub-folder of a weights folder holding earlier releases, named <name>-<hash>.pt


def search_dirs() -> list:
    dirs = [Path(p) for p in os.environ.get("VAECODEC_MODEL_PATH", "").split(os.pathsep) if p]
    try:
        import vaecodec_pretrained  # installed copy of pretrained/ (non-editable installs)

        dirs.append(Path(vaecodec_pretrained.__file__).parent)
    except ImportError:
        pass
    return dirs + [PRETRAINED_DIR]


def file_hash(path: Path) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()[:4]


def weights_path(name: str) -> Path:
    """Resolve a model name, an alias like "default", "name@hash" (that exact release), or a .pt path.

    Only the .pt path form is a path; a name is looked up among the installed models, so it must be a valid
    model name (``container.MODEL_NAME``) and a hash 8 hex digits, never anything that walks the file system.
    """
    if name.endswith(".pt") and Path(name).is_file():
        return Path(name)
    base, _, wanted_hash = name.partition("@")
    base = ALIASES.get(base, base)
    if not is_model_name(base) or (wanted_hash and not MODEL_HASH.fullmatch(wanted_hash)):
        raise ModelNotFound(f"model '{printable(name)}' not found (not a model name, name@hash or .pt file)")
    for directory in search_dirs():
        candidates = [directory / f"{base}.pt"]
        if wanted_hash:
            candidates.append(directory / ARCHIVE / f"{base}-{wanted_hash}.pt")
        for candidate in candidates:
            if candidate.is_file() and (not wanted_hash or file_hash(candidate).hex() == wanted_hash.lower()):
                return candidate
    raise ModelNotFound(f"model '{name}' not found (looked in {', '.join(str(d) for d in search_dirs())})")


def installed_release(name: str, model_hash: bytes):
    """"name@hash" if those exact weights are installed (current or archived), else None. ``name`` comes from a
    file: only a valid model name is looked up."""
    if not is_model_name(name):
        return None
    reference = f"{name}@{model_hash.hex()}"
    try:
        weights_path(reference)
    except ModelNotFound:
        return None
    return reference


def release_or_default(header) -> str:
    """The installed release that wrote a file with this header, else "default" (whose codec then refuses the
    file with an error naming the release that wrote it)."""
    return installed_release(header.model_name, header.model_hash) or "default"


def archive_release(path: Path) -> Path:
    """Copy a weights file about to be replaced to archive/<name>-<hash>.pt beside it; returns the copy."""
    path = Path(path)
    target = path.parent / ARCHIVE / f"{path.stem}-{file_hash(path).hex()}.pt"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return target


def read_weights(path) -> tuple:
    """(weights dict, 4-byte model hash) of a weights file: see ``weights.py``, which owns the layout."""
    from .weights import read_weights as read

    return read(path)


def save_weights(weights: dict, path):
    from .weights import save_weights as save

    save(weights, path)


def model_type(path) -> str:
    """The latent codec type a weights file names, read without torch (for ``vaecodec info``; see
    ``weights.model_type``)."""
    from .weights import model_type as read

    return read(path)
