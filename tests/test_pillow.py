"""The Pillow plugin: Image.open and Image.save on .vae files, with the same bytes and pixels as the API."""

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, UnidentifiedImageError

import vaecodec
import vaecodec.pillow
from vaecodec import container
from vaecodec.errors import InvalidFile, ModelMismatch, UsageError


@pytest.fixture(scope="module")
def codec():
    return vaecodec.load("default", device="cpu")


@pytest.fixture
def vae_file(tmp_path, small_png, codec):
    path = tmp_path / "photo.vae"
    path.write_bytes(codec.compress(small_png, quality=4))
    return path


def test_open_reads_the_header_and_load_decodes_like_the_api(vae_file, codec):
    vaecodec.pillow.use(codec)
    with Image.open(vae_file) as image:
        assert image.format == "VAE" and image.size == (96, 64) and image.mode == "RGB"
        assert image.info["quality"] == 4.0 and image.info["model"] == f"mcc-n64@{codec.model_hash.hex()}"
        image.load()
        assert image.tobytes() == codec.decompress(vae_file.read_bytes()).tobytes()
    from_stream = Image.open(io.BytesIO(vae_file.read_bytes()))
    assert from_stream.convert("RGB").tobytes() == codec.decompress(vae_file.read_bytes()).tobytes()


def test_open_needs_no_torch_and_load_finds_the_model_itself(vae_file, codec, tmp_path):
    expected = tmp_path / "expected.png"
    codec.decompress(vae_file.read_bytes()).save(expected)
    script = f"""
import json, sys
import vaecodec.pillow
from PIL import Image
image = Image.open({str(vae_file)!r})
opened = [image.size, image.mode, "torch" in sys.modules]
image.load()
print(json.dumps([opened, "torch" in sys.modules, image.tobytes() == Image.open({str(expected)!r}).tobytes()]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (size, mode, torch_after_open), torch_after_load, same_pixels = json.loads(result.stdout)
    assert size == [96, 64] and mode == "RGB" and not torch_after_open
    assert torch_after_load and same_pixels


def test_save_writes_the_api_bytes_and_reopens(tmp_path, small_png, codec):
    vaecodec.pillow.use(codec)
    image = Image.open(small_png)
    image.save(tmp_path / "saved.vae", quality=5)
    assert (tmp_path / "saved.vae").read_bytes() == codec.compress(small_png, quality=5)
    image.save(tmp_path / "default.vae")
    assert container.unpack((tmp_path / "default.vae").read_bytes())[0].quality == container.DEFAULT_QUALITY
    buffer = io.BytesIO()
    image.convert("L").save(buffer, format="VAE", quality=2.5)
    assert buffer.getvalue() == codec.compress(image.convert("L"), quality=2.5)
    with Image.open(tmp_path / "saved.vae") as reopened:
        assert reopened.size == image.size and reopened.mode == "RGB" and reopened.info["quality"] == 5.0
        assert reopened.tobytes() == codec.decompress(codec.compress(small_png, quality=5)).tobytes()
    gray = Image.open(buffer)
    assert gray.mode == "L" and gray.size == image.size and gray.getextrema() != (0, 0)


def test_save_refuses_a_jpeg_style_quality_and_leaves_no_file(tmp_path, small_png, codec):
    vaecodec.pillow.use(codec)
    with pytest.raises(UsageError, match="quality must be between 1 and 8"):
        Image.open(small_png).save(tmp_path / "x.vae", quality=90)
    assert not (tmp_path / "x.vae").exists()


def test_damaged_files_raise_one_clear_error(vae_file, codec, tmp_path):
    vaecodec.pillow.use(codec)
    data = bytearray(vae_file.read_bytes())
    data[len(data) // 2] ^= 0x10
    (tmp_path / "flipped.vae").write_bytes(bytes(data))
    with pytest.raises(InvalidFile, match=r"corrupted or truncated \(CRC mismatch\)"):
        Image.open(tmp_path / "flipped.vae")
    (tmp_path / "truncated.vae").write_bytes(vae_file.read_bytes()[:20])
    with pytest.raises(InvalidFile, match="truncated"):
        Image.open(tmp_path / "truncated.vae")

    header, _ = container.unpack(vae_file.read_bytes())
    (tmp_path / "bad_payload.vae").write_bytes(container.pack(header, b"\x01\x02\x03"))  # valid CRC, no stream
    image = Image.open(tmp_path / "bad_payload.vae")
    assert image.size == (96, 64)  # the header is fine: the payload fails when decoded
    with pytest.raises(InvalidFile, match="payload"):
        image.load()

    foreign = dataclasses.replace(header, model_hash=b"\0\0\0\0")
    (tmp_path / "foreign.vae").write_bytes(container.pack(foreign, container.unpack(vae_file.read_bytes())[1]))
    with pytest.raises(ModelMismatch, match="written by model mcc-n64@00000000, which is not installed"):
        Image.open(tmp_path / "foreign.vae").load()

    (tmp_path / "text.vae").write_text("not an image")
    with pytest.raises(UnidentifiedImageError):
        Image.open(tmp_path / "text.vae")


def test_a_file_of_the_earlier_default_decodes_with_it_and_saving_stays_with_the_default(tmp_path, small_png):
    """In a fresh process: the committed mshp-n64 file decodes with the installed mshp-n64, and an image saved
    afterwards is written by the default model, not by the release loaded for that decode."""
    old = Path(__file__).resolve().parent / "data" / "mshp-n64-684f772f-q4.vae"
    script = f"""
import json
import vaecodec.pillow
from PIL import Image
from vaecodec import container
with Image.open({str(old)!r}) as image:
    image.load()
    decoded = [image.size, image.info["model"]]
Image.open({str(small_png)!r}).save({str(tmp_path / "new.vae")!r})
print(json.dumps([decoded, container.unpack(open({str(tmp_path / "new.vae")!r}, "rb").read())[0].model_name]))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (size, decoded_by), saved_by = json.loads(result.stdout)
    assert size == [64, 64] and decoded_by == "mshp-n64@684f772f"
    assert saved_by == vaecodec.load("default", device="cpu").model_name == "mcc-n64"


def test_refusing_a_file_of_an_unknown_release_and_then_saving_loads_the_default_model_once(
        monkeypatch, tmp_path, vae_file, small_png):
    import vaecodec.codec

    loaded = []
    real_load = vaecodec.codec.load
    monkeypatch.setattr(vaecodec.codec, "load", lambda *args, **kw: loaded.append(args) or real_load(*args, **kw))
    monkeypatch.setattr(vaecodec.pillow, "_saving", None)
    monkeypatch.setattr(vaecodec.pillow, "_releases", None)
    header, payload = container.unpack(vae_file.read_bytes())
    foreign = tmp_path / "foreign.vae"
    foreign.write_bytes(container.pack(dataclasses.replace(header, model_hash=b"\0\0\0\0"), payload))
    with pytest.raises(ModelMismatch, match="not installed"):
        Image.open(foreign).load()
    Image.open(small_png).save(tmp_path / "saved.vae")
    with Image.open(tmp_path / "saved.vae") as image:
        image.load()
    assert loaded == [("default", "auto")]
