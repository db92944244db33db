"""The codecs the benchmarks compare, each behind one interface: encode a PIL image to the bytes of a
complete file, decode those bytes back to an 8-bit RGB PIL image.

Every codec runs single-threaded (the benchmarks run one image per worker process, one worker per core),
and each has a sweep of settings chosen to cover roughly 0.1-2 bpp on Kodak (mean over the 24 images),
plus three of them for `--quick` runs. Settings are the codec's own knob: quality for most, the target
bits per pixel for JPEG 2000 (OpenJPEG's rate control hits it almost exactly).

A codec whose library cannot be imported stays in the registry and reports why in `unavailable_reason()`,
so the benchmarks can list it as skipped.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
from dataclasses import dataclass
from typing import Callable

from PIL import Image, features


@dataclass(frozen=True)
class PillowCodec:
    """A codec reached through PIL.Image.save / PIL.Image.open, possibly via a plugin module."""

    name: str  # short id used in the results, e.g. "jpeg-420"
    description: str  # what a reader needs to know: library, chroma format, speed setting, threads
    pillow_format: str  # format name for Image.save / Image.open
    settings: tuple  # full sweep, in increasing rate
    quick_settings: tuple  # three of them for --quick
    setting_name: str  # what a setting is: "quality", "target bpp", ...
    save_options: Callable[[object], dict]  # setting -> keyword arguments of Image.save
    plugin: str | None = None  # module that has to be imported (and set up) first
    family: str = ""  # codecs sharing a library share a colour in the plot

    def unavailable_reason(self) -> str | None:
        try:
            _import_plugin(self.plugin)
        except ImportError as error:
            return f"{self.plugin} not installed ({error})"
        if self.plugin is None and not features.check(_PILLOW_FEATURE[self.pillow_format]):
            return f"this Pillow was built without {self.pillow_format}"
        return None

    def encode(self, image: Image.Image, setting) -> bytes:
        _import_plugin(self.plugin)
        buffer = io.BytesIO()
        image.save(buffer, self.pillow_format, **self.save_options(setting))
        return buffer.getvalue()

    def decode(self, data: bytes) -> Image.Image:
        _import_plugin(self.plugin)
        decoded = Image.open(io.BytesIO(data), formats=[self.pillow_format])
        decoded.load()  # Pillow decodes lazily: make the decoder run here, inside the timed call
        return decoded.convert("RGB")


class VaeCodec:
    """vaecodec's default model on the CPU, loaded once per process on first use."""

    name = "vaecodec"
    family = "vaecodec"
    description = "vaecodec, default model, CPU, torch threads = 1"
    settings = tuple(1 + 0.5 * step for step in range(15))  # 1, 1.5, ..., 8
    quick_settings = (1, 4, 8)
    setting_name = "quality"

    def __init__(self, model: str = "default", device: str = "cpu"):
        self.model = model
        self.device = device
        self._codec = None

    def loaded(self):
        if self._codec is None:
            import vaecodec

            self._codec = vaecodec.load(self.model, device=self.device)
        return self._codec

    def unavailable_reason(self) -> str | None:
        try:
            self.loaded()
        except Exception as error:  # anything that stops the model loading means: skip it, and say why
            return f"vaecodec.load({self.model!r}) failed: {type(error).__name__}: {error}"
        return None

    def model_identity(self) -> str:
        """Which weights produced the numbers: the model name and hash written into every .vae file."""
        codec = self.loaded()
        return f"{codec.model_name} (hash {codec.model_hash.hex()})"

    def encode(self, image: Image.Image, setting) -> bytes:
        return self.loaded().compress(image, quality=setting)

    def decode(self, data: bytes) -> Image.Image:
        return self.loaded().decompress(data).convert("RGB")


_PILLOW_FEATURE = {"JPEG": "jpg", "WEBP": "webp", "AVIF": "avif", "JPEG2000": "jpg_2000"}


def _import_plugin(module_name: str | None) -> None:
    if module_name is None:
        return
    module = importlib.import_module(module_name)
    if module_name == "pillow_heif":
        module.register_heif_opener()
        module.options.DECODE_THREADS = 1


# x265 inside libheif: libheif's default preset ("slow"), its thread pool switched off.
_X265_SINGLE_THREAD = {"x265:pools": "none", "x265:frame-threads": "1"}
AVIF_SPEED = 6  # libavif/aom speed 0 (slowest, best) .. 10; 6 is Pillow's default
WEBP_METHOD = 6  # libwebp method 0 (fastest) .. 6 (slowest, best)
JXL_EFFORT = 7  # libjxl effort 1 .. 9; 7 is libjxl's default

