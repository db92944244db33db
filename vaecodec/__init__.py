"""vaecodec: a learned lossy image codec built on a mean-scale hyperprior VAE.

Data path, one module each:
    images.py (pixels) -> model.py (g_a, h_a) -> integer_net.py (h_s, exact) -> entropy/ (tables, range coding)
    -> container.py (.vae bytes) and back; refine.py optionally searches better y at encode time;
    codec.py ties them together, zoo.py loads shipped weights, targeting.py finds the quality for a file size
    or PSNR, latents.py is the exchangeable form of the quantized latents, train/ trains and exports models.

The public names below are imported on first use: ``import vaecodec`` alone loads neither torch nor numpy,
so commands that need no model (``vaecodec --help``, ``vaecodec info``) start at once.
"""

import importlib

from .container import ImageHeader

__all__ = ["Codec", "ImageHeader", "Latents", "load", "open_image"]
__version__ = "0.1.0"

_LAZY = {"Codec": ".codec", "load": ".codec", "open_image": ".images", "Latents": ".latents"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'vaecodec' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
