"""The ``vaecodec`` command: compress, decompress and inspect images from the shell.

Every failure ends as one line ``vaecodec: error: <message>`` on stderr and a distinct exit code (see
``vaecodec.errors``); tracebacks are for bugs only, and even then only with VAECODEC_DEBUG=1.

Startup is kept short: this module imports neither torch nor numpy (``vaecodec`` loads its names lazily),
and the commands defined in other modules are imported only when they run, so ``--help``, ``--version``
and ``info`` answer at once.
"""

import importlib
import importlib.util
import io
import os
import sys
import time
from pathlib import Path

import click

import vaecodec
from vaecodec import container
from vaecodec.errors import UnsupportedImage, UsageError, VaecodecError, printable
from vaecodec.quality import GRAY_QUALITY_OFFSET, QUALITY_STEP

from .batch import Tally, code_in_order, error_line, exit_code_for, gray_note, prepare_ahead, start_workers
from .files import (COMPRESSED_SUFFIX, IMAGE_SUFFIXES, LOSSY_FORMATS, OUTPUT_FORMATS, STANDARD_STREAM, Job,
                    decoded_suffix, output_format, plan, read_input, refuse_overwrite, walk, write_output)
from .progress import Status

INTERRUPTED_EXIT_CODE = 130  # what shells report for a process stopped by SIGINT (128 + 2)

# What quality 1-8 means: the shipped model's mean over the 24 Kodak photos (benchmarks/results/rd.md).
QUALITY_HELP = ("1 (smallest files) to 8 (best quality), in steps of 0.25. On the Kodak photos: quality 1 about "
                "0.03 bpp and 23.8 dB PSNR, 3 about 0.18 bpp / 28.0 dB, 5 about 0.59 bpp / 32.8 dB, 8 about "
                "1.56 bpp / 35.2 dB (benchmarks/results/rd.md). A grayscale image is coded "
                f"{GRAY_QUALITY_OFFSET * QUALITY_STEP:g} lower, nearer the PSNR a colour photo "
                "gets at the quality given.")


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


# Commands defined in other modules: name -> (module of this package, one-line help for `vaecodec --help`).
# They are imported only when run or asked for their own help; tests check the lines match their docstrings.
LAZY_COMMANDS = {
    "send": ("transfer", "Send images (or directories of them) to a `vaecodec receive` over TCP."),
    "receive": ("transfer", "Receive images from `vaecodec send` and store them in a directory."),
    "train": ("training", "Train a variable-rate model (all 8 quality levels in one run)."),
    "export": ("training", "Freeze a run into shipped weights (no optimizer state) and verify them."),
    "inspect": ("inspect", "Show where the bits of a .vae file went."),
    "server": ("server", "Keep torch and the model loaded in a background process: faster commands."),
}

# The commands that run the model, which `main` hands to a running `vaecodec server` (client.py, server.py).
SERVED_COMMANDS = ("compress", "decompress", "inspect")


