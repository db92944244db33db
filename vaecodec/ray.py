"""Compressing and decompressing Ray Datasets: vaecodec inside Ray Data pipelines and on Ray clusters.

Needs the optional extra ``pip install vaecodec[ray]`` (ray[data], pyarrow), on every machine of the cluster.

    import ray, vaecodec.ray
    files = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    compressed = vaecodec.ray.compress_dataset(files, quality=5)   # path, vae, header fields, error
    compressed.write_parquet("s3://bucket/photos-vae/")
    images = vaecodec.ray.decompress_dataset(compressed)           # path, image (H, W, C uint8), error

Each ``map_batches`` actor loads the codec once and codes its rows one by one with ``Codec.compress`` /
``decompress``, on one GPU per actor when the cluster has GPUs, else on one CPU each; so a row's bytes and
pixels are those the command line writes. A row that cannot be coded does not stop the job: its ``error``
column holds the message (null when it succeeded) and ``error_class`` the ``vaecodec.errors`` class name.
"""

from __future__ import annotations

import io

import numpy as np

from .container import DEFAULT_QUALITY
from .errors import UnsupportedImage, UsageError, VaecodecError

INSTALL_HINT = "Ray is not installed; pip install vaecodec[ray]"
HEADER_COLUMNS = ("model_name", "model_hash", "quality", "mode", "width", "height")


def import_ray():
    """The ray module with Ray Data, or a UsageError saying how to install it."""
    try:
        import pyarrow  # noqa: F401  (Ray Data needs it; checked here to name the extra, not a later traceback)
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def actor_resources(ray) -> dict:
    """How map_batches should place the codec actors: one per GPU when the cluster has GPUs, else one per
    CPU. (Tasks that read files for them should ask for no CPU, ``num_cpus=0``: actors holding every CPU
    would otherwise leave them waiting for ever.)"""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return {"num_gpus": 1, "actors": gpus, "device": "cuda"}
    cpus = int(resources.get("CPU", 1))
    return {"num_cpus": 1, "actors": max(1, cpus), "device": "cpu"}


# ---- the actors (run in Ray worker processes) ----

class _Coder:
    """Loads the codec once per actor. The job's settings (model, device, quality, columns) are class
    attributes of a subclass made for the job by ``_with_settings``, so that the class alone, shipped to
    each actor, says what to do."""

    settings: dict = {}

    def __init__(self):
        import torch

        from .codec import load

        for name, value in self.settings.items():
            setattr(self, name, value)
        if self.device == "cpu":
            torch.set_num_threads(1)  # one CPU per actor: more threads would only contend with the others
        self.codec = load(self.model, self.device)


def _with_settings(actor: type, **settings) -> type:
    return type(actor.__name__.lstrip("_"), (actor,), {"settings": settings})


class _Compressor(_Coder):
    """Compresses a batch of rows holding image files (``bytes``) or decoded images (``image`` arrays)."""

    def __call__(self, batch: dict):
        import pyarrow as pa

        from .container import unpack

        column = self.column or ("bytes" if "bytes" in batch else "image")
        paths = batch.get(self.path_column, [None] * len(batch[column]))
        rows = {name: [] for name in ("path", "vae", *HEADER_COLUMNS, "error", "error_class")}
        for path, value in zip(paths, batch[column]):
            path = None if path is None else str(path)
            rows["path"].append(path)
            try:
                data = self.codec.compress(_to_image(value), quality=self.quality, refine_steps=self.refine_steps)
            except VaecodecError as error:
                for name in ("vae", *HEADER_COLUMNS):
                    rows[name].append(None)
                rows["error"].append(str(error))
                rows["error_class"].append(type(error).__name__)
                continue
            header, _ = unpack(data)
            rows["vae"].append(data)
            rows["model_name"].append(header.model_name)
            rows["model_hash"].append(header.model_hash.hex())
            rows["quality"].append(header.quality)
            rows["mode"].append(header.mode)
            rows["width"].append(header.width)
            rows["height"].append(header.height)
            rows["error"].append(None)
            rows["error_class"].append(None)
        return pa.table(rows, schema=COMPRESSED_SCHEMA())


class _Decompressor(_Coder):
    """Decompresses a batch of rows holding .vae bytes, to image arrays or to encoded image files."""

    def __call__(self, batch: dict) -> dict:
        datas = batch[self.column]
        paths = batch.get(self.path_column, [None] * len(datas))
        out = {"path": [], "image": [], "width": [], "height": [], "mode": [], "vae_bytes": [], "error": [],
               "error_class": []}
        for path, data in zip(paths, datas):
            out["path"].append(None if path is None else str(path))
            out["vae_bytes"].append(0 if data is None else len(data))
            try:
                if data is None:
                    raise UsageError("no .vae bytes in this row")
                image = self.codec.decompress(bytes(data))
            except VaecodecError as error:
                out["image"].append(b"" if self.image_format else np.zeros((0, 0, 3), np.uint8))
                out["width"].append(0), out["height"].append(0), out["mode"].append("")
                out["error"].append(str(error))
                out["error_class"].append(type(error).__name__)
                continue
            if self.image_format:
                encoded = io.BytesIO()
                image.save(encoded, format=self.image_format, **self.save_options)
                out["image"].append(encoded.getvalue())
            else:
                pixels = np.asarray(image)
                out["image"].append(pixels if pixels.ndim == 3 else pixels[:, :, None])
            out["width"].append(image.width), out["height"].append(image.height), out["mode"].append(image.mode)
            out["error"].append(None)
            out["error_class"].append(None)
        images = out.pop("image")  # arrays of different shapes: Ray stores them as a variable-shaped tensor column
        return {"image": _column(images) if self.image_format else images,
                **{name: _column(values) for name, values in out.items()}}


