"""Training data: a pool of random crops held in memory, rebuilt deterministically in the background.

Every image under the data folders is decoded, downscaled by a random factor (which also removes the block
artifacts of JPEG sources) and cut into random crops. A pool of such crops serves ``pool_steps`` optimizer
steps; meanwhile a background thread builds the next pool (Pillow releases the GIL while decoding and
resizing), so loading never stalls the optimizer. Pool ``g`` depends only on (seed, g), which makes
``--resume`` exact. Batches are random sub-crops with random flips, drawn with a seeded torch.Generator;
a ``gray_fraction`` of them is turned gray (R = G = B), so the model learns that a grayscale photo, which the
codec codes as three equal channels, needs no colour information.
"""

import random
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"}
JPEG_SUFFIXES = {".jpg", ".jpeg"}


def list_images(folders) -> list:
    files = []
    for folder in folders:
        files += [p for p in sorted(Path(folder).rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    return files


def split_validation(files: list, count: int) -> tuple:
    """Hold out ``count`` images spread evenly over the sorted list (deterministic)."""
    if count <= 0 or len(files) <= count:
        return files, []
    step = len(files) / count
    held = {int(i * step + step / 2) for i in range(count)}
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


def load_rgb(path) -> Image.Image:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")


def random_crops(path, crop: int, count: int, rng: random.Random) -> list:
    """``count`` crops (uint8 HWC arrays) after a random log-uniform downscale of the image."""
    image = load_rgb(path)
    short = min(image.size)
    if short < crop:  # upscale tiny images just enough
        image = image.resize((max(crop, round(image.width * crop / short)), max(crop, round(image.height * crop / short))),
                             Image.BICUBIC)
        short = min(image.size)
    largest = 0.75 if Path(path).suffix.lower() in JPEG_SUFFIXES else 1.0
    smallest = max(crop / short, 0.25)
    largest = max(largest, smallest)
    factor = float(np.exp(rng.uniform(np.log(smallest), np.log(largest))))
    size = (max(crop, round(image.width * factor)), max(crop, round(image.height * factor)))
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    pixels = np.asarray(image)
    crops = []
    for _ in range(count):
        top = rng.randrange(pixels.shape[0] - crop + 1)
        left = rng.randrange(pixels.shape[1] - crop + 1)
        crops.append(pixels[top:top + crop, left:left + crop])
    return crops


def build_pool(files: list, crop: int, crops_per_image: int, seed: int, generation: int,
               cancelled: threading.Event = None):
    """The crops of pool ``generation`` as a (n, 3, crop, crop) uint8 tensor; None if cancelled on the way."""
    rng = random.Random(f"{seed}:{generation}")
    crops = []
    for path in files:
        if cancelled is not None and cancelled.is_set():
            return None
        crops += random_crops(path, crop, crops_per_image, rng)
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


class CropPool:
    """Batches of float crops in [0, 1]; pool generation g serves steps [g * pool_steps, (g + 1) * pool_steps)."""

    def __init__(self, files, pool_crop=256, crops_per_image=4, pool_steps=5000, seed=0, device="cpu"):
        if not files:
            raise ValueError("no training images found")
        self.files, self.pool_crop, self.crops_per_image = files, pool_crop, crops_per_image
        self.pool_steps, self.seed = pool_steps, seed
        self.device = torch.device(device)  # on a GPU the uint8 crops stay resident there
        self._generation = None
        self._pool = None
        self._next = None  # (generation, thread, result list)
        self._cancelled = threading.Event()

    def _start_build(self, generation):
        result = []
        thread = threading.Thread(
            target=lambda: result.append(build_pool(self.files, self.pool_crop, self.crops_per_image, self.seed,
                                                    generation, self._cancelled)),
            daemon=True)
        thread.start()
        self._next = (generation, thread, result)

    def close(self):
        """Stop building the next pool (within one image) and wait for it. A build still running when the
        interpreter exits can abort the process (``terminate called without an active exception``), so the
        trainer closes its pool whenever it stops."""
        self._cancelled.set()
        if self._next is not None:
            self._next[1].join()
        self._next = None
        self._cancelled.clear()  # a later batch builds its pool again

    def _pool_for(self, step: int) -> torch.Tensor:
        generation = step // self.pool_steps
        if generation != self._generation:
            if self._next is None or self._next[0] != generation:
                self._start_build(generation)
            _, thread, result = self._next
            thread.join()
            if not result or result[0] is None:
                raise RuntimeError("building the training crop pool failed")
            self._pool, self._generation = result[0].to(self.device), generation
            self._start_build(generation + 1)
        return self._pool

    def batch(self, step: int, batch_size: int, patch: int, generator: torch.Generator,
              gray_fraction: float = 0.0) -> torch.Tensor:
        pool = self._pool_for(step)
        index = torch.randint(len(pool), (batch_size,), generator=generator).tolist()
        offsets = torch.randint(self.pool_crop - patch + 1, (batch_size, 2), generator=generator).tolist()
        flips = (torch.rand(batch_size, 2, generator=generator) < 0.5).tolist()
        crops = []
        for i in range(batch_size):
            top, left = offsets[i]
            crop = pool[index[i], :, top:top + patch, left:left + patch]
            if flips[i][0]:
                crop = crop.flip(2)
            if flips[i][1]:
                crop = crop.flip(1)
            crops.append(crop)
        batch = torch.stack(crops)
        if gray_fraction > 0:  # no draw otherwise, so runs without gray crops keep their random stream
            gray = torch.rand(batch_size, generator=generator) < gray_fraction
            batch[gray] = to_gray(batch[gray])
        return batch.float().div_(255)


def to_gray(crops: torch.Tensor) -> torch.Tensor:
    """uint8 RGB crops (B, 3, H, W) -> their ITU-R 601 luma in all three channels: within a rounding step of
    Pillow's convert("L") then "RGB", which is how the codec turns a grayscale image into RGB."""
    weights = torch.tensor([299, 587, 114], dtype=torch.int32)[None, :, None, None]
    luma = ((crops.int() * weights).sum(1, keepdim=True) + 500) // 1000
    return luma.to(torch.uint8).expand_as(crops).clone()


def validation_crops(files: list, crop: int = 256) -> torch.Tensor:
    """Center crops of the held-out images (downscaled so the crop sees a good part of the picture)."""
    crops = []
    for path in files:
        image = load_rgb(path)
        factor = max(crop / min(image.size), 0.5)
        image = image.resize((max(crop, round(image.width * factor)), max(crop, round(image.height * factor))),
                             Image.LANCZOS)
        left, top = (image.width - crop) // 2, (image.height - crop) // 2
        crops.append(np.asarray(image.crop((left, top, left + crop, top + crop))))
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div(255)
