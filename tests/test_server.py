"""`vaecodec server`: the resident process that spares each command importing torch and loading the model.

The commands run as a user runs them, through the installed ``vaecodec`` script, against a server in a
temporary runtime directory (XDG_RUNTIME_DIR). Each server start imports torch (seconds), so one server
serves most tests; the last test stops it.
"""

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vaecodec_cli import client

SCRIPT = Path(sys.executable).parent / "vaecodec"
KODAK_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak" / "kodim23.png"
SECONDS = 300  # the longest any one command may take on a loaded machine


def vaecodec(*args, env, **options) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *map(str, args)], env=env, capture_output=True, timeout=SECONDS, **options)


def runtime_environment(base: Path) -> dict:
    """The environment of commands whose runtime directory (XDG_RUNTIME_DIR) is ``base``, made private."""
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o700)
    environment = {**os.environ, "XDG_RUNTIME_DIR": str(base), "VAECODEC_PROGRESS_SECONDS": "0"}
    environment.pop(client.NO_SERVER_VARIABLE, None)
    return environment


def in_process(environment: dict) -> dict:
    return {**environment, client.NO_SERVER_VARIABLE: "1"}


def directory_of(environment: dict) -> Path:
    return Path(environment["XDG_RUNTIME_DIR"]) / "vaecodec"


def served(environment: dict) -> int:
    return client.ask(directory_of(environment), "status")["served"]


def start(environment: dict, *options) -> int:
    """Start a server; its pid."""
    done = vaecodec("server", "start", *options, env=environment)
    assert done.returncode == 0, done.stderr
    started = re.match(rb"vaecodec server started \(pid (\d+)\)", done.stdout)
    assert started, done.stdout
    return int(started.group(1))


def files_in(folder: Path) -> set:
    return {path.name for path in folder.iterdir()}


def long_command_started(argv: list, environment: dict, cwd: Path) -> subprocess.Popen:
    """A compress with refinement, returned once its progress lines show the server refining."""
    before = served(environment)
    process = subprocess.Popen([str(SCRIPT), *map(str, argv)], env={**environment, "VAECODEC_PROGRESS_SECONDS": "0.2"},
                               cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, seen = time.monotonic() + SECONDS, b""
    while b"refinement" not in seen:
        assert time.monotonic() < deadline and process.poll() is None, seen
        if select.select([process.stderr], [], [], 1)[0]:
            seen += os.read(process.stderr.fileno(), 4096)
    if served(environment) != before + 1:  # declined: the sources changed since the server started
        process.kill()
        pytest.fail(f"the server did not take the command: {client.ask(directory_of(environment), 'status')}")
    return process


@pytest.fixture(scope="module")
def environment(tmp_path_factory):
    """A running server whose directory held a dead server's socket: it must have replaced it."""
    environment = runtime_environment(tmp_path_factory.mktemp("runtime"))
    directory = directory_of(environment)
    directory.mkdir(mode=0o700)
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(directory / client.SOCKET_NAME))  # bound, then closed without being removed
    leftover.close()
    assert vaecodec("server", "status", env=environment).returncode == 1
    start(environment, "--idle-minutes", "20")
    yield environment
    vaecodec("server", "stop", env=environment)


def test_start_when_one_runs_says_so(environment):
    again = vaecodec("server", "start", env=environment)
    assert again.returncode == 0 and b"already running" in again.stdout
    status = vaecodec("server", "status", env=environment)
    assert status.returncode == 0 and b"vaecodec server running" in status.stdout
    assert b"own process" not in status.stdout  # it serves this environment


def test_compress_and_decompress_through_the_server_give_the_same_bytes(environment, tmp_path):
    before = served(environment)
    outputs = {}
    for name, env in (("server", environment), ("own", in_process(environment))):
        folder = tmp_path / name
        folder.mkdir()
        compressed = vaecodec("compress", KODAK_IMAGE, "-o", "photo.vae", env=env, cwd=folder)
        decompressed = vaecodec("decompress", "photo.vae", env=env, cwd=folder)
        assert compressed.returncode == decompressed.returncode == 0, compressed.stderr + decompressed.stderr
        lines = [re.sub(rb", [0-9.]+ s$", b"", done.stdout.strip()) for done in (compressed, decompressed)]
        outputs[name] = lines, (folder / "photo.vae").read_bytes(), (folder / "photo.decoded.png").read_bytes()
    assert served(environment) == before + 2  # these two ran in the server
    assert outputs["server"] == outputs["own"]  # the same report lines (but the times) and the same bytes


