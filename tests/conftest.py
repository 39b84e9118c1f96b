"""Shared helpers: run autolog_mlflow.py as a user would, then inspect the store it wrote."""

import atexit
import contextlib
import functools
import io
import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

import numpy as np
import pandas as pd
import pytest
from filelock import FileLock
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "autolog_mlflow.py"
SMALL_GRID = '{"n_estimators": [10, 20], "max_depth": [null, 3]}'  # 4 quick candidates
SMALL_SEARCH = ["--param-grid", SMALL_GRID, "--cv", "3", "--n-jobs", "1"]
# Where the data is not the point: 5 of the bundled data's 30 columns, as a CSV. skrub's
# TableVectorizer works column by column at every fit and transform (~3 ms a column here): on
# all 30 it is a third of a small search's CPU.
SMALL_TABLE = ["--data", str(ROOT / "tests" / "small_table.csv"), "--target", "target"]
QUICK = [*SMALL_TABLE, *SMALL_SEARCH]
# One candidate, 2 folds: for runs at once, which contend for the store, not for the search.
TINY_SEARCH = ["--param-grid", '{"n_estimators": [10], "max_depth": [3]}', "--cv", "2",
               "--n-jobs", "1"]  # fmt: skip
TINY = [*SMALL_TABLE, *TINY_SEARCH]

sys.path[:0] = [str(ROOT), str(ROOT / "tools")]  # the script and the UI helpers
from mlflow_ui import mlflow_server

import autolog_mlflow

# The files that take longest run first. pytest-xdist hands each worker whole files in the order
# they are collected (`--no-loadscope-reorder` in pyproject.toml; by default it starts with the
# files that have the most tests, which are quick), so a long file left for the end would run
# alone on one core while the other idles. Test seconds summed per file on 2026-12-06 (see
# tests/README.md, "Durations"); a file not listed runs after these.
LONGEST_FIRST = ["test_faults.py", "test_resume.py", "test_adapting.py", "test_reproduce.py",
                 "test_dead_runs.py", "test_scaling_out.py", "test_postgres.py",
                 "test_experiment.py", "test_fold_cache.py", "test_ui.py", "test_tables.py",
                 "test_registry.py", "test_auth.py", "test_mlflow_internals.py",
                 "test_platforms.py", "test_completeness.py", "test_promises.py",
                 "test_correctness.py"]  # fmt: skip


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests in order


def script_env():
    """The environment for the script: ours, less MLflow settings (tests set a tracking URI)
    and pytest's PYTEST_CURRENT_TEST (MLflow checks its own sessions more strictly under it)."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith("MLFLOW_") and key != "PYTEST_CURRENT_TEST"}  # fmt: skip


def run_script(workdir, *args, timeout=600, script=SCRIPT, env=None, new_python=False,
               fresh_store=False):  # fmt: skip
    """Run the script (or a copy) in `workdir`, so its default store lands there, and wait for
    it; `env` adds to its environment. A process of its own (`start_script`)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = start_script(workdir, *args, script=script, env=env, stdout=out, stderr=err,
                               new_python=new_python, fresh_store=fresh_store)  # fmt: skip
        try:
            process.wait(timeout)
        finally:
            if process.returncode is None:
                process.kill()
        return subprocess.CompletedProcess(
            process.args, process.returncode, text_of(out), text_of(err)
        )


def text_of(file):
    """What a file holds, as subprocess's text mode gives it (universal newlines)."""
    file.seek(0)
    return io.TextIOWrapper(file, encoding="utf-8", newline=None).read()


