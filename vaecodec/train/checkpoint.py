"""A run's checkpoint on disk: split into parts small enough to move between machines, replaced atomically.

A checkpoint (model, optimizer moments, step, random states) of a wide model is far larger than what some
transfers accept (16 MB per file from the GPU machines), so it is stored as ``checkpoint/part-000``,
``part-001``, ... of at most ``PART_BYTES`` each: the bytes of one ``torch.save``, cut up. A save writes a
new folder and swaps it in with renames, so an interruption at any moment leaves the previous checkpoint
or the new one, never a mix. Runs from before the split (one ``checkpoint.pt``) still load.
"""

import io
import os
import shutil
from pathlib import Path

import torch

PART_BYTES = 15 * 2**20
FOLDER, PREVIOUS, PENDING, LEGACY = "checkpoint", "checkpoint.previous", "checkpoint.pending", "checkpoint.pt"


def location(run_dir) -> Path:
    """Where the checkpoint of ``run_dir`` is (or will be)."""
    return Path(run_dir) / FOLDER


def exists(run_dir) -> bool:
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in (FOLDER, PREVIOUS, LEGACY))


def save(state: dict, run_dir):
    run_dir = Path(run_dir)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getbuffer()
    pending = run_dir / PENDING
    shutil.rmtree(pending, ignore_errors=True)
    pending.mkdir(parents=True)
    for number, start in enumerate(range(0, len(data), PART_BYTES)):
        with open(pending / f"part-{number:03d}", "wb") as part:
            part.write(data[start:start + PART_BYTES])
            part.flush()
            os.fsync(part.fileno())
    current, previous = run_dir / FOLDER, run_dir / PREVIOUS
    if current.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(current, previous)  # from here until the next rename, load() reads `previous`
    os.replace(pending, current)
    shutil.rmtree(previous, ignore_errors=True)
    (run_dir / LEGACY).unlink(missing_ok=True)


def load(run_dir, map_location="cpu") -> dict:
    run_dir = Path(run_dir)
    for name in (FOLDER, PREVIOUS):
        folder = run_dir / name
        if folder.is_dir():
            data = b"".join(part.read_bytes() for part in sorted(folder.glob("part-*")))
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    return torch.load(run_dir / LEGACY, map_location=map_location, weights_only=True)
