"""Run a fully convolutional transform tile by tile, so memory stays bounded for very large images.

Tiles are laid out on the grid of y (one unit = 16 pixels) and overlap by a halo wider than the
transforms' receptive field (g_a: about 2 units, g_s: under 2), so each tile's kept centre is computed from
the same inputs as without tiling. Whether and how an image is tiled depends only on its size, so the
encoder stays deterministic.
"""

import torch

TILE_UNITS = 96  # 1536 pixels: one tile of g_s at 64 channels needs about 0.6 GB per activation
HALO_UNITS = 4


def tiles(units_h: int, units_w: int, tile: int = TILE_UNITS, halo: int = HALO_UNITS):
    """(kept, window) per tile, in units: ``kept`` = (top, bottom, left, right) is the tile's own part,
    ``window`` = (t0, t1, l0, l1) the same grown by the halo and cut to the image."""
    for top in range(0, units_h, tile):
        for left in range(0, units_w, tile):
            bottom, right = min(top + tile, units_h), min(left + tile, units_w)
            yield ((top, bottom, left, right),
                   (max(0, top - halo), min(units_h, bottom + halo), max(0, left - halo), min(units_w, right + halo)))


def run_tiled(transform, x: torch.Tensor, in_scale: int, out_scale: int, tile: int = TILE_UNITS,
              halo: int = HALO_UNITS) -> torch.Tensor:
    """transform(x) for a transform mapping ``in_scale`` input pixels to ``out_scale`` output pixels per unit."""
    units_h, units_w = x.shape[-2] // in_scale, x.shape[-1] // in_scale
    if units_h <= tile and units_w <= tile:
        return transform(x)
    out = None
    for (top, bottom, left, right), (t0, t1, l0, l1) in tiles(units_h, units_w, tile, halo):
        piece = transform(x[..., t0 * in_scale:t1 * in_scale, l0 * in_scale:l1 * in_scale])
        if out is None:
            out = piece.new_empty(*piece.shape[:-2], units_h * out_scale, units_w * out_scale)
        out[..., top * out_scale:bottom * out_scale, left * out_scale:right * out_scale] = piece[
            ..., (top - t0) * out_scale:(bottom - t0) * out_scale, (left - l0) * out_scale:(right - l0) * out_scale]
    return out
