"""Fixtures shared by the test modules."""

import os
from pathlib import Path

import pytest
from PIL import Image

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"

# The vaecodec commands the tests start run in their own processes, never through a `vaecodec server` that the
# developer may have running (tests/test_server.py starts servers of its own and lifts this).
os.environ.setdefault("VAECODEC_NO_SERVER", "1")


@pytest.fixture
def small_png(tmp_path) -> Path:
    """A 96x64 RGB crop of Kodak image 23 as tmp_path/photo.png: real content, yet quick to code."""
    path = tmp_path / "photo.png"
    Image.open(KODAK / "kodim23.png").convert("RGB").crop((300, 100, 396, 164)).save(path)
    return path
