"""Outgrow one machine with the same script: a Dask cluster, a shared server, `mlflow run`."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from conftest import (
    ROOT,
    SCRIPT,
    SMALL_GRID,
    SMALL_TABLE,
    edited_script,
    finished_run,
    run_script,
    script_env,
)
from distributed import Client, LocalCluster
from mlflow import MlflowClient
from mlflow_ui import free_port

import autolog_mlflow

SEARCH = ["--param-grid", SMALL_GRID, "--cv", "3"]  # on every core
QUICK = [*SMALL_TABLE, *SEARCH]
TIMING = ("fit_time", "score_time")


def outcome(run):
    """What a run found, less timings: best params, metrics, each child run's scores."""
    children = {
        child.info.run_name: {k: v for k, v in child.data.metrics.items() if not k.endswith(TIMING)}
        for child in run.child_runs()
    }
    params = {k: v for k, v in run.run.data.params.items() if k.startswith("best_")}
    return params, run.run.data.metrics, children


# --- Dask -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_cluster():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster, Client(cluster) as client:  # fmt: skip
        yield cluster.scheduler_address, client


def tasks_run_by_workers(client):
    return sum(client.run(lambda dask_worker: dask_worker.state.executed_count).values())


@pytest.mark.slow
def test_search_on_a_dask_cluster_is_complete_and_identical_to_a_local_run(
    tmp_path, dask_cluster, quick_run
):
    address, client = dask_cluster
    tasks_before = tasks_run_by_workers(client)

    # A process of its own: the cluster's client here is this process's. The bundled data, as
    # quick_run's.
    on_dask = finished_run(tmp_path, *SEARCH, "--dask-scheduler", address, script=SCRIPT)

    # Every candidate, every fold, a task each; nothing nested in them (a column, a tree).
    assert tasks_run_by_workers(client) - tasks_before == 4 * 3
    assert on_dask.run.info.status == "FINISHED"
    assert len(on_dask.child_runs()) == 4
    assert [str(model.status) for model in on_dask.logged_models()] == ["READY"]
    assert outcome(on_dask) == outcome(quick_run)
    # The workers report each fit as it ends: progress lines before the last one.
    progress = [line for line in on_dask.result.stderr.splitlines() if line.startswith("search: ")]
    assert len(progress) > 1 and progress[-1].startswith("search: 13/13 fits (100%)")


@pytest.mark.slow
def test_unreachable_dask_scheduler_fails_in_one_line_within_its_connect_timeout(tmp_path):
    # A copy of the script with a shorter timeout, as a user edits its configuration: the test
    # waits it out. Side by side with a run that stops at the same point, the store just
    # created (an invalid --register-model name): on a loaded machine, starting up alone can
    # take over 10 s.
    timeout, line = 3, f"DASK_CONNECT_TIMEOUT = {autolog_mlflow.DASK_CONNECT_TIMEOUT}  #"
    script = edited_script(tmp_path, [(line, f"DASK_CONNECT_TIMEOUT = {timeout}  #")])
    (tmp_path / "baseline").mkdir()
    start = time.monotonic()
    baseline_run = run_script(
        tmp_path / "baseline", *QUICK, "--register-model", "a/b", script=script
    )
    assert baseline_run.returncode == 2
    baseline = time.monotonic() - start
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    result = run_script(tmp_path, *QUICK, "--dask-scheduler", address, script=script)
    assert time.monotonic() - start - baseline < timeout + 5
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        (
            f"autolog_mlflow.py: error: cannot reach the Dask scheduler {address}: "
            f"Timed out trying to connect to {address} after {timeout} s"
        )
    ]
    assert not (tmp_path / "mlruns").exists() or not any((tmp_path / "mlruns").rglob("meta*"))


def test_missing_dask_is_reported_with_what_to_install(tmp_path):
    # A Python where `import distributed` fails, as it does without requirements-dask.txt.
    without_dask = (
        "import runpy, sys; sys.modules['distributed'] = None; "
        f"sys.argv = ['autolog_mlflow.py', '--dask-scheduler', 'local']; "
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", without_dask], cwd=tmp_path, env=script_env(),
        capture_output=True, check=False, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "autolog_mlflow.py: error: --dask-scheduler needs Dask: "
        "pip install -r requirements-dask.txt"
    )


# --- A shared tracking server -----------------------------------------------------------------


def rest(server, method, endpoint, **kwargs):
    response = requests.request(method, f"{server.url}/api/2.0/mlflow/{endpoint}", **kwargs)
    response.raise_for_status()
    return response.json()