def COMPRESSED_SCHEMA():
    """Arrow schema of compress_dataset's rows (a function, so that pyarrow is imported only when used)."""
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("vae", pa.binary()), ("model_name", pa.string()),
                      ("model_hash", pa.string()), ("quality", pa.float64()), ("mode", pa.string()),
                      ("width", pa.int64()), ("height", pa.int64()), ("error", pa.string()),
                      ("error_class", pa.string())])


def _column(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _to_image(value):
    """A PIL image, upright, RGB or L, from an image file's bytes or a decoded (H, W[, C]) uint8 array."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from .images import open_image
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim in (2, 3):
        pixels = np.ascontiguousarray(value[:, :, 0] if value.ndim == 3 and value.shape[2] == 1 else value)
        return open_image(Image.fromarray(pixels))
    try:
        with Image.open(io.BytesIO(bytes(value))) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
    except UnidentifiedImageError:
        raise UnsupportedImage("cannot read image (not a format Pillow reads)") from None
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError, TypeError) as error:
        raise UnsupportedImage(f"cannot read image ({error.__class__.__name__}: {error})") from None
    return open_image(image)


# ---- the public functions ----

def _placement(ray, num_gpus):
    placement = actor_resources(ray)
    if num_gpus is not None:  # the caller decides: 0 keeps the actors on CPUs
        placement = ({"num_gpus": num_gpus, "actors": placement["actors"], "device": "cuda"} if num_gpus
                     else {"num_cpus": 1, "actors": int(ray.cluster_resources().get("CPU", 1)), "device": "cpu"})
    return placement


def _map(ds, actor: type, settings: dict, actors: int | None, num_gpus, batch_size: int):
    ray = import_ray()
    placement = _placement(ray, num_gpus)
    resources = {key: placement[key] for key in ("num_cpus", "num_gpus") if key in placement}
    return ds.map_batches(_with_settings(actor, device=placement["device"], **settings), batch_size=batch_size,
                          batch_format="numpy", **resources,
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors or placement["actors"]))


def compress_dataset(ds, quality: float = DEFAULT_QUALITY, *, model: str = "default", refine_steps: int = 0,
                     column: str | None = None, path_column: str = "path", actors: int | None = None,
                     num_gpus: float | None = None, batch_size: int = 4):
    """A Dataset of .vae files from a Dataset of images.

    ``ds`` has a ``column`` of image files' bytes (``bytes``, as ``ray.data.read_binary_files`` gives) or of
    decoded uint8 images (``image``, as ``ray.data.read_images`` gives); by default whichever a batch has.
    ``path_column`` is carried over when present. The result has one row per input row: ``path``, ``vae``
    (the .vae file's bytes), the header fields ``model_name``, ``model_hash`` (hex), ``quality``, ``mode``,
    ``width``, ``height``, and ``error`` / ``error_class`` (null unless the row failed). Actors: up to
    ``actors`` (default one per GPU, else one per CPU), each with ``num_gpus`` GPUs (default 1 when the
    cluster has GPUs).
    """
    from .container import quality_to_index

    try:
        quality_to_index(float(quality))
    except (TypeError, ValueError) as error:
        raise UsageError(str(error)) from None
    settings = dict(model=model, quality=quality, refine_steps=refine_steps, column=column, path_column=path_column)
    return _map(ds, _Compressor, settings, actors, num_gpus, batch_size)


def decompress_dataset(ds, *, model: str = "default", column: str = "vae", path_column: str = "path",
                       image_format: str | None = None, save_options: dict | None = None, actors: int | None = None,
                       num_gpus: float | None = None, batch_size: int = 4):
    """A Dataset of images from a Dataset whose ``column`` holds .vae files' bytes (such as
    ``compress_dataset``'s result, or its Parquet files read back).

    Rows: ``path``, ``image``, ``width``, ``height``, ``mode``, ``vae_bytes`` (the .vae file's size) and
    ``error`` / ``error_class``. ``image`` is
    a (H, W, C) uint8 array (C = 3, or 1 for grayscale), or with ``image_format`` (a Pillow format name such
    as "PNG", with ``save_options``) the bytes of that image file. ``model`` must be the model that wrote
    the files (the default decodes the shipped model's).
    """
    settings = dict(model=model, column=column, path_column=path_column, image_format=image_format,
                    save_options=save_options or {})
    return _map(ds, _Decompressor, settings, actors, num_gpus, batch_size)
