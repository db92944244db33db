"""Which files a command reads and writes, and writing them so that a failure never leaves half a file.

``plan`` turns the command-line inputs (files and folders) into ``Job``s, one per file, each with the path to
write. It only lists paths: folders are walked lazily and images are opened later, one at a time.
``write_atomically`` writes into a temporary file beside the target and renames it into place. The path
``-`` stands for standard input or output (``read_input``, ``write_output``).
"""

import io
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, BinaryIO, Iterable, Iterator, Optional

from vaecodec.errors import UsageError, VaecodecError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".ppm", ".gif")
COMPRESSED_SUFFIX = ".vae"
DECODED_MARK = ".decoded"  # photo.vae decodes to photo.decoded.png beside it, never onto the photo itself
STANDARD_STREAM = Path("-")  # as an input: standard input; as an output: standard output

# Image formats `decompress` writes, by file suffix: (Pillow format name, save options). The decoded image is
# already lossy, so lossy formats get a high quality by default to avoid adding visible loss on top.
DEFAULT_IMAGE_QUALITY = 95
LOSSY_FORMATS = ("JPEG", "WEBP", "AVIF")
OUTPUT_FORMATS = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": DEFAULT_IMAGE_QUALITY}),
    ".jpeg": ("JPEG", {"quality": DEFAULT_IMAGE_QUALITY}),
    ".webp": ("WEBP", {"quality": DEFAULT_IMAGE_QUALITY}),
    ".avif": ("AVIF", {"quality": DEFAULT_IMAGE_QUALITY}),
    ".tif": ("TIFF", {}),
    ".tiff": ("TIFF", {}),
    ".bmp": ("BMP", {}),
    ".ppm": ("PPM", {}),
}


@dataclass(slots=True)  # slots: a run may plan many thousands of these
class Job:
    """One file to code: where it comes from, where it goes, and what was measured on the way."""

    source: Path
    target: Path
    problem: Optional[VaecodecError] = None  # known before reading the file, e.g. two inputs share a target
    bytes_in: int = 0
    width: int = 0
    height: int = 0
    seconds: float = 0.0  # spent on this file alone: reading, coding, writing (threads overlap files)


def plan(inputs: Iterable[Path], output: Optional[Path], suffixes: Iterable[str], target_suffix: str,
         beside_suffix: Optional[str] = None) -> Iterator[Job]:
    """One Job per input file, folders expanded to their files with one of ``suffixes``.

    One input file: ``output`` is the target file (or a folder to put it in), default beside the input.
    Several inputs or a folder: ``output`` is a folder; a folder's tree is mirrored below it (dir/a/b.png ->
    OUT/a/b.vae) and a loose file lands at its top. Without ``output`` every target sits beside its source,
    with ``beside_suffix`` (default ``target_suffix``). ``-`` is standard input or output.
    """
    inputs = [Path(path) for path in inputs]
    beside_suffix = beside_suffix or target_suffix
    if inputs == [STANDARD_STREAM]:
        yield Job(STANDARD_STREAM, output if output == STANDARD_STREAM else single_target(
            STANDARD_STREAM, output, target_suffix, target_suffix))
        return
    for path in inputs:
        if not path.exists():
            raise UsageError(f"{path}: no such file or directory")
    if len(inputs) == 1 and not inputs[0].is_dir():
        yield Job(inputs[0], single_target(inputs[0], output, target_suffix, beside_suffix))
        return
    if output == STANDARD_STREAM:
        raise UsageError("-o - (standard output) takes one input file, not several or a directory")
    if output is not None and output.exists() and not output.is_dir():
        raise UsageError(f"-o {output} must be a directory when there are several inputs or a directory")

    claimed = set()  # targets already given out: two sources must never write the same file
    for root in inputs:
        pairs = ((path, path.relative_to(root)) for path in walk(root, suffixes)) if root.is_dir() else [(root, Path(root.name))]
        for source, relative in pairs:
            beside = output is None
            target = (source if beside else output / relative).with_suffix(beside_suffix if beside else target_suffix)
            job = Job(source, target)
            key = os.path.normcase(os.path.abspath(target))
            if target.resolve() == source.resolve():
                job.problem = UsageError(f"{source}: output would overwrite the input itself")
            elif key in claimed:
                job.problem = UsageError(f"{source}: another input already writes {target}")
            claimed.add(key)
            yield job