class Group(OneLineErrors, click.Group):
    """A group whose commands from other modules are imported on first use (see LAZY_COMMANDS)."""

    def lazy_commands(self) -> dict:
        return {name: entry for name, entry in LAZY_COMMANDS.items()
                if importlib.util.find_spec(f"{__package__}.{entry[0]}") is not None}

    def list_commands(self, context):
        return sorted(set(super().list_commands(context)) | set(self.lazy_commands()))

    def get_command(self, context, name):
        command = super().get_command(context, name)
        if command is None and name in self.lazy_commands():
            module = importlib.import_module(f"{__package__}.{LAZY_COMMANDS[name][0]}")
            command = getattr(module, name)
            self.add_command(command, name)
        return command

    def format_commands(self, context, formatter):
        """The command list without importing the lazy commands' modules."""
        lazy = self.lazy_commands()
        rows = []
        for name in self.list_commands(context):
            if name in self.commands:
                command = self.commands[name]
                if not command.hidden:
                    rows.append((name, command.get_short_help_str(limit=200)))  # wrapped, not cut
            else:
                rows.append((name, lazy[name][1]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class Command(OneLineErrors, click.Command):
    pass


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(vaecodec.__version__, prog_name="vaecodec")
def cli():
    """vaecodec: a learned lossy image codec.

    \b
    Examples:
      vaecodec compress photo.png              # writes photo.vae
      vaecodec decompress photo.vae            # writes photo.decoded.png
      vaecodec info photo.vae
      vaecodec COMMAND --help
    """


def check_quality(context, parameter, quality):
    if quality is None:
        return None
    try:
        container.quality_to_index(quality)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return quality


READ_AHEAD_THREADS = 2  # threads of one process that read input files and entropy-code while the model runs


def default_batch_size(codec, batch_size):
    return batch_size or (8 if codec.device.type == "cuda" else 1)


def model_options(command):
    """Options shared by the commands that run the model."""
    command = click.option("-v", "--verbose", is_flag=True,
                           help="Also print the model, device and where the time went.")(command)
    command = click.option("--quiet", is_flag=True,
                           help="Print nothing but errors (no line per file, no progress).")(command)
    command = click.option("--skip-existing", is_flag=True,
                           help="Leave outputs that exist alone and code only the rest (resumes a folder job).")(command)
    command = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                           help="Images coded together; default 8 on a GPU, 1 on the CPU (where batching measured "
                                "no faster: benchmarks/results/speed.md).")(command)
    command = click.option("--workers", type=click.IntRange(min=1), default=None,
                           help="Worker processes for several files, each with its own model. Default: on the CPU "
                                "one per core (up to 4; measured 1.14x one process for compress and 1.32x for "
                                "decompress on 2 cores: benchmarks/results/folder_jobs.md), 1 on a GPU or with "
                                "--batch-size.")(command)
    command = click.option("--model", default=None,
                           help="Name of the model weights to use.  [default: the default model; for decompress, "
                                "the installed release that wrote the first input]")(command)
    command = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                           show_default=True, help="Where the model runs; auto takes a GPU when there is one.")(command)
    command = click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")(command)
    return command


def cluster_options(command):
    """--ray and --parquet: the job on a Ray cluster (cluster.py)."""
    command = click.option("--parquet", is_flag=True,
                           help="With --ray: the .vae files as rows of DST/part-00000.parquet (path, header fields, "
                                "bytes) instead of files; for decompress, SRC is such a Parquet dataset.")(command)
    command = click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
                           help="Run on a Ray cluster (pip install vaecodec[ray]): the one at ADDRESS, else RAY_ADDRESS "
                                "or a running local one, else a new one here. SRC and -o DST may be URIs "
                                "(s3://, gs://).")(command)
    return command


# How load_codec loads a model: a `vaecodec server` sets its own, which keeps the models it loaded between the
# commands it runs (server.Models).
model_loader = None


def release_of_first_file(jobs) -> str:
    """The installed release that wrote the first readable .vae input, else "default": files of an earlier default
    model decode without --model. Standard input is not peeked at (it can be read only once)."""
    for job in jobs:
        if job.problem is None and job.source != STANDARD_STREAM:
            try:
                header, _ = container.unpack(job.source.read_bytes())
            except (OSError, VaecodecError):
                return "default"  # the job reports the problem when it reaches the file
            from vaecodec.zoo import release_or_default

            return release_or_default(header)
    return "default"


def load_codec(model: str, device: str, verbose: bool):
    started = time.perf_counter()
    codec = (model_loader or vaecodec.load)(name=model, device=device)
    if verbose:
        click.echo(f"model {codec.model_name} ({codec.model_hash.hex()}) on {codec.device}, loaded in "
                   f"{time.perf_counter() - started:.2f} s", err=True)
    return codec


def check_single_stream(inputs, output, what: str):
    """``-`` (stdin) is one input alone, and needs -o (a file, or - for stdout)."""
    if STANDARD_STREAM in inputs:
        if len(inputs) > 1:
            raise UsageError(f"- (standard input) cannot be combined with other inputs")
        if output is None or output.is_dir():
            raise UsageError(f"reading {what} from standard input needs -o FILE, or -o - for standard output")


@cli.command(cls=Command)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output file for one input file (- for standard output); output directory for several inputs "
                   "or a directory.")
@click.option("-q", "--quality", type=float, default=None, callback=check_quality,
              help=QUALITY_HELP + "  [default: 5]")
@click.option("--size", "max_bytes", type=click.IntRange(min=1), metavar="BYTES",
              help="Choose for each image the largest quality whose file fits in BYTES.")
@click.option("--psnr", "min_psnr", type=click.FloatRange(min=0, min_open=True), metavar="DB",
              help="Choose for each image the smallest quality whose decoded image reaches DB dB PSNR.")
