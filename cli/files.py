"""Which files a command reads and writes, and writing them so that a failure never leaves half a file.

``plan`` turns the command-line inputs (files and folders) into ``Job``s, one per file, each with the path to
write. It only lists paths: folders are walked lazily and images are opened later, one at a time.
``write_atomically`` writes into a new file beside the target that gets its name only when complete
(``NewFile``: unnamed on Linux, so not even kill -9 leaves a temporary behind). The path
``-`` stands for standard input or output (``read_input``, ``write_output``).
"""

import ctypes
import errno
import io
import os
import re
import secrets
import shutil
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
    data = memoryview(buffer.getvalue())
    while data:  # an unbuffered stdout (python -u, PYTHONUNBUFFERED) may take only part of a write into a pipe
        written = stdout.write(data)
        data = data[written or 0:]
    stdout.flush()
    return buffer.tell()


def refuse_overwrite(path: Path, force: bool) -> None:
    if path != STANDARD_STREAM and not force and (path.exists() or path.is_symlink()):
        raise UsageError(f"{path} exists; use --force to overwrite it")


def write_atomically(path: Path, write: Callable[[BinaryIO], None], force: bool) -> None:
    """Create ``path`` with ``write(file)``: either the whole new file appears, or nothing changes.

    The data goes to a ``NewFile`` in the same folder (same file system, so publishing it is atomic), which is
    fsynced and then given the target's name; on any failure, Ctrl-C included, it is discarded, and after a
    kill -9 nothing is left that a user must clean.
    """
    refuse_overwrite(path, force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        with NewFile(path.parent, path.name) as new:
            write(new.file)
            # Checked again just before publishing: the target may have appeared while we were coding.
            refuse_overwrite(path, force)
            try:
                new.publish(path, replace=force)
            except FileExistsError:
                raise UsageError(f"{path} exists; use --force to overwrite it") from None
    except OSError as error:
        raise VaecodecError(f"cannot write {path}: {error.strerror or error}") from error


class NewFile:
    """A file being written in ``folder`` that gets its name only when complete (``publish``).

    On Linux it is an unnamed O_TMPFILE inode, linked into place at the end: if the process dies, even by
    kill -9, the kernel frees it and nothing is left behind. Where that is unavailable (another system, a file
    system without O_TMPFILE, a kernel that refuses the link), it is a hidden temporary named after the
    target and this process's id, which ``remove_stale_temporaries`` deletes on a later run once that
    process is gone. Use as a context manager: a file not published is discarded.
    """

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = Path(folder), name
        self.temporary = None  # the named temporary, when there is one
        descriptor = _open_unnamed(self.folder)
        if descriptor is None:
            self.temporary = temporary_path(self.folder, name)
            # os.open with mode 0o666 lets the umask set permissions as for any new file (mkstemp would force 0600).
            descriptor = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self.file = os.fdopen(descriptor, "wb")
        self.published = False

    def __enter__(self) -> "NewFile":
        return self

    def __exit__(self, *exception) -> None:
        if not self.published:
            self.discard()

    def publish(self, path: Path, replace: bool) -> None:
        """Give the written file the name ``path`` (in ``folder``); FileExistsError if ``path`` exists and not
        ``replace``."""
        self.file.flush()
        os.fsync(self.file.fileno())
        if self.temporary is None:
            # Without replace, linking the unnamed file to the target is itself the atomic no-overwrite check.
            staging = temporary_path(self.folder, path.name) if replace else path
            if _link_unnamed(self.file.fileno(), staging):
                if not replace:
                    return self._close(published=True)
                self.temporary = staging
            else:
                self._name_by_copy()
        if not replace and os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        os.replace(self.temporary, path)
        self.temporary = None
        self._close(published=True)

    def discard(self) -> None:
        self._close(published=False)
        if self.temporary is not None:
            try:
                os.unlink(self.temporary)
            except FileNotFoundError:
                pass

    def _close(self, published: bool) -> None:
        self.published = published
        self.file.close()

    def _name_by_copy(self) -> None:
        """The unnamed file could not be linked: copy it into a named temporary."""
        self.temporary = temporary_path(self.folder, self.name)
        with open(os.dup(self.file.fileno()), "rb") as source, \
                os.fdopen(os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as copy:
            source.seek(0)
            shutil.copyfileobj(source, copy)
            copy.flush()
            os.fsync(copy.fileno())


def temporary_path(folder: Path, name: str) -> Path:
    """A hidden temporary beside ``name``; the process id in it tells a live writer's file from a dead one's."""
    return Path(folder) / f".{name}.{os.getpid()}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"


def remove_stale_temporaries(folder: Path) -> None:
    """Delete this tool's temporaries in ``folder`` whose writing process is gone (killed mid-write). Done once
    per folder and process; a temporary of a live process (this one or another) is never touched."""
    key = os.path.abspath(folder)
    if key in _swept_folders:
        return
    _swept_folders.add(key)
    try:
        entries = os.scandir(folder)
    except OSError:
        return
    with entries:
        for entry in entries:
            match = _TEMPORARY_NAME.fullmatch(entry.name)
            if match and not _process_alive(int(match.group(1))):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or not a pid: leave the file alone
        return True
    return True


def _open_unnamed(folder: Path):
    """A read-write descriptor of an unnamed new file in ``folder`` (Linux O_TMPFILE), or None where the system
    or file system has none."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag:
        return None
    try:
        return os.open(folder, flag | os.O_RDWR, 0o666)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise


def _link_unnamed(descriptor: int, path: Path) -> bool:
    """Link an O_TMPFILE descriptor to ``path``; False when the system refuses (FileExistsError if ``path``
    exists). First through /proc/self/fd, the unprivileged way (linkat AT_SYMLINK_FOLLOW); where that fails
    (no /proc; some sandboxes answer EXDEV), linkat with AT_EMPTY_PATH, which may need privileges."""
    try:
        os.link(f"/proc/self/fd/{descriptor}", path)
        return True
    except FileExistsError:
        raise
    except OSError:
        pass
    if _linkat is None:
        return False
    if _linkat(descriptor, b"", _AT_FDCWD, os.fsencode(path), _AT_EMPTY_PATH) == 0:
        return True
    if ctypes.get_errno() == errno.EEXIST:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
    return False


def _libc_linkat():
    if not sys.platform.startswith("linux"):
        return None
    try:
        linkat = ctypes.CDLL(None, use_errno=True).linkat
    except (OSError, AttributeError):
        return None
    linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    linkat.restype = ctypes.c_int
    return linkat


TEMPORARY_SUFFIX = ".vaecodec-tmp"
_TEMPORARY_NAME = re.compile(r"\..*\.(\d+)\.[0-9a-f]{8}" + re.escape(TEMPORARY_SUFFIX))
_swept_folders = set()  # folders whose stale temporaries this process has already removed
_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000  # from <fcntl.h> on Linux
_linkat = _libc_linkat()
