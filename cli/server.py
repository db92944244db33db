"""`vaecodec server`: a background process of the user's that keeps torch and the model loaded.

``start`` launches it (``serve_main``, a detached process logging to server.log beside its socket) and
returns once it answers; ``status`` and ``stop`` ask it over the socket. The server takes the commands that
``client.forward`` sends, one at a time, and runs each through the same click command as a process of its
own would (``main.cli``), inside that client's working directory, environment and umask, with standard input,
output and error passed through the socket and reporting the client's terminals. Between commands it keeps
the models it loaded (``Models``: a model whose weights file changes is read again) and nothing else: each
command starts from the server's own environment, working directory and warning filters.

The server runs nothing but vaecodec's commands that use the model (``main.SERVED_COMMANDS``), only for its
own user, and declines a client whose code (any source file), process environment (OMP_NUM_THREADS and the
like), CPUs or file system view differ from its own: that command then runs in the client's process, so the
same command gives the same bytes either way. It exits after ``--idle-minutes`` without commands, on
``vaecodec server stop``, or on SIGTERM; an interrupted or stopped command leaves no partial output, as in
a process of its own (``files.write_atomically``).

This module imports torch only inside the server process: ``start``, ``status`` and ``stop`` answer at once.
"""

import argparse
import codecs
import collections
import fcntl
import io
import json
import os
import queue
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import click

from vaecodec.errors import VaecodecError

from . import client
from .batch import error_line, one_line
from .client import (DECLINED, EXIT, EXIT_CODE, INTERRUPT, LOCK_NAME, LOG_NAME, MAX_FRAME, REPLY, REQUEST,
                     SOCKET_NAME, STARTED, STDERR, STDIN, STDIN_WANTED, STDOUT, ProtocolError, UnsafeDirectory,
                     receive_frame, send_frame)

DEFAULT_IDLE_MINUTES = 15
START_SECONDS = 300  # the longest `start` waits for a new server to answer (importing torch on a busy machine)
STOP_SECONDS = 30  # the longest `stop` waits for the server to end (it first interrupts a running command)
HANDSHAKE_SECONDS = 10  # a client has this long to send its request once connected
KEPT_MODELS = 2  # models kept loaded between commands (the least recently used goes first)


@click.group()
def server():
    """Keep torch and the model loaded in a background process: faster commands.

    Every compress, decompress or inspect otherwise starts by importing torch and loading the model, about
    1.6 s of a 2.3 s compress of a Kodak photo. With a server running, the vaecodec command hands such a
    command to it and only streams the output back (benchmarks/results/cli_speed.md). It helps when you run
    many one-off commands; one command over a whole folder loads the model only once anyway.

    The server is yours alone: its socket is in $XDG_RUNTIME_DIR/vaecodec/, else /tmp/vaecodec-UID/ (mode
    0700), and it refuses other users. It runs the command exactly as your process would, so outputs are
    byte for byte the same; where it cannot (other code after an upgrade, other OMP_NUM_THREADS, ...), the
    command runs in your process as without a server. VAECODEC_NO_SERVER=1 does so too. It exits after
    --idle-minutes without commands.

    \b
    Examples:
      vaecodec server start                  # compress, decompress and inspect now go through it
      vaecodec server start --idle-minutes 120
      vaecodec server status
      vaecodec server stop
      VAECODEC_NO_SERVER=1 vaecodec compress photo.png   # this one in a process of its own
    """


def private_directory(create: bool) -> Path:
    directory = Path(os.path.abspath(client.runtime_directory()))
    try:
        return client.check_directory(directory, create=create)
    except UnsafeDirectory as error:
        raise VaecodecError(f"cannot use the server's directory: {error}") from None


@server.command()
@click.option("--idle-minutes", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_IDLE_MINUTES,
              show_default=True, help="Exit after this many minutes without a command.")
