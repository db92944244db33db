"""vaecodec inspect: exact code lengths per group, channel and 16x16 block, and the heatmap, on real files."""

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import vaecodec
from vaecodec import container
from vaecodec.inspect import _RAMP, bit_usage, colours, heatmap
from vaecodec_cli.main import cli

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"


@pytest.fixture(scope="module")
def codec():
    torch.set_num_threads(2)
    return vaecodec.load("default", device="cpu")


@pytest.fixture(scope="module")
def kodim23(codec, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inspect") / "kodim23.vae"
    path.write_bytes(codec.compress(KODAK / "kodim23.png", quality=3))
    return path


def test_code_lengths_add_up_to_the_payload_within_a_few_bytes(codec, kodim23):
    data = kodim23.read_bytes()
    usage = bit_usage(codec, data)
    _, payload = container.unpack(data)
    assert usage.payload_bytes == len(payload)
    # Beyond the code lengths, the payload holds only the range coder's final state, in 32-bit words.
    assert abs(usage.payload_bytes - usage.total_bits / 8) <= 12
    assert usage.total_bits == pytest.approx(codec.estimated_bits(codec.bytes_to_latents(data)), rel=1e-9)
    groups = usage.groups()
    assert groups["z (hyperprior)"][0] == usage.z_bits.size and groups["y (latents)"][0] == usage.y_bits.size
    assert usage.per_channel("y").shape == (128,) and usage.per_channel("y").sum() == pytest.approx(groups["y (latents)"][1])
    assert usage.per_channel("z").sum() == pytest.approx(groups["z (hyperprior)"][1])
    assert usage.blocks().shape == (512 // 16, 768 // 16)  # Kodak needs no padding
    assert usage.blocks().sum() == pytest.approx(usage.total_bits) and usage.padding_bits == pytest.approx(0)


def test_blocks_show_where_the_picture_has_detail(codec):
    detail = np.asarray(Image.open(KODAK / "kodim13.png").convert("RGB").crop((0, 0, 64, 64)))
    picture = np.concatenate([np.full((64, 64, 3), 128, np.uint8), detail], axis=1)  # flat left, detail right
    picture = np.concatenate([picture, picture[:16]], axis=0)  # 128x80: padded to 128x128
    usage = bit_usage(codec, codec.compress(Image.fromarray(picture), quality=5))
    blocks = usage.blocks()
    assert blocks.shape == (5, 8)
    assert blocks[:, :4].mean() < 0.25 * blocks[:, 4:].mean()
    assert usage.padding_bits > 0
    assert blocks.sum() + usage.padding_bits == pytest.approx(usage.total_bits)


def test_heatmap_maps_more_bits_to_brighter_colours(codec, kodim23):
    ramp = colours(np.linspace(0, 10, 50), 10)
    assert (ramp[0] == _RAMP[0]).all() and (ramp[-1] == _RAMP[-1]).all()
    brightness = ramp.astype(float) @ [0.299, 0.587, 0.114]
    assert (np.diff(brightness) > 0).all()

    usage = bit_usage(codec, kodim23.read_bytes())
    image = heatmap(usage)
    assert image.size == (768, 512 + 28)
    row, column = np.unravel_index(usage.blocks().argmax(), usage.blocks().shape)
    assert image.getpixel((column * 16 + 8, row * 16 + 8)) == tuple(_RAMP[-1].astype(int))
    small = heatmap(bit_usage(codec, codec.compress(Image.new("RGB", (40, 20), "gray"))), min_width=320)
    assert small.size == (320, 160 + 28)  # enlarged 8 times so the scale bar fits


def test_inspect_command_prints_groups_and_channels_and_writes_the_heatmap(kodim23, tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(kodim23), "--heatmap", str(tmp_path / "bits.png")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"{kodim23}: 768x512 RGB, quality 3, model mcc-n64 ({container.unpack(kodim23.read_bytes())[0].model_hash.hex()})"
    assert "code lengths sum to" in lines[1] and "in the payload" in lines[1]
    assert any(line.startswith("z (hyperprior)") for line in lines) and any(line.startswith("y (latents)") for line in lines)
    start = lines.index("latent channels (y), busiest first:")
    channel_lines = lines[start + 2:start + 2 + 128]
    assert sorted(int(line.split()[0]) for line in channel_lines) == list(range(128))
    assert channel_lines[-1].split()[-1] == "100.0%"
    with Image.open(tmp_path / "bits.png") as written:
        assert written.format == "PNG" and written.size == (768, 540)

    again = CliRunner().invoke(cli, ["inspect", str(kodim23), "--heatmap", str(tmp_path / "bits.png")])
    assert again.exit_code == 2 and "exists; use --force" in again.stderr


def test_inspect_refuses_what_is_not_a_vae_file_in_one_line(tmp_path):
    (tmp_path / "photo.vae").write_bytes(b"PNG and more")
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "photo.vae"), "--heatmap", str(tmp_path / "h.png")])
    assert result.exit_code == 4
    assert result.stderr.splitlines() == [f"vaecodec: error: {tmp_path / 'photo.vae'}: not a .vae file (wrong magic bytes)"]
    assert not (tmp_path / "h.png").exists()