def test_errors_come_back_as_one_line_with_their_exit_code(environment, tmp_path):
    before = served(environment)
    missing = vaecodec("compress", "missing.png", env=environment, cwd=tmp_path)
    own = vaecodec("compress", "missing.png", env=in_process(environment), cwd=tmp_path)
    assert missing.returncode == own.returncode == 2
    assert missing.stderr == own.stderr == b"vaecodec: error: missing.png: no such file or directory\n"
    assert missing.stdout == b""

    (tmp_path / "broken.vae").write_bytes(b"VAE" + bytes(40))
    broken = vaecodec("decompress", "broken.vae", env=environment, cwd=tmp_path)
    assert broken.returncode == 4 and broken.stderr.startswith(b"vaecodec: error: ")
    assert len(broken.stderr.splitlines()) == 1
    assert files_in(tmp_path) == {"broken.vae"}
    assert served(environment) == before + 2


def test_standard_input_and_output_pass_through(environment, small_png):
    folder = small_png.parent
    assert vaecodec("compress", "photo.png", "-o", "file.vae", env=environment, cwd=folder).returncode == 0
    piped = vaecodec("compress", "-", "-o", "-", env=environment, input=small_png.read_bytes())
    assert piped.returncode == 0 and b"bpp" in piped.stderr  # the report goes to stderr when data takes stdout
    assert piped.stdout == (folder / "file.vae").read_bytes()

    assert vaecodec("decompress", "file.vae", "-o", "file.png", env=environment, cwd=folder).returncode == 0
    image = vaecodec("decompress", "-", "-o", "-", "--format", "png", env=environment, input=piped.stdout)
    assert image.returncode == 0 and image.stdout == (folder / "file.png").read_bytes()


def test_a_terminal_is_a_terminal_to_the_command(environment, small_png):
    folder = small_png.parent
    assert vaecodec("compress", "photo.png", env=environment, cwd=folder).returncode == 0
    before = served(environment)
    main, terminal = pty.openpty()
    try:
        done = subprocess.run([str(SCRIPT), "decompress", "photo.vae", "-o", "-"], env=environment, cwd=folder,
                              stdout=terminal, stderr=subprocess.PIPE, timeout=SECONDS)
    finally:
        os.close(terminal)
        os.close(main)
    assert done.returncode == 2
    assert done.stderr.startswith(b"vaecodec: error: photo.vae: refusing to write binary data to a terminal")
    assert done.stderr.count(b"\n") == 1
    assert served(environment) == before + 1


def test_the_client_and_the_server_commands_import_neither_torch_nor_numpy(environment, small_png):
    before = served(environment)
    script = f"""
import sys
from vaecodec_cli.main import main
sys.argv = ["vaecodec", "compress", {str(small_png)!r}, "-o", {str(small_png.with_suffix(".vae"))!r}]
try:
    main()
except SystemExit as done:
    assert done.code == 0, done.code
from vaecodec_cli.main import cli
try:
    cli(["server", "status"], prog_name="vaecodec")
except SystemExit as done:
    assert done.code == 0, done.code
print("LOADED", "torch" in sys.modules, "numpy" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                          timeout=SECONDS)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "LOADED False False"
    assert small_png.with_suffix(".vae").exists() and served(environment) == before + 1


def test_ctrl_c_leaves_no_output_and_the_server_serves_on(environment, tmp_path, small_png):
    process = long_command_started(["compress", KODAK_IMAGE, "-o", "refined.vae", "--refine", "200"], environment,
                                   tmp_path)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=SECONDS) == client.INTERRUPTED_EXIT_CODE
    assert files_in(tmp_path) == {"photo.png"}  # no output, no temporary
    before = served(environment)
    assert vaecodec("compress", "photo.png", env=environment, cwd=tmp_path).returncode == 0
    assert served(environment) == before + 1 and files_in(tmp_path) == {"photo.png", "photo.vae"}


def test_only_the_model_commands_are_run_and_frames_are_bounded(environment):
    """Raw requests from a process of the same code (a fresh interpreter, as the vaecodec script)."""
    script = """
