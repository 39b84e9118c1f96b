"""Shared helpers: run autolog_mlflow.py as a user would, then inspect the store it wrote."""

import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "autolog_mlflow.py"
SMALL_GRID = '{"n_estimators": [10, 20], "max_depth": [null, 3]}'  # 4 quick candidates
QUICK = ["--param-grid", SMALL_GRID, "--cv", "3", "--n-jobs", "1"]

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


@pytest.fixture
def script_main(tmp_path, monkeypatch, capsys):
    """Call the script's main() in this process, in `tmp_path`, as `run_script` runs it there.

    For checks that end before any run exists (argument parsing, data, URIs): a new process
    costs seconds of imports and is not what they test. What main() changes in the process is
    put back afterwards: MLflow's environment variables, its logger and tracking URI, the
    SIGTERM handler, the hook for dropped exceptions.
    """
    monkeypatch.chdir(tmp_path)
    for name in [name for name in os.environ if name.startswith("MLFLOW_")]:
        monkeypatch.delenv(name)  # as in script_env()
    for name, value in autolog_mlflow.MLFLOW_SETTINGS.items():
        monkeypatch.setenv(name, value)  # what main() sets, so that it is undone
    mlflow_logger = logging.getLogger("mlflow")
    monkeypatch.setattr(mlflow_logger, "handlers", list(mlflow_logger.handlers))  # main() adds
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # main() sets its own
    sigterm, tracking_uri = signal.getsignal(signal.SIGTERM), mlflow.get_tracking_uri()

    def call(*args):
        capsys.readouterr()
        try:
            code = autolog_mlflow.main(list(args))
        except SystemExit as e:  # argparse's errors and --help
            code = e.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    yield call
    signal.signal(signal.SIGTERM, sigterm)
    mlflow.set_tracking_uri(tracking_uri)


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
    """`count` processes of the script at once; their JSON reports, once all have succeeded."""
    processes = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--json", *QUICK, *args],
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


def finished_run(workdir, *args, script=SCRIPT):
    result = run_script(workdir, "--json", *args, script=script)
    assert result.returncode == 0, result.stderr
    return ScriptRun(workdir, result)


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The script with all its defaults, on a fresh SQLite store in an empty folder."""
    return finished_run(tmp_path_factory.mktemp("default"))


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory):
    """The QUICK search twice in one fresh folder: its fits in this process, then again in
    parallel worker processes (--n-jobs -1), the store now warm. Made together, so that runs
    other tests add to this store come after both."""
    first = finished_run(tmp_path_factory.mktemp("quick"), *QUICK)
    return first, finished_run(first.workdir, *QUICK, "--n-jobs", "-1")


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