def single_target(source: Path, output: Optional[Path], target_suffix: str, beside_suffix: str) -> Path:
    if output is None:
        target = source.with_suffix(beside_suffix)
    elif output.is_dir():
        target = output / source.with_suffix(target_suffix).name
    else:
        target = output
    if STANDARD_STREAM not in (source, target) and target.resolve() == source.resolve():
        raise UsageError(f"{source}: output would overwrite the input itself")
    return target


def walk(root: Path, suffixes: Iterable[str]) -> Iterator[Path]:
    """Files below ``root`` with one of ``suffixes`` (any case), in sorted order so runs are reproducible.

    Hidden files and folders are skipped: they hold editor backups, macOS "._x.jpg" resource forks and our own
    temporary files, none of which the user means to code.
    """
    suffixes = {suffix.lower() for suffix in suffixes}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(names):
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                yield Path(folder) / name


def decoded_suffix(suffix: str) -> str:
    """The suffix of a decoded image written beside its .vae file: ".png" -> ".decoded.png"."""
    return DECODED_MARK + suffix


def output_format(suffix: str) -> tuple:
    """(Pillow format, save options) for an output file suffix such as ".jpg"; UsageError if unknown or if
    this Pillow cannot write it (AVIF needs a Pillow built with libavif, as Pillow >= 11.2 wheels are)."""
    try:
        pillow_format, options = OUTPUT_FORMATS[suffix.lower()]
    except KeyError:
        known = ", ".join(OUTPUT_FORMATS)
        raise UsageError(f"cannot tell the image format from {suffix or 'a name without suffix'!r}; "
                         f"use one of {known}") from None
    from PIL import Image

    Image.init()
    if pillow_format not in Image.SAVE:
        raise UsageError(f"this Pillow cannot write {pillow_format} ({suffix}); choose another format")
    return pillow_format, options


def read_input(path: Path) -> bytes:
    """The bytes of an input file, or of standard input for ``-``."""
    try:
        if path == STANDARD_STREAM:
            return sys.stdin.buffer.read()
        return path.read_bytes()
    except OSError as error:
        raise VaecodecError(f"cannot read {path}: {error.strerror or error}") from error


def write_output(path: Path, write: Callable[[BinaryIO], None], force: bool) -> int:
    """Write an output with ``write(file)``: atomically to a file, or to standard output for ``-`` (never to
    a terminal). Returns the bytes written."""
    if path != STANDARD_STREAM:
        write_atomically(path, write, force)
        return path.stat().st_size
    if sys.stdout.isatty():
        raise UsageError("refusing to write binary data to a terminal: redirect standard output or use -o FILE")
    buffer = io.BytesIO()  # whole, so that a failure while encoding writes nothing
    write(buffer)
    stdout = getattr(sys.stdout, "buffer", sys.stdout)
    stdout.write(buffer.getvalue())
    stdout.flush()
    return buffer.tell()


def refuse_overwrite(path: Path, force: bool) -> None:
    if path != STANDARD_STREAM and not force and (path.exists() or path.is_symlink()):
        raise UsageError(f"{path} exists; use --force to overwrite it")


def write_atomically(path: Path, write: Callable[[BinaryIO], None], force: bool) -> None:
    """Create ``path`` with ``write(file)``: either the whole new file appears, or nothing changes.

    The data goes to a hidden temporary file in the same folder (same file system, so the final rename is
    atomic) which is fsynced, then renamed over the target; on any failure, Ctrl-C included, it is deleted.
    """
    refuse_overwrite(path, force)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # os.open with mode 0o666 lets the umask set permissions as for any new file (mkstemp would force 0600).
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        # Checked again just before the rename: the target may have appeared while we were coding.
        refuse_overwrite(path, force)
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise VaecodecError(f"cannot write {path}: {error.strerror or error}") from error
        raise
