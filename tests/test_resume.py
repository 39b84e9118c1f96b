"""--resume RUN_ID: a stopped search goes on where it stopped, and ends as if never stopped.

The store is the checkpoint: each candidate's child run gets its fold results as its folds end
(test_experiment.py watches them arrive); a resumed run reuses those with the same fingerprint
and fits only the others.
"""

import contextlib
import json
import re
import shutil
import signal
import time

import mlflow
import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
from conftest import (
    SCRIPT,
    SMALL_TABLE,
    child_runs_once_made,
    finished_run,
    parent_runs,
    run_script,
    start_script,
)
from mlflow import MlflowClient
from mlflow_ui import mlflow_server

import autolog_mlflow

# 6 candidates, the forests of 300 trees slow enough to stop the search between candidates.
GRID = {"max_depth": [None, 3, 5], "n_estimators": [10, 300]}
SEARCH = [*SMALL_TABLE, "--param-grid", json.dumps(GRID), "--cv", "3", "--n-jobs", "1"]
CANDIDATES, FOLDS = 6, 3


def stopped_search(workdir, search=SEARCH, script=SCRIPT):
    """`search` started in `workdir` and stopped by Ctrl-C once two candidates' scores are in
    the store, some still to fit; returns the stopped run's ID."""
    process = start_script(workdir, *search, script=script)
    run_id = once_two_are_scored(process, f"sqlite:///{workdir / 'mlflow.db'}")
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode == 130
    return run_id


def once_two_are_scored(process, tracking_uri):
    """The run ID of the script `process`, once two of its candidates' scores are in its store
    (it still searching)."""
    line = process.stderr.readline()
    assert line.startswith("run "), line + process.stderr.read()
    run_id = line.split()[1].rstrip(":")
    client = MlflowClient(tracking_uri)  # once the store is made: a client makes a new one
    child_runs_once_made(client, run_id, until=lambda children: process.poll() is not None or (
        sum(autolog_mlflow.FOLDS_TAG in child.data.tags for child in children) >= 2))  # fmt: skip
    assert process.poll() is None, "the search ended before it was stopped"
    return run_id


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return finished_run(tmp_path_factory.mktemp("uninterrupted"), *SEARCH)


def cv_results(made):
    """Each candidate's CV results as the run's child runs hold them, by child-run name."""
    return {child.info.run_name: {key: value for key, value in child.data.metrics.items()
                                  if "test_score" in key}
            for child in made.child_runs()}  # fmt: skip


@contextlib.contextmanager
def mlflow_tracking(uri):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def predictions(made, tracking_uri=None):
    """The run's model's predictions on the whole table; its store: the run's, or `tracking_uri`."""
    X = pd.read_csv(SMALL_TABLE[1]).drop(columns=SMALL_TABLE[3])
    uri = made.report["logged_models"][0]["uri"]
    with mlflow_tracking(tracking_uri or made.tracking_uri):
        return mlflow.pyfunc.load_model(uri).predict(X)


def only_the_others_fitted(resumed, stopped):
    """How many candidates the run resuming `stopped` reused, once its report, its progress (the
    folds of the candidates not reused, and the refit) and its first line agree on it."""
    reused = resumed.report["resumed"]["reused"]
    assert resumed.report["resumed"] == {
        "run_id": stopped,
        "reused": reused,
        "fitted": CANDIDATES - reused,
    }
    assert 2 <= reused < CANDIDATES
    *_, fits = re.findall(r"search: (\d+)/(\d+) fits", resumed.result.stderr)
    assert fits == (str((CANDIDATES - reused) * FOLDS + 1),) * 2
    assert f"(resuming run {stopped}: {reused} reused)" in resumed.result.stderr
    return reused


@pytest.mark.slow
def test_a_stopped_search_resumed_reuses_its_scores_and_ends_as_if_never_stopped(
    tmp_path, uninterrupted
):
    """Stopped by Ctrl-C; a run whose process died is resumed in the server-killed test below."""
    stopped = stopped_search(tmp_path)
    # The fits may run elsewhere than before: here in worker processes.
    resumed = finished_run(tmp_path, "--resume", stopped, "--n-jobs", "2")
    report = resumed.report
    reused = only_the_others_fitted(resumed, stopped)

    # The same results as a search never stopped.
    assert cv_results(resumed) == cv_results(uninterrupted)
    best = {key: value for key, value in report["params"].items() if key.startswith("best_")}
    assert best == {
        k: v for k, v in uninterrupted.report["params"].items() if k.startswith("best_")
    }
    assert report["test_metrics"] == uninterrupted.report["test_metrics"]
    assert np.array_equal(predictions(resumed), predictions(uninterrupted))

    assert resumed.client.get_run(stopped).info.status == "KILLED"
    assert_each_names_the_other(resumed.client, stopped, resumed.run, reused)


