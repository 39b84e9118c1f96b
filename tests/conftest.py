"""Shared helpers: run autolog_mlflow.py as a user would, then inspect the store it wrote."""

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistrySqlStore
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingSqlStore
from mlflow.tracking import fluent as mlflow_fluent
from mlflow.tracking._model_registry.registry import ModelRegistryStoreRegistry
from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "autolog_mlflow.py"
SMALL_GRID = '{"n_estimators": [10, 20], "max_depth": [null, 3]}'  # 4 quick candidates
QUICK = ["--param-grid", SMALL_GRID, "--cv", "3", "--n-jobs", "1"]
# One candidate, 2 folds: for runs at once, which contend for the store, not for the search.
TINY = ["--param-grid", '{"n_estimators": [10], "max_depth": [3]}', "--cv", "2", "--n-jobs", "1"]

sys.path[:0] = [str(ROOT), str(ROOT / "tools")]  # the script and the UI helpers
from mlflow_ui import mlflow_server  # noqa: E402

import autolog_mlflow  # noqa: E402


def script_env():
    """The environment for the script: ours, less MLflow settings (tests set a tracking URI)
    and pytest's PYTEST_CURRENT_TEST (MLflow checks its own sessions more strictly under it)."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith("MLFLOW_") and key != "PYTEST_CURRENT_TEST"}  # fmt: skip


def run_script(workdir, *args, timeout=600, script=SCRIPT, env=None):
    """Run the script (or a copy) in `workdir`, so its default store lands there, and wait for
    it; `env` adds to its environment."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=workdir,
        env=script_env() | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_process(workdir, *args, env=None):
    """Call the script's main() in this process, in `workdir`, as `run_script` runs it there,
    and return what a process would: its exit code, stdout and stderr.

    For tests of what a run records, reports or decides, where the process boundary is not the
    point: a process of the script spends ~7 s of CPU on imports before its run starts, which
    this process has paid once (tests/README.md). Exit codes of failures, signals, terminals,
    servers, concurrency and what a process prints outside Python stay real processes.
    What main() changes in the process is put back afterwards: the folder, the environment and
    sys.argv (recorded with the run), MLflow's loggers, tracking URI, experiment and
    autologging, the SIGTERM handler, the hook for dropped exceptions, the warning filters.
    """
    environ, cwd, argv = dict(os.environ), os.getcwd(), sys.argv
    loggers = [logging.getLogger(name) for name in ("mlflow", "mlflow.sklearn")]
    logger_state = [
        (logger, logger.level, logger.handlers[:], logger.filters[:]) for logger in loggers
    ]
    sigterm, unraisablehook = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    tracking_uri, experiment_id = mlflow.get_tracking_uri(), mlflow_fluent._active_experiment_id
    os.environ.clear()
    os.environ.update(script_env() | (env or {}))
    os.chdir(workdir)
    sys.argv = [str(SCRIPT), *args]
    forget_relative_sqlite_stores()
    # The script's own classes (TablePipeline) are __main__'s in its process, so the logged
    # model holds them by value; here they are a module's, which a model server cannot import.
    cloudpickle.register_pickle_by_value(autolog_mlflow)
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():
            try:
                code = autolog_mlflow.main(list(args))
            except SystemExit as e:  # argparse's errors and --help
                code = e.code
    finally:
        mlflow.sklearn.autolog(disable=True)  # if a failure left it patching every fit
        cloudpickle.unregister_pickle_by_value(autolog_mlflow)
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        sys.argv = argv
        for logger, level, handlers, filters in logger_state:
            logger.setLevel(level)
            logger.handlers[:], logger.filters[:] = handlers, filters
        signal.signal(signal.SIGTERM, sigterm)
        sys.unraisablehook = unraisablehook
        mlflow.set_tracking_uri(tracking_uri)
        mlflow_fluent._active_experiment_id = experiment_id
    return subprocess.CompletedProcess([str(SCRIPT), *args], code, out.getvalue(), err.getvalue())


def forget_relative_sqlite_stores():
    """MLflow 3.17 keeps a store per URI and an engine per database URI for the life of the
    process: a relative "sqlite:///mlflow.db" (the default) is another file in each folder, as
    it is for a new process, so this process must forget the one it opened elsewhere."""
    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()
    ModelRegistryStoreRegistry._get_store_with_resolved_uri.cache_clear()
    for engines in (TrackingSqlStore._engine_map, RegistrySqlStore._engine_map):
        for uri in [uri for uri in engines if re.fullmatch(r"sqlite:///[^/].*", uri)]:
            engines.pop(uri).dispose()


@pytest.fixture
def script_main(tmp_path):
    """`run_in_process` in the test's `tmp_path`."""
    return lambda *args: run_in_process(tmp_path, *args)


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
    """`count` processes of the script at once, each a TINY search; their JSON reports, once all
    have succeeded."""
    processes = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--json", *TINY, *args],
            cwd=workdir,
            env=script_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(count)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
    return [json.loads(stdout) for stdout, _ in outputs]


def parent_runs(tracking_uri):
    """Every parent run in a store, whatever its experiment (child runs left out)."""
    client = MlflowClient(tracking_uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return client.search_runs(experiments, filter_string="tags.mlflow.parentRunId IS NULL")


def finished_run(workdir, *args, script=None):
    """A successful run in `workdir`: in this process (`run_in_process`), or, given a `script`
    (SCRIPT itself, or a copy), as a process of it."""
    if script is None:
        result = run_in_process(workdir, "--json", *args)
    else:
        result = run_script(workdir, "--json", *args, script=script)
    assert result.returncode == 0, result.stderr
    return ScriptRun(workdir, result)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The script with all its defaults, on a fresh SQLite store in an empty folder."""
    return finished_run(tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory):
    """The QUICK search twice in one fresh folder: its fits in the script's process, then again
    in parallel worker processes (--n-jobs -1), the store now warm. Made together, so that runs
    other tests add to this store come after both. Real processes, as a user runs the script:
    what a run records of the code it ran is read from these (run in this process, the tests'
    own modules would be part of it)."""
    first = finished_run(tmp_path_factory.mktemp("quick"), *QUICK, script=SCRIPT)
    return first, finished_run(first.workdir, *QUICK, "--n-jobs", "-1", script=SCRIPT)


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
    workdir = tmp_path_factory.mktemp("table")
    penguins().to_csv(workdir / "penguins.csv", index=False)
    return finished_run(workdir, "--data", "penguins.csv", "--target", "species", *QUICK)


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
