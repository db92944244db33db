"""What a long command is doing, on stderr while it works.

On a terminal a status line is redrawn in place (files done, the current file and its step, elapsed time);
when stderr is not a terminal (a log, a pipe, a CI job) a plain line is printed every few seconds instead,
and nothing at all for work that ends sooner. ``VAECODEC_PROGRESS_SECONDS`` sets that interval (0: no plain
lines). The codec reports its steps (tiles, refinement steps) through ``Codec.on_progress``.
"""

import os
import sys
import threading
import time

PLAIN_SECONDS = 5.0  # between plain progress lines when stderr is not a terminal
TRAIN_PLAIN_SECONDS = 30.0  # training runs for hours; a line every 30 s is plenty in its log
REDRAW_SECONDS = 0.2  # terminal status line


def plain_interval(default: float) -> float:
    try:
        return float(os.environ.get("VAECODEC_PROGRESS_SECONDS", default))
    except ValueError:
        return default


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Status:
    """The progress of a job over ``total`` files, shown from a background thread while the job runs.

    The job calls ``file_started``/``step``/``file_done`` as it goes and prints its own lines through
    ``echo``, which clears the status line first so the two never mix. ``enabled=False`` shows nothing.
    """

    def __init__(self, total: int, verb: str, enabled: bool = True, stream=None):
        self.total, self.verb = total, verb
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.interval = REDRAW_SECONDS if self.terminal else plain_interval(PLAIN_SECONDS)
        self.enabled = enabled and self.interval > 0
        self.lock = threading.Lock()
        self.done = 0
        self.current = None  # name of the file being coded
        self.file_since = self.started = time.monotonic()
        self.detail = ""  # e.g. "refine step 12 of 50"
        self.shown = ""  # the status line on the terminal now, if any
        self.stopped = threading.Event()
        self.thread = None

    def __enter__(self):
        if self.enabled:
            self.thread = threading.Thread(target=self._run, name="vaecodec-progress", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        with self.lock:
            self._clear()

    def file_started(self, job) -> None:
        """The coder takes ``job`` (a files.Job) now."""
        name = "standard input" if str(job.source) == "-" else job.source.name
        with self.lock:
            self.current, self.detail, self.file_since = name, "", time.monotonic()

    def step(self, what: str, done: int, total: int) -> None:
        """A hook for ``Codec.on_progress``: ``done`` of ``total`` units of ``what`` are finished."""
        with self.lock:
            self.detail = f"{what} {done} of {total}" if total > 1 else what

    def file_done(self) -> None:
        """One more file is finished (not necessarily the current one: reading and coding overlap)."""
        with self.lock:
            self.done += 1

    def echo(self, line: str, err: bool = False) -> None:
        with self.lock:
            self._clear()
            stream = sys.stderr if err else sys.stdout
            stream.write(line + "\n")
            stream.flush()

    def line(self) -> str:
        now = time.monotonic()
        parts = [f"{self.verb} {self.done} of {self.total} files done" if self.total > 1 else self.verb]
        if self.current:
            detail = f": {self.detail}" if self.detail else ""
            parts.append(f"{self.current}{detail}, {duration(now - self.file_since)} on it")
        parts.append(f"{duration(now - self.started)} in all")
        if 0 < self.done < self.total:  # files so far set the pace: a rough guide, not a promise
            parts.append(f"about {duration((now - self.started) / self.done * (self.total - self.done))} left")
        return ", ".join(parts)

    def _run(self):
        while not self.stopped.wait(self.interval):
            with self.lock:
                if self.terminal:
                    line = self.line()[:max(20, _columns() - 1)]
                    if line == self.shown:
                        continue
                    self.stream.write("\r\x1b[K" + line)
                    self.shown = line
                else:
                    self.stream.write(f"vaecodec: {self.line()}\n")
                self.stream.flush()

    def _clear(self):
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = ""


def _columns() -> int:
    forwarded = getattr(sys.stderr, "terminal_columns", None)  # a command run by `vaecodec server`: the client's
    if forwarded:
        return forwarded
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or 80  # 0 on a pseudo-terminal of unset size
    except (OSError, ValueError):
        return 80


class TrainingStatus:
    """Training progress: a bar on a terminal; otherwise a plain line every ~30 s with step, loss, bpp,
    PSNR and steps per second (``progress(stats)`` is called once per step with the latest statistics)."""

    def __init__(self, first_step: int, last_step: int, stream=None):
        self.first, self.last = first_step, last_step
        self.stream = stream or sys.stderr
        self.interval = plain_interval(TRAIN_PLAIN_SECONDS)
        self.bar = None
        self.step_at_line, self.time_at_line = first_step, time.monotonic()

    def __enter__(self):
        if self.stream.isatty():
            import click

            self.bar = click.progressbar(length=self.last - self.first, label="training", show_eta=True,
                                         item_show_func=describe, file=self.stream)
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def __call__(self, stats) -> None:
        if self.bar is not None:
            self.bar.update(1, stats)
            return
        now = time.monotonic()
        if not stats or self.interval <= 0 or now - self.time_at_line < self.interval:
            return
        rate = (stats["step"] - self.step_at_line) / (now - self.time_at_line)
        self.stream.write(f"vaecodec: training {describe(stats)}, {rate:.2f} steps/s, "
                          f"{stats['step']} of {self.last}\n")
        self.stream.flush()
        self.step_at_line, self.time_at_line = stats["step"], now


def describe(stats) -> str:
    if not stats:
        return ""
    return f"step {stats['step']} loss {stats['loss']:.3f} bpp {stats['bpp']:.3f} PSNR {stats['psnr']:.2f}"
