"""The rate-distortion figure: PSNR and MS-SSIM (dB) against bpp, codecs measured in the run as solid
lines, published curves dashed. Input is the summary that benchmarks.rd writes to rd_summary.json.

    python -m benchmarks.plot benchmarks/results/rd_summary.json benchmarks/results/rd.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MAX_BPP_SHOWN = 2.5
PANELS = [("psnr", "PSNR RGB (dB)"), ("msssim_db", "MS-SSIM RGB (dB)")]


def plot_rd(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(PANELS), figsize=(15, 6.5))
    colours = iter(plt.get_cmap("tab10").colors + plt.get_cmap("Dark2").colors)
    for name, codec in summary["codecs"].items():
        if not codec.get("points"):
            continue
        points = [point for point in codec["points"] if point["bpp"] <= MAX_BPP_SHOWN * 1.2]
        label = name if points else f"{name} (every point above {MAX_BPP_SHOWN} bpp)"
        is_reference = name == summary["bd"]["reference_codec"]
        style = dict(
            color="black" if is_reference else next(colours),
            linestyle="-",
            marker="o",
            markersize=4 if not is_reference else 6,
            linewidth=2.5 if is_reference else 1.5,
            label=label,
            zorder=3 if is_reference else 2,
        )
        for axis, (key, _) in zip(axes, PANELS):
            axis.plot([p["bpp"] for p in points], [p[key] for p in points], **style)

    for label, curve in summary["published"].items():
        style = dict(color=next(colours), linestyle="--", marker="x", markersize=4, linewidth=1.2,
                     label=f"{label} (published)")
        for axis, (key, _) in zip(axes, PANELS):
            values = curve.get(key)
            if values:
                kept = [(b, v) for b, v in zip(curve["bpp"], values) if b <= MAX_BPP_SHOWN * 1.2]
                axis.plot([b for b, _ in kept], [v for _, v in kept], **style)

    for axis, (_, ylabel) in zip(axes, PANELS):
        axis.set_xlabel("bits per pixel (whole file)")
        axis.set_ylabel(ylabel)
        axis.set_xlim(0, MAX_BPP_SHOWN)
        axis.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    run = "quick run" if summary.get("quick") else "full run"
    figure.suptitle(f"Kodak, {summary['images']} images ({run}, {summary['date']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    summary_path, png_path = (Path(arg) for arg in sys.argv[1:3])
    plot_rd(json.loads(summary_path.read_text()), png_path)