def assert_each_names_the_other(client, stopped, resumed, reused):
    """Each run says which resumed which; the reused child runs, whose scores they are."""
    assert resumed.data.tags[autolog_mlflow.RESUMES_TAG] == stopped
    assert client.get_run(stopped).data.tags[autolog_mlflow.RESUMED_BY_TAG] == resumed.info.run_id
    children = autolog_mlflow.find_child_runs(client, resumed)
    assert len(children) == CANDIDATES
    assert {child.info.status for child in children} == {"FINISHED"}
    from_stopped = {
        child.info.run_id
        for child in autolog_mlflow.find_child_runs(client, client.get_run(stopped))
    }
    reused_from = [child.data.tags.get(autolog_mlflow.REUSED_TAG) for child in children]
    assert len([tag for tag in reused_from if tag]) == reused
    assert {tag for tag in reused_from if tag} <= from_stopped
    assert f"Resumed run {stopped}" in resumed.data.tags["mlflow.note.content"]


def same_results(report, uninterrupted):
    """What the reports say of the two runs: each candidate's CV scores, the best, the held-out
    metrics."""
    for made in (report, uninterrupted.report):
        yield (
            {child["name"]: (child["mean_test_score"], child["std_test_score"], child["rank"])
             for child in made["child_runs"]},
            {key: value for key, value in made["params"].items() if key.startswith("best_")},
            made["test_metrics"],
        )  # fmt: skip


@pytest.mark.slow
def test_a_search_whose_server_was_killed_fails_fast_keeps_its_work_and_resumes_through_it(
    tmp_path, uninterrupted
):
    """The server is killed mid-search: the run cannot even be ended (RUNNING, its process
    gone), but the process fails fast and keeps the model and CV results; the server restarted
    on the same store, --resume closes the run and goes on."""
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    store = f"sqlite:///{server_dir / 'mlflow.db'}"
    with mlflow_server(store, server_dir, "server") as server:
        process = start_script(tmp_path, *SEARCH, "--tracking-uri", server.url)
        stopped = once_two_are_scored(process, server.url)
        server.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = process.communicate(timeout=300)
        seconds = time.monotonic() - killed_at
    assert process.returncode == 1
    assert "Traceback" not in stderr
    error = stderr.strip().splitlines()[-1]
    assert "lost the tracking server" in error and stopped in error
    rescued = tmp_path / "autolog_mlflow-rescue" / stopped
    assert str(rescued) in error
    assert hasattr(mlflow.sklearn.load_model(str(rescued / "best_model")), "predict")
    assert len(pd.read_csv(rescued / "cv_results.csv")) == CANDIDATES

    with mlflow_server(store, server_dir, "server") as server:
        resumed = finished_run(tmp_path, "--resume", stopped, "--tracking-uri", server.url)
        client = MlflowClient(server.url)
        assert client.get_run(stopped).info.status == "FAILED"  # it had died
        assert np.array_equal(predictions(resumed, server.url), predictions(uninterrupted))
        reused = only_the_others_fitted(resumed, stopped)
        assert_each_names_the_other(client, stopped, client.get_run(resumed.report["run_id"]),
                                    reused)  # fmt: skip
    (closed,) = resumed.report["closed_dead_runs"]  # and the report says so
    assert closed["run_id"] == stopped and closed["status"] == "FAILED"
    report = resumed.report
    # After the loss, the candidates left and a few failed requests, each tried 3 times in 3 s
    # (MLFLOW_SETTINGS), against the resumed run, which fits those candidates and logs: with
    # MLflow's own retries (7 tries, backoff up to 120 s) one failed request alone waits ~4 min.
    assert seconds - report["duration_seconds"] < 30
    now, then = same_results(report, uninterrupted)
    assert now == then