def start(idle_minutes):
    """Start a server (unless one is running) and return once it answers.

    \b
    Examples:
      vaecodec server start
      vaecodec server start --idle-minutes 120
    """
    if not client.supported():
        raise VaecodecError("vaecodec server needs UNIX sockets with SO_PEERCRED (Linux)")
    directory = private_directory(create=True)
    if len(os.fsencode(directory / SOCKET_NAME)) > client.MAX_SOCKET_PATH:
        raise VaecodecError(f"the socket path {directory / SOCKET_NAME} is too long for a UNIX socket; set "
                            f"XDG_RUNTIME_DIR to a shorter directory")
    if os.environ.get(client.NO_SERVER_VARIABLE):
        click.echo(f"{client.NO_SERVER_VARIABLE} is set: commands from this shell will not use the server")
    answer = client.ask(directory, "status")
    if answer is not None:
        if not answer.get("refusal"):
            click.echo(f"vaecodec server already running (pid {answer['pid']}), socket {directory / SOCKET_NAME}")
            return
        click.echo(f"stopping the vaecodec server running (pid {answer['pid']}): {answer['refusal']}")
        client.ask(directory, "stop")
        wait_until_gone(directory, answer["pid"])
    started = time.monotonic()
    outcome, pid = launch(directory, idle_minutes * 60)
    if outcome == "running":
        click.echo(f"vaecodec server already running (pid {pid}), socket {directory / SOCKET_NAME}")
        return
    click.echo(f"vaecodec server started (pid {pid}) in {time.monotonic() - started:.1f} s, socket "
               f"{directory / SOCKET_NAME}; it exits after {idle_minutes:g} idle minute{'' if idle_minutes == 1 else 's'} (vaecodec server stop)")


@server.command()
@click.pass_context
def status(context):
    """Say whether a server is running, and whether it serves this shell. Exit code 1 when none runs.

    \b
    Examples:
      vaecodec server status
    """
    directory = client.runtime_directory()
    if os.path.lexists(directory):
        private_directory(create=False)
    answer = client.ask(directory, "status")
    if answer is None:
        stale = os.path.lexists(directory / SOCKET_NAME)
        click.echo("no vaecodec server running" + (" (one that ended left its socket behind; `vaecodec server "
                                                    "start` replaces it)" if stale else ""))
        context.exit(1)
    idle = "busy with a command" if answer["busy"] else \
        f"idle {minutes(answer['idle_for'])} of {minutes(answer['idle_seconds'])}"
    click.echo(f"vaecodec server running: pid {answer['pid']}, up {minutes(answer['uptime'])}, "
               f"{answer['served']} command{'' if answer['served'] == 1 else 's'} served, {idle}; socket {directory / SOCKET_NAME}")
    if answer.get("refusal"):
        click.echo(f"commands from here run in their own process: {answer['refusal']} (`vaecodec server start` "
                   f"replaces the server with one for this shell)")


@server.command()
def stop():
    """Stop the server and wait until it has ended.

    A command it is running is interrupted, as by a Ctrl-C (no partial output), and ends with an error.

    \b
    Examples:
      vaecodec server stop
    """
    directory = client.runtime_directory()
    if not os.path.lexists(directory):
        click.echo("no vaecodec server running")
        return
    private_directory(create=False)
    answer = client.ask(directory, "stop")
    if answer is None:
        click.echo("no vaecodec server running")
        return
    wait_until_gone(directory, answer["pid"])
    click.echo(f"vaecodec server stopped (pid {answer['pid']})")


def minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.0f} min"


def lock_is_free(directory: Path) -> bool:
    """True when no server holds the directory's lock (none runs, or the last one has ended)."""
    try:
        descriptor = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)  # releases the lock if this took it
    return True


def wait_until_gone(directory: Path, pid: int) -> None:
    deadline = time.monotonic() + STOP_SECONDS
    while not lock_is_free(directory):
        if time.monotonic() > deadline:
            raise VaecodecError(f"the vaecodec server (pid {pid}) did not end within {STOP_SECONDS} s")
        time.sleep(0.05)