@click.option("--refine", "refine_steps", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="STEPS",
              help="Spend STEPS gradient steps per image searching for latents that code it better (50 is "
                   "a good choice; slow: each step costs about two decodes; gains in the README's refinement "
                   "table). Any vaecodec decodes the result.")
@model_options
@cluster_options
@click.pass_context
def compress(context, inputs, output, quality, max_bytes, min_psnr, refine_steps, force, device, model, workers,
             batch_size, skip_existing, quiet, verbose, ray_address, parquet):
    """Compress images to .vae files.

    INPUTS are image files or directories; directories are searched recursively for .png .jpg .jpeg .webp
    .tif .tiff .bmp .ppm .gif files. Each output is written beside its input unless -o is given; with
    several inputs or a directory, -o names a directory in which the input tree is mirrored. - reads one
    image from standard input (with -o). A file that cannot be compressed is reported and skipped; the
    exit code then is non-zero.

    --size and --psnr search the 29 qualities for each image with the model's own rate estimate and
    decoder (about 5 trial encodes, and decodes for --psnr) and print the quality chosen.

    \b
    Examples:
      vaecodec compress photo.png                  # writes photo.vae
      vaecodec compress photo.png -o small.vae -q 2
      vaecodec compress photo.png --size 20000     # largest quality that fits in 20 kB
      vaecodec compress photo.png --psnr 32        # smallest file with at least 32 dB
      vaecodec compress photos/ -o compressed/     # photos/a/b.png -> compressed/a/b.vae
      vaecodec compress photos/ -o compressed/ --skip-existing   # after adding photos
      vaecodec compress *.jpg --device cuda --batch-size 32
      vaecodec compress photo.png --refine 50       # slower, smaller
      cat photo.png | vaecodec compress - -o - > photo.vae
      vaecodec compress s3://bucket/photos/ -o s3://bucket/vae/ --ray auto   # on a Ray cluster
    """
    targets = [name for name, value in (("-q", quality), ("--size", max_bytes), ("--psnr", min_psnr))
               if value is not None]
    if len(targets) > 1:
        raise UsageError(f"{' and '.join(targets)} each choose the quality; give one of them")
    if refine_steps and (max_bytes or min_psnr):
        raise UsageError("--refine cannot be combined with --size or --psnr (the search measures unrefined files)")
    quality = container.DEFAULT_QUALITY if quality is None else quality
    if ray_address is not None or parquet:
        from .cluster import compress_on_ray, refuse_with_ray

        refuse_with_ray(ray_address, size=max_bytes, psnr=min_psnr, skip_existing=skip_existing)
        context.exit(compress_on_ray(inputs, output, quality, refine_steps, force, model or "default", ray_address,
                                     parquet))
    check_single_stream(inputs, output, "an image")
    count = count_jobs(plan(inputs, output, IMAGE_SUFFIXES, COMPRESSED_SUFFIX))
    if not count:
        raise UsageError(f"no image files ({' '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    if skip_existing and not force and nothing_to_do(plan(inputs, output, IMAGE_SUFFIXES, COMPRESSED_SUFFIX), quiet):
        context.exit(0)
    jobs = plan(inputs, output, IMAGE_SUFFIXES, COMPRESSED_SUFFIX)
    model = model or "default"
    codec = load_codec(model, device, verbose)

    def prepare(job: Job):
        if job.problem:
            raise job.problem
        skip_or_refuse(job, force, skip_existing)  # before the costly part
        started = time.perf_counter()
        image, job.bytes_in = open_input_image(job.source)
        job.seconds += time.perf_counter() - started
        job.width, job.height = image.size
        return image

    def save(job: Job, coded) -> tuple:
        data, seconds = coded[:2]
        job.seconds += seconds
        write_output(job.target, lambda file: file.write(data), force)
        return len(data), len(data)

    if max_bytes or min_psnr:
        from vaecodec.targeting import compress_to_psnr, compress_to_size

        def target(image):
            """(data, seconds, what was chosen), or the error as the outcome: retrying would search again."""
            started = time.perf_counter()
            try:
                found = (compress_to_size(codec, image, max_bytes) if max_bytes
                         else compress_to_psnr(codec, image, min_psnr))
            except VaecodecError as error:
                return error
            return found.data, time.perf_counter() - started, found.describe()

        code_many, code_one = (lambda images: map(target, images)), target
    elif pool := start_workers(context, codec, workers, batch_size, count, model):
        def code_many(images):  # an image's error comes in its place, never raised
            return pool.iter_compress_timed(images, quality=quality, refine_steps=refine_steps)

        def code_one(image):
            return next(pool.iter_compress_timed([image], quality=quality, refine_steps=refine_steps))
    else:
        def code_many(images):
            return codec.iter_compress_timed(images, quality=quality, workers=READ_AHEAD_THREADS,
                                             batch_size=default_batch_size(codec, batch_size),
                                             refine_steps=refine_steps)

        def code_one(image):
            return next(codec.iter_compress_timed([image], quality=quality, batch_size=1, refine_steps=refine_steps))

    if not (max_bytes or min_psnr):
        code_many, code_one = noting_gray(code_many, code_one, quality)
    with Status(count, "compressing", enabled=not quiet) as status:
        outcomes = code_in_order(prepare_ahead(prepare, jobs, READ_AHEAD_THREADS), code_many, code_one,
                                 status.file_started)
        exit_code = finish(codec, status, outcomes, save, quiet, verbose, output)
    context.exit(exit_code)


@cli.command(cls=Command)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Output image for one input file (its suffix picks the format; - for standard output); "
                   "output directory for several inputs or a directory.")
