"""Coding many files through a batched model, where one bad file costs only itself.

``code_in_order`` feeds prepared inputs lazily to a batched coder (``codec.iter_compress`` or
``iter_decompress``) and yields one outcome per job, in input order: the coded result, or the
``VaecodecError`` that made that file fail. ``Tally`` prints those outcomes and decides the exit code.
"""

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional

import click

from vaecodec.errors import VaecodecError

from .files import Job


def prepare_ahead(prepare: Callable, jobs: Iterable[Job], workers: int) -> Iterator[tuple]:
    """(job, prepare(job) or the VaecodecError it raised) for each job, in order.

    With several workers, reading and decoding the next input files overlaps with the model; only a few jobs
    run ahead, so a folder of any size never sits in memory.
    """
    def attempt(job):
        try:
            return prepare(job)
        except VaecodecError as error:
            return error

    if workers <= 1:
        for job in jobs:
            yield job, attempt(job)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="vaecodec-read")
    ahead = deque()
    try:
        for job in jobs:
            ahead.append((job, pool.submit(attempt, job)))
            if len(ahead) > 2 * workers:
                job, future = ahead.popleft()
                yield job, future.result()
        while ahead:
            job, future = ahead.popleft()
            yield job, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def start_workers(context, codec, workers, batch_size, count: int, model: str, by_default: bool = True):
    """A ``vaecodec.parallel.CodecPool`` sharing ``codec`` for a job of ``count`` files, or None when the job
    runs in this process: --workers if given, else one process when --batch-size is given (batches are a
    one-process affair) or ``by_default`` is false, else ``default_workers`` for the device; never more
    workers than files. The pool is stopped when the command ends, whichever way it ends."""
    from vaecodec.parallel import CodecPool, default_workers

    if workers is None:
        workers = default_workers(codec.device.type) if by_default and not batch_size else 1
    if min(workers, count) <= 1:
        return None
    pool = CodecPool(min(workers, count), model=model, device=codec.device.type, codec=codec)
    context.call_on_close(pool.terminate)  # a finished job has handed out all its work; Ctrl-C drops the rest
    return pool


def code_in_order(prepared: Iterable[tuple], code_many: Callable, code_one: Callable,
                  on_start: Optional[Callable] = None) -> Iterator[tuple]:
    """(job, result or VaecodecError) for each (job, item or VaecodecError) in ``prepared``, in order.

    ``code_many(items)`` must yield one result per item, in order, pulling items lazily. When it raises, we
    cannot tell which item of its batch was bad, so the items it holds are coded one by one with
    ``code_one`` (which pins the failure on its file) and batching resumes with the rest. ``on_start(job)``
    is called as the coder takes each job's item.
    """
    pending = deque()  # (job, item or error) taken from `prepared` whose outcome is not yielded yet

    def items():
        for job, item in prepared:
            pending.append((job, item))
            if not isinstance(item, VaecodecError):
                if on_start is not None:
                    on_start(job)
                yield item

    def failures_first():
        # Files that failed while being prepared never reach the coder; report them in their place in line.
        while pending and isinstance(pending[0][1], VaecodecError):
            yield pending.popleft()

    feed = items()
    while True:
        try:
            for result in code_many(feed):
                yield from failures_first()
                job, _ = pending.popleft()
                yield job, result
            yield from failures_first()
            if pending:
                raise RuntimeError(f"the coder returned no result for {pending[0][0].source}")
            return
        except VaecodecError:
            if all(isinstance(item, VaecodecError) for _, item in pending):
                raise  # the coder failed on no item of ours: retrying would fail the same way
        while pending:
            job, item = pending.popleft()
            if not isinstance(item, VaecodecError):
                if on_start is not None:
                    on_start(job)
                try:
                    item = code_one(item)
                except VaecodecError as error:
                    item = error
            yield job, item


def gray_note(asked: float, coded: float) -> str:
    """What a file's line adds when its quality is not the one asked for: a grayscale image is coded lower,
    at the fidelity of colour at the quality asked for (vaecodec.quality.coded_quality_index)."""
    return "" if coded == asked else f"quality {coded:g} (grayscale at the fidelity of colour quality {asked:g})"


def without_name(message: str, name: str) -> str:
    """The message without a leading "name: ": errors from reading an image name the file, and the line
    printed for it already starts with the file's whole path."""
    return message[len(name) + 2:] if message.startswith(f"{name}: ") else message


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def error_line(message: str) -> str:
    return f"vaecodec: error: {one_line(message)}"


class Tally:
    """Prints a line per file and the summary, and gives the exit code (see ``exit_code_for``).

    Lines go through ``status`` (progress.Status), so they never mix with its progress line; ``quiet`` prints
    only errors; ``to_stderr`` sends the per-file lines to stderr (when the coded data goes to stdout);
    ``verbose`` also names each file skipped because its output exists (otherwise only counted)."""

    def __init__(self, status, quiet: bool = False, to_stderr: bool = False, verbose: bool = False):
        self.status, self.quiet, self.to_stderr, self.verbose = status, quiet, to_stderr, verbose
        self.started = time.perf_counter()
        self.images = self.skips = self.bytes_in = self.bytes_out = 0
        self.bpp_sum = 0.0
        self.failed_classes = []

    def succeeded(self, job: Job, bytes_out: int, compressed_bytes: int, note: str = "") -> None:
        """``compressed_bytes`` is the size of the .vae file, whichever way the job went; ``job.seconds`` the
        time spent on this file (reading, its share of the transforms, entropy coding, writing)."""
        bpp = 8 * compressed_bytes / (job.width * job.height)
        self.images += 1
        self.bytes_in += job.bytes_in
        self.bytes_out += bytes_out
        self.bpp_sum += bpp
        self.status.file_done()
        if not self.quiet:
            note = f", {note}" if note else ""
            self.status.echo(f"{job.source} -> {job.target}: {job.width}x{job.height}, {compressed_bytes} bytes, "
                             f"{bpp:.3f} bpp{note}, {job.seconds:.2f} s", err=self.to_stderr)

    def skipped(self, job: Job) -> None:
        self.skips += 1
        self.status.file_done()
        if self.verbose and not self.quiet:
            self.status.echo(f"{job.source} -> {job.target}: exists, skipped", err=self.to_stderr)

    def failed(self, job: Job, error: VaecodecError) -> None:
        self.failed_classes.append(type(error))
        self.status.file_done()
        self.status.echo(error_line(f"{job.source}: {without_name(str(error), job.source.name)}"), err=True)

    def summary(self) -> str:
        seconds = time.perf_counter() - self.started
        mean_bpp = self.bpp_sum / self.images if self.images else 0.0
        failed = f", {len(self.failed_classes)} failed" if self.failed_classes else ""
        skipped = f", {self.skips} skipped (outputs exist)" if self.skips else ""
        if not self.images:
            return f"no images coded{skipped}{failed}"
        return (f"{self.images} images{skipped}{failed}: {self.bytes_in} bytes in, {self.bytes_out} bytes out, "
                f"mean {mean_bpp:.3f} bpp, {self.images / seconds:.2f} images/s, {seconds:.2f} s")

    def exit_code(self) -> int:
        return exit_code_for(self.failed_classes)


def exit_code_for(failed_classes) -> int:
    """0 when nothing failed; the failures' own exit code when they share an error class (so a script can
    tell "corrupt input" from "output exists"); else 1."""
    classes = set(failed_classes)
    if not classes:
        return 0
    return classes.pop().exit_code if len(classes) == 1 else 1