SERVE = "from vaecodec_cli.server import serve_main; serve_main()"


def launch(directory: Path, idle_seconds: float) -> tuple:
    """Start ``serve_main`` detached and wait for its first line: ("ready" or "running", pid)."""
    read_end, write_end = os.pipe()
    log = os.open(directory / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", SERVE, "--directory", str(directory), "--idle-seconds", repr(idle_seconds),
             "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=directory, pass_fds=(write_end,),
            start_new_session=True)  # no terminal: a Ctrl-C in this shell is not for it
    finally:
        os.close(write_end)
        os.close(log)
    try:
        line = read_line(read_end, START_SECONDS)
    except KeyboardInterrupt:
        process.terminate()
        raise
    finally:
        os.close(read_end)
    word, _, rest = line.partition(" ")
    if word in ("ready", "running") and rest.isdigit():
        process.returncode = 0  # it lives on by itself; nothing here waits for it
        return word, int(rest)
    if word == "error":
        raise VaecodecError(f"the vaecodec server did not start: {rest}")
    process.terminate()
    code = process.wait()
    raise VaecodecError(f"the vaecodec server did not start (exit code {code}): {last_line(directory / LOG_NAME)} "
                        f"(log: {directory / LOG_NAME})")


def read_line(descriptor: int, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([descriptor], [], [], remaining)[0]:
            return ""
        chunk = os.read(descriptor, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").split("\n", 1)[0]


def last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return one_line(lines[-1]) if lines else "nothing logged"


# -- the server process -----------------------------------------------------------------------------------------

def serve_main() -> None:
    """The server process (started by ``launch``): reports "ready PID", "running PID" (another server has the
    directory) or "error MESSAGE" on --ready-fd, then serves until idle, stopped or terminated."""
    parser = argparse.ArgumentParser(prog="vaecodec server (background process)")
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--idle-seconds", type=float, required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    options = parser.parse_args()
    ready = os.fdopen(options.ready_fd, "w")

    def report(line: str) -> None:
        ready.write(line + "\n")
        ready.close()

    server_process = Server(options.directory, options.idle_seconds)
    try:
        outcome = server_process.prepare()
    except (VaecodecError, UnsafeDirectory, OSError) as error:
        report(f"error {one_line(error)}")
        sys.exit(1)
    except BaseException as error:
        traceback.print_exc()
        report(f"error {type(error).__name__}: {one_line(error)}")
        sys.exit(1)
    report(outcome)
    if outcome.startswith("ready"):
        server_process.run()


class Models:
    """Loaded models by weights file and device; a weights file that changes (another inode, size or time)
    is read again. Each command gets a model with fresh timings and no progress hook, as if just loaded."""

    def __init__(self):
        self.loaded = collections.OrderedDict()

    def load(self, name: str = "default", device: str = "auto"):
        import vaecodec
        from vaecodec.codec import Timings
        from vaecodec.zoo import weights_path

        path = weights_path(name)
        facts = path.stat()
        key = (str(path.resolve()), facts.st_dev, facts.st_ino, facts.st_size, facts.st_mtime_ns, device)
        codec = self.loaded.pop(key, None)
        if codec is None:
            codec = vaecodec.load(str(path), device)
        self.loaded[key] = codec
        while len(self.loaded) > KEPT_MODELS:
            self.loaded.popitem(last=False)
        codec.timings, codec.on_progress = Timings(), None
        return codec


class Server:
    def __init__(self, directory: Path, idle_seconds: float):
        self.identity = client.identity()  # first: the code as it is before any of it runs here
        self.environment = dict(os.environ)
        self.directory = directory
        self.idle_seconds = idle_seconds
        self.models = Models()
        self.requests = queue.Queue()
        self.current = None  # the Session whose command runs now
        self.interrupt_for = None
        self.served = 0
        self.started = time.time()
        self.last_active = time.monotonic()
        self.stopping = False  # `vaecodec server stop` or SIGTERM: end after the command that runs now
        self.closing = False
        self.senders = []
        self.listener = None
        self.lock = None
        self.socket_inode = None

    # -- start -------------------------------------------------------------------------------------------------
    def prepare(self) -> str:
        client.check_directory(self.directory, create=True)
        os.chdir(self.directory)
        self.lock = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:  # another server runs, or is starting
                answer = client.ask(self.directory, "status")
                if answer is not None:
                    return f"running {answer['pid']}"
                if time.monotonic() > deadline:
                    raise VaecodecError(f"another vaecodec server holds {self.directory / LOCK_NAME} but does not answer")
                time.sleep(0.2)
        # Every live server holds the lock: a socket left here is a dead server's.
        if os.path.lexists(SOCKET_NAME):
            if not stat.S_ISSOCK(os.lstat(SOCKET_NAME).st_mode):
                raise VaecodecError(f"{self.directory / SOCKET_NAME} exists and is not a socket")
            os.unlink(SOCKET_NAME)
        import torch
        from PIL import Image

        from . import main

        self.threads = torch.get_num_threads()
        self.umask = os.umask(0o077)
        os.umask(self.umask)
        self.warning_filters = list(warnings.filters)
        main.model_loader = self.models.load
        codec = self.models.load()  # the default model, warmed up on a small image
        codec.decompress(codec.compress(Image.linear_gradient("L").resize((64, 64)).convert("RGB")))
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(SOCKET_NAME)
        os.chmod(SOCKET_NAME, 0o600)
        self.socket_inode = os.lstat(SOCKET_NAME).st_ino
        self.listener.listen(64)
        return f"ready {os.getpid()}"

    # -- the main thread: one command at a time ----------------------------------------------------------------
    def run(self) -> None:
        self.main_thread = threading.main_thread().ident
        signal.signal(signal.SIGTERM, self._on_terminate)
        signal.signal(signal.SIGINT, self._on_interrupt)
        threading.Thread(target=self._accept, name="vaecodec-accept", daemon=True).start()
        try:
            while not self.stopping:
                remaining = self.idle_seconds - (time.monotonic() - self.last_active)
                if remaining <= 0:
                    break
                try:
                    item = self.requests.get(timeout=min(remaining, 1.0))  # a SIGTERM is seen within 1 s
                except queue.Empty:
                    continue
                if item is not None:
                    self.serve(*item)
                    self.last_active = time.monotonic()
        finally:
            self.shut_down()

    def stop(self) -> None:
        """End after the running command, which is interrupted as by a Ctrl-C (no partial outputs)."""
        self.stopping = True
        self.requests.put(None)  # wakes the main thread if it waits for a command
        session = self.current
        if session is not None:
            session.stopped = True
            self.interrupt(session)

    def _on_terminate(self, signum, frame):
        self.stopping = True
        session = self.current
        if session is not None:
            session.stopped = True
            self._on_interrupt(signum, frame, session)

    def _on_interrupt(self, signum, frame, session=None):
        """SIGINT, sent by ``interrupt``: a KeyboardInterrupt in the command, as a Ctrl-C in a process of its
        own; but never inside an import, which it would leave half done for the commands after: the signal
        then comes again a moment later."""
        session = session or self.interrupt_for
        if session is None or session is not self.current or not session.running:
            return
        if inside_import(frame):
            threading.Timer(0.05, self.interrupt, (session,)).start()
            return
        raise KeyboardInterrupt

    def interrupt(self, session) -> None:
        """From another thread: the client pressed Ctrl-C or went away, or the server stops."""
        self.interrupt_for = session
        if session.running:
            signal.pthread_kill(self.main_thread, signal.SIGINT)

    def serve(self, connection: socket.socket, request: dict) -> None:
        if closed_by_peer(connection):  # it gave up while waiting for its turn
            connection.close()
            return
        if self.stopping:
            decline(connection, "the server is stopping")
            return
        try:
            os.chdir(request["cwd"])
            here = os.stat(".")
            same = [here.st_dev, here.st_ino] == request["cwd_id"]
        except OSError:
            same = False
        if not same:
            os.chdir(self.directory)
            decline(connection, "the working directory is not the same one here")
            return
        session = Session(self, connection, request)
        self.senders = [thread for thread in self.senders if thread.is_alive()] + [session.start()]
        self.served += 1
        code = self.run_command(session, request)
        if session.stopped and code == client.INTERRUPTED_EXIT_CODE:
            session.write(STDERR, (error_line("the vaecodec server was stopped during the command (vaecodec server "
                                              "stop, or SIGTERM); run the command again") + "\n").encode())
            code = 1
        session.finish(code)

    def run_command(self, session, request: dict) -> int:
        """Run ``vaecodec ARGV`` as the client's own process would, and return its exit code."""
        import torch

        from . import files
        from .main import cli

        argv = request["argv"]
        saved = sys.stdin, sys.stdout, sys.stderr, sys.argv
        try:
            os.environ.clear()
            os.environ.update(request["environment"])
            os.umask(request["umask"])
            sys.stdin, sys.stdout, sys.stderr = session.streams()
            sys.argv = ["vaecodec", *argv]
            files._swept_folders.clear()  # once per process, so once per command here
            warnings.filterwarnings("default")  # a change of the filters lets each warning show again, as
            warnings.filters[:] = self.warning_filters  # in a new process
            torch.set_num_threads(self.threads)
            self.current = session
            session.running = True
            try:
                cli.main(args=list(argv), prog_name="vaecodec")
            finally:
                session.running = False
            code = 0
        except SystemExit as done:
            code = exit_status(done.code)
        except KeyboardInterrupt:
            code = client.INTERRUPTED_EXIT_CODE
        except BaseException:  # what a process of its own would print on its way out
            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            sys.stdin, sys.stdout, sys.stderr, sys.argv = saved
            os.environ.clear()
            os.environ.update(self.environment)
            os.umask(self.umask)
            os.chdir(self.directory)
            self.current = None
        return code

    def shut_down(self) -> None:
        self.closing = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if os.lstat(self.directory / SOCKET_NAME).st_ino == self.socket_inode:
                os.unlink(self.directory / SOCKET_NAME)
        except OSError:
            pass
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self.listener.close()
        while True:  # those waiting for their turn run in their own process instead
            try:
                item = self.requests.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                decline(item[0], "the server is stopping")
        for thread in self.senders:  # the last outputs reach their clients
            thread.join(timeout=10)
        os.close(self.lock)

    # -- the accepting thread: checks each client, answers status and stop, queues commands ------------------
    def _accept(self) -> None:
        while not self.closing:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                if self.closing:
                    return
                time.sleep(0.1)
                continue
            try:
                self._handshake(connection)
            except Exception:  # a client that breaks the protocol is dropped, the server goes on
                connection.close()

    def _handshake(self, connection: socket.socket) -> None:
        if client.peer_uid(connection) != os.getuid():
            connection.close()
            return
        connection.settimeout(HANDSHAKE_SECONDS)
        frame = receive_frame(connection)
        if frame is None or frame[0] != REQUEST:
            raise ProtocolError("no request")
        request = json.loads(frame[1])
        if not isinstance(request, dict):
            raise ProtocolError("not a request")
        kind = request.get("kind")
        if kind in ("status", "stop"):
            send_frame(connection, REPLY, client.encode(self.status(request)))
            connection.close()
            if kind == "stop":
                self.stop()
            return
        if kind != "run":
            raise ProtocolError("unknown request")
        refusal = self.refusal(request) or check_run_request(request)
        if refusal:
            decline(connection, refusal)
            return
        connection.settimeout(None)
        self.requests.put((connection, request))

    def status(self, request: dict) -> dict:
        busy = self.current is not None
        return {"pid": os.getpid(), "uptime": time.time() - self.started, "served": self.served, "busy": busy,
                "idle_for": 0 if busy else time.monotonic() - self.last_active, "idle_seconds": self.idle_seconds,
                "refusal": self.refusal(request)}

    def refusal(self, request: dict) -> str:
        """Why this server must not run the client's commands ("" when it may)."""
        mine = self.identity
        if request.get("protocol") != mine["protocol"]:
            return "the client speaks another protocol version"
        if request.get("uid") != mine["uid"]:
            return "another user"
        if request.get("installation") != mine["installation"]:
            return "the server runs other code (an older start, another environment or Python)"
        theirs = request.get("process_environment")
        if theirs != mine["process_environment"]:
            names = sorted(set(theirs or {}) ^ set(mine["process_environment"]) |
                           {name for name in set(theirs or {}) & set(mine["process_environment"])
                            if theirs[name] != mine["process_environment"][name]})
            return f"other process settings in the environment ({', '.join(names)})"
        if request.get("cpus") != mine["cpus"]:
            return "another set of CPUs (taskset, cgroups)"
        if request.get("mount_namespace") != mine["mount_namespace"]:
            return "another view of the file system (mount namespace)"
        return ""


def check_run_request(request: dict) -> str:
    """Why a "run" request is malformed or asks for something the server does not do ("" when fine)."""
    from .main import SERVED_COMMANDS

    argv, streams = request.get("argv"), request.get("streams")
    if not (isinstance(argv, list) and argv and all(isinstance(arg, str) for arg in argv)):
        return "malformed arguments"
    if not client.servable(argv):
        return f"the server runs only {', '.join(SERVED_COMMANDS)} (no --help, no cluster jobs)"
    if not (isinstance(request.get("cwd"), str) and os.path.isabs(request["cwd"])
            and isinstance(request.get("cwd_id"), list) and len(request["cwd_id"]) == 2):
        return "malformed working directory"
    environment = request.get("environment")
    if not (isinstance(environment, dict) and all(isinstance(name, str) and isinstance(value, str) and name
                                                  and "=" not in name and "\0" not in name + value
                                                  for name, value in environment.items())):
        return "malformed environment"
    if not (isinstance(request.get("umask"), int) and 0 <= request["umask"] <= 0o777):
        return "malformed umask"
    if not (isinstance(streams, dict) and all(isinstance(streams.get(name), dict) for name in STREAM_NAMES)):
        return "malformed streams"
    for name in STREAM_NAMES:
        facts = streams[name]
        try:
            codecs.lookup(facts["encoding"])
            codecs.lookup_error(facts["errors"])
        except (KeyError, LookupError, TypeError):
            return f"unknown encoding for {name}"
        if not isinstance(facts.get("tty"), bool) or not (facts.get("columns") is None or
                                                          (isinstance(facts["columns"], int) and facts["columns"] > 0)):
            return f"malformed {name}"
    return ""


STREAM_NAMES = ("stdin", "stdout", "stderr")


def exit_status(code) -> int:
    """The exit status of a process that ended with ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def inside_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def decline(connection: socket.socket, reason: str) -> None:
    try:
        send_frame(connection, DECLINED, client.encode({"reason": reason}))
    except OSError:
        pass
    connection.close()


def closed_by_peer(connection: socket.socket) -> bool:
    try:
        if select.select([connection], [], [], 0)[0]:
            return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
    return False


class Session:
    """One command's connection: a thread sends what the command writes (frames in order, the exit code last;
    the command never waits for the client), another takes standard input and Ctrl-C from the client."""

    def __init__(self, server_process: Server, connection: socket.socket, request: dict):
        self.server, self.connection, self.request = server_process, connection, request
        self.outbox = queue.SimpleQueue()
        self.stdin_chunks = queue.SimpleQueue()
        self.running = False  # the command runs (a Ctrl-C may interrupt it)
        self.stopped = False  # interrupted because the server stops
        self.finished = False
        self.client_gone = False
        self.stdin_ended = False
        self.reader = threading.Thread(target=self._receive, name="vaecodec-session-in", daemon=True)

    def start(self) -> threading.Thread:
        self.outbox.put((STARTED, b""))
        sender = threading.Thread(target=self._send, name="vaecodec-session-out", daemon=True)
        sender.start()
        self.reader.start()
        return sender

    def streams(self) -> tuple:
        facts = self.request["streams"]

        def text(raw, name, **options):
            return io.TextIOWrapper(raw, encoding=facts[name]["encoding"], errors=facts[name]["errors"], **options)

        stdin = text(io.BufferedReader(ForwardedInput(self, facts["stdin"]["tty"])), "stdin")
        stdout = text(ForwardedOutput(self, STDOUT, facts["stdout"]["tty"]), "stdout", write_through=True)
        stderr = text(ForwardedOutput(self, STDERR, facts["stderr"]["tty"]), "stderr", write_through=True)
        stderr.terminal_columns = facts["stderr"]["columns"]  # progress.py sizes its status line by it
        return stdin, stdout, stderr

    def write(self, kind: bytes, data: bytes) -> None:
        if self.finished:
            return  # a thread of an ended command: its client has its exit code already
        view = memoryview(data)
        for start in range(0, len(view), MAX_FRAME):
            self.outbox.put((kind, view[start:start + MAX_FRAME]))

    def read_stdin(self, size: int) -> bytes:
        if self.stdin_ended or self.finished:
            return b""
        self.outbox.put((STDIN_WANTED, min(size, MAX_FRAME).to_bytes(4, "big")))
        data = self.stdin_chunks.get()  # a Ctrl-C from the client interrupts the wait
        if not data:
            self.stdin_ended = True
        return data

    def finish(self, code: int) -> None:
        self.finished = True
        self.outbox.put((EXIT, EXIT_CODE.pack(code)))
        self.outbox.put(None)

    def _send(self) -> None:
        while (item := self.outbox.get()) is not None:
            if not self.client_gone:
                try:
                    send_frame(self.connection, *item)
                except OSError:
                    self.client_gone = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.reader.join()
        self.connection.close()

    def _receive(self) -> None:
        while True:
            try:
                frame = receive_frame(self.connection)
            except (OSError, ProtocolError):
                frame = None
            if frame is not None and frame[0] == STDIN and len(frame[1]) <= MAX_FRAME:
                self.stdin_chunks.put(frame[1])
            elif frame is not None and frame[0] == INTERRUPT:
                self.server.interrupt(self)
            else:  # the client is gone (or broke the protocol): stop its command as a Ctrl-C would
                self.client_gone = True
                self.stdin_chunks.put(b"")
                if not self.finished:
                    self.server.interrupt(self)
                return


class ForwardedOutput(io.RawIOBase):
    """The client's standard output or error, as the command's sys.stdout / sys.stderr (under a TextIOWrapper
    in the client's encoding); isatty() says whether the client's stream is a terminal."""

    def __init__(self, session: Session, kind: bytes, tty: bool):
        super().__init__()
        self.session, self.kind, self.tty = session, kind, tty

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.tty

    def write(self, data) -> int:
        data = bytes(data)  # the caller may reuse its buffer once this returns
        self.session.write(self.kind, data)
        return len(data)


class ForwardedInput(io.RawIOBase):
    """The client's standard input, read from it in chunks when the command reads."""

    def __init__(self, session: Session, tty: bool):
        super().__init__()
        self.session, self.tty = session, tty
        self.pending = b""

    def readable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.tty

    def readinto(self, buffer) -> int:
        data = self.pending or self.session.read_stdin(len(buffer))
        count = min(len(data), len(buffer))
        buffer[:count] = data[:count]
        self.pending = data[count:]
        return count

    def readall(self) -> bytes:
        parts = [self.pending]
        self.pending = b""
        while chunk := self.session.read_stdin(MAX_FRAME):
            parts.append(chunk)
        return b"".join(parts)
