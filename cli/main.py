"""The ``vaecodec`` command: compress, decompress and inspect images from the shell.

Every failure ends as one line ``vaecodec: error: <message>`` on stderr and a distinct exit code (see
``vaecodec.errors``); tracebacks are for bugs only, and even then only with VAECODEC_DEBUG=1.
"""

import os
import sys
from pathlib import Path

import click

import vaecodec
from vaecodec import container
from vaecodec.errors import UsageError, VaecodecError

from .batch import Tally, code_in_order, error_line, exit_code_for, prepare_ahead, progress
from .files import (COMPRESSED_SUFFIX, IMAGE_SUFFIXES, OUTPUT_FORMATS, Job, output_format, plan,
                    refuse_overwrite, write_atomically)

INTERRUPTED_EXIT_CODE = 130  # what shells report for a process stopped by SIGINT (128 + 2)


class OneLineErrors:
    """Mixin for click commands: run in non-standalone mode and turn every way out into one line + exit code."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:  # a caller that wants click's exceptions gets them untouched
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            sys.exit(result if isinstance(result, int) else 0)  # an int here is a ctx.exit(code)
        except VaecodecError as error:
            click.echo(error_line(str(error)), err=True)
            sys.exit(error.exit_code)
        except NoArgsIsHelp as error:
            error.show()  # the command's help: several lines, on purpose
            sys.exit(error.exit_code)
        except click.ClickException as error:
            click.echo(error_line(error.format_message() + help_hint(error)), err=True)
            sys.exit(error.exit_code)
        except (click.Abort, KeyboardInterrupt) as error:
            if isinstance(error, KeyboardInterrupt) or isinstance(error.__cause__, KeyboardInterrupt):
                sys.exit(INTERRUPTED_EXIT_CODE)
            click.echo(error_line("aborted"), err=True)
            sys.exit(1)
        except BrokenPipeError:
            # The reader went away (`vaecodec info x.vae | head -1`). Point stdout at /dev/null so that Python's
            # final flush does not fail a second time and print a warning.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as error:
            if os.environ.get("VAECODEC_DEBUG"):
                raise
            click.echo(error_line(f"internal error, please report it: {type(error).__name__}: {error} "
                                  "(set VAECODEC_DEBUG=1 to see the traceback)"), err=True)
            sys.exit(1)


# click >= 8.2 signals "no arguments, show the help" with this UsageError subclass; older versions exit directly.
NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())


def help_hint(error: click.ClickException) -> str:
    context = getattr(error, "ctx", None)
    return f" (see '{context.command_path} --help')" if context is not None else ""


class Group(OneLineErrors, click.Group):
    pass


class Command(OneLineErrors, click.Command):
    pass


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vaecodec")
def cli():
    """vaecodec: a learned lossy image codec.

    \b
    Examples:
      vaecodec compress photo.png              # writes photo.vae
      vaecodec decompress photo.vae            # writes photo.png
      vaecodec info photo.vae
      vaecodec COMMAND --help
    """


def check_quality(context, parameter, quality: float) -> float:
    try:
        container.quality_to_index(quality)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return quality


def default_batch_size(codec, batch_size):
    return batch_size or (8 if codec.device.type == "cuda" else 1)


def model_options(command):
    """Options shared by the commands that run the model."""
    command = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                           help="Images coded together; default 8 on a GPU, 1 on the CPU (where batching measured "
                                "no faster: benchmarks/results/speed.md).")(command)
    command = click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
                           help="Threads that read input files ahead of the model and entropy-code.")(command)
    command = click.option("--model", default="default", show_default=True,
                           help="Name of the model weights to use.")(command)
    command = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                           show_default=True, help="Where the model runs; auto takes a GPU when there is one.")(command)
    command = click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")(command)
    return command


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output file for one input file; output directory for several inputs or a directory.")
@click.option("-q", "--quality", type=float, default=container.DEFAULT_QUALITY, show_default=True,
              callback=check_quality,
              help="1 (smallest files) to 8 (best quality), in steps of 0.25.")
@click.option("--refine", "refine_steps", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="STEPS",
              help="Spend STEPS gradient steps per image searching for latents that code it better (50 is "
                   "a good choice; slow: each step costs about two decodes; gains in the README's refinement "
                   "table). Any vaecodec decodes the result.")
@model_options
@click.pass_context
def compress(context, inputs, output, quality, refine_steps, force, device, model, workers, batch_size):
    """Compress images to .vae files.

    INPUTS are image files or directories; directories are searched recursively for .png .jpg .jpeg .webp
    .tif .tiff .bmp .ppm .gif files. Each output is written beside its input unless -o is given; with
    several inputs or a directory, -o names a directory in which the input tree is mirrored. A file that
    cannot be compressed is reported and skipped; the exit code then is non-zero.

    \b
    Examples:
      vaecodec compress photo.png                  # writes photo.vae
      vaecodec compress photo.png -o small.vae -q 2
      vaecodec compress photos/ -o compressed/     # photos/a/b.png -> compressed/a/b.vae
      vaecodec compress *.jpg --device cuda --batch-size 32
      vaecodec compress photo.png --refine 50       # slower, smaller
    """
    count = count_jobs(plan(inputs, output, IMAGE_SUFFIXES, COMPRESSED_SUFFIX))
    if not count:
        raise UsageError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    jobs = plan(inputs, output, IMAGE_SUFFIXES, COMPRESSED_SUFFIX)
    codec = vaecodec.load(name=model, device=device)

    def prepare(job: Job):
        if job.problem:
            raise job.problem
        refuse_overwrite(job.target, force)  # before the costly part
        image = vaecodec.open_image(job.source)
        job.bytes_in = job.source.stat().st_size
        job.width, job.height = image.size
        return image

    def save(job: Job, data: bytes) -> tuple:
        write_atomically(job.target, lambda file: file.write(data), force)
        return len(data), len(data)

    outcomes = code_in_order(prepare_ahead(prepare, jobs, workers),
                             lambda images: codec.iter_compress(images, quality=quality, workers=workers,
                                                                 batch_size=default_batch_size(codec, batch_size),
                                                                 refine_steps=refine_steps),
                             lambda image: codec.compress(image, quality=quality, refine_steps=refine_steps))
    context.exit(finish(count, outcomes, save, "Compressing"))


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output image for one input file (its suffix picks the format); output directory for several "
                   "inputs or a directory.")
@click.option("--format", "format_name", type=click.Choice([suffix[1:] for suffix in OUTPUT_FORMATS]),
              help="Image format to write.  [default: png, or from the suffix of -o]")
@model_options
@click.pass_context
def decompress(context, inputs, output, format_name, force, device, model, workers, batch_size):
    """Decompress .vae files to images.

    INPUTS are .vae files or directories (searched recursively for .vae files). Outputs are PNG unless -o
    or --format says otherwise, written beside each input or, with -o, as for compress. Each file is fully
    checked before decoding; a corrupt one is reported and skipped, and the exit code then is non-zero.

    \b
    Examples:
      vaecodec decompress photo.vae                # writes photo.png
      vaecodec decompress photo.vae -o photo.jpg   # JPEG at quality 95
      vaecodec decompress compressed/ -o restored/ --format webp
    """
    single_file = len(inputs) == 1 and not inputs[0].is_dir()
    suffix = output_suffix(output if single_file else None, format_name)
    pillow_format, save_options = output_format(suffix)
    count = count_jobs(plan(inputs, output, [COMPRESSED_SUFFIX], suffix))
    if not count:
        raise UsageError(f"no {COMPRESSED_SUFFIX} files found in {', '.join(map(str, inputs))}")
    jobs = plan(inputs, output, [COMPRESSED_SUFFIX], suffix)
    codec = vaecodec.load(name=model, device=device)

    def prepare(job: Job):
        if job.problem:
            raise job.problem
        refuse_overwrite(job.target, force)
        data = read_file(job.source)
        header = codec.header(data)  # CRC, format version and model, before spending time on decoding
        job.bytes_in = len(data)
        job.width, job.height = header.width, header.height
        return data

    def save(job: Job, image) -> tuple:
        write_atomically(job.target, lambda file: image.save(file, format=pillow_format, **save_options), force)
        return job.target.stat().st_size, job.bytes_in

    outcomes = code_in_order(prepare_ahead(prepare, jobs, workers),
                             lambda datas: codec.iter_decompress(datas, workers=workers,
                                                                 batch_size=default_batch_size(codec, batch_size)),
                             codec.decompress)
    context.exit(finish(count, outcomes, save, "Decompressing"))


def output_suffix(output_file, format_name) -> str:
    """The suffix naming the output format: --format, else the suffix of a single output file, else .png."""
    if output_file is None or output_file.is_dir():
        return f".{format_name or 'png'}"
    if format_name is None:
        output_format(output_file.suffix)  # refuses a suffix we cannot write
        return output_file.suffix
    named = output_file.suffix.lower()
    if named in OUTPUT_FORMATS and output_format(named)[0] != output_format(f".{format_name}")[0]:
        raise UsageError(f"-o {output_file} and --format {format_name} disagree; give one of them")
    return f".{format_name}"


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise VaecodecError(f"cannot read {path}: {error.strerror or error}") from error


def count_jobs(jobs) -> int:
    """How many files a plan holds, counted by walking it once: cheaper than keeping the list of a folder of
    100,000 images in memory for the whole run, and it finds a missing input before the model loads."""
    return sum(1 for _ in jobs)


def finish(count: int, outcomes, save, label: str) -> int:
    """Save each coded result, print a line per file (a summary for several) and return the exit code."""
    with progress(count, label) as bar:
        tally = Tally(bar)
        for job, outcome in outcomes:
            if isinstance(outcome, VaecodecError):
                tally.failed(job, outcome)
                continue
            try:
                bytes_out, compressed_bytes = save(job, outcome)
            except VaecodecError as error:
                tally.failed(job, error)
            else:
                tally.succeeded(job, bytes_out, compressed_bytes)
    if count > 1:
        click.echo(tally.summary())
    return tally.exit_code()


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
def info(context, files):
    """Check .vae files and show their headers (no model needed).

    \b
    Examples:
      vaecodec info photo.vae
      vaecodec info compressed/*.vae
    """
    failed_classes = []
    for index, path in enumerate(files):
        try:
            data = read_file(path)
            header, payload = container.unpack(data)
        except VaecodecError as error:
            failed_classes.append(type(error))
            click.echo(error_line(f"{path}: {error}"), err=True)
            continue
        fields = {
            "file": path,
            "model name": header.model_name,
            "model hash": header.model_hash.hex(),
            "format version": data[len(container.MAGIC)],
            "quality": f"{header.quality:g}",
            "width": header.width,
            "height": header.height,
            "mode": header.mode,
            "payload bytes": len(payload),
            "total bytes": len(data),
            "bpp": f"{8 * len(data) / (header.width * header.height):.4f}",
        }
        if index:
            click.echo()
        for name, value in fields.items():
            click.echo(f"{name + ':':16}{value}")
    context.exit(exit_code_for(failed_classes))


# --- Commands defined in other modules are registered below (send, receive, train, export, inspect). ---
from .inspect import inspect  # noqa: E402  (after cli exists)
from .training import export, train  # noqa: E402
from .transfer import receive, send  # noqa: E402

for command in (send, receive, train, export, inspect):
    cli.add_command(command)


def main():
    cli(prog_name="vaecodec")


if __name__ == "__main__":
    main()
