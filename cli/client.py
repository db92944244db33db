"""The client side of ``vaecodec server``: hand a command to the resident process when one answers.

A command that runs the model pays for importing torch and loading the weights in every new process (about
1.6 s of a 2.3 s compress). ``vaecodec server start`` keeps a process with both loaded (``server.py``); the
``vaecodec`` entry point then forwards compress, decompress and inspect to it through ``forward``: the
arguments, the working directory, the environment, the umask, whether each standard stream is a terminal
(and its encoding), and standard input's bytes when the command reads them. The server runs the very same
click command and streams standard output and error back; the client exits with the command's exit code.
Where no server answers, or it declines (it runs other code, another environment, another file system
view), ``forward`` returns None and the command runs in this process as always.

The socket lives in a directory of the user's own: ``$XDG_RUNTIME_DIR/vaecodec/``, else
``/tmp/vaecodec-<uid>/``, mode 0700, owned by the user and not a symbolic link (``check_directory``); both
ends check the other's uid (SO_PEERCRED). Messages are frames: one type byte, a 4-byte length, at most
``MAX_FRAME`` bytes of payload.

This module imports neither torch nor numpy: it runs before anything knows whether the model is needed.
"""

import hashlib
import json
import os
import select
import signal
import socket
import stat
import struct
import sys
from pathlib import Path
from typing import Optional

NO_SERVER_VARIABLE = "VAECODEC_NO_SERVER"  # set (non-empty): always run in this process
NOT_FORWARDED_OPTIONS = ("-h", "--help", "--ray", "--parquet")  # help is instant anyway; Ray is a cluster's job
PROTOCOL = 1
SOCKET_NAME, LOCK_NAME, LOG_NAME = "server.sock", "server.lock", "server.log"
MAX_FRAME = 1 << 20
MAX_SOCKET_PATH = 107  # bytes in a UNIX socket's address on Linux (sun_path, less its final zero)
HEADER = struct.Struct(">cI")
EXIT_CODE = struct.Struct(">i")
INTERRUPTED_EXIT_CODE = 130

# Frame types. Client to server: REQUEST (JSON), STDIN (bytes; empty at end of input), INTERRUPT.
# Server to client: STARTED, DECLINED (JSON reason), STDOUT, STDERR, STDIN_WANTED (how many bytes at most),
# EXIT (the exit code), REPLY (JSON answer to a status or stop request).
REQUEST, STDIN, INTERRUPT = b"R", b"i", b"x"
STARTED, DECLINED, STDOUT, STDERR, STDIN_WANTED, EXIT, REPLY = b"S", b"D", b"o", b"e", b"I", b"X", b"T"

# Environment variables read when a process starts (by the OpenMP runtime, oneDNN, torch, the interpreter,
# the loader): a server started under other values could code differently, so it declines such a client.
PROCESS_VARIABLES = ("OMP_", "KMP_", "GOMP_", "MKL_", "DNNL_", "ONEDNN_", "OPENBLAS_", "TORCH", "PYTORCH_",
                     "CUDA_", "NVIDIA_", "LD_", "MALLOC_", "PYTHON")


class ProtocolError(Exception):
    """A frame that is too large or cut short."""


class UnsafeDirectory(Exception):
    """The server's directory is not private to this user."""


# -- the directory ----------------------------------------------------------------------------------------------

def runtime_directory() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "vaecodec" if base else Path("/tmp") / f"vaecodec-{os.getuid()}"


def check_directory(directory: Path, create: bool = False) -> Path:
    """``directory`` if it is a directory of this user's, mode 0700, not a symbolic link; UnsafeDirectory
    otherwise. ``create`` makes it (0700) where it is missing."""
    if create:
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as error:
            raise UnsafeDirectory(f"cannot create {directory}: {error.strerror or error}") from None
    try:
        status = os.lstat(directory)
    except OSError as error:
        raise UnsafeDirectory(f"{directory}: {error.strerror or error}") from None
    if stat.S_ISLNK(status.st_mode):
        raise UnsafeDirectory(f"{directory} is a symbolic link; the server's directory must be a real one")
    if not stat.S_ISDIR(status.st_mode):
        raise UnsafeDirectory(f"{directory} is not a directory")
    if status.st_uid != os.getuid():
        raise UnsafeDirectory(f"{directory} belongs to user {status.st_uid}, not to you ({os.getuid()})")
    if status.st_mode & 0o077:
        raise UnsafeDirectory(f"{directory} is open to other users (mode {stat.S_IMODE(status.st_mode):04o}); "
                              f"it must be 0700: chmod 700 {directory}, or remove it")
    return directory


# -- frames -----------------------------------------------------------------------------------------------------

def send_frame(connection: socket.socket, kind: bytes, payload=b"") -> None:
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes")
    connection.sendall(HEADER.pack(kind, len(payload)))
    if payload:
        connection.sendall(payload)


def _receive_exactly(connection: socket.socket, size: int, at_start: bool = False) -> Optional[bytes]:
    buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    while done < size:
        count = connection.recv_into(view[done:])
        if count == 0:
            if at_start and done == 0:
                return None
            raise ProtocolError("connection closed in the middle of a frame")
        done += count
    return bytes(buffer)


