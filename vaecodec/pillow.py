"""Pillow plugin for .vae files: after ``import vaecodec.pillow``, ``Image.open`` and ``Image.save`` handle them.

    import vaecodec.pillow
    from PIL import Image

    image = Image.open("photo.vae")        # reads the header only: size and mode at once, no model
    image.load()                           # decodes (any pixel access does this implicitly)
    image.save("copy.vae", quality=5)      # vaecodec's quality scale 1-8 in steps of 0.25, default 5

Pillow has no entry point through which an installed package could register a format, so the import is
needed, as for pillow-heif or pillow-jxl-plugin. Opening checks the whole container (magic, version, CRC)
without torch; the pixels are decoded on first load by the model release that wrote the file (the shipped
one, or an archived release of it), loaded once per process. ``save`` takes ``quality`` (not JPEG's 0-100:
anything outside 1-8 is refused), ``refine_steps`` and ``gray_offset`` as ``Codec.compress`` does (a
grayscale image is coded at a lower quality, the fidelity of colour at the quality asked for; the file's
``info["quality"]`` is the quality used). ``use(codec)`` makes the plugin code with a codec loaded by the
caller, e.g. on a GPU; by default it loads the shipped model with ``vaecodec.load()``. Bad files raise
``vaecodec.errors.InvalidFile`` (and subclasses) with one-line messages, from ``Image.open`` or, for a
payload that does not decode, from ``load``.
"""

import threading

from PIL import Image, ImageFile

from .container import DEFAULT_QUALITY, MAGIC, unpack

FORMAT = "VAE"
EXTENSION = ".vae"
MIME_TYPE = "image/x-vaecodec"

_saving = None  # the codec that saves: the one given to use(), else the default model
_releases = None  # a codec.Releases: the codec of each file decoded, loaded once per release
_lock = threading.Lock()


def _releases_held():
    global _releases
    if _releases is None:
        from .codec import Releases  # torch is imported only here, when pixels are needed

        _releases = Releases()
    return _releases


def use(codec) -> None:
    """Code with ``codec`` (a ``vaecodec.Codec``) from now on: saving always, decoding for files it wrote."""
    global _saving
    with _lock:
        _saving = codec
        _releases_held().add(codec)


def _codec_for_saving():
    global _saving
    with _lock:
        if _saving is None:
            _saving = _releases_held().default()  # shared with decoding: one load of the default model
        return _saving


def _codec_for(header):
    """A codec with the weights that wrote ``header``'s file: one in use, else that release loaded."""
    with _lock:
        releases = _releases_held()
    return releases.for_header(header)


def _accept(prefix: bytes) -> bool:
    return prefix[:len(MAGIC)] == MAGIC


class VaeImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "vaecodec learned image codec"

    def _open(self) -> None:
        self._vae_data = self.fp.read()
        self._vae_header, _ = unpack(self._vae_data)  # InvalidFile for anything malformed
        self._mode = self._vae_header.mode
        self._size = (self._vae_header.width, self._vae_header.height)
        self.info["quality"] = self._vae_header.quality
        self.info["model"] = f"{self._vae_header.model_name}@{self._vae_header.model_hash.hex()}"
        self.tile = []  # no Pillow decoder: load() decodes with the model

    def load(self):
        if self._im is None:
            decoded = _codec_for(self._vae_header).decompress(self._vae_data)
            self.im = decoded.im
            self._vae_data = None
            if self._exclusive_fp and self.fp is not None:
                self.fp.close()
            self.fp = None
        return Image.Image.load(self)


def _save(image: Image.Image, fp, filename) -> None:
    options = image.encoderinfo
    quality = options.get("quality", DEFAULT_QUALITY)
    refine_steps = options.get("refine_steps", 0)
    gray_offset = options.get("gray_offset", True)
    data = _codec_for_saving().compress(image, quality=quality, refine_steps=refine_steps, gray_offset=gray_offset)
    fp.write(data)  # written only once the whole file is coded


Image.register_open(FORMAT, VaeImageFile, _accept)
Image.register_save(FORMAT, _save)
Image.register_extension(FORMAT, EXTENSION)
Image.register_mime(FORMAT, MIME_TYPE)
