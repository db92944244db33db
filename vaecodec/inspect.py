"""Where the bits of a .vae file went: per channel group, per latent channel, per 16x16 block of the picture.

``bit_usage(codec, data)`` decodes the file's symbols and gives each one its exact code length under the
table that coded it: -log2(frequency / 2^PRECISION) with the frozen integer frequencies of ``entropy/``,
plus 16 raw bits for an escaped value, exactly what the range coder is asked to spend. The sum lands within
a few bytes of the payload, which also holds the range coder's final state and is a whole number of 32-bit
words: measured from 0.2 bytes below the sum to 7 bytes above it, on Kodak files and small crops; tested to
stay within 12 bytes.

Each y element is the code of one 16x16 block of the padded picture (y's stride is 16); each z element
(stride 64) is side information for 4x4 such blocks, and its bits are spread over them evenly. Blocks in
the padding beyond the picture's edge are counted apart.
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .codec import Y_STRIDE, Codec
from .container import ImageHeader, unpack
from .latent_codecs import Symbols
from .model import STRIDE

BLOCK = Y_STRIDE  # pixels per side of a heatmap block: one y element each
@dataclass
class BitUsage:
    """Code length of every coded symbol of one .vae file."""

    header: ImageHeader
    payload_bytes: int
    z_bits: np.ndarray  # (hyper channels, H/64, W/64): side information
    y_bits: np.ndarray  # (latent channels, H/16, W/16): the latents proper
    escapes: int  # symbols coded as raw 16-bit values (their 16 bits are in z_bits / y_bits)

    @property
    def total_bits(self) -> float:
        return float(self.z_bits.sum() + self.y_bits.sum())

    def groups(self) -> dict:
        """{group name: (elements, bits)} for z and y."""
        return {"z (hyperprior)": (self.z_bits.size, float(self.z_bits.sum())),
                "y (latents)": (self.y_bits.size, float(self.y_bits.sum()))}

    def per_channel(self, group: str) -> np.ndarray:
        """Bits of each channel of "z" or "y"."""
        return {"z": self.z_bits, "y": self.y_bits}[group].sum(axis=(1, 2))

    def padded_blocks(self) -> np.ndarray:
        """Bits per 16x16 block of the padded picture: y's own plus each z element's share of its 4x4 blocks."""
        spread = STRIDE // BLOCK
        z_share = np.kron(self.z_bits.sum(axis=0), np.ones((spread, spread))) / spread**2
        return self.y_bits.sum(axis=0) + z_share

    def blocks(self) -> np.ndarray:
        """Bits per 16x16 block of the picture (rows, columns); edge blocks may be partly padding."""
        rows, columns = -(-self.header.height // BLOCK), -(-self.header.width // BLOCK)
        return self.padded_blocks()[:rows, :columns]

    @property
    def padding_bits(self) -> float:
        """Bits spent on blocks entirely outside the picture (padding to a multiple of 64 pixels)."""
        return float(self.padded_blocks().sum() - self.blocks().sum())


def bit_usage(codec: Codec, data: bytes) -> BitUsage:
    """Decode a .vae file's symbols with ``codec`` (the model that wrote it) and measure their code lengths."""
    header, payload = unpack(data)
    latents = codec.bytes_to_latents(data)  # checks the model
    symbols = Symbols(latents.z_symbols.astype(np.int64), latents.y_symbols.astype(np.int64))
    bits, escapes = codec.latent_codec.code_lengths(symbols, header.quality_index)  # tables as the decoder derives them
    return BitUsage(header, len(payload), bits.z, bits.y, escapes)


# A perceptually ordered dark-to-bright ramp (viridis' end points and quartiles), so more bits read brighter.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def colours(values: np.ndarray, top: float) -> np.ndarray:
    """uint8 RGB of the ramp for values in 0..top (clipped)."""
    position = np.clip(values / top if top > 0 else np.zeros_like(values), 0, 1) * (len(_RAMP) - 1)
    low = np.minimum(position.astype(int), len(_RAMP) - 2)
    weight = (position - low)[..., None]
    return np.round(_RAMP[low] * (1 - weight) + _RAMP[low + 1] * weight).astype(np.uint8)


def heatmap(usage: BitUsage, picture: Image.Image = None, min_width: int = 320) -> Image.Image:
    """RGB image of bits per 16x16 block at the picture's size, over the picture in gray if one is given,
    with a scale bar below (0 to the busiest block's bits). Small pictures are enlarged to ``min_width``."""
    blocks = usage.blocks()
    top = float(blocks.max())
    width, height = usage.header.width, usage.header.height
    heat = Image.fromarray(colours(blocks, top), "RGB").resize(
        (blocks.shape[1] * BLOCK, blocks.shape[0] * BLOCK), Image.NEAREST).crop((0, 0, width, height))
    if picture is not None:
        heat = Image.blend(picture.convert("L").convert("RGB"), heat, 0.65)
    scale = max(1, -(-min_width // width))
    if scale > 1:
        heat = heat.resize((width * scale, height * scale), Image.NEAREST)
    bar_height = 28
    canvas = Image.new("RGB", (heat.width, heat.height + bar_height), "white")
    canvas.paste(heat, (0, 0))
    ramp = colours(np.linspace(0, top, heat.width)[None, :].repeat(8, axis=0), top)
    canvas.paste(Image.fromarray(ramp, "RGB"), (0, heat.height))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, heat.height + 10), "0", fill="black")
    label = f"{top:.0f} bits per 16x16 block"
    draw.text((heat.width - 2, heat.height + 10), label, fill="black", anchor="ra")
    return canvas
