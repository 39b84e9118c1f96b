"""A Python process that has imported the script's libraries once and forks a fresh process
for each run of the script: `python prestarted.py SOCKET`; conftest's `start_script` asks it.

Each run is a real process (its own PID, exit code, signals, environment, folder and file
descriptors) that runs the script as `__main__`, as `python autolog_mlflow.py` would, and
exits as Python does (non-daemon threads joined, atexit handlers, streams flushed); it skips
only the ~7 s of CPU of importing MLflow, scikit-learn, pandas, skrub, MLflow's SQL store and
the rest, which it inherits from this process, imported but never used. Single-threaded, so forking is
safe: it waits for requests and for its children's ends (pidfds) in one select loop.

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
    while True:
        for key, _ in events.select():
            if key.fileobj is listener:
                connection, _ = listener.accept()
                pid = start(connection)
                events.register(os.pidfd_open(pid), selectors.EVENT_READ, (pid, connection))
            else:
                pid, connection = key.data
                events.unregister(key.fileobj)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                answer(connection, os.waitstatus_to_exitcode(status))
                connection.close()


def start(connection):
    message, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    while not message.endswith(b"\n"):  # a stream: a long request may come in pieces
        message += connection.recv(1 << 16)
    pid = os.fork()
    if pid == 0:
        os._exit(run(json.loads(message), fds))
    for fd in fds:
        os.close(fd)
    answer(connection, pid)
    return pid


def answer(connection, number):
    with contextlib.suppress(OSError):  # the test that asked may be gone: serve the others
        connection.sendall(f"{number}\n".encode())


def run(request, fds):
    """In the child: become `python SCRIPT ARGS...` in the request's folder and environment."""
    import atexit
    import runpy
    import signal
    import threading
    import traceback

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
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT  # Python ends itself by SIGINT then
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # as Python's own exit: wait for non-daemon threads
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if code == -signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


if __name__ == "__main__":
    import threading

    import_what_a_run_imports()
    assert threading.active_count() == 1, "a thread would not survive a fork"
    serve(sys.argv[1])
