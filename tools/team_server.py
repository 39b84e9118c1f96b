"""A team's tracking server on one machine: PostgreSQL, `mlflow server` on it, and MLflow's login.

    python tools/team_server.py            # on 127.0.0.1, no login: anyone who reaches it logs
    python tools/team_server.py --login    # MLflow's basic-auth app: users and permissions
    python tools/team_server.py --login --host 0.0.0.0 --port 5000   # reachable from elsewhere

A throw-away PostgreSQL (tools/postgres.py) holds the runs and the registry, a temporary folder
the artifacts; Ctrl-C stops both and deletes everything. With --login the auth app keeps its
users and permissions in a second database on the same PostgreSQL, and the admin `admin` logs
in with MLFLOW_AUTH_ADMIN_PASSWORD if it is set, else with a generated password written to
./mlflow-admin-password (readable by you only; never printed). tools/TEAM-SERVER.md sets up
the same for real, and says how to add users and grant permissions. Also used by
tests/test_auth.py, tests/test_postgres.py and benchmarks/overhead.py.
"""

import argparse
import configparser
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import psycopg
from mlflow_ui import mlflow_server
from postgres import postgres_server

ADMIN = "admin"
PASSWORD_FILE = "mlflow-admin-password"
# Users and permissions for whoever logs in: READ lets every user see every experiment and
# model; NO_PERMISSIONS shows each user only what they were granted or created themselves.
DEFAULT_PERMISSION = "READ"
# Every request checks its password with a deliberately slow hash, often several times; MLflow
# can remember a good login for a while instead (per worker; off by default). A password change
# or a deleted user made through the API takes effect at once on the worker that handled it,
# on any other worker within this many seconds.
LOGIN_CACHE_SECONDS = 60


@contextlib.contextmanager
def team_server(folder, admin_password=None, host="127.0.0.1", port=None,
                login_cache_seconds=LOGIN_CACHE_SECONDS):  # fmt: skip
    """Yield a Server (tools/mlflow_ui.py) on a fresh PostgreSQL, artifacts under `folder`.

    With an `admin_password`, the basic-auth app, its admin `ADMIN`. The Server also carries
    `database` (the runs' database URI) and `artifacts` (the folder).
    """
    artifacts = Path(folder, "artifacts")
    artifacts.mkdir(exist_ok=True)
    with postgres_server() as database:
        args, env = (
            login_settings(database, folder, admin_password, login_cache_seconds)
            if admin_password else ([], {})
        )  # fmt: skip
        with mlflow_server(
            database, folder, "server", ["--artifacts-destination", str(artifacts), *args],
            env=env, host=host, port=port,
        ) as server:  # fmt: skip
            server.database, server.artifacts = database, artifacts
            yield server


def login_settings(database, folder, admin_password, login_cache_seconds):
    """`mlflow server` options and environment for the basic-auth app, its users and permissions
    in a database `mlflow_auth` beside `database`."""
    auth_database = urlparse(database)._replace(path="/mlflow_auth").geturl()
    with psycopg.connect(database, autocommit=True) as connection:
        connection.execute("CREATE DATABASE mlflow_auth")
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": auth_database,
        "admin_username": ADMIN,
        "auth_cache_ttl_seconds": str(login_cache_seconds),
    }
    ini = Path(folder, "basic_auth.ini")
    with private_file(ini) as file:  # a real database URI carries the database's password
        config.write(file)
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,  # the environment, not the ini file
        # Signs the login form's CSRF token; one server, so a key of its own per start.
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }
    return ["--app-name", "basic-auth"], env


def private_file(path):
    """`path` opened for writing, created or truncated, readable and writable by its owner only."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing file keeps its mode on open: set it
    return os.fdopen(descriptor, "w")


def admin_password(password_file):
    """MLFLOW_AUTH_ADMIN_PASSWORD, or a new password written to `password_file`; where it is."""
    given = os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD")
    if given:
        return given, "MLFLOW_AUTH_ADMIN_PASSWORD"
    password = secrets.token_urlsafe(24)  # MLflow asks for 12 characters at least
    with private_file(password_file) as file:
        file.write(password + "\n")
    return password, f"{Path(password_file).absolute()} (readable by you only)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--login", action="store_true", help="MLflow's basic-auth app")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, help="default: a free port")
    parser.add_argument("--password-file", default=PASSWORD_FILE,
                        help="where a generated admin password goes")  # fmt: skip
    args = parser.parse_args()
    password, where = admin_password(args.password_file) if args.login else (None, None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop as on Ctrl-C: clean up
    with (
        tempfile.TemporaryDirectory() as folder,
        team_server(folder, password, args.host, args.port) as server,
    ):
        print(f"team server at {server.url} (Ctrl-C stops it and deletes everything)")
        if args.login:
            print(f"log in as {ADMIN}; the password is in {where}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while server.process.poll() is None:
                time.sleep(1)
        if server.process.poll() is not None:  # its log goes with the folder: show its end
            log = next(Path(folder).glob("mlflow-server-*.log")).read_text()
            print(f"the server stopped by itself:\n{log[-3000:]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