CODECS: dict[str, PillowCodec | VaeCodec] = {
    codec.name: codec
    for codec in (
        VaeCodec(),
        PillowCodec(
            name="jpeg-420",
            description="JPEG 4:2:0, Pillow/libjpeg-turbo, optimized Huffman tables",
            pillow_format="JPEG",
            settings=(3, 6, 10, 15, 25, 40, 60, 80, 90),
            quick_settings=(10, 40, 80),
            setting_name="quality",
            save_options=lambda q: {"quality": q, "subsampling": 2, "optimize": True},
            family="jpeg",
        ),
        PillowCodec(
            name="jpeg-444",
            description="JPEG 4:4:4, Pillow/libjpeg-turbo, optimized Huffman tables",
            pillow_format="JPEG",
            settings=(3, 6, 10, 15, 25, 40, 60, 80, 90),
            quick_settings=(10, 40, 80),
            setting_name="quality",
            save_options=lambda q: {"quality": q, "subsampling": 0, "optimize": True},
            family="jpeg",
        ),
        PillowCodec(
            name="webp",
            description=f"WebP lossy (4:2:0), Pillow/libwebp, method {WEBP_METHOD}",
            pillow_format="WEBP",
            settings=(0, 5, 15, 30, 50, 70, 80, 90),
            quick_settings=(5, 50, 90),
            setting_name="quality",
            save_options=lambda q: {"quality": q, "method": WEBP_METHOD},
            family="webp",
        ),
        PillowCodec(
            name="avif-444",
            description=f"AVIF 4:4:4, Pillow/libavif with aom, speed {AVIF_SPEED}, 1 thread",
            pillow_format="AVIF",
            settings=(5, 15, 25, 35, 50, 65, 75, 85),
            quick_settings=(15, 50, 85),
            setting_name="quality",
            save_options=lambda q: {"quality": q, "speed": AVIF_SPEED, "subsampling": "4:4:4", "max_threads": 1},
            family="avif",
        ),
        PillowCodec(
            name="heic-444",
            description="HEVC intra (HEIF) 4:4:4, pillow-heif/libheif with x265 preset slow, 1 thread",
            pillow_format="HEIF",
            settings=(5, 15, 25, 35, 45, 55, 65),
            quick_settings=(15, 35, 55),
            setting_name="quality",
            save_options=lambda q: {"quality": q, "chroma": 444, "enc_params": _X265_SINGLE_THREAD},
            plugin="pillow_heif",
            family="heic",
        ),
        PillowCodec(
            name="jxl",
            description=f"JPEG XL, pillow-jxl-plugin/libjxl, effort {JXL_EFFORT}, 1 thread",
            pillow_format="JXL",
            settings=(0, 10, 25, 40, 55, 70, 80, 90),
            quick_settings=(10, 55, 90),
            setting_name="quality",
            save_options=lambda q: {"quality": q, "effort": JXL_EFFORT, "num_threads": 1},
            plugin="pillow_jxl",
            family="jxl",
        ),
        PillowCodec(
            name="jpeg2000",
            description="JPEG 2000, Pillow/OpenJPEG, 9/7 wavelet, colour transform, rate-controlled",
            pillow_format="JPEG2000",
            settings=(0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0),
            quick_settings=(0.2, 0.75, 2.0),
            setting_name="target bpp",
            # OpenJPEG's "rates" are compression ratios against the raw 24 bits per pixel
            save_options=lambda bpp: {
                "quality_mode": "rates",
                "quality_layers": [24 / bpp],
                "irreversible": True,
                "mct": 1,
            },
            family="jpeg2000",
        ),
    )
}


def library_versions() -> dict[str, str]:
    """Versions of everything that produced or scored the numbers, 'missing' where not installed."""
    versions = {"Pillow": _distribution_version("pillow")}
    for label, feature in [
        ("libjpeg-turbo", "libjpeg_turbo"),
        ("libwebp", "webp"),
        ("libavif", "avif"),
        ("openjpeg", "jpg_2000"),
    ]:
        versions[label] = str(features.version(feature)) if features.check(feature) else "missing"
    try:
        from PIL import _avif

        versions["libavif codecs"] = _avif.codec_versions()
    except ImportError:
        pass
    versions["pillow-heif"] = _distribution_version("pillow-heif")
    try:
        import pillow_heif

        info = pillow_heif.libheif_info()
        versions["libheif"] = info["libheif"]
        versions["heif encoder"] = info["HEIF"]
        versions["heif decoder"] = ", ".join(info["decoders"].values())
    except ImportError:
        pass
    versions["pillow-jxl-plugin"] = _distribution_version("pillow-jxl-plugin")
    for distribution in ("pytorch-msssim", "torch", "numpy", "vaecodec"):
        versions[distribution] = _distribution_version(distribution)
    return versions


def _distribution_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "missing"
