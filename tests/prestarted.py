"""A Python process that has imported the script's libraries once and forks a fresh process
for each run of the script: `python prestarted.py SOCKET`; conftest's `start_script` asks it.

Each run is a real process (its own PID, exit code, signals, environment, folder and file
descriptors) that runs the script as `__main__`, as `python autolog_mlflow.py` would, and
exits as Python does (non-daemon threads joined, atexit handlers, streams flushed); it skips
only the ~7 s of CPU of importing MLflow, scikit-learn, pandas, skrub, MLflow's SQL store and
the rest, which it inherits from this process, imported but never used. No Python thread runs
here, so forking is safe: it waits for requests and for its children's ends (pidfds) in one
select loop. What a fork shares with its siblings, unlike new Pythons: the string hash seed
(a new Python's is random: reproduction tests compare a new Python with a fork), warnings
already shown at import, the modules imported ahead (a copy of the script that imports a
module of the same name as one of them gets this one). Linux 5.3 or later (pidfds).

Request: a line of JSON, {"argv": [SCRIPT, ...], "cwd": ..., "env": {...}, "new_session": bool},
with stdin, stdout and stderr as three file descriptors. Answers: a line with the child's PID,
then a line with its exit code (negative: the signal that ended it), as subprocess gives them.
"""

import ast
import contextlib
import importlib
import json
import os
import selectors
import socket
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "autolog_mlflow.py"
# What a run imports later, on its way: its store's tables (alembic), MLflow's git tags
# (GitPython), the model (pyfunc), the pictures (PIL), MLflow's tracing, the data profile.
IMPORTED_LATER = ["alembic.command", "git", "mlflow.pyfunc", "PIL.Image", "mlflow.tracing",
                  "mlflow.store.tracking.sqlalchemy_store", "dask.array",
                  "mlflow.store.model_registry.sqlalchemy_store", "sklearn.inspection"]  # fmt: skip


def import_what_a_run_imports():
    """The modules the script imports at its top (read from it), and IMPORTED_LATER."""
    modules = list(IMPORTED_LATER)
    for node in ast.parse(SCRIPT.read_text()).body:
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.append(node.module)
    for module in modules:
        with contextlib.suppress(ImportError):  # e.g. dask, an option
            importlib.import_module(module)


def serve(path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    events = selectors.DefaultSelector()
    events.register(listener, selectors.EVENT_READ)
    parent = os.pidfd_open(os.getppid())  # pytest's process: when it ends, so does this one
    events.register(parent, selectors.EVENT_READ)
    while True:
        for key, _ in events.select():
            if key.fileobj is parent:
                return
            if key.fileobj is listener:
                connection, _ = listener.accept()
                try:  # a bad request, or no fork: that test fails, not every later one
                    pid, pidfd = start(connection)
                except Exception as e:  # noqa: BLE001
                    print(f"prestarted: {e!r}", file=sys.stderr, flush=True)
                    connection.close()
                    continue
                events.register(pidfd, selectors.EVENT_READ, (pid, connection))
            else:
                pid, connection = key.data
                events.unregister(key.fileobj)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):  # the test that asked may be gone
                    connection.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
                connection.close()


def start(connection):
    """Fork the requested run; send its PID, with a pidfd to signal it by (a PID can be reused
    once this process has reaped the child; a pidfd cannot)."""
    message, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    try:
        while not message.endswith(b"\n"):  # a stream: a long request may come in pieces
            chunk = connection.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the request ended before its end of line")
            message += chunk
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = run(request, fds)
            finally:
                os._exit(code)
    finally:
        for fd in fds:
            os.close(fd)
    pidfd = os.pidfd_open(pid)
    with contextlib.suppress(OSError):
        socket.send_fds(connection, [f"{pid}\n".encode()], [pidfd])
    return pid, pidfd


def run(request, fds):
    """In the child: become `python SCRIPT ARGS...` in the request's folder and environment."""
    import atexit
    import runpy
    import signal
    import threading
    import traceback

    import numpy

    numpy.random.seed()  # as a new process's: not the same state in every fork
    if request["new_session"]:
        os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in map(int, os.listdir("/proc/self/fd")):  # the server's sockets, other children's
        if fd > 2:
            with contextlib.suppress(OSError):
                os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    script = request["argv"][0]
    sys.argv = list(request["argv"])
    # multiprocessing's alias of the main module at its import: this server's, not the script's
    # (the script records the files of the modules it imported from its repository).
    sys.modules.pop("__mp_main__", None)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code, interrupted = 0, False
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code & 0xFF
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True  # Python ends itself by SIGINT then
    except BaseException:  # noqa: BLE001 -- as Python's top level: printed, exit code 1
        traceback.print_exc()
        code = 1
    for step in (threading._shutdown, atexit._run_exitfuncs):  # Python's own exit, in order
        try:
            step()
        except BaseException as e:  # noqa: BLE001 -- Python prints them, keeps the exit code
            traceback.print_exception(e)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


if __name__ == "__main__":
    import threading

    import_what_a_run_imports()
    # No Python thread may run at a fork (OpenBLAS's own threads have fork handlers).
    assert threading.active_count() == 1, "a thread would not survive a fork"
    serve(sys.argv[1])