def start_script(workdir, *args, script=SCRIPT, env=None, stdout=PIPE, stderr=PIPE,
                 new_session=False, new_python=False, fresh_store=False):  # fmt: skip
    """Start `python SCRIPT ARGS...` in `workdir`, `env` added to its environment, and return it
    as subprocess.Popen would (`pid`, `stdout`/`stderr` as text when PIPE, `wait`,
    `communicate`, `send_signal`...).

    Forked by the prestarted Python (tests/prestarted.py), which has the script's libraries
    imported: a real process, ~7 s of CPU less to start. A `new_python` where the test is
    about what a process does from its first line (what the imports print), and where `env`
    sets more than MLflow's settings read at call time (HOME, PYTHON*, TERM...: imports may
    read them). The rest of the environment is this process's, as the prestarted one's was,
    with what imports here added since (scikit-learn's KMP_* variables: a new Python's imports
    set them too).

    The script (or a copy) run on the default store of a folder that has none finds there the
    empty store a first run would have made (`empty_store_in`), unless `fresh_store`: for the
    tests of a first run, which make it."""
    uri_given = any(arg.startswith("--tracking-uri") for arg in args)
    uri_given |= "MLFLOW_TRACKING_URI" in (env or {})
    default_store = Path(script).name == SCRIPT.name and not uri_given
    if default_store and not (fresh_store or (Path(workdir) / "mlflow.db").exists()):
        empty_store_in(Path(workdir))
    import_time = [
        key
        for key in env or {}
        if key.startswith(MLFLOW_AT_IMPORT) or not key.startswith("MLFLOW_")
    ]
    env = script_env() | (env or {})
    argv = [str(script), *args]
    if new_python or import_time:
        return subprocess.Popen(
            [sys.executable, *argv], cwd=workdir, env=env, stdout=stdout, stderr=stderr,
            text=True, start_new_session=new_session,
            # Ctrl-C reaches it even if the tests run in the background (a shell starts
            # background jobs with SIGINT ignored, and Python leaves an inherited SIG_IGN
            # alone), as the forked ones: Python's own handler, as from a terminal. (In the
            # child, between fork and exec, only a sigaction: safe beside threads.)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
        )  # fmt: skip
    return PrestartedProcess(argv, workdir, env, stdout, stderr, new_session)


def empty_store_in(folder):
    """The store a first run in `folder` makes, before it logs anything: MLflow's tables and
    its Default experiment, whose artifacts would go to `folder`/mlruns/0. A new store's ~50
    migrations take ~1 s of CPU; run once per worker and copied, not again for each of the
    ~100 tests whose subject is not the first run."""
    store = folder / "mlflow.db"
    shutil.copyfile(empty_store(), store)
    with contextlib.closing(sqlite3.connect(store)) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                   (str(folder.resolve() / "mlruns" / "0"),))  # fmt: skip
    return store


@functools.cache
def empty_store():
    """This process's empty store, made once, in a folder removed at its exit."""
    folder = tempfile.TemporaryDirectory(prefix="empty-store-")
    atexit.register(folder.cleanup)
    made = Path(folder.name) / "mlflow.db"
    MlflowClient(f"sqlite:///{made}").search_experiments()  # makes the tables
    return made


MLFLOW_AT_IMPORT = ("MLFLOW_LOGGING", "MLFLOW_CONFIGURE_LOGGING")  # read by `import mlflow`


_prestarted = {}  # this process's prestarted Python: its process and socket


def prestarted_socket():
    if "socket" not in _prestarted:
        path = Path(tempfile.mkdtemp(prefix="prestarted-")) / "socket"
        server = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "prestarted.py"), str(path)],
            env=script_env(), stdout=PIPE, text=True,
        )  # fmt: skip
        atexit.register(server.kill)
        assert server.stdout.readline() == "ready\n", "the prestarted Python did not start"
        _prestarted.update(process=server, socket=str(path))
    return _prestarted["socket"]


class PrestartedProcess:
    """A process forked by the prestarted Python, used as a subprocess.Popen."""

    def __init__(self, argv, cwd, env, stdout, stderr, new_session):
        self.args, self.returncode = argv, None
        ours, fds = [], []
        for target in (stdout, stderr):
            if target is PIPE:
                read, write = os.pipe()
                ours.append(open(read, encoding="utf-8"))  # noqa: SIM115 -- ReadToEnd closes it
                fds.append(write)
            else:
                ours.append(None)
                fds.append(target.fileno())
        self.stdout, self.stderr = ours
        request = {"argv": argv, "cwd": str(cwd), "env": env, "new_session": new_session}
        self.connection = socket.socket(socket.AF_UNIX)
        self.connection.connect(prestarted_socket())
        with open(os.devnull) as null:
            message = f"{json.dumps(request)}\n".encode()
            socket.send_fds(self.connection, [message], [null.fileno(), *fds])
        for stream, fd in zip(ours, fds):
            if stream:  # the child has its own copy of the writing end
                os.close(fd)
        self.connection.settimeout(60)
        self.received, fds, _, _ = socket.recv_fds(self.connection, 64, 1)
        assert fds, "the prestarted Python could not start the script: see its stderr"
        self.pidfd = fds[0]
        self.pid, self.reads = self.answer(), None

    def answer(self, timeout=None):
        """The next number the prestarted Python sends: the PID, then the exit code."""
        self.connection.settimeout(timeout)
        while b"\n" not in self.received:
            try:
                chunk = self.connection.recv(64)
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            assert chunk, "the prestarted Python is gone"
            self.received += chunk
        line, _, self.received = self.received.partition(b"\n")
        return int(line)

    def wait(self, timeout=None):
        if self.returncode is None:
            self.returncode = self.answer(timeout)
            self.connection.close()
            os.close(self.pidfd)
        return self.returncode

    def poll(self):
        """Its exit code if it has ended (its pidfd is readable then), else None."""
        if self.returncode is None and select.select([self.pidfd], [], [], 0)[0]:
            self.wait(60)
        return self.returncode

    def communicate(self, timeout=None):
        """Its output to the end, and its exit; TimeoutExpired after `timeout` seconds (then
        kill it and call this again, as with Popen)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.reads is None:  # daemon threads: a hung child cannot hold pytest at exit
            self.reads = [ReadToEnd(stream) for stream in (self.stdout, self.stderr)]
        for read in self.reads:
            read.join(None if deadline is None else max(0, deadline - time.monotonic()))
            if read.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.001, deadline - time.monotonic()))
        return tuple(read.text for read in self.reads)

    def send_signal(self, sig):
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it has just ended
                signal.pidfd_send_signal(self.pidfd, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)


class ReadToEnd(threading.Thread):
    """A stream read to its end in the background (nothing to read: `text` None)."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.text = stream, None
        self.start()

    def run(self):
        if self.stream:
            with self.stream:
                self.text = self.stream.read()


