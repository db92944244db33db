"""The codec users call: images -> latents -> bytes -> latents -> images.

``Codec`` is the transforms + one latent codec + the container + batching. The float transforms (g_a, g_s)
run on the chosen device; the latent codec (``latent_codecs/``, its coding side) turns y into integer symbols,
codes them and gives y_hat back, and everything in it that feeds the range coder is integer. Batches are formed from images of the same padded size, so an image
codes to the same bytes alone or in a batch. ``refine_steps`` > 0 adds encoder-side latent refinement
(``refine.py``) between the analysis and the rounding of y; the decoder never needs to know.
"""

import collections
import functools
import itertools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import constriction
import numpy as np
import torch

from . import container
from .container import DEFAULT_MAX_PIXELS, ImageHeader
from .entropy.coder import decode_exactly
from .errors import InvalidFile, ModelMismatch, UsageError
from .images import image_to_tensor, open_image, pad, padded_size, tensor_to_image
from .latent_codecs import Symbols, coding_class
from .latents import Latents
from .model import STRIDE
from .quality import DEFAULT_QUALITY, coded_quality_index, index_to_level, quality_to_index
from .refine import level_lambda, refine_tiled
from .tiling import TILE_UNITS, run_tiled, tiles
from .weights import load_transforms, model_config, read_weights
from .zoo import installed_release, weights_path

Y_STRIDE = 16  # downsampling of y; z is at STRIDE


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"unknown device '{device}' (use cpu, cuda or auto)")
    return torch.device(device)


@dataclass
class Timings:
    """Seconds spent so far, split so the bottleneck is visible (entropy coding runs in worker threads
    during batches, so the parts can add up to more than the wall time)."""

    transform: float = 0.0  # g_a, h_a, g_s
    entropy: float = 0.0  # range coding; decoding includes the integer h_s that gives it its tables (the
    # encoder has them from quantizing, counted in transform)

    def __post_init__(self):
        self._lock = threading.Lock()

    def add(self, part: str, seconds: float) -> None:
        with self._lock:  # worker threads add concurrently
            setattr(self, part, getattr(self, part) + seconds)


def load(name: str = "default", device: str = "auto") -> "Codec":
    """Load shipped weights by name (or alias, or path to a .pt file) onto a device ("cpu", "cuda", "auto")."""
    weights, model_hash = read_weights(weights_path(name))
    return Codec(weights, model_hash, resolve_device(device))


class Releases:
    """The codec for each file: the codec of the release that wrote it, one added or else that installed release
    (an earlier default model, say), loaded once on ``device``. A file of a release installed nowhere gets the
    first codec held (the default model if none), which refuses it with an error naming that release."""

    def __init__(self, *codecs: "Codec", device: str = "auto"):
        self.device = device
        self._codecs = {}
        self._default = None  # the default model, once something needed it
        self._lock = threading.Lock()
        for codec in codecs:
            self.add(codec)

    def add(self, codec: "Codec") -> None:
        """Decode the files ``codec``'s weights wrote with ``codec`` itself."""
        with self._lock:
            self._codecs[(codec.model_name, codec.model_hash)] = codec

    def for_header(self, header: ImageHeader) -> "Codec":
        key = (header.model_name, header.model_hash)
        with self._lock:
            if key not in self._codecs:
                release = installed_release(*key)
                if release is not None:
                    self._codecs[key] = load(release, self.device)
                elif not self._codecs:  # the default model, to refuse the file by name
                    self._load_default()
            return self._codecs.get(key) or next(iter(self._codecs.values()))

    def default(self) -> "Codec":
        """The default model, loaded once however often it is asked for here or by ``for_header``."""
        with self._lock:
            return self._load_default()

    def _load_default(self) -> "Codec":
        if self._default is None:
            self._default = load("default", self.device)
            self._codecs.setdefault((self._default.model_name, self._default.model_hash), self._default)
        return self._default


