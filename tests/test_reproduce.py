"""Every run records what it takes to run it again; --reproduce RUN_ID runs it again and says
whether the results came out identical (exit 0) or not (exit 3, naming every difference)."""

import hashlib
import json
import platform
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pytest
from conftest import (
    QUICK,
    ROOT,
    SCRIPT,
    SMALL_GRID,
    SMALL_SEARCH,
    TINY,
    ScriptRun,
    finished_run,
    parent_runs,
    run_script,
)
from mlflow import MlflowClient
from sklearn.datasets import load_breast_cancer

import autolog_mlflow


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def artifact(run, path):
    local = mlflow.artifacts.download_artifacts(
        run_id=run.run.info.run_id, artifact_path=path, tracking_uri=run.tracking_uri
    )
    return Path(local).read_text()


def record(run):
    return json.loads(artifact(run, "run_config.json"))


def git(folder, *words):
    return subprocess.run(["git", "-C", str(folder), *words], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip


def write_csv(path):
    frame = load_breast_cancer(as_frame=True).frame
    frame.to_csv(path, index=False)
    return path


def reproduce(workdir, run_id, *args):
    return run_script(workdir, "--json", "--reproduce", run_id, *args)


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A small search on a CSV of the breast-cancer data; its file, cancer.csv, beside it."""
    workdir = tmp_path_factory.mktemp("csv")
    write_csv(workdir / "cancer.csv")
    return finished_run(workdir, "--data", "cancer.csv", "--target", "target", *SMALL_SEARCH)


def assert_identical(result, original_id):
    assert result.returncode == 0, result.stderr
    reproduction = json.loads(result.stdout)["reproduction"]
    assert reproduction["reproduces"] == original_id
    assert reproduction["verdict"] == "identical" and reproduction["differences"] == []
    return reproduction


# What a run records
def test_run_records_the_configuration_command_line_python_platform_and_every_package(
    quick_run,
):
    recorded = record(quick_run)
    assert recorded["configuration"]["param_grid"] == json.loads(SMALL_GRID)
    assert recorded["configuration"]["test_size"] == autolog_mlflow.TEST_SIZE
    assert recorded["command_line"][1:] == ["--json", *SMALL_SEARCH]
    environment = recorded["environment"]
    assert environment["python"] == platform.python_version()
    assert environment["platform"] == platform.platform()
    assert environment["packages"]["mlflow"] == version("mlflow")
    assert environment["packages"]["scikit-learn"] == version("scikit-learn")
    assert len(environment["packages"]) > 50  # all of them, not the pinned four


def test_run_records_the_mlflow_settings_it_ran_with_the_users_own_winning(quick_run, tmp_path):
    """The script's MLFLOW_SETTINGS (telemetry off, short HTTP retries...) where the user set
    none (the tests' runs get no MLFLOW_ variable), the user's own value where set."""
    assert record(quick_run)["environment"]["mlflow_settings"] == autolog_mlflow.MLFLOW_SETTINGS
    assert autolog_mlflow.MLFLOW_SETTINGS["MLFLOW_DISABLE_TELEMETRY"] == "true"
    own = finished_run(tmp_path, *TINY, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5"})
    settings = record(own)["environment"]["mlflow_settings"]
    assert settings == autolog_mlflow.MLFLOW_SETTINGS | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5"}


def test_run_records_the_script_itself_and_its_sha256(quick_run):
    recorded = record(quick_run)
    assert recorded["script"] == {"file": SCRIPT.name, "sha256": sha256(SCRIPT)}
    assert artifact(quick_run, f"code/{SCRIPT.name}") == SCRIPT.read_text()


def test_a_run_forked_by_the_tests_prestarted_python_records_what_a_new_python_does(
    quick_run, second_quick_run
):
    """The first in a new Python, the second forked by the prestarted one (conftest's
    `start_script`): its modules, imported before the script ran, are not the script's code."""
    first, second = record(quick_run), record(second_quick_run)
    for part in ("script", "git", "environment"):
        assert first[part] == second[part], part
    assert first["command_line"] == second["command_line"][:-2]  # less "--n-jobs -1"
    code = [MlflowClient(run.tracking_uri).list_artifacts(run.run.info.run_id, "code")
            for run in (quick_run, second_quick_run)]  # fmt: skip
    assert [item.path for item in code[0]] == [item.path for item in code[1]]


def test_run_records_the_git_commit_and_whether_the_script_had_edits(quick_run):
    recorded = record(quick_run)["git"]
    assert recorded["commit"] == git(ROOT, "rev-parse", "HEAD").strip()
    assert recorded["dirty"] == bool(git(ROOT, "diff", "HEAD", "--", "autolog_mlflow.py"))


def test_csv_run_records_the_files_sha256_and_size(csv_run):
    csv = csv_run.workdir / "cancer.csv"
    assert record(csv_run)["data"] == {
        "path": str(csv.resolve()),
        "sha256": sha256(csv),
        "size": csv.stat().st_size,
    }


# Reproducing
@pytest.mark.slow
def test_run_reproduced_from_another_folder_is_identical(quick_run, tmp_path):
    original = quick_run.run
    result = reproduce(tmp_path, original.info.run_id, "--tracking-uri", quick_run.tracking_uri)

    reproduction = assert_identical(result, original.info.run_id)
    assert reproduction["compared"] == {
        "best params": 2,
        "candidates' CV scores": 4,
        "held-out metrics": 3,
        "held-out predictions": 143,
    }
    new = ScriptRun(quick_run.workdir, result).run
    assert new.info.experiment_id == original.info.experiment_id
    assert new.data.tags["autolog_mlflow.reproduces"] == original.info.run_id
    assert new.data.tags["autolog_mlflow.reproduction"] == "identical"
    assert not (tmp_path / "mlflow.db").exists()  # nothing was logged where it ran from
    stored = json.loads(artifact(ScriptRun(quick_run.workdir, result), "reproduction.json"))
    assert stored == reproduction


@pytest.mark.slow
def test_csv_run_reproduced_is_identical_and_says_so_last(csv_run):
    run_id = csv_run.report["run_id"]
    result = run_script(csv_run.workdir, "--reproduce", run_id, "--n-jobs", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"Verdict: identical to run {run_id}"
    assert "changed since then: nothing" in result.stdout


@pytest.mark.slow
def test_run_on_a_tracking_server_reproduced_through_it_is_identical(tmp_path, tracking_server):
    uri = ["--tracking-uri", tracking_server.url]
    original = run_script(tmp_path, "--json", *uri, *QUICK)
    assert original.returncode == 0, original.stderr
    original_id = json.loads(original.stdout)["run_id"]

    assert_identical(reproduce(tmp_path, original_id, *uri), original_id)


@pytest.mark.slow
def test_run_recorded_by_the_previous_release_reproduces_and_says_what_it_lacks(tmp_path):
    """Before 2026-11-28 run_config.json held the configuration and six package versions."""
    original = finished_run(tmp_path, *QUICK)
    artifacts = Path(urlparse(original.run.info.artifact_uri).path)
    old = record(original)
    environment = {"python": old["environment"]["python"]} | {
        name: old["environment"]["packages"][name] for name in autolog_mlflow.MODEL_PACKAGES
    }
    (artifacts / "run_config.json").write_text(
        json.dumps({"configuration": old["configuration"], "environment": environment})
    )
    result = reproduce(tmp_path, original.report["run_id"])

    reproduction = assert_identical(result, original.report["run_id"])
    changes = {change["what"]: change for change in reproduction["changed_around_it"]}
    assert changes["packages"]["original"] == "not recorded"
    assert changes["script sha256"]["original"] is None


def test_changed_csv_is_rejected_before_any_run(csv_run, script_main):
    csv, run_id = csv_run.workdir / "cancer.csv", csv_run.report["run_id"]
    runs, before, text = len(parent_runs(csv_run.tracking_uri)), sha256(csv), csv.read_text()
    csv.write_text(text.replace("\n1", "\n2", 5))  # edit a few values
    try:
        result = script_main("--reproduce", run_id, "--tracking-uri", csv_run.tracking_uri)
        after = sha256(csv)
    finally:
        csv.write_text(text)  # the other tests of this run read it unchanged

    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"cancer.csv changed since run {run_id}" in line
    assert before in line and after in line
    assert len(parent_runs(csv_run.tracking_uri)) == runs


def test_unknown_run_id_is_rejected(quick_run, script_main):
    result = script_main(
        "--json", "--reproduce", "0" * 32, "--tracking-uri", quick_run.tracking_uri
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"--reproduce {'0' * 32}: no such run" in line


def test_run_this_script_did_not_log_is_rejected(tmp_path, script_main):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    other = client.create_run(client.create_experiment("other")).info.run_id
    client.set_terminated(other)
    result = script_main("--json", "--reproduce", other, "--tracking-uri", uri)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"run {other} was not logged by autolog_mlflow.py" in line
    assert len(parent_runs(uri)) == 1


@pytest.mark.parametrize("option", [["--cv", "4"], ["--seed", "1"], ["--target", "y"]])
def test_options_of_the_experiment_cannot_be_changed_when_reproducing(script_main, option):
    result = script_main("--reproduce", "0" * 32, *option)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"{option[0]} comes from the record of run" in line


def run_copy(script, workdir, *args):
    return run_script(workdir, "--json", *args, script=script)


@pytest.mark.slow
def test_edited_script_is_recorded_as_a_code_change_and_its_results_differ_exit_3(tmp_path):
    """A copy of the script in its own git repository; then an uncommitted edit of a default."""
    repo = tmp_path / "repo"
    repo.mkdir()
    script = Path(shutil.copy(SCRIPT, repo / SCRIPT.name))
    git(repo, "init", "--quiet")
    git(repo, "add", script.name)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "script")
    original = run_copy(script, tmp_path, *QUICK)
    assert original.returncode == 0, original.stderr
    original_id = json.loads(original.stdout)["run_id"]
    assert record(ScriptRun(tmp_path, original))["git"]["dirty"] is False

    edit = ("ESTIMATOR = ensemble.RandomForestClassifier()",
            'ESTIMATOR = ensemble.RandomForestClassifier(criterion="entropy")')  # fmt: skip
    assert script.read_text().count(edit[0]) == 1
    script.write_text(script.read_text().replace(*edit))
    result = run_copy(script, tmp_path, "--reproduce", original_id)

    assert result.returncode == autolog_mlflow.EXIT_DIFFERENT == 3, result.stderr
    reproduction = json.loads(result.stdout)["reproduction"]
    assert reproduction["verdict"] == "different"
    differing = {difference["what"] for difference in reproduction["differences"]}
    assert any(what.startswith("mean_test_score of {") for what in differing), differing
    for difference in reproduction["differences"]:
        assert difference["original"] != difference["now"]
    changes = {change["what"]: change for change in reproduction["changed_around_it"]}
    assert changes["script sha256"]["now"] == sha256(script)
    assert (changes["uncommitted edits"]["original"], changes["uncommitted edits"]["now"]) == (
        False,
        True,
    )
    new = ScriptRun(tmp_path, result)
    assert 'criterion="entropy"' in artifact(new, "code/uncommitted.diff")
    assert new.run.data.tags["autolog_mlflow.reproduction"] == "different"