def edited_script(folder, edits):
    """A copy of the script in `folder`, each (text, replacement) of `edits` made once: as a user
    edits the configuration or the experiment. The text must be in the script exactly once."""
    text = SCRIPT.read_text()
    for old, replacement in edits:
        assert text.count(old) == 1, f"not once in the script: {old}"
        text = text.replace(old, replacement)
    (folder / SCRIPT.name).write_text(text)
    return folder / SCRIPT.name


@pytest.fixture(scope="session")
def script_help(tmp_path_factory):
    """What `--help` prints (run once for every test that reads it)."""
    result = run_script(tmp_path_factory.mktemp("help"), "--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def script_main(tmp_path):
    """`run_script` in the test's `tmp_path`."""
    return lambda *args: run_script(tmp_path, *args)


@dataclass
class ScriptRun:
    """A finished run of the script: its output, its JSON report and a client on its store."""

    workdir: Path
    result: subprocess.CompletedProcess

    @property
    def tracking_uri(self):
        return f"sqlite:///{self.workdir / 'mlflow.db'}"

    @property
    def client(self):
        return MlflowClient(tracking_uri=self.tracking_uri)

    @property
    def report(self):
        return json.loads(self.result.stdout)

    @property
    def run(self):
        return self.client.get_run(self.report["run_id"])

    def child_runs(self):
        return self.client.search_runs(
            [self.run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.run.info.run_id}'",
        )

    def logged_models(self):
        return self.client.search_logged_models(
            [self.run.info.experiment_id],
            filter_string=f"source_run_id = '{self.run.info.run_id}'",
        )


def run_eight_at_once(workdir, *args):
    return run_at_once(workdir, 8, *args)


def run_at_once(workdir, count, *args):
    """`count` processes of the script at once, each a TINY search, on a store they make if it
    is theirs to make (a fresh folder's); their JSON reports, once all have succeeded."""
    processes = [start_script(workdir, "--json", *TINY, *args, fresh_store=True)
                 for _ in range(count)]  # fmt: skip
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
    return [json.loads(stdout) for stdout, _ in outputs]


def parent_runs(tracking_uri):
    """Every parent run in a store, whatever its experiment (child runs left out)."""
    client = MlflowClient(tracking_uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return client.search_runs(experiments, filter_string="tags.mlflow.parentRunId IS NULL")


def child_runs_once_made(client, run_id, timeout=300, until=bool):
    """The child runs of a run still searching, as soon as it has one (or as soon as
    `until(children)`)."""
    run = client.get_run(run_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = autolog_mlflow.find_child_runs(client, run)
        if until(children):
            return children
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} made no child run in {timeout} s")


def finished_run(workdir, *args, script=SCRIPT, new_python=False, env=None, fresh_store=False):
    """A successful run of the script (or a copy) in `workdir`; `env` added to its environment."""
    result = run_script(workdir, "--json", *args, script=script, new_python=new_python, env=env,
                        fresh_store=fresh_store)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return ScriptRun(workdir, result)


def made_once(tmp_path_factory, name, make):
    """The ScriptRuns `make()` returns, made once for the whole test run: the first worker (of
    pytest-xdist's) to ask makes them, the others wait for them and read them."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # one process: no one to share with
        return make()
    shared = tmp_path_factory.getbasetemp().parent
    with FileLock(shared / f"{name}.lock"):
        saved = shared / f"{name}.json"
        if saved.exists():
            made = json.loads(saved.read_text())
            if "failed" in made:  # not again: it takes minutes, and would fail the same way
                pytest.fail(f"{name}, made by another worker, failed: {made['failed']}")
            return [ScriptRun(Path(workdir), subprocess.CompletedProcess(*result))
                    for workdir, result in made["runs"]]  # fmt: skip
        try:
            runs = make()
        except BaseException as e:
            saved.write_text(json.dumps({"failed": f"{type(e).__name__}: {e}"}))
            raise
        saved.write_text(json.dumps({"runs": [
            [str(run.workdir), [run.result.args, run.result.returncode, run.result.stdout,
                                run.result.stderr]]
            for run in runs
        ]}))  # fmt: skip
        return runs


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The script with all its defaults, on a fresh SQLite store in an empty folder."""
    return finished_run(tmp_path_factory.mktemp("default"), fresh_store=True)


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory):
    """The small search on the bundled data twice in one fresh folder: its fits in the script's
    process, then again in parallel worker processes (--n-jobs -1), the store now warm. Made
    together, so that runs other tests add to this store come after both. The first in a new
    Python, as a user starts it; the second forked by the prestarted one, as most runs of the
    tests are: the two are compared (test_experiment.py, test_reproduce.py)."""

    def make():
        first = finished_run(tmp_path_factory.mktemp("quick"), *SMALL_SEARCH, new_python=True,
                             fresh_store=True)  # fmt: skip
        return first, finished_run(first.workdir, *SMALL_SEARCH, "--n-jobs", "-1")

    return made_once(tmp_path_factory, "quick_runs", make)


@pytest.fixture(scope="session")
def quick_run(quick_runs):
    """A small search (4 candidates, 3 folds) with every other default, on a fresh store."""
    return quick_runs[0]


@pytest.fixture(scope="session")
def second_quick_run(quick_runs):
    return quick_runs[1]


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a fresh SQLite store and proxied artifacts in
    its `folder`, which no client sees."""
    folder = tmp_path_factory.mktemp("server")
    args = ["--artifacts-destination", str(folder / "artifacts")]
    with mlflow_server(f"sqlite:///{folder / 'mlflow.db'}", folder, "server", args) as server:
        server.folder = folder
        yield server


def penguins(rows=400, seed=0):
    """A table like the well-known penguins one: few-valued text with gaps, a name per row, an
    integer column, a date, an unbalanced three-class target with three rows unlabelled."""
    rng = np.random.default_rng(seed)
    species = rng.choice(["Adelie", "Gentoo", "Chinstrap"], rows, p=[0.5, 0.35, 0.15])
    bill = np.select([species == "Gentoo", species == "Chinstrap"], [47.5, 49.0], 38.8)
    table = pd.DataFrame({
        "island": np.where(species == "Gentoo", "Biscoe",
                           rng.choice(["Dream", "Torgersen", "Biscoe"], rows)),
        "name": [f"{rng.choice(['Pingu', 'Rico', 'Kowalski', 'Private'])} {i}" for i in range(rows)],
        "bill_length_mm": np.where(rng.random(rows) < 0.05, np.nan,
                                   (bill + rng.normal(0, 2.5, rows)).round(1)),
        "flipper_length_mm": (np.where(species == "Gentoo", 217, 192)
                              + rng.normal(0, 6, rows)).round().astype(int),
        "sex": rng.choice(["male", "female", None], rows, p=[0.48, 0.48, 0.04]),
        "observed": (pd.Timestamp("2007-11-01")
                     + pd.to_timedelta(rng.integers(0, 900, rows), unit="D")).strftime("%Y-%m-%d"),
        "species": species,
    })  # fmt: skip
    table.loc[[5, 50, 150], "species"] = None
    return table


@pytest.fixture(scope="session")
def table_run(tmp_path_factory):
    """The script on penguins.csv, as it comes."""

    def make():
        workdir = tmp_path_factory.mktemp("table")
        penguins().to_csv(workdir / "penguins.csv", index=False)
        return [
            finished_run(workdir, "--data", "penguins.csv", "--target", "species", *SMALL_SEARCH)
        ]

    return made_once(tmp_path_factory, "table_run", make)[0]


def raw_rows():
    """Rows as they come in production: an island never seen in training, gaps in a number and
    in a text column, integers as JSON gives them."""
    return pd.DataFrame({
        "island": ["Atlantis", "Dream", "Biscoe"],
        "name": ["Pingu 1000", "Rico 1001", None],
        "bill_length_mm": [np.nan, 39.1, 48.2],
        "flipper_length_mm": [190.0, np.nan, 220.0],
        "sex": ["female", None, "male"],
        "observed": ["2009-06-01", "2008-01-15", None],
    })  # fmt: skip