@click.option("--format", "format_name", type=click.Choice([suffix[1:] for suffix in OUTPUT_FORMATS]),
              help="Image format to write.  [default: png, or from the suffix of -o]")
@click.option("--image-quality", type=click.IntRange(1, 100), default=None, metavar="1-100",
              help="Quality of JPEG, WebP and AVIF outputs.  [default: 95]")
@click.option("--max-pixels", type=click.IntRange(min=1), default=container.DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest image decoded (width x height); a file announcing more is refused before decoding, "
                   "since a small file can ask for a large, slow decode.")
@model_options
@cluster_options
@click.pass_context
def decompress(context, inputs, output, format_name, image_quality, max_pixels, force, device, model, workers,
               batch_size, skip_existing, quiet, verbose, ray_address, parquet):
    """Decompress .vae files to images.

    INPUTS are .vae files or directories (searched recursively for .vae files). Beside its input, photo.vae
    decodes to photo.decoded.png, so the photo that was compressed is never in the way; with -o the output
    is named as given (a directory mirrors the input tree, as for compress), and - writes to standard
    output. Outputs are PNG unless -o or --format says otherwise. Each file is fully checked before
    decoding; a corrupt one is reported and skipped, and the exit code then is non-zero.

    \b
    Examples:
      vaecodec decompress photo.vae                # writes photo.decoded.png
      vaecodec decompress photo.vae -o photo.jpg --image-quality 90
      vaecodec decompress photo.vae -o photo.avif  # where Pillow writes AVIF
      vaecodec decompress compressed/ -o restored/ --format webp
      vaecodec decompress photo.vae -o - --format png | display
      vaecodec decompress s3://bucket/vae/ -o restored/ --ray auto       # on a Ray cluster
    """
    check_single_stream(inputs, output, "a .vae file")
    single_file = len(inputs) == 1 and not inputs[0].is_dir()
    suffix = output_suffix(output if single_file else None, format_name)
    pillow_format, save_options = output_format(suffix)
    if image_quality is not None:
        if pillow_format not in LOSSY_FORMATS:
            raise UsageError(f"--image-quality applies to JPEG, WebP and AVIF outputs, not {pillow_format}")
        save_options = {**save_options, "quality": image_quality}
    if ray_address is not None or parquet:
        from .cluster import decompress_on_ray, refuse_with_ray

        refuse_with_ray(ray_address, skip_existing=skip_existing)
        context.exit(decompress_on_ray(inputs, output, suffix, pillow_format, save_options, force, model or "default",
                                       ray_address, parquet))
    beside = decoded_suffix(suffix)  # photo.vae -> photo.decoded.png when written beside its input
    count = count_jobs(plan(inputs, output, [COMPRESSED_SUFFIX], suffix, beside))
    if not count:
        raise UsageError(f"no {COMPRESSED_SUFFIX} files found in {', '.join(map(str, inputs))}")
    if skip_existing and not force and nothing_to_do(plan(inputs, output, [COMPRESSED_SUFFIX], suffix, beside), quiet):
        context.exit(0)
    model = model or release_of_first_file(plan(inputs, output, [COMPRESSED_SUFFIX], suffix, beside))
    jobs = plan(inputs, output, [COMPRESSED_SUFFIX], suffix, beside)
    codec = load_codec(model, device, verbose)

    def prepare(job: Job):
        if job.problem:
            raise job.problem
        if not force and job.target.with_suffix("") == job.source.with_suffix("") and job.target.exists():
            # -o photo.png beside photo.vae: most likely the photo that was compressed. No --force hint here.
            raise UsageError(f"{job.target} exists and may be the original of {job.source.name}; "
                             f"write the decoded image under another name")
        skip_or_refuse(job, force, skip_existing)
        started = time.perf_counter()
        data = read_input(job.source)
        header = codec.header(data, max_pixels)  # CRC, version, model and size, before spending time on decoding
        job.seconds += time.perf_counter() - started
        job.bytes_in = len(data)
        job.width, job.height = header.width, header.height
        return data

    def save(job: Job, decoded) -> tuple:
        image, seconds = decoded  # from worker processes, the bytes of the image file they wrote
        started = time.perf_counter()
        size = write_output(job.target, (lambda file: file.write(image)) if isinstance(image, bytes) else
                            (lambda file: image.save(file, format=pillow_format, **save_options)), force)
        job.seconds += seconds + time.perf_counter() - started
        return size, job.bytes_in

    pool = start_workers(context, codec, workers, batch_size, count, model)
    with Status(count, "decompressing", enabled=not quiet) as status:
        outcomes = code_in_order(prepare_ahead(prepare, jobs, READ_AHEAD_THREADS),
                                 (lambda datas: pool.iter_decompress_timed(datas, pillow_format, save_options,
                                                                           max_pixels=max_pixels)) if pool else
                                 lambda datas: codec.iter_decompress_timed(
                                     datas, workers=READ_AHEAD_THREADS, batch_size=default_batch_size(codec, batch_size),
                                     max_pixels=max_pixels),
                                 lambda data: next(codec.iter_decompress_timed([data], batch_size=1,
                                                                               max_pixels=max_pixels)),
                                 status.file_started)
        exit_code = finish(codec, status, outcomes, save, quiet, verbose, output)
    context.exit(exit_code)