@pytest.mark.slow
def test_a_randomized_search_resumed_samples_the_same_candidates_and_reuses_them(tmp_path):
    """RandomizedSearchCV with scipy.stats distributions: the same seed, the same candidates."""
    randomized = tmp_path / "autolog_mlflow.py"
    randomized.write_text(SCRIPT.read_text().replace(
        "SEARCH, SEARCH_OPTIONS = GridSearchCV, {}",
        "SEARCH, SEARCH_OPTIONS = RandomizedSearchCV, {'n_iter': 6}", 1).replace(
        'PARAM_GRID = {"n_estimators": [50, 100, 200], "max_depth": [None, 5, 10]}',
        'PARAM_GRID = {"n_estimators": scipy.stats.randint(10, 300), '
        '"max_depth": scipy.stats.randint(2, 8)}', 1))  # fmt: skip
    search = [*SMALL_TABLE, "--cv", "3", "--n-jobs", "1"]
    stopped = stopped_search(tmp_path, search, randomized)
    resumed = finished_run(tmp_path, "--resume", stopped, script=randomized)
    (tmp_path / "full").mkdir()
    full = finished_run(tmp_path / "full", *search, script=randomized)
    only_the_others_fitted(resumed, stopped)
    now, then = same_results(resumed.report, full)
    assert now == then
    assert cv_results(resumed) == cv_results(full)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A search stopped by Ctrl-C, run by a copy of the script, on a copy of the data."""
    workdir = tmp_path_factory.mktemp("stopped")
    script, data = workdir / "autolog_mlflow.py", workdir / "table.csv"
    shutil.copy(SCRIPT, script)
    shutil.copy(SMALL_TABLE[1], data)
    search = [SEARCH[0], str(data), *SEARCH[2:]]
    return workdir, script, data, stopped_search(workdir, search, script)


def refused(stopped, *args, script=None):
    """--resume of the stopped run with `args`: exit 2, one line, no new run; that line."""
    workdir, own_script, _, run_id = stopped
    before = len(parent_runs(f"sqlite:///{workdir / 'mlflow.db'}"))
    result = run_script(workdir, "--resume", run_id, *args, script=script or own_script)
    assert result.returncode == 2, result.stderr
    assert len(parent_runs(f"sqlite:///{workdir / 'mlflow.db'}")) == before
    (line,) = result.stderr.strip().splitlines()
    return line


@pytest.mark.slow
@pytest.mark.parametrize(
    "option, value, recorded",
    [("--param-grid", '{"n_estimators": [10]}', json.dumps(GRID)), ("--cv", "4", "3"),
     ("--seed", "7", "42")],
)  # fmt: skip
def test_resume_refuses_another_grid_cv_or_seed_naming_both(stopped, option, value, recorded):
    line = refused(stopped, option, value)
    assert f"{option} " in line and recorded in line and "run it anew without --resume" in line


@pytest.mark.slow
def test_resume_refuses_a_changed_data_file(stopped):
    _, _, data, run_id = stopped
    kept = data.read_bytes()
    try:
        data.write_bytes(kept.replace(b"\n1", b"\n2", 1))
        line = refused(stopped)
        assert f"table.csv changed since run {run_id}: sha256" in line
    finally:
        data.write_bytes(kept)


@pytest.mark.slow
def test_resume_refuses_a_changed_estimator_in_the_script(stopped, tmp_path):
    _, script, _, run_id = stopped
    edited = tmp_path / "autolog_mlflow.py"
    text = script.read_text()
    edited.write_text(
        text.replace("ensemble.RandomForestClassifier()", "ensemble.ExtraTreesClassifier()", 1)
    )
    line = refused(stopped, script=edited)
    assert f"autolog_mlflow.py has changed since run {run_id}" in line


@pytest.mark.slow
def test_resume_of_a_successive_halving_search_is_refused(tmp_path):
    """Successive halving chooses its candidates as it goes: none can be known to be reused."""
    halving = tmp_path / "autolog_mlflow.py"
    halving.write_text(SCRIPT.read_text().replace(
        "SEARCH, SEARCH_OPTIONS = GridSearchCV, {}",
        "from sklearn.experimental import enable_halving_search_cv  # noqa\n"
        "from sklearn.model_selection import HalvingGridSearchCV\n"
        "SEARCH, SEARCH_OPTIONS = HalvingGridSearchCV, {}", 1))  # fmt: skip
    process = start_script(tmp_path, *SEARCH, script=halving)
    line = process.stderr.readline()
    assert line.startswith("run "), line + process.stderr.read()
    run_id = line.split()[1].rstrip(":")
    while not process.stderr.readline().startswith("search: "):  # its record logged
        assert process.poll() is None
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode == 130
    result = run_script(tmp_path, "--resume", run_id, script=halving)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"autolog_mlflow.py: error: --resume {run_id}: successive halving chooses its candidates "
        "as it goes, so none can be reused; run it anew without --resume"
    )
    assert len(parent_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")) == 1


@pytest.mark.slow
def test_resume_of_a_finished_run_says_there_is_nothing_to_resume(uninterrupted):
    run_id = uninterrupted.report["run_id"]
    result = run_script(uninterrupted.workdir, "--resume", run_id)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"autolog_mlflow.py: error: run {run_id} FINISHED: nothing to resume "
        f"(--reproduce {run_id} runs it again)"
    )
