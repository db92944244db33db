"""Worker processes (vaecodec.parallel): the same bytes and pixels as one process, errors in place, order kept."""

import pytest
from PIL import Image

import vaecodec
from vaecodec.errors import UnsupportedImage, VaecodecError
from vaecodec.parallel import CodecPool, default_workers

from conftest import KODAK


@pytest.fixture(scope="module")
def codec():
    return vaecodec.load("default", device="cpu")


@pytest.fixture(scope="module")
def images():
    """Small crops of different sizes, and a grayscale one: real content, quick to code."""
    source = Image.open(KODAK / "kodim23.png").convert("RGB")
    crops = [source.crop((x, 100, x + width, 100 + height))
             for x, width, height in ((300, 96, 64), (100, 64, 80), (500, 70, 50), (200, 128, 64))]
    crops.append(crops[0].convert("L"))
    return crops


def test_workers_write_the_bytes_and_pixels_of_one_process(codec, images):
    alone = [codec.compress(image, quality=3) for image in images]
    with CodecPool(workers=2, codec=codec) as pool:
        assert pool.compress_batch(images, quality=3) == alone
        decoded = pool.decompress_batch(alone)
    for image, data in zip(decoded, alone):
        expected = codec.decompress(data)
        assert image.mode == expected.mode and image.tobytes() == expected.tobytes()


def test_a_bad_item_yields_its_error_in_its_place(codec, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    items = [images[0], bad, images[1], images[2], images[3]]
    with CodecPool(workers=2, codec=codec) as pool:
        outcomes = list(pool.iter_compress_timed(items, quality=3))
        with pytest.raises(UnsupportedImage):
            pool.compress_batch(items, quality=3)
        decoded = list(pool.iter_decompress_timed([outcomes[0][0], b"VAE garbage"], image_format="PNG"))
    assert isinstance(outcomes[1], UnsupportedImage) and "bad.png" in str(outcomes[1])
    assert [data for data, _ in outcomes[:1] + outcomes[2:]] == [codec.compress(images[i], quality=3) for i in (0, 1, 2, 3)]
    assert all(seconds > 0 for _, seconds in outcomes[:1] + outcomes[2:])
    assert decoded[0][0].startswith(b"\x89PNG") and isinstance(decoded[1], VaecodecError)


def test_workers_load_the_model_themselves_when_given_none(images):
    with CodecPool(workers=2, model="default", device="cpu") as pool:
        assert len(pool.compress_batch(images[:2], quality=3)) == 2


def test_default_is_one_worker_per_core_on_the_cpu(monkeypatch):
    monkeypatch.setattr("vaecodec.parallel.cpu_count", lambda: 2)
    assert default_workers("cpu") == 2
    monkeypatch.setattr("vaecodec.parallel.cpu_count", lambda: 64)
    assert default_workers("cpu") == 4  # capped: each worker holds a model
