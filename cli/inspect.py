"""`vaecodec inspect`: where the bits of a .vae file went (vaecodec/inspect.py does the measuring)."""

from pathlib import Path

import click

from vaecodec import container
from vaecodec.errors import VaecodecError

from .files import output_format, refuse_overwrite, write_atomically


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--heatmap", type=click.Path(path_type=Path), metavar="IMAGE",
              help="Also write a picture of bits per 16x16 block over the decoded image (format from the suffix).")
@click.option("--model", default=None,
              help="Model weights to use.  [default: the release named in the file]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the model runs.")
@click.option("-f", "--force", is_flag=True, help="Overwrite an existing heatmap file.")
def inspect(file, heatmap, model, device, force):
    """Show where the bits of a .vae file went.

    Prints the bits of each channel group (z, the hyperprior's side information, and y, the latents) and
    of every latent channel, busiest first. They are exact code lengths: -log2 of each decoded symbol's
    integer frequency in the table that coded it (16 more bits per escaped value); they add up to the
    payload within a few bytes (the range coder's final state, its 32-bit words and rounding).

    \b
    Examples:
      vaecodec inspect photo.vae
      vaecodec inspect photo.vae --heatmap bits.png
    """
    from vaecodec.codec import load  # torch only once the command runs: --help stays instant
    from vaecodec.inspect import bit_usage, heatmap as heatmap_image
    from vaecodec.zoo import release_or_default

    if heatmap is not None:
        pillow_format, save_options = output_format(heatmap.suffix)
        refuse_overwrite(heatmap, force)  # before the costly part
    try:
        data = file.read_bytes()
    except OSError as error:
        raise VaecodecError(f"cannot read {file}: {error.strerror or error}") from error
    try:
        header, _ = container.unpack(data)
    except VaecodecError as error:
        raise type(error)(f"{file}: {error}") from None
    codec = load(model or release_or_default(header), device)
    usage = bit_usage(codec, data)
    if heatmap is not None:  # before printing, so that `| head` cannot stop it
        image = heatmap_image(usage, codec.decompress(data))
        write_atomically(heatmap, lambda out: image.save(out, format=pillow_format, **save_options), force)

    echo_summary(file, usage)
    for group, name in (("y", "latent channels (y)"), ("z", "hyperprior channels (z)")):
        click.echo()
        echo_channels(name, usage.per_channel(group), getattr(usage, f"{group}_bits")[0].size)
    if heatmap is not None:
        click.echo(f"\nheatmap of bits per 16x16 block written to {heatmap}")


def echo_summary(file: Path, usage) -> None:
    header = usage.header
    pixels = header.width * header.height
    coded_bytes = usage.total_bits / 8
    click.echo(f"{file}: {header.width}x{header.height} {header.mode}, quality {header.quality:g}, "
               f"model {header.model_name} ({header.model_hash.hex()})")
    click.echo(f"payload {usage.payload_bytes} bytes ({8 * usage.payload_bytes / pixels:.4f} bpp); code lengths "
               f"sum to {coded_bytes:.1f} bytes ({usage.payload_bytes - coded_bytes:+.1f} in the payload: the range "
               f"coder's final state, 32-bit words and rounding)")
    if usage.padding_bits:
        click.echo(f"{usage.padding_bits / 8:.1f} bytes code the padding beyond the picture's edges "
                   "(images are padded to a multiple of 64 pixels)")
    if usage.escapes:
        click.echo(f"{usage.escapes} values outside their tables were coded raw (16 bits each)")
    click.echo()
    click.echo(f"{'group':<24}{'elements':>10}{'bytes':>12}{'bits/element':>14}{'share':>8}")
    for name, (elements, bits) in usage.groups().items():
        click.echo(f"{name:<24}{elements:>10}{bits / 8:>12.1f}{bits / elements:>14.3f}"
                   f"{100 * bits / usage.total_bits:>7.1f}%")


def echo_channels(name: str, bits_per_channel, elements_per_channel: int) -> None:
    """One line per channel, busiest first; shares are of the group's bits."""
    total_bits = float(bits_per_channel.sum())
    click.echo(f"{name}, busiest first:")
    click.echo(f"{'channel':>8}{'bytes':>12}{'bits/element':>14}{'share':>8}{'cumulative':>12}")
    cumulative = 0.0
    for channel in sorted(range(len(bits_per_channel)), key=lambda c: -bits_per_channel[c]):
        bits = float(bits_per_channel[channel])
        cumulative += bits
        click.echo(f"{channel:>8}{bits / 8:>12.1f}{bits / elements_per_channel:>14.3f}"
                   f"{100 * bits / total_bits:>7.1f}%{100 * cumulative / total_bits:>11.1f}%")
