"""Coding on worker processes, each with its own model and its share of the cores.

On a CPU one process spends part of each image on one core (reading and writing image files, entropy
coding, layers that do not spread over threads); processes of one thread each overlap those parts
(benchmarks/results/folder_jobs.md measures both layouts against each other). ``CodecPool`` runs ``function(codec, item)`` for each item
in the workers and yields the results in input order; a ``VaecodecError`` raised for one item is yielded in
its place, so one bad file costs only itself.

On Linux with the model on the CPU the workers are forked from a process that has loaded the model (the
codec given to ``CodecPool``, or one loaded for it): they share its weights and start at once. Each sets
its own thread count before its first torch operation, which is what makes forking torch safe. Elsewhere,
and for CUDA (which cannot be forked), workers are spawned and load the model themselves.
"""

from __future__ import annotations

import collections
import functools
import io
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator

from .codec import Codec, load, resolve_device
from .container import DEFAULT_QUALITY
from .errors import VaecodecError

MAX_DEFAULT_WORKERS = 4  # each worker holds a model and its activations: 0.4 GB for a Kodak image, 2.5 GB at 24 MP


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(device: str = "auto") -> int:
    """Worker processes a pool (and ``vaecodec compress`` of several files) uses unless told: one per core
    on a CPU, at most MAX_DEFAULT_WORKERS; one on a GPU, which a single process keeps busy with batches."""
    if resolve_device(str(device)).type == "cuda":
        return 1
    return max(1, min(cpu_count(), MAX_DEFAULT_WORKERS))


# ---- inside a worker ----

_codec = None  # the worker's Codec: inherited over fork, or loaded by _start_worker
_start_error = None  # why loading failed: raised by every call, failing the whole job rather than each item


def _start_worker(model: str | None, device: str, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    import torch

    torch.set_num_threads(threads)
    global _codec, _start_error
    if _codec is None:
        try:
            _codec = load(model, device)
        except Exception as error:  # an initializer that raises would only say "the pool is broken"
            _start_error = error


def _run(function: Callable, item):
    if _start_error is not None:
        raise _start_error
    try:
        return function(_codec, item)
    except VaecodecError as error:
        return error


def _compress_timed(codec: Codec, image, quality: float, refine_steps: int) -> tuple:
    started = time.perf_counter()
    data = codec.compress(image, quality=quality, refine_steps=refine_steps)
    return data, time.perf_counter() - started


def _decompress_timed(codec: Codec, data: bytes, image_format: str | None, save_options: dict,
                      decode_options: dict) -> tuple:
    started = time.perf_counter()
    image = codec.decompress(data, **decode_options)
    if image_format is not None:  # encoding the image file is as costly as decoding; it belongs here too
        encoded = io.BytesIO()
        image.save(encoded, format=image_format, **save_options)
        image = encoded.getvalue()
    return image, time.perf_counter() - started


# ---- in the parent ----

class CodecPool:
    """``workers`` processes (default: ``default_workers``), each with a copy of the model on ``threads``
    torch threads (default: the cores shared out evenly). Forked workers share ``codec`` if given (else one
    loaded from ``model`` onto ``device``); spawned ones load ``model`` themselves. As a context manager, leaving the block normally waits for the
    work handed out; leaving it by an exception (Ctrl-C included) stops the workers at once.

        with CodecPool(workers=2) as pool:
            files = pool.compress_batch(paths, quality=5)      # .vae bytes, in input order
            images = pool.decompress_batch(files)

    Each image is coded by ``Codec.compress`` / ``decompress`` in one worker, so its bytes and pixels are
    those of the one-process path (see "Determinism" in the README).
    """

    def __init__(self, workers: int | None = None, model: str = "default", device: str = "auto",
                 threads: int | None = None, codec: Codec | None = None):
        global _codec
        device = str(codec.device) if codec is not None else device
        self.workers = workers or default_workers(device)
        forkable = sys.platform.startswith("linux") and resolve_device(device).type == "cpu"
        if codec is None and forkable:
            codec = load(model, device)  # once here, shared by the forked workers
        threads = threads or max(1, cpu_count() // self.workers)
        context = multiprocessing.get_context("fork" if forkable else "spawn")
        # Workers ignore SIGINT from birth (the disposition is inherited), so Ctrl-C reaches only the parent.
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
        _codec = codec if forkable else None
        try:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_worker,
                                             initargs=(model, device, threads))
            for _ in range(self.workers):  # starts the processes now, while SIGINT is ignored
                self._pool.submit(int)
        finally:
            _codec = None  # the parent keeps no second reference
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)

    def __enter__(self) -> "CodecPool":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.terminate()

    def close(self) -> None:
        """Wait for the work handed out so far, then end the workers."""
        self._pool.shutdown(wait=True)

    def terminate(self) -> None:
        """End the workers now, dropping unfinished work."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if hasattr(self._pool, "terminate_workers"):  # Python >= 3.14
            self._pool.terminate_workers()
        else:
            for process in list((self._pool._processes or {}).values()):
                process.terminate()
        self._pool.shutdown(wait=True)

    def map(self, function: Callable, items: Iterable, ahead: int | None = None) -> Iterator:
        """``function(codec, item)`` for each item, run in the workers, in input order; an item whose call
        raised a ``VaecodecError`` yields that error. Items are taken lazily, ``ahead`` (default twice the
        workers) beyond the result being waited for, so a long iterable never sits in memory. ``function``
        must be picklable: a module-level function or a ``functools.partial`` of one."""
        ahead = ahead or 2 * self.workers
        pending = collections.deque()
        try:
            for item in items:
                pending.append(self._pool.submit(_run, function, item))
                if len(pending) > ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise VaecodecError("a worker process ended unexpectedly (out of memory?); try fewer workers") from None
        finally:
            for future in pending:  # abandoned (an error, Ctrl-C, the caller stopped): no work for nothing
                future.cancel()

    def iter_compress_timed(self, images: Iterable, quality: float = DEFAULT_QUALITY,
                            refine_steps: int = 0) -> Iterator:
        """(.vae bytes, seconds the worker spent) for each image (path or PIL image), in order; an image
        that cannot be coded yields its ``VaecodecError`` instead."""
        return self.map(functools.partial(_compress_timed, quality=quality, refine_steps=refine_steps), images)

    def iter_decompress_timed(self, datas: Iterable, image_format: str | None = None,
                              save_options: dict | None = None, **decode_options) -> Iterator:
        """(image, seconds the worker spent) for each .vae file's bytes, in order, or the file's
        ``VaecodecError``. With ``image_format`` (a Pillow format name, with ``save_options``) the image
        comes as the bytes of that image file, encoded in the worker. ``decode_options`` (``max_pixels``) go
        to ``Codec.decompress``."""
        function = functools.partial(_decompress_timed, image_format=image_format, save_options=save_options or {},
                                     decode_options=decode_options)
        return self.map(function, datas)

    def compress_batch(self, images: Iterable, quality: float = DEFAULT_QUALITY, refine_steps: int = 0) -> list:
        """.vae bytes for each image, in order; raises the first failing image's error, as
        ``Codec.compress_batch`` does."""
        return [_value(result) for result in self.iter_compress_timed(images, quality, refine_steps)]

    def decompress_batch(self, datas: Iterable) -> list:
        """PIL images for each .vae file's bytes, in order; raises the first failing file's error."""
        return [_value(result) for result in self.iter_decompress_timed(datas)]


def _value(result):
    if isinstance(result, VaecodecError):
        raise result
    return result[0]