class Codec:
    def __init__(self, weights: dict, model_hash: bytes, device: torch.device):
        """From a weights dict as ``weights.read_weights`` gives it (checked strictly there and here)."""
        self.model_name = weights["name"]
        self.model_hash = model_hash
        self.device = device
        self.config = model_config(weights)
        self.g_a, self.g_s = load_transforms(weights, self.config, device)
        self.latent_codec = coding_class(self.config.latent_codec)(weights["latent_codec"], self.config, device)
        self.gain = weights["gains"]["gain"].float().to(device)
        self.inverse_gain = weights["gains"]["inverse_gain"].float().to(device)
        self.training_info = weights.get("training", {})
        self.timings = Timings()
        # Called as on_progress(what, done, total) while an image is coded: tiles of a large image, steps of
        # refinement. For progress displays; it must be quick and must not touch the codec.
        self.on_progress = None

    # -- shapes -----------------------------------------------------------------------------------------------
    def latent_shapes(self, width: int, height: int) -> Symbols:
        """Shapes (channels, height, width) of an image's z and y symbols."""
        padded_width, padded_height = padded_size(width, height, STRIDE)
        return self.latent_codec.symbol_shapes(
            (self.config.latent_channels, padded_height // Y_STRIDE, padded_width // Y_STRIDE))

    def _check_model(self, header: ImageHeader, what: str):
        if header.model_hash != self.model_hash or header.model_name != self.model_name:
            written_by = f"{header.model_name}@{header.model_hash.hex()}"  # a valid name: the container checked it
            loaded = f"{self.model_name}@{self.model_hash.hex()}"
            release = installed_release(header.model_name, header.model_hash)
            if release:
                raise ModelMismatch(f"{what} was written by model {written_by}, not the loaded {loaded}; decode it "
                                    f"with --model {release} (vaecodec.load('{release}'))")
            raise ModelMismatch(f"{what} was written by model {written_by}, which is not installed (the loaded model "
                                f"is {loaded}): install the vaecodec release that ships it, or put its weights file "
                                f"in a folder on VAECODEC_MODEL_PATH")

    # -- transforms (batched) ---------------------------------------------------------------------------------
    def _per_image(self, transform, *batched):
        """Run a batched transform; on the CPU one image at a time.

        oneDNN chooses kernels by batch size, and their last-bit float differences can flip a rounded y symbol
        or an output pixel. Running images singly keeps the bytes and pixels independent of the batch size;
        on a CPU, batching the transforms was measured no faster (see benchmarks/results/speed.md).
        """
        if self.device.type == "cuda":
            return transform(*batched)
        outputs = [transform(*(tensor[i:i + 1] for tensor in batched)) for i in range(len(batched[0]))]
        if isinstance(outputs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outputs))
        return torch.cat(outputs)

    def _reporting(self, transform, what: str, units: tuple, per_tile: int = 1):
        """``transform``, reporting each call to ``on_progress`` as done out of the calls that ``run_tiled`` or
        ``refine_tiled`` make over a y grid of ``units`` (height, width): one per tile, times ``per_tile``.
        ``what`` names the work ("analysis"); " tile" is added when the image is tiled, unless ``per_tile``
        already counts steps."""
        if self.on_progress is None:
            return transform
        tile_count = sum(1 for _ in tiles(*units)) if max(units) > TILE_UNITS else 1
        total = per_tile * tile_count
        if tile_count > 1 and per_tile == 1:
            what += " tile"
        done = 0
        self.on_progress(what, done, total)

        def reported(*args):
            nonlocal done
            result = transform(*args)
            done += 1
            self.on_progress(what, done, total)
            return result

        return reported

    @torch.no_grad()  # not inference_mode: refinement needs autograd on tensors made here
    def _analyse(self, x: torch.Tensor, quality_index: torch.Tensor, sizes: torch.Tensor, refine_steps: int = 0):
        """Padded images (B, 3, H, W) of the given (height, width) sizes -> z symbols, y symbols, y table index
        (int64, CPU; see ``_quantize``)."""
        x = self._on_device(x)
        return self._quantize(x, self._analysis(x), quality_index, sizes, refine_steps)

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":  # pinned host memory lets the copy overlap with queued GPU work
            x = x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device).contiguous(memory_format=torch.channels_last)

    def _analysis(self, x: torch.Tensor) -> torch.Tensor:
        """g_a of padded images on the device, before any quality's gain: one run serves every quality."""
        g_a = self._reporting(self.g_a, "analysis", (x.shape[-2] // Y_STRIDE, x.shape[-1] // Y_STRIDE))
        return run_tiled(g_a, x, Y_STRIDE, 1)

    def _quantize(self, x: torch.Tensor, y: torch.Tensor, quality_index: torch.Tensor, sizes: torch.Tensor,
                  refine_steps: int = 0):
        """``_analysis`` output at the given quality indexes -> z symbols, y symbols and the index of the table
        each y symbol is coded with (the latent codec's ``Quantized``, int64 on the CPU): an image's rows of the
        last go to ``_pack`` with its latents, so the entropy coder need not derive them again. ``x`` (the
        padded images on the device) is needed only for refinement."""
        y = y * self.gain[quality_index][:, :, None, None]
        refine = None
        if refine_steps > 0:
            def refine(y, rate):
                return torch.cat([self._refine(x[i:i + 1], y[i:i + 1], rate.window(slice(i, i + 1)),
                                               int(quality_index[i]), sizes[i], refine_steps) for i in range(len(y))])
        quantized = self.latent_codec.quantize(y, quality_index, refine)
        return tuple(part.cpu() for part in quantized)

    def _refine(self, x, y, rate, quality_index: int, size, steps: int) -> torch.Tensor:
        """One image's y after ``steps`` of encoder-side refinement (refine.py) against the latent codec's rate."""
        height, width = (int(v) for v in size)
        pixel_mask = torch.zeros((1, 1) + x.shape[-2:], device=x.device)
        pixel_mask[..., :height, :width] = 1
        lam = level_lambda(self.config.lambdas, index_to_level(quality_index))
        inverse_gain = self.inverse_gain[quality_index][None, :, None, None]
        g_s = self._reporting(self.g_s, "refinement step", tuple(y.shape[-2:]), per_tile=steps)
        return refine_tiled(g_s, x, y, rate, inverse_gain, lam, steps, pixel_mask, Y_STRIDE)

    @torch.inference_mode()
    def _synthesize(self, z_symbols: torch.Tensor, y_symbols: torch.Tensor, quality_index: torch.Tensor):
        y_hat = self.latent_codec.dequantize(Symbols(z_symbols, y_symbols), quality_index)
        y_hat = y_hat * self.inverse_gain[quality_index][:, :, None, None]
        g_s = self._reporting(self.g_s, "synthesis", tuple(y_hat.shape[-2:]))
        return run_tiled(g_s, y_hat.contiguous(memory_format=torch.channels_last), 1, Y_STRIDE).float()

    # -- entropy coding (one image) ---------------------------------------------------------------------------
    def _entropy_encode(self, latents: Latents, y_table_index=None) -> bytes:
        """``y_table_index``: the image's rows of ``_quantize``'s, if known (None derives them; same bytes)."""
        encoder = constriction.stream.queue.RangeEncoder()
        symbols = Symbols(latents.z_symbols.astype(np.int64), latents.y_symbols.astype(np.int64))
        self.latent_codec.encode(encoder, symbols, latents.header.quality_index, y_table_index)
        return encoder.get_compressed().astype("<u4").tobytes()

    def _entropy_decode(self, payload: bytes, header: ImageHeader) -> Symbols:
        shapes = self.latent_shapes(header.width, header.height)

        def decode(decoder):
            return self.latent_codec.decode(decoder, shapes, header.quality_index)

        try:
            return decode_exactly(payload, decode)
        except (AssertionError, ValueError, RuntimeError, OverflowError) as error:  # constriction asserts on invalid data
            raise InvalidFile(f".vae payload cannot be decoded ({error})") from None

    # -- public API: latents ----------------------------------------------------------------------------------
    def encode_latents(self, image, quality: float = DEFAULT_QUALITY, refine_steps: int = 0, *,
                       gray_offset: bool = True) -> Latents:
        """Quantized latents of one image (PIL image or path), those ``compress`` entropy-codes (see it for
        ``refine_steps`` and ``gray_offset``)."""
        latents, _ = next(self._iter_analysed([image], quality, 1, refine_steps, gray_offset))
        return latents

    def decode_latents(self, latents: Latents, max_pixels: int = DEFAULT_MAX_PIXELS):
        """Image from latents produced by ``encode_latents`` (or received with ``Latents.from_bytes``).
        Images over ``max_pixels`` are refused with ImageTooLarge (None: up to the format's limit)."""
        return next(self.iter_decode_latents([latents], 1, max_pixels))

    def _iter_analysed(self, images, quality: float, batch_size: int, refine_steps: int = 0,
                       gray_offset: bool = True):
        """Yield (Latents, y table index) per image: the arguments of ``_pack``. Each image is coded at
        ``coded_quality_index`` of the quality's index for its mode (see ``compress``)."""
        try:
            quality_index = quality_to_index(float(quality))
        except (TypeError, ValueError) as error:
            raise UsageError(str(error)) from None
        if not isinstance(refine_steps, int) or refine_steps < 0:
            raise UsageError(f"refine_steps must be a whole number >= 0, got {refine_steps!r}")
        analyse = functools.partial(self._analyse, refine_steps=refine_steps)
        images = iter(images)
        while chunk := list(itertools.islice(images, max(1, batch_size))):
            opened = [open_image(image) for image in chunk]
            results = [None] * len(opened)
            for size, members in _group_by(opened, lambda im: padded_size(*im.size, STRIDE)).items():
                started = time.perf_counter()
                x = torch.cat([pad(image_to_tensor(opened[i]), STRIDE) for i in members])
                indexes = [coded_quality_index(quality_index, opened[i].mode, gray_offset) for i in members]
                qualities = torch.tensor(indexes, dtype=torch.long, device=self.device)
                sizes = torch.tensor([opened[i].size[::-1] for i in members])
                z_symbols, y_symbols, y_table_index = self._per_image(analyse, x, qualities, sizes)
                self.timings.add("transform", time.perf_counter() - started)
                for row, i in enumerate(members):
                    image = opened[i]
                    header = ImageHeader(self.model_name, self.model_hash, indexes[row], image.mode, *image.size)
                    results[i] = (Latents(header, z_symbols[row].numpy().astype(np.int16),
                                          y_symbols[row].numpy().astype(np.int16)),
                                  y_table_index[row].numpy().astype(np.int16))
            yield from results

    def iter_decode_latents(self, latents_list, batch_size: int = 8, max_pixels: int = DEFAULT_MAX_PIXELS):
        latents_list = iter(latents_list)
        while chunk := list(itertools.islice(latents_list, max(1, batch_size))):
            for latents in chunk:
                self._check_model(latents.header, "latents")
                container.check_pixels(latents.header, max_pixels, "latents")
                shapes = self.latent_shapes(latents.header.width, latents.header.height)
                if (latents.z_symbols.shape, latents.y_symbols.shape) != tuple(shapes):
                    raise InvalidFile("latents have shapes that do not match the image size")
            results = [None] * len(chunk)
            groups = _group_by(chunk, lambda l: padded_size(l.header.width, l.header.height, STRIDE))
            for members in groups.values():
                started = time.perf_counter()
                z = torch.from_numpy(np.stack([chunk[i].z_symbols for i in members]).astype(np.int64))
                y = torch.from_numpy(np.stack([chunk[i].y_symbols for i in members]).astype(np.int64))
                qualities = torch.tensor([chunk[i].header.quality_index for i in members], device=self.device)
                x_hat = self._per_image(self._synthesize, z, y, qualities)
                for row, i in enumerate(members):
                    header = chunk[i].header
                    results[i] = tensor_to_image(x_hat[row, :, :header.height, :header.width], header.mode)
                self.timings.add("transform", time.perf_counter() - started)
            yield from results

    # -- public API: files ------------------------------------------------------------------------------------
    def latents_to_bytes(self, latents: Latents) -> bytes:
        """Entropy-code latents into a .vae file."""
        return self._pack(latents)

    def _pack(self, latents: Latents, y_table_index=None) -> bytes:
        started = time.perf_counter()
        payload = self._entropy_encode(latents, y_table_index)
        self.timings.add("entropy", time.perf_counter() - started)
        return container.pack(latents.header, payload)

    def bytes_to_latents(self, data, max_pixels: int = DEFAULT_MAX_PIXELS) -> Latents:
        """Parse, validate and entropy-decode a .vae file (bytes or path) into latents (``max_pixels`` as in
        ``decompress``)."""
        header, payload = container.unpack(file_bytes(data))
        self._check_model(header, ".vae file")
        container.check_pixels(header, max_pixels, ".vae file")
        started = time.perf_counter()
        z_symbols, y_symbols = self._entropy_decode(payload, header)
        self.timings.add("entropy", time.perf_counter() - started)
        return Latents(header, z_symbols.astype(np.int16), y_symbols.astype(np.int16))

    def header(self, data, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
        """Validate a .vae file (bytes or path: CRC, version, model, size within ``max_pixels``) without decoding
        it; returns its header."""
        header, _ = container.unpack(file_bytes(data))
        self._check_model(header, ".vae file")
        container.check_pixels(header, max_pixels, ".vae file")
        return header

    def compress(self, image, quality: float = DEFAULT_QUALITY, refine_steps: int = 0, *,
                 gray_offset: bool = True) -> bytes:
        """One image (PIL image or path) -> bytes of a .vae file.

        ``quality`` is a fidelity: a grayscale image is coded ``GRAY_QUALITY_OFFSET`` quality indexes lower
        (quality.py), where its PSNR matches a colour photo's at ``quality``; the file's header holds the
        quality used (``gray_offset=False`` codes it at ``quality`` itself). ``refine_steps`` > 0 spends that
        many gradient steps searching for latents that code this image better (smaller and/or sharper at the
        same quality setting; see refine.py). It is slow (each step is a synthesis pass forward and back),
        changes nothing for the decoder, and 0 is the fast default.
        """
        return self._pack(*next(self._iter_analysed([image], quality, 1, refine_steps, gray_offset)))

    def decompress(self, data, max_pixels: int = DEFAULT_MAX_PIXELS):
        """A .vae file, as bytes or a path (str or os.PathLike) -> PIL image (RGB, or L for grayscale sources).

        A file announcing more than ``max_pixels`` pixels is refused with ImageTooLarge before any decoding, as
        Pillow guards against decompression bombs: a small file can ask for a large decode. None allows up to
        the format's limit (container.MAX_PIXELS).
        """
        return self.decode_latents(self.bytes_to_latents(data, max_pixels), max_pixels)

    def iter_compress(self, images, quality: float = DEFAULT_QUALITY, batch_size: int = 8,
                      workers: int = 2, refine_steps: int = 0, *, gray_offset: bool = True):
        """Yield .vae bytes for each image, in order.

        Images are read lazily, ``batch_size`` at a time; ``workers`` threads entropy-code finished latents
        while the transforms run on the next batch. The transforms always run on all of torch's threads, as
        one image at a time does: oneDNN's results can depend on the thread count, so batch and single
        calls share it to give the same bytes and pixels by construction. ``refine_steps`` and ``gray_offset``
        as in ``compress``.
        """
        with ThreadPoolExecutor(max(1, workers)) as pool:
            yield from _in_order(pool, lambda analysed: self._pack(*analysed),
                                 self._iter_analysed(images, quality, batch_size, refine_steps, gray_offset),
                                 ahead=2 * batch_size)

    def iter_decompress(self, datas, batch_size: int = 8, workers: int = 2, max_pixels: int = DEFAULT_MAX_PIXELS):
        """Yield images for each .vae file (bytes or path), in order; parsing and entropy decoding run ahead in
        ``workers`` threads while the synthesis transform decodes batches."""
        with ThreadPoolExecutor(max(1, workers)) as pool:
            parse = functools.partial(self.bytes_to_latents, max_pixels=max_pixels)
            latents = _in_order(pool, parse, datas, ahead=2 * batch_size)
            yield from self.iter_decode_latents(latents, batch_size, max_pixels)

    def compress_batch(self, images, quality: float = DEFAULT_QUALITY, batch_size: int = 8,
                       workers: int = 2, refine_steps: int = 0, *, gray_offset: bool = True) -> list:
        return list(self.iter_compress(images, quality, batch_size, workers, refine_steps, gray_offset=gray_offset))

    def decompress_batch(self, datas, batch_size: int = 8, workers: int = 2,
                         max_pixels: int = DEFAULT_MAX_PIXELS) -> list:
        return list(self.iter_decompress(datas, batch_size, workers, max_pixels))

    def estimated_bits(self, latents: Latents) -> float:
        """The model's information content of the latents (sum of -log2 p under the frozen tables)."""
        return self.latent_codec.estimated_bits(Symbols(latents.z_symbols, latents.y_symbols),
                                                latents.header.quality_index)

    # -- timed coding, for per-file times -----------------------------------------------------------------------
    def iter_compress_timed(self, images, quality: float = DEFAULT_QUALITY, batch_size: int = 8,
                            workers: int = 2, refine_steps: int = 0, *, gray_offset: bool = True):
        """As ``iter_compress`` (same bytes), yielding (bytes, seconds spent on that image): its share of the
        transforms of its batch (by pixels; a batch of one is its own time) plus its entropy coding, which
        overlaps other images' work in ``workers`` threads, so the seconds add up to more than the wall time."""
        images = iter(images)
        batch_size = max(1, batch_size)

        def analysed():
            while chunk := list(itertools.islice(images, batch_size)):
                started = time.perf_counter()
                results = list(self._iter_analysed(chunk, quality, batch_size, refine_steps, gray_offset))
                seconds = time.perf_counter() - started
                for result, share in zip(results, _pixel_shares([latents.header for latents, _ in results])):
                    yield result, share * seconds

        def pack(item):
            analysed_image, transform_seconds = item
            data, seconds = _timed(self._pack, *analysed_image)
            return data, transform_seconds + seconds

        with ThreadPoolExecutor(max(1, workers)) as pool:
            yield from _in_order(pool, pack, analysed(), ahead=2 * batch_size)

    def iter_decompress_timed(self, datas, batch_size: int = 8, workers: int = 2, **options):
        """As ``iter_decompress`` (same images; ``options`` as it takes), yielding (image, seconds spent on that
        file), counted as in ``iter_compress_timed``."""
        batch_size = max(1, batch_size)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            parse = functools.partial(_timed, functools.partial(self.bytes_to_latents, **options))
            parsed = _in_order(pool, parse, datas, ahead=2 * batch_size)
            while chunk := list(itertools.islice(parsed, batch_size)):
                started = time.perf_counter()
                images = list(self.iter_decode_latents([latents for latents, _ in chunk], batch_size, **options))
                seconds = time.perf_counter() - started
                shares = _pixel_shares([latents.header for latents, _ in chunk])
                for image, (_, entropy_seconds), share in zip(images, chunk, shares):
                    yield image, share * seconds + entropy_seconds


def file_bytes(data) -> bytes:
    """The bytes of a .vae file given as bytes or as a path (str or os.PathLike); UsageError if unreadable."""
    if not isinstance(data, (str, os.PathLike)):
        return data
    try:
        with open(data, "rb") as file:
            return file.read()
    except OSError as error:
        raise UsageError(f"cannot read {data}: {error.strerror or error}") from None


def _timed(function, *args) -> tuple:
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def _pixel_shares(headers) -> list:
    pixels = [header.width * header.height for header in headers]
    return [count / sum(pixels) for count in pixels]


def _in_order(pool, function, items, ahead: int):
    """map(function, items) on a thread pool, at most ``ahead`` items in flight, results in input order."""
    pending = collections.deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _group_by(items, key) -> dict:
    groups = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item), []).append(i)
    return groups