def noting_gray(code_many, code_one, quality: float) -> tuple:
    """``code_many`` and ``code_one`` whose (data, seconds) results also carry the note of a file coded at
    another quality than ``quality`` (a grayscale image: ``gray_note``); errors pass as they are."""
    def noted(result):
        if not isinstance(result, tuple):
            return result
        header, _ = container.unpack(result[0])
        return (*result, gray_note(quality, header.quality))

    return (lambda images: map(noted, code_many(images))), (lambda image: noted(code_one(image)))


class Skipped(VaecodecError):
    """Not a failure: the output exists and --skip-existing asks to leave it."""

    exit_code = 0


def nothing_to_do(jobs, quiet: bool) -> bool:
    """True (and says so) when every output of a --skip-existing job exists: no model needs loading."""
    count = 0
    for job in jobs:
        if job.problem or job.target == STANDARD_STREAM or not job.target.exists():
            return False
        count += 1
    if not quiet:
        click.echo(f"no images coded, {count} skipped (outputs exist)")
    return True


def skip_or_refuse(job: Job, force: bool, skip_existing: bool) -> None:
    if skip_existing and not force and job.target != STANDARD_STREAM and job.target.exists():
        raise Skipped(f"{job.target} exists")
    refuse_overwrite(job.target, force)