@pytest.mark.slow
def test_everything_is_readable_through_the_servers_rest_api(tmp_path, tracking_server):
    server = tracking_server
    result = run_script(tmp_path, "--json", "--tracking-uri", server.url, *QUICK)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    run_id, experiment_id = report["run_id"], report["experiment_id"]

    run = rest(server, "GET", "runs/get", params={"run_id": run_id})["run"]
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert {"best_n_estimators", "best_max_depth"} <= set(params)
    children = rest(server, "POST", "runs/search", json={
        "experiment_ids": [experiment_id],
        "filter": f"tags.mlflow.parentRunId = '{run_id}'",
    })["runs"]  # fmt: skip
    assert len(children) == 4
    files = rest(server, "GET", "artifacts/list", params={"run_id": run_id})["files"]
    assert "cv_results.csv" in {f["path"] for f in files}
    models = rest(server, "POST", "logged-models/search", json={
        "experiment_ids": [experiment_id],
        "filter": f"source_run_id = '{run_id}'",
    })["models"]  # fmt: skip
    assert [(m["info"]["name"], m["info"]["status"]) for m in models] == [
        ("best_estimator", "LOGGED_MODEL_READY")
    ]
    assert not (tmp_path / "mlruns").exists()  # the client wrote nothing locally


@pytest.mark.slow
def test_model_loads_from_a_process_that_cannot_see_the_servers_folders(tmp_path, tracking_server):
    server, folder = tracking_server, tracking_server.folder
    run = finished_run(tmp_path, "--tracking-uri", server.url, *QUICK)
    model_uri = run.report["logged_models"][0]["uri"]
    load_and_score = (
        "import json, mlflow.sklearn, autolog_mlflow as a; "
        f"args = a.parse_args({SMALL_TABLE!r}); data = a.split_data(*a.load_data(args), args); "
        f"model = mlflow.sklearn.load_model({model_uri!r}); "
        "print(json.dumps(float((model.predict(data.X_test) == data.y_test).mean())))"
    )  # fmt: skip
    # A private mount namespace where the server's folder is an empty tmpfs.
    hide = f'mount -t tmpfs tmpfs {folder} && test -z "$(ls -A {folder})"'
    result = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", f'{hide} && exec "$@"', "sh",
         sys.executable, "-c", load_and_score],
        cwd=ROOT, env=script_env() | {"MLFLOW_TRACKING_URI": server.url},
        capture_output=True, check=False, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    accuracy = json.loads(result.stdout.strip().splitlines()[-1])
    assert accuracy == run.report["test_metrics"]["accuracy_score_X_test"]


# --- MLflow Projects --------------------------------------------------------------------------


def mlproject():
    return yaml.safe_load((ROOT / "MLproject").read_text())


def test_mlproject_uses_conda_yml_and_repeats_none_of_the_scripts_defaults():
    project = mlproject()
    assert project["conda_env"] == "conda.yml"
    entry_points = project["entry_points"]
    assert entry_points["main"] == {"command": "python autolog_mlflow.py"}
    assert set(entry_points["own_data"]["parameters"]) == {"data", "target"}
    assert not [p for p in entry_points["own_data"]["parameters"].values() if "default" in p]


@pytest.mark.slow
def test_mlflow_run_runs_the_edited_experiment_and_logs_into_the_run_it_created(tmp_path):
    """`mlflow run` on a copy of the project whose experiment block has another estimator and
    its grid: the project passes the script's own defaults, so it runs the edit."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ["MLproject", "conda.yml"]:
        (project / name).write_text((ROOT / name).read_text())
    edited_script(project, [
        ("ESTIMATOR = ensemble.RandomForestClassifier()", "ESTIMATOR = ensemble.ExtraTreesClassifier()"),
        ('PARAM_GRID = {"n_estimators": [50, 100, 200], "max_depth": [None, 5, 10]}',
         'PARAM_GRID = {"n_estimators": [10, 20], "max_depth": [None, 3]}'),
    ])  # fmt: skip
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = script_env() | {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}:{script_env()['PATH']}",  # `python` = this one
    }
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(project), "--env-manager", "local",
         "--experiment-name", "project", "-P", "cv=3", "-P", "n-jobs=1"],
        cwd=tmp_path, env=env, capture_output=True, check=False, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("project")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`mlflow.source.type` = 'PROJECT'"
    )
    assert run.info.status == "FINISHED"
    assert run.data.params["cv"] == "3"  # the project's parameter and autologging's agree
    assert "ExtraTreesClassifier" in run.data.params["estimator"]
    assert {"best_n_estimators", "best_max_depth"} <= set(run.data.params)
    assert "accuracy_score_X_test" in run.data.metrics
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert len(children) == 4
    models = client.search_logged_models(
        [experiment.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert [str(model.status) for model in models] == ["READY"]
