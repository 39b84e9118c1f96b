"""Correctness where it is easy to get wrong: a registry that fails is not a registry without a
champion; a run records its own code and nothing else of the repository around it; MLflow's
warnings reach the user; a store that refuses the experiment says why. Every fault is real."""

import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import mlflow
import pytest
from conftest import QUICK, SCRIPT, empty_store_in, finished_run, parent_runs, run_script
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import autolog_mlflow


def store_with_trigger(folder, table, condition, refusal):
    """A fresh SQLite store whose `table` refuses the rows matching `condition`."""
    store = empty_store_in(folder)
    with sqlite3.connect(store) as db:
        db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON {table} WHEN {condition} "
                   f"BEGIN SELECT RAISE(ABORT, '{refusal}'); END")  # fmt: skip
    return f"sqlite:///{store}"


# --- The champion alias -----------------------------------------------------------------------


def test_a_registry_that_fails_to_answer_is_an_error_not_a_registry_without_champion(tmp_path):
    """A store whose alias table is gone (a failed migration, a broken restore): looking the
    champion up fails, and that must not hand the champion alias to the new version."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("model")
    client.create_model_version("model", str(tmp_path / "model"))
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("ALTER TABLE registered_model_aliases RENAME TO aliases_moved_away")
    tags = {autolog_mlflow.HELD_OUT_SCORE: "0.9", "eval_data_digest": "d"}
    with pytest.raises(MlflowException, match="no such table: registered_model_aliases"):
        autolog_mlflow.decide_champion(client, "model", tags)


# --- What a run records of the code around it -------------------------------------------------


SECRET = "API_KEY=fake-secret-5f1c2e"


def git(repo, *words):
    command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *words]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def repository_with_settings(folder):
    """A bigger repository than the script's: a settings file and a module, committed."""
    repo = folder / "repo"
    repo.mkdir()
    (repo / "settings.ini").write_text("API_KEY=\n")
    (repo / "helpers.py").write_text('"""A module of the repository."""\n')
    git(repo, "init", "--quiet")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "start")
    return repo


def test_run_records_the_edits_of_the_code_it_ran_and_no_other_file(tmp_path):
    repo = repository_with_settings(tmp_path)
    script = Path(shutil.copy(SCRIPT, repo / SCRIPT.name))
    git(repo, "add", script.name)
    git(repo, "commit", "--quiet", "-m", "the script")
    # Uncommitted: the script now imports the repository's module, which is edited too; and
    # someone's work in progress elsewhere in the repository holds a secret.
    text = script.read_text()
    script.write_text(text.replace("import argparse\n", "import argparse\n\nimport helpers\n", 1))
    (repo / "helpers.py").write_text('"""A module of the repository."""\nEDITED = True\n')
    (repo / "settings.ini").write_text(f"{SECRET}\n")

    run = finished_run(tmp_path, *QUICK, script=script)

    artifacts = Path(mlflow.artifacts.download_artifacts(
        run_id=run.report["run_id"], tracking_uri=run.tracking_uri, dst_path=str(tmp_path / "a")
    ))  # fmt: skip
    diff = (artifacts / "code" / "uncommitted.diff").read_text()
    assert "+import helpers" in diff and "+EDITED = True" in diff
    assert "settings.ini" not in diff
    for file in artifacts.rglob("*"):
        assert not file.is_file() or SECRET.encode() not in file.read_bytes(), file
    assert SECRET not in json.dumps([run.run.data.params, run.run.data.tags])
    assert run.report["artifacts"].count("code/uncommitted.diff") == 1


def test_script_untracked_in_a_repository_records_no_edits_of_its_files(tmp_path):
    """A copy of the template not yet added to the repository it was copied into."""
    repo = repository_with_settings(tmp_path)
    script = Path(shutil.copy(SCRIPT, repo / SCRIPT.name))
    (repo / "settings.ini").write_text(f"{SECRET}\n")
    state = autolog_mlflow.git_state(script)
    assert state["commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert (state["dirty"], state["diff"]) == (False, "")


# --- MLflow's own words ------------------------------------------------------------------------


MLFLOW_LOG_LINE = r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (WARNING|ERROR) mlflow[\w.]*: "


def test_mlflow_warning_reaches_stderr_as_mlflow_prints_it_and_fails_the_run(tmp_path):
    uri = store_with_trigger(tmp_path, "metrics", "NEW.key = 'training_score'",
                             "store refuses training_score")  # fmt: skip
    result = run_script(tmp_path, *QUICK)
    assert result.returncode == 1
    warning = "Encountered unexpected error during sklearn autologging: .*store refuses"
    assert re.search(MLFLOW_LOG_LINE + warning, result.stderr, re.MULTILINE), result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("autolog_mlflow.py: error: MLflow reported a problem: Encountered")
    assert "ended FAILED" in error and "Traceback" not in result.stderr
    (run,) = parent_runs(uri)
    assert run.info.status == "FAILED"


def test_successful_run_shows_only_its_progress_on_stderr_and_json_on_stdout(tmp_path):
    """A fresh store: MLflow's creation of its tables and the cloudpickle warning are not news.
    A new Python: all it writes to its stderr counts, its imports' warnings too."""
    run = finished_run(tmp_path, *QUICK, new_python=True, fresh_store=True)
    assert run.report["status"] == "FINISHED"  # stdout parses as one JSON document
    for line in run.result.stderr.splitlines():
        assert line.startswith(("run ", "search: ", "logging the best model")), run.result.stderr


# --- An experiment the store will not create ---------------------------------------------------


@pytest.mark.parametrize(
    "name, cause",
    [("", "Invalid experiment name: ''"), ("x" * 501, "exceeds the maximum length of 500")],
    ids=["empty", "too long"],
)
def test_experiment_name_mlflow_refuses_is_bad_input(tmp_path, name, cause):
    result = run_script(tmp_path, "--experiment-name", name)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert cause in line and "choose another --experiment-name" in line
    assert parent_runs(f"sqlite:///{tmp_path / 'mlflow.db'}") == []


def test_store_that_refuses_a_new_experiment_fails_in_one_line_with_its_reason(tmp_path):
    uri = store_with_trigger(tmp_path, "experiments", "1", "store refuses new experiments")
    result = run_script(tmp_path, *QUICK)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("autolog_mlflow.py: error: cannot create experiment 'autolog_mlflow'")
    assert "store refuses new experiments" in line
    assert parent_runs(uri) == []
