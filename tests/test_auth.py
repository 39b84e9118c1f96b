"""A team server that lets only the team in: `mlflow server --app-name basic-auth` on a real
PostgreSQL (tools/team_server.py), users and permissions made through its REST API, the script
run as each user with MLflow's own credentials (environment or ~/.mlflow/credentials). A
refused login or a missing permission is bad input found before any run exists; passwords
appear in nothing any run wrote."""

import json
import secrets
from pathlib import Path

import matplotlib
import pytest
import requests
from conftest import SMALL_TABLE, run_script
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from team_server import ADMIN, team_server

pytestmark = pytest.mark.slow

CHEAP = [*SMALL_TABLE, "--param-grid", '{"n_estimators": [5], "max_depth": [2]}', "--cv", "2",
         "--n-jobs", "1"]  # fmt: skip
EXPERIMENT = "team-experiment"
MODEL = "team-model"
# Unique per test session, so that finding one in a file means it leaked there.
PASSWORDS = {name: f"{name}-{secrets.token_urlsafe(16)}" for name in [ADMIN, "editor", "reader"]}


def login(user):
    """What the script needs in its environment to log in as `user`."""
    return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": PASSWORDS[user]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The team server, with an experiment the admin made and granted `editor` EDIT on; `reader`
    has what every user has by default, READ on everything."""
    with team_server(tmp_path_factory.mktemp("team"), PASSWORDS[ADMIN]) as server:
        api = requests.Session()
        api.auth = (ADMIN, PASSWORDS[ADMIN])

        def post(path, **body):
            response = api.post(f"{server.url}{path}", json=body)
            response.raise_for_status()
            return response.json()

        for user in ["editor", "reader"]:
            post("/api/2.0/mlflow/users/create", username=user, password=PASSWORDS[user])
        created = post("/api/2.0/mlflow/experiments/create", name=EXPERIMENT)
        server.experiment_id = created["experiment_id"]
        post("/api/3.0/mlflow/users/permissions/grant", username="editor",
             resource_type="experiment", resource_id=server.experiment_id, permission="EDIT")  # fmt: skip
        yield server


def as_user(monkeypatch, user):
    """MlflowClient calls from this process log in as `user`."""
    for name, value in login(user).items():
        monkeypatch.setenv(name, value)


def run_as(workdir, server, env, *options):
    """The script in `workdir`, which is also its home: only `env` or a credentials file put
    there can log it in."""
    home = {"HOME": str(workdir), "MPLCONFIGDIR": matplotlib.get_configdir()}  # its font cache
    return run_script(workdir, "--json", "--tracking-uri", server.url, "--experiment-name",
                      EXPERIMENT, *CHEAP, *options, env=home | env)  # fmt: skip


@pytest.fixture(scope="module")
def admin_run(server, tmp_path_factory):
    """The admin's run, registering the first version of MODEL: the champion."""
    workdir = tmp_path_factory.mktemp("admin")
    return workdir, run_as(workdir, server, login(ADMIN), "--register-model", MODEL)


@pytest.fixture(scope="module")
def editor_run(server, tmp_path_factory):
    """The editor's run, logged in through ~/.mlflow/credentials in a home of its own."""
    workdir = tmp_path_factory.mktemp("editor")
    (workdir / ".mlflow").mkdir()
    (workdir / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = editor\n"
        f"mlflow_tracking_password = {PASSWORDS['editor']}\n"
    )
    return workdir, run_as(workdir, server, {})


def runs_in(server, monkeypatch):
    as_user(monkeypatch, ADMIN)
    return {run.info.run_id for run in MlflowClient(server.url).search_runs([server.experiment_id])}


def test_the_admin_runs_and_the_first_version_is_the_champion(server, admin_run, monkeypatch):
    _, result = admin_run
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "FINISHED"
    assert report["registration"]["aliases"] == ["champion"]
    as_user(monkeypatch, ADMIN)
    assert MlflowClient(server.url).get_run(report["run_id"]).info.status == "FINISHED"


def test_a_user_granted_edit_runs_logged_in_from_the_credentials_file(
    server, editor_run, monkeypatch
):
    _, result = editor_run
    assert result.returncode == 0, result.stderr
    as_user(monkeypatch, ADMIN)
    run = MlflowClient(server.url).get_run(json.loads(result.stdout)["run_id"])
    assert (run.info.status, run.info.experiment_id) == ("FINISHED", server.experiment_id)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({}, ("the server at {url} needs a login: set MLFLOW_TRACKING_USERNAME and "
              "MLFLOW_TRACKING_PASSWORD")),
        (login("editor") | {"MLFLOW_TRACKING_PASSWORD": "not-the-password"},
         "the server at {url} refused the login for editor"),
        (login("reader"), (f"reader may not write to experiment {EXPERIMENT} on {{url}}: "
                           "ask its owner for EDIT")),
    ],
    ids=["no credentials", "wrong password", "read only"],
)  # fmt: skip
def test_a_refused_login_or_write_exits_2_with_one_line_before_any_run(
    server, tmp_path, monkeypatch, env, line
):
    before = runs_in(server, monkeypatch)
    result = run_as(tmp_path, server, env)  # with no ~/.mlflow/credentials
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"autolog_mlflow.py: error: {line.format(url=server.url)}\n"
    assert runs_in(server, monkeypatch) == before


def test_registering_needs_manage_on_the_model_and_a_reader_cannot_move_the_champion(
    server, admin_run, tmp_path, monkeypatch
):
    assert admin_run[1].returncode == 0, admin_run[1].stderr  # it made the champion
    before = runs_in(server, monkeypatch)
    # The editor may write to the experiment, and only read the model (every user's default).
    result = run_as(tmp_path, server, login("editor"), "--register-model", MODEL)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"autolog_mlflow.py: error: editor may not register versions of model {MODEL} on "
        f"{server.url}: ask its owner for MANAGE\n"
    )
    assert runs_in(server, monkeypatch) == before
    as_user(monkeypatch, "reader")
    reader = MlflowClient(server.url)
    with pytest.raises(MlflowException, match="Permission denied"):
        reader.set_registered_model_alias(MODEL, "champion", "1")
    with pytest.raises(MlflowException, match="Permission denied"):
        reader.delete_registered_model_alias(MODEL, "champion")
    as_user(monkeypatch, ADMIN)
    champion = MlflowClient(server.url).get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == json.loads(admin_run[1].stdout)["run_id"]


def test_no_password_in_any_output_file_artifact_or_run_record(
    server, admin_run, editor_run, monkeypatch
):
    texts = []
    as_user(monkeypatch, ADMIN)
    for _, result in [admin_run, editor_run]:
        assert result.returncode == 0, result.stderr
        texts += [result.stdout, result.stderr]
        run = MlflowClient(server.url).get_run(json.loads(result.stdout)["run_id"])
        texts.append(json.dumps([run.data.params, run.data.tags, run.data.metrics]))
    # The runs' folders, and the server's: its log, its settings, every artifact of every run.
    folders = [admin_run[0], editor_run[0], Path(server.artifacts).parent]
    credentials = editor_run[0] / ".mlflow" / "credentials"  # the one file meant to hold one
    files = [
        path for folder in folders for path in Path(folder).rglob("*")
        if path.is_file() and path != credentials
    ]  # fmt: skip
    assert {"run_config.json", "basic_auth.ini"} <= {path.name for path in files}
    texts += [path.read_bytes().decode("utf-8", "replace") for path in files]
    for password in PASSWORDS.values():
        assert not [text for text in texts if password in text]