def open_input_image(source: Path) -> tuple:
    """(upright RGB or L image, bytes read) from an image file, or from standard input for ``-``."""
    if source != STANDARD_STREAM:
        return vaecodec.open_image(source), source.stat().st_size
    from PIL import Image, ImageOps

    data = read_input(source)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
    except (Image.UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
        raise UnsupportedImage(f"standard input: cannot read image ({type(error).__name__}: {error})") from None
    return vaecodec.open_image(image), len(data)


def output_suffix(output_file, format_name) -> str:
    """The suffix naming the output format: --format, else the suffix of a single output file, else .png."""
    if output_file is None or output_file == STANDARD_STREAM or output_file.is_dir():
        return f".{format_name or 'png'}"
    if format_name is None:
        output_format(output_file.suffix)  # refuses a suffix we cannot write
        return output_file.suffix
    named = output_file.suffix.lower()
    if named in OUTPUT_FORMATS and output_format(named)[0] != output_format(f".{format_name}")[0]:
        raise UsageError(f"-o {output_file} and --format {format_name} disagree; give one of them")
    return f".{format_name}"


def count_jobs(jobs) -> int:
    """How many files a plan holds, counted by walking it once: cheaper than keeping the list of a folder of
    100,000 images in memory for the whole run, and it finds a missing input before the model loads."""
    return sum(1 for _ in jobs)


def finish(codec, status: Status, outcomes, save, quiet: bool, verbose: bool, output) -> int:
    """Save each coded result (a tuple: data, seconds[, note]), print a line per file (a summary for several)
    and return the exit code. Lines go to stdout, or to stderr when the coded data itself goes to stdout
    (-o -); ``status`` shows progress on stderr meanwhile."""
    to_stderr = output == STANDARD_STREAM
    codec.on_progress = status.step
    tally = Tally(status, quiet=quiet, to_stderr=to_stderr, verbose=verbose)
    try:
        for job, outcome in outcomes:
            if isinstance(outcome, Skipped):
                tally.skipped(job)
            elif isinstance(outcome, VaecodecError):
                tally.failed(job, outcome)
            else:
                try:
                    bytes_out, compressed_bytes = save(job, outcome)
                except VaecodecError as error:
                    tally.failed(job, error)
                else:
                    note = outcome[2] if len(outcome) > 2 else ""
                    tally.succeeded(job, bytes_out, compressed_bytes, note)
    finally:
        codec.on_progress = None
    if (status.total > 1 or verbose) and not quiet:
        status.echo(tally.summary(), err=to_stderr)
    if verbose:
        timings = codec.timings
        click.echo(f"time in transforms {timings.transform:.2f} s, in entropy coding {timings.entropy:.2f} s "
                   f"(worker threads overlap them)", err=True)
    return tally.exit_code()


@cli.command(cls=Command)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.pass_context
def info(context, paths):
    """Check .vae files and show their headers (no model needed).

    PATHS are .vae files or directories, searched recursively for .vae files.

    \b
    Examples:
      vaecodec info photo.vae
      vaecodec info compressed/
    """
    failed_classes = []
    shown = 0
    for path in info_files(paths):
        try:
            data = read_input(path)
            header, payload = container.unpack(data)
        except VaecodecError as error:
            failed_classes.append(type(error))
            message = str(error)
            click.echo(error_line(printable(message if str(path) in message else f"{path}: {message}")), err=True)
            continue
        fields = {  # what comes from the file is printed escaped: it must not drive the terminal
            "file": printable(path),
            "model name": printable(header.model_name),
            "model hash": header.model_hash.hex(),
            "model type": _model_type(header),
            "format version": data[len(container.MAGIC)],
            "quality": f"{header.quality:g}",
            "width": header.width,
            "height": header.height,
            "mode": header.mode,
            "payload bytes": len(payload),
            "total bytes": len(data),
            "bpp": f"{8 * len(data) / (header.width * header.height):.4f}",
        }
        if shown:
            click.echo()
        shown += 1
        for name, value in fields.items():
            click.echo(f"{name + ':':16}{value}")
    context.exit(exit_code_for(failed_classes))


def _model_type(header) -> str:
    """The latent codec type of the model that wrote a file, when that model is installed."""
    from vaecodec import zoo

    release = zoo.installed_release(header.model_name, header.model_hash)
    if release is None:
        return "unknown (model not installed)"
    return printable(zoo.model_type(zoo.weights_path(release)))


def info_files(paths):
    """The files named, with each directory replaced by the .vae files below it."""
    for path in paths:
        if path.is_dir():
            found = False
            for found in walk(path, [COMPRESSED_SUFFIX]):
                yield found
            if not found:
                raise UsageError(f"no {COMPRESSED_SUFFIX} files found in {path}")
        else:
            yield path


def main():
    """The `vaecodec` command: a model command goes to a running `vaecodec server` if one takes it (the same
    command run there, its output streamed back), else runs here."""
    args = sys.argv[1:]
    if args[:1] and args[0] in SERVED_COMMANDS:
        from .client import forward, wants_server

        if wants_server(args):
            try:
                code = forward(args)
            except KeyboardInterrupt:  # before the server started the command
                sys.exit(INTERRUPTED_EXIT_CODE)
            if code is not None:
                sys.exit(code)
    cli(prog_name="vaecodec")


if __name__ == "__main__":
    main()