def receive_frame(connection: socket.socket) -> Optional[tuple]:
    """(type, payload), or None where the peer closed the connection between frames."""
    header = _receive_exactly(connection, HEADER.size, at_start=True)
    if header is None:
        return None
    kind, size = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes announced (at most {MAX_FRAME})")
    return kind, _receive_exactly(connection, size) if size else b""


def peer_uid(connection: socket.socket) -> int:
    _, uid, _ = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return uid


def supported() -> bool:
    return hasattr(socket, "AF_UNIX") and hasattr(socket, "SO_PEERCRED")


def connect(directory: Path, timeout: Optional[float] = None) -> Optional[socket.socket]:
    """A connection to the server in ``directory`` (checked private), or None where none answers."""
    if not supported():
        return None
    try:
        check_directory(directory)
    except UnsafeDirectory:
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(timeout)
        connection.connect(str(directory / SOCKET_NAME))
        if peer_uid(connection) != os.getuid():
            raise ConnectionRefusedError("server of another user")
    except OSError:
        connection.close()
        return None
    return connection


# -- what must match between client and server ------------------------------------------------------------------

def installation() -> str:
    """A digest of the code that would run: interpreter, import path, and every source file of vaecodec and
    of this command line (names, sizes, modification times). An edit or an upgrade changes it, and a
    server started before it declines."""
    import vaecodec
    import vaecodec_cli

    # The interpreter by its real file and environment (python and python3 are one), the import path but for
    # its first entry (the folder of the script, or the working directory of `python -c`).
    parts = [os.path.realpath(sys.executable), sys.prefix, sys.version, sys.getfilesystemencoding(), *sys.path[1:]]
    for package in (vaecodec, vaecodec_cli):
        root = Path(package.__file__).parent
        parts.append(str(root))
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
            for name in sorted(names):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    status = os.stat(path)
                    parts.append(f"{os.path.relpath(path, root)} {status.st_size} {status.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:32]


def process_environment(environment) -> dict:
    return {name: value for name, value in environment.items() if name.startswith(PROCESS_VARIABLES)}


def identity() -> dict:
    """What a server compares with its own before it runs a command for this process."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = []
    try:
        namespace = os.readlink("/proc/self/ns/mnt")
    except OSError:
        namespace = ""
    return {"protocol": PROTOCOL, "installation": installation(), "uid": os.getuid(),
            "process_environment": process_environment(os.environ), "cpus": cpus, "mount_namespace": namespace}


def _stream_facts(stream) -> dict:
    if stream is None:
        return {"tty": False, "encoding": "utf-8", "errors": "strict", "columns": None}
    try:
        tty = stream.isatty()
    except (OSError, ValueError):
        tty = False
    columns = None
    if tty:
        try:
            columns = os.get_terminal_size(stream.fileno()).columns or None
        except (OSError, ValueError):
            pass
    return {"tty": tty, "encoding": getattr(stream, "encoding", None) or "utf-8",
            "errors": getattr(stream, "errors", None) or "strict", "columns": columns}


def run_request(args: list) -> dict:
    umask = os.umask(0o022)
    os.umask(umask)
    cwd = os.getcwd()
    here = os.stat(cwd)
    return {"kind": "run", **identity(), "argv": list(args), "cwd": cwd, "cwd_id": [here.st_dev, here.st_ino],
            "environment": dict(os.environ), "umask": umask,
            "streams": {"stdin": _stream_facts(sys.stdin), "stdout": _stream_facts(sys.stdout),
                        "stderr": _stream_facts(sys.stderr)}}


def encode(message: dict) -> bytes:
    return json.dumps(message, ensure_ascii=True).encode("ascii")  # ensure_ascii keeps undecodable bytes


# -- forwarding a command ---------------------------------------------------------------------------------------

def servable(args: list) -> bool:
    """Whether a server may run ``vaecodec ARGS``: a command that runs the model, without help or a cluster."""
    from .main import SERVED_COMMANDS

    return (bool(args) and args[0] in SERVED_COMMANDS
            and not any(arg in NOT_FORWARDED_OPTIONS or arg.startswith(("--ray=", "--parquet=")) for arg in args))


def wants_server(args: list) -> bool:
    """Whether ``vaecodec ARGS`` goes to a server if one runs: servable, and not switched off here."""
    return servable(args) and not os.environ.get(NO_SERVER_VARIABLE)


def forward(args: list) -> Optional[int]:
    """Run ``vaecodec ARGS`` in the server: its exit code, or None where no server takes the command (it has
    then run nothing, and the caller runs it in this process)."""
    directory = runtime_directory()
    connection = connect(directory)
    if connection is None:
        return None
    with connection:
        try:
            payload = encode(run_request(args))
            if len(payload) > MAX_FRAME:
                return None
            send_frame(connection, REQUEST, payload)
            reply = receive_frame(connection)  # waits while the server finishes another command
        except (OSError, ProtocolError, ValueError):
            return None
        if reply is None or reply[0] != STARTED:
            return None  # declined, or gone before starting: nothing ran
        return Relay(connection, directory).run()


class Relay:
    """Passes the running command's streams between the server and this process until its exit code comes.

    The first Ctrl-C asks the server to interrupt the command (it ends as it would in this process, no
    partial output left) and waits for it to end; a second one leaves at once.
    """

    def __init__(self, connection: socket.socket, directory: Path):
        self.connection, self.directory = connection, directory
        self.interrupts = 0
        self.interrupt_sent = False
        self.stdout = getattr(sys.stdout, "buffer", None)
        self.stderr = getattr(sys.stderr, "buffer", None)
        self.stdout_tty = _stream_facts(sys.stdout)["tty"]
        self.broken_pipe = False

    def run(self) -> int:
        wake, wake_signal = socket.socketpair()
        wake.setblocking(False)
        wake_signal.setblocking(False)
        previous_wakeup = signal.set_wakeup_fd(wake_signal.fileno(), warn_on_full_buffer=False)
        previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)
        try:
            return self._relay(wake)
        except KeyboardInterrupt:  # the second Ctrl-C
            return INTERRUPTED_EXIT_CODE
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            signal.set_wakeup_fd(previous_wakeup)
            wake.close()
            wake_signal.close()
            self._flush()

    def _on_interrupt(self, signum, frame):
        self.interrupts += 1
        if self.interrupts > 1:
            raise KeyboardInterrupt

    def _relay(self, wake: socket.socket) -> int:
        while True:
            self._pass_on_interrupt()
            readable, _, _ = select.select([self.connection, wake], [], [])
            if wake in readable:
                _drain(wake)
                continue
            try:
                frame = receive_frame(self.connection)
            except (OSError, ProtocolError):
                frame = None
            if frame is None:
                return self._server_gone()
            kind, payload = frame
            if kind == EXIT and len(payload) == EXIT_CODE.size:
                code = EXIT_CODE.unpack(payload)[0]
                return 1 if self.broken_pipe else code
            if kind == STDOUT:
                self._write_stdout(payload)
            elif kind == STDERR:
                _write(self.stderr, payload, flush=True)
            elif kind == STDIN_WANTED:
                self._send_stdin(wake, int.from_bytes(payload[:4], "big") or 1)
            else:
                return self._server_gone()

    def _pass_on_interrupt(self) -> None:
        if self.interrupts and not self.interrupt_sent:
            self.interrupt_sent = True
            try:
                send_frame(self.connection, INTERRUPT)
            except OSError:
                pass

    def _send_stdin(self, wake: socket.socket, size: int) -> None:
        data = b""
        while True:
            self._pass_on_interrupt()
            if self.interrupt_sent:
                return  # the server interrupts the read that waits for this
            try:
                readable, _, _ = select.select([0, wake], [], [])
            except (OSError, ValueError):  # no standard input
                break
            if wake in readable:
                _drain(wake)
                continue
            try:
                data = os.read(0, min(size, MAX_FRAME))
            except OSError:
                data = b""
            break
        try:
            send_frame(self.connection, STDIN, data)
        except OSError:
            pass  # the server is gone: the next read says so

    def _write_stdout(self, payload: bytes) -> None:
        if self.broken_pipe:
            return
        try:
            _write(self.stdout, payload, flush=self.stdout_tty, raise_broken_pipe=True)
        except BrokenPipeError:
            # As in one process (main.OneLineErrors): the reader went away, the command stops and exits 1.
            self.broken_pipe = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.interrupts = max(self.interrupts, 1)

    def _flush(self) -> None:
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass

    def _server_gone(self) -> int:
        from .batch import error_line

        self._flush()
        _write(self.stderr, (error_line(
            f"the vaecodec server ended during the command (its log: {self.directory / LOG_NAME}); run the "
            f"command again, or with {NO_SERVER_VARIABLE}=1 to run it without the server") + "\n").encode(),
               flush=True)
        return 1


def _write(stream, payload: bytes, flush: bool, raise_broken_pipe: bool = False) -> None:
    if stream is None:
        return
    try:
        view = memoryview(payload)
        while view:  # an unbuffered stream (PYTHONUNBUFFERED) may take part of it
            written = stream.write(view)
            if written is None:  # non-blocking and full
                select.select([], [stream], [])
                continue
            view = view[written:]
        if flush:
            stream.flush()
    except BrokenPipeError:
        if raise_broken_pipe:
            raise
    except (OSError, ValueError):
        pass


def _drain(wake: socket.socket) -> None:
    try:
        while wake.recv(64):
            pass
    except (BlockingIOError, OSError):
        pass


# -- status and stop --------------------------------------------------------------------------------------------

def ask(directory: Path, kind: str, timeout: float = 10.0) -> Optional[dict]:
    """The server's answer to a "status" or "stop" request, or None where no server answers."""
    connection = connect(directory, timeout)
    if connection is None:
        return None
    with connection:
        try:
            send_frame(connection, REQUEST, encode({"kind": kind, **identity()}))
            reply = receive_frame(connection)
            if reply is None or reply[0] != REPLY:
                return None
            return json.loads(reply[1])
        except (OSError, ProtocolError, ValueError):
            return None