import json, socket, struct
from vaecodec_cli import client
directory = client.runtime_directory()
for argv in (["train", "--data", "x"], ["server", "stop"], ["compress", "--help"]):
    connection = client.connect(directory)
    client.send_frame(connection, client.REQUEST, client.encode(client.run_request(argv)))
    kind, payload = client.receive_frame(connection)
    print(kind.decode(), json.loads(payload)["reason"])
connection = client.connect(directory)
connection.sendall(client.HEADER.pack(client.REQUEST, 1 << 31))  # announces 2 GiB
print("closed", client.receive_frame(connection) is None)
print("status", client.ask(directory, "status")["refusal"] == "")
"""
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True,
                          timeout=SECONDS)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert all(line.startswith("D the server runs only compress, decompress, inspect") for line in lines[:3]), lines
    assert lines[3:] == ["closed True", "status True"]


def test_a_directory_open_to_others_or_a_link_is_refused(tmp_path):
    open_environment = runtime_environment(tmp_path / "open")
    (tmp_path / "open" / "vaecodec").mkdir(mode=0o755)
    os.chmod(tmp_path / "open" / "vaecodec", 0o755)
    done = vaecodec("server", "start", env=open_environment)
    assert done.returncode == 1 and done.stderr.count(b"\n") == 1
    assert b"open to other users (mode 0755)" in done.stderr and b"Traceback" not in done.stderr

    (tmp_path / "linked").mkdir()
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "linked" / "vaecodec").symlink_to(tmp_path / "elsewhere")
    done = vaecodec("server", "status", env=runtime_environment(tmp_path / "linked"))
    assert done.returncode == 1 and b"symbolic link" in done.stderr and done.stderr.count(b"\n") == 1
    assert files_in(tmp_path / "elsewhere") == set()


def test_a_server_that_dies_during_a_command(tmp_path, small_png):
    environment = runtime_environment(tmp_path / "runtime")
    pid = start(environment)
    work = tmp_path / "work"
    work.mkdir()
    process = long_command_started(["compress", KODAK_IMAGE, "-o", "refined.vae", "--refine", "200"], environment,
                                   work)
    os.kill(pid, signal.SIGKILL)
    assert process.wait(timeout=SECONDS) == 1
    errors = [line for line in process.stderr.read().splitlines() if b"error" in line]
    assert len(errors) == 1 and errors[0].startswith(b"vaecodec: error: the vaecodec server ended during the command")
    assert files_in(work) == set()

    status = vaecodec("server", "status", env=environment)
    assert status.returncode == 1 and b"left its socket behind" in status.stdout
    done = vaecodec("compress", small_png, "-o", work / "after.vae", env=environment)  # in its own process
    assert done.returncode == 0 and (work / "after.vae").exists()


def test_an_idle_server_exits_by_itself(tmp_path):
    environment = runtime_environment(tmp_path)
    start(environment, "--idle-minutes", "0.05")
    deadline = time.monotonic() + SECONDS
    while vaecodec("server", "status", env=environment).returncode == 0:
        assert time.monotonic() < deadline
        time.sleep(1)
    assert not (directory_of(environment) / client.SOCKET_NAME).exists()


def test_stop_ends_the_server_and_the_command_it_runs(environment, tmp_path):
    """Last in this file: it stops the module's server."""
    process = long_command_started(["compress", KODAK_IMAGE, "-o", "refined.vae", "--refine", "200"], environment,
                                   tmp_path)
    stopped = vaecodec("server", "stop", env=environment)
    assert stopped.returncode == 0 and b"vaecodec server stopped" in stopped.stdout
    assert process.wait(timeout=SECONDS) == 1
    assert b"vaecodec: error: the vaecodec server was stopped during the command" in process.stderr.read()
    assert files_in(tmp_path) == set()
    assert vaecodec("server", "status", env=environment).stdout == b"no vaecodec server running\n"
    assert not (directory_of(environment) / client.SOCKET_NAME).exists()
    again = vaecodec("server", "stop", env=environment)
    assert again.returncode == 0 and again.stdout == b"no vaecodec server running\n"
