"""vaecodec: a learned lossy image codec built on a mean-scale hyperprior VAE.

Data path, one module each:
    images.py (pixels) -> model.py (g_a, h_a) -> integer_net.py (h_s, exact) -> entropy/ (tables, range coding)
    -> container.py (.vae bytes) and back; refine.py optionally searches better y at encode time;
    codec.py ties them together, zoo.py loads shipped weights,
    latents.py is the exchangeable form of the quantized latents, train/ trains and exports models.
"""

from .codec import Codec, load
from .container import ImageHeader
from .images import open_image
from .latents import Latents

__all__ = ["Codec", "ImageHeader", "Latents", "load", "open_image"]
__version__ = "0.1.0"
