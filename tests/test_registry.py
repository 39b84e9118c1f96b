"""--register-model NAME: the best model becomes a new version of NAME, tagged with what it was
scored on; the `champion` alias goes to the best held-out score on the same test data; the
champion serves predictions over HTTP with `mlflow models serve`."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request

import mlflow
import numpy as np
import pytest
from conftest import SMALL_TABLE, empty_store_in, parent_runs, run_script, script_env
from mlflow import MlflowClient
from mlflow_ui import free_port

import autolog_mlflow

NAME = "breast-cancer-rf"
SCORE = autolog_mlflow.HELD_OUT_SCORE
# Held-out accuracy on the small table's default split: 0.909, 0.888, 0.909 again, then 0.923.
SEQUENCE = {
    "first": '{"n_estimators": [5], "max_depth": [2]}',
    "worse": '{"n_estimators": [1], "max_depth": [1]}',
    "tie": '{"n_estimators": [5], "max_depth": [2]}',
    "better": '{"n_estimators": [50], "max_depth": [null]}',
}


def register(workdir, grid, *args):
    result = run_script(workdir, "--json", *SMALL_TABLE, "--param-grid", grid, "--cv", "2",
                        "--n-jobs", "1", "--register-model", NAME, *args)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Four runs registered in turn into one SQLite store: their reports, and a client."""
    workdir = tmp_path_factory.mktemp("registry")
    reports = {step: register(workdir, grid) for step, grid in SEQUENCE.items()}
    return workdir, reports, MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def score(report):
    return report["test_metrics"][SCORE]


@pytest.mark.slow
def test_each_run_registers_a_new_version_tagged_with_its_run_scores_and_data(registry):
    _, reports, client = registry
    assert [report["registration"]["version"] for report in reports.values()] == [1, 2, 3, 4]
    for report in reports.values():
        version = client.get_model_version(NAME, report["registration"]["version"])
        assert version.tags["run_id"] == report["run_id"]
        assert float(version.tags[SCORE]) == score(report)
        run = client.get_run(report["run_id"])
        digests = {item.dataset.digest for item in run.inputs.dataset_inputs}
        assert {version.tags["train_data_digest"], version.tags["eval_data_digest"]} <= digests
        assert version.run_id == report["run_id"]


@pytest.mark.slow
def test_first_version_becomes_champion(registry):
    _, reports, _ = registry
    assert reports["first"]["registration"]["aliases"] == ["champion"]
    assert "no champion yet" in reports["first"]["registration"]["decision"]


@pytest.mark.slow
def test_a_worse_version_stays_challenger_and_says_why_with_both_scores(registry):
    _, reports, _ = registry
    assert score(reports["worse"]) < score(reports["first"])
    registration = reports["worse"]["registration"]
    assert registration["aliases"] == ["challenger"]
    assert f"{score(reports['worse']):.4f} does not beat" in registration["decision"]
    assert f"{score(reports['first']):.4f}" in registration["decision"]


@pytest.mark.slow
def test_a_tie_keeps_the_champion(registry):
    _, reports, _ = registry
    assert score(reports["tie"]) == score(reports["first"])
    assert reports["tie"]["registration"]["aliases"] == ["challenger"]


@pytest.mark.slow
def test_a_better_version_takes_over_as_champion(registry):
    _, reports, client = registry
    assert score(reports["better"]) > score(reports["first"])
    assert reports["better"]["registration"]["aliases"] == ["champion"]
    assert int(client.get_model_version_by_alias(NAME, "champion").version) == 4
    aliases = client.get_registered_model(NAME).aliases
    assert {alias: int(version) for alias, version in aliases.items()} == {"champion": 4}


@pytest.mark.slow
def test_report_shows_the_version_its_aliases_and_the_champion_uri(tmp_path):
    result = run_script(tmp_path, *SMALL_TABLE, "--param-grid", SEQUENCE["first"], "--cv", "2",
                        "--register-model", NAME)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"Model registry: {NAME} version 1 (aliases: champion)" in result.stdout
    assert f"mlflow models serve -m models:/{NAME}@champion --env-manager local" in result.stdout


@pytest.mark.slow
def test_champion_served_by_mlflow_models_serve_predicts_like_the_reloaded_model(registry):
    workdir, _, _ = registry
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir, env=script_env() | {"MLFLOW_TRACKING_URI": uri},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server)
        args = autolog_mlflow.parse_args(SMALL_TABLE)
        X_test = autolog_mlflow.split_data(*autolog_mlflow.load_data(args), args).X_test
        body = json.dumps({"dataframe_split": X_test.to_dict(orient="split")}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            served = json.load(response)["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    mlflow.set_tracking_uri(uri)
    reloaded = mlflow.sklearn.load_model(f"models:/{NAME}@champion").predict(X_test)
    assert len(served) == len(X_test)
    assert np.array_equal(np.asarray(served), reloaded)


def wait_until_serving(url, server, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "mlflow models serve exited"
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow models serve did not answer within {timeout} s")


@pytest.mark.slow
def test_registration_through_a_tracking_server(tmp_path, tracking_server):
    report = register(tmp_path, SEQUENCE["first"], "--tracking-uri", tracking_server.url)
    client = MlflowClient(tracking_server.url)
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert int(champion.version) == report["registration"]["version"]
    assert champion.tags["run_id"] == report["run_id"]


def test_invalid_model_name_is_rejected_before_any_run(tmp_path, script_main):
    result = script_main("--register-model", "team/model")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--register-model 'team/model'" in line and "cannot contain '/'" in line
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


@pytest.mark.slow
def test_registry_failure_after_the_run_keeps_it_finished_and_says_how_to_retry(tmp_path):
    store = empty_store_in(tmp_path)
    with sqlite3.connect(store) as db:  # a registry that refuses every new version
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON model_versions "
                   "BEGIN SELECT RAISE(ABORT, 'registry refuses new versions'); END")  # fmt: skip
    result = run_script(tmp_path, *SMALL_TABLE, "--param-grid", SEQUENCE["first"], "--cv", "2",
                        "--register-model", NAME)  # fmt: skip

    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert "registration failed (" in line  # MLflow's own words; it retries, then gives up
    assert 'mlflow.register_model("models:/m-' in line and f'"{NAME}")' in line
    (run,) = parent_runs(f"sqlite:///{store}")
    assert run.info.status == "FINISHED"
    assert run.info.run_id in line
    # The run's report, as without --register-model, before the error.
    assert result.stdout.startswith(f"Run ID: {run.info.run_id}\nRun name: small_table.csv -> ")
    assert "\nStatus: FINISHED in " in result.stdout and "\nLoad the model:\n" in result.stdout
