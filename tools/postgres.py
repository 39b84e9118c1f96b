"""A real, throw-away PostgreSQL server on 127.0.0.1, for the tests and the benchmark.

Debian's PostgreSQL (tests/setup.sh installs it): `initdb` into a fresh folder, `postgres`
listening on 127.0.0.1 and a unix socket in that folder only, trust authentication for the
local user `mlflow`, one database `mlflow`. PostgreSQL refuses to run as root, so as root it
runs as the `postgres` user that Debian's package creates. Stopped by its PID.
"""

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time

from mlflow_ui import free_port

START_TIMEOUT = 60  # seconds


def postgres_binaries():
    """The folder of Debian's PostgreSQL programs (the newest installed major version)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run bash tests/setup.sh")
    return os.path.dirname(found[-1])


def as_server_user(command):
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextlib.contextmanager
def postgres_server():
    """Yield the SQLAlchemy URI of a fresh database on a fresh PostgreSQL server."""
    binaries = postgres_binaries()
    folder = tempfile.mkdtemp(prefix="autolog-pg-")  # in /tmp: the postgres user can reach it
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = os.path.join(folder, "data"), free_port()
    subprocess.run(
        as_server_user([f"{binaries}/initdb", "-D", data, "-U", "mlflow", "--auth=trust",
                        "--no-sync", "-E", "UTF8"]),
        check=True, capture_output=True,
    )  # fmt: skip
    with open(os.path.join(folder, "postgres.log"), "w") as log:
        server = subprocess.Popen(
            as_server_user([f"{binaries}/postgres", "-D", data, "-p", str(port),
                            "-h", "127.0.0.1", "-k", folder]),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_until_ready(binaries, folder, port, server)
        subprocess.run(
            [f"{binaries}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
            check=True, capture_output=True,
        )  # fmt: skip
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        stop(server, data)
        shutil.rmtree(folder, ignore_errors=True)


def wait_until_ready(binaries, folder, port, server):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            with open(os.path.join(folder, "postgres.log")) as log:
                raise RuntimeError(f"postgres exited with code {server.returncode}:\n{log.read()}")
        ready = subprocess.run([f"{binaries}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                               check=False, capture_output=True)  # fmt: skip
        if ready.returncode == 0:
            return
        time.sleep(0.25)
    raise RuntimeError(f"postgres did not accept connections within {START_TIMEOUT} s")


def stop(server, data):
    """Fast shutdown: SIGINT to the postmaster, by the PID it wrote (as root, `server` is the
    runuser process above it); SIGKILL to the whole group only if it hangs."""
    with (
        contextlib.suppress(OSError, ValueError),
        open(os.path.join(data, "postmaster.pid")) as pid,
    ):
        os.kill(int(pid.readline()), signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
