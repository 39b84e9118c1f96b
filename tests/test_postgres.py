"""A team's tracking server, as the README sets it up: `mlflow server` on a real PostgreSQL
(Debian's), artifacts in a folder the server serves, no pool tweaks, no login
(tools/team_server.py; tests/test_auth.py has the login). Every run goes through the server's
REST API; the database is then read directly."""

import json
import signal

import psycopg
import pytest
from conftest import QUICK, run_at_once, run_script, start_script
from mlflow import MlflowClient
from team_server import team_server as started_team_server
from test_resume import CANDIDATES, SEARCH, once_two_are_scored

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    with started_team_server(tmp_path_factory.mktemp("team")) as server:
        yield server


def complete(server, run_id, candidates=4):
    """The run as the server holds it: FINISHED, every child run, one READY model."""
    client = MlflowClient(server.url)
    run = client.get_run(run_id)
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    return (run.info.status, len(children), [str(model.status) for model in models]) == (
        "FINISHED",
        candidates,
        ["READY"],
    )


def status_in_database(server, run_id):
    with psycopg.connect(server.database) as db:
        return db.execute("SELECT status FROM runs WHERE run_uuid = %s", [run_id]).fetchone()[0]


def test_one_run_is_complete_and_stored_in_postgresql(tmp_path, team_server):
    result = run_script(tmp_path, "--json", "--tracking-uri", team_server.url, *QUICK)
    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    assert complete(team_server, run_id)
    assert status_in_database(team_server, run_id) == "FINISHED"


def test_four_runs_at_once_all_complete(tmp_path, team_server):
    reports = run_at_once(tmp_path, 4, "--tracking-uri", team_server.url)
    run_ids = {report["run_id"] for report in reports}
    assert len(run_ids) == 4
    assert all(complete(team_server, run_id, candidates=1) for run_id in run_ids)


def test_a_dask_run_logs_into_it(tmp_path, team_server):
    result = run_script(
        tmp_path, "--json", "--tracking-uri", team_server.url, "--dask-scheduler", "local",
        *QUICK[:-2],  # no --n-jobs 1: all of the cluster
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_id = json.loads(result.stdout)["run_id"]
    assert complete(team_server, run_id)


def test_registration_into_it_makes_a_champion(tmp_path, team_server):
    uri = ["--tracking-uri", team_server.url]
    result = run_script(tmp_path, "--json", *uri, *QUICK, "--register-model", "team-model")
    assert result.returncode == 0, result.stderr
    registration = json.loads(result.stdout)["registration"]
    assert (registration["version"], registration["aliases"]) == (1, ["champion"])
    champion = MlflowClient(team_server.url).get_model_version_by_alias("team-model", "champion")
    assert champion.run_id == json.loads(result.stdout)["run_id"]


def test_a_search_stopped_on_it_resumes_through_it(tmp_path, team_server):
    process = start_script(tmp_path, *SEARCH, "--tracking-uri", team_server.url)
    stopped = once_two_are_scored(process, team_server.url)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode == 130
    result = run_script(tmp_path, "--json", "--resume", stopped, "--tracking-uri", team_server.url)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 2 <= report["resumed"]["reused"] < CANDIDATES
    assert complete(team_server, report["run_id"], candidates=CANDIDATES)
    assert status_in_database(team_server, stopped) == "KILLED"
