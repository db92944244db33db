"""Image input and output: which images we code, and the conversions to and from tensors.

Policy (documented in the README):
* RGB is coded as is. Grayscale (L, 1) is coded through the RGB model and comes back as L.
* Palette images are expanded; images with an alpha channel are accepted only when fully opaque (the alpha
  is dropped and they come back as RGB or L); transparency is refused, since the codec has no alpha plane.
* CMYK, YCbCr, LAB and HSV are converted to RGB and come back as RGB.
* 16-bit integer and floating-point single-channel images (I;16, I, F) are refused: the model is trained on
  8-bit pixels. (Pillow already reads 16-bit RGB PNG files as 8-bit RGB.)
* The EXIF orientation is applied first, so the coded pixels are the upright picture.
"""

import threading
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .container import MAX_PIXELS, MAX_SIDE
from .errors import UnsupportedImage

_TO_RGB = {"RGB", "CMYK", "YCbCr", "LAB", "HSV"}
_GRAY = {"L", "1"}
_WITH_ALPHA = {"RGBA": "RGB", "RGBa": "RGB", "LA": "L", "La": "L", "PA": "RGB"}
# warnings.catch_warnings changes process-wide state (Python < 3.14): one thread at a time in it, here.
_WARNINGS_LOCK = threading.Lock()


def _open(source) -> Image.Image:
    """Image.open with Pillow's DecompressionBombWarning raised, not printed: an image that large is over our
    own MAX_PIXELS anyway, and the user gets one error line instead of a warning on stderr before it."""
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(source)


def open_image(source) -> Image.Image:
    """Read a path (or take a PIL image) and return an upright RGB or L image, or raise UnsupportedImage."""
    if isinstance(source, Image.Image):
        return normalize_image(source)
    name = Path(source).name
    try:
        with _open(source) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
    except FileNotFoundError:
        raise UnsupportedImage(f"{source}: no such file") from None
    except IsADirectoryError:
        raise UnsupportedImage(f"{source}: is a directory") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnsupportedImage(f"{name}: too large to code ({error})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UnsupportedImage(f"{name}: cannot read image ({error.__class__.__name__}: {error})") from None
    return normalize_image(image, name)


def normalize_image(image: Image.Image, name: str = "image") -> Image.Image:
    width, height = image.size
    if width < 1 or height < 1 or width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise UnsupportedImage(f"{name}: {width}x{height} is outside the supported size range")
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in _WITH_ALPHA:
        alpha_low, _ = image.getchannel(image.getbands()[-1]).getextrema()
        if alpha_low < 255:
            raise UnsupportedImage(f"{name}: transparent images are not supported (the codec has no alpha channel)")
        return image.convert(_WITH_ALPHA[mode])
    if mode in _GRAY:
        return image.convert("L")
    if mode in _TO_RGB:
        return image.convert("RGB")
    if mode.startswith("I") or mode == "F":
        raise UnsupportedImage(f"{name}: {mode} images (16-bit or floating point) are not supported; convert to 8-bit")
    raise UnsupportedImage(f"{name}: image mode {mode} is not supported")


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1]; grayscale is replicated to three channels."""
    pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float().div_(255)


def tensor_to_image(x: torch.Tensor, mode: str) -> Image.Image:
    """(3, H, W) float in [0, 1] -> 8-bit image of ``mode`` (L takes the rounded mean of the channels)."""
    x = x.detach().float().clamp(0, 1).mul(255)
    if mode == "L":
        pixels = x.mean(0).round().to(torch.uint8).cpu().numpy()
        return Image.fromarray(pixels, "L")
    pixels = x.round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def padded_size(width: int, height: int, multiple: int) -> tuple:
    return -(-width // multiple) * multiple, -(-height // multiple) * multiple


def pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the bottom and right so both sides are multiples of ``multiple``."""
    height, width = x.shape[-2:]
    padded_width, padded_height = padded_size(width, height, multiple)
    if (padded_width, padded_height) == (width, height):
        return x
    return F.pad(x, (0, padded_width - width, 0, padded_height - height), mode="replicate")
