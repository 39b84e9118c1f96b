"""A run that lacks anything it should hold ends FAILED (autolog_mlflow.require_complete): copies
of the script that each leave one thing unlogged, and the script on a store that drops one
record, fail in one line naming what is missing."""

import re
import sqlite3

import pytest
from conftest import QUICK, ROOT, TINY, empty_store_in, parent_runs, run_script
from mlflow import MlflowClient

# A line of the script, and what the run misses without it.
UNLOGGED = {
    "    log_best_model(search, data.X_train)\n": "the one logged model best_estimator",
    "    mlflow.log_text(profile_html, DATA_PROFILE)\n": "artifact data_profile.html",
    '                mlflow.log_metric("roc_auc_score_X_test", metrics.roc_auc_score(y_test, y_score))\n':
        "metric roc_auc_score_X_test",
}  # fmt: skip


@pytest.mark.parametrize("line", UNLOGGED, ids=["model", "artifact", "metric"])
def test_a_run_missing_what_it_should_hold_ends_failed_naming_it(tmp_path, line):
    script = (ROOT / "autolog_mlflow.py").read_text()
    assert script.count(line) == 1, "the script changed: update UNLOGGED"
    (tmp_path / "autolog_mlflow.py").write_text(script.replace(line, ""))
    result = run_script(tmp_path, *TINY, script=tmp_path / "autolog_mlflow.py")
    assert result.returncode == 1
    (error,) = result.stderr.strip().splitlines()[-1:]
    assert error.startswith("autolog_mlflow.py: error: the run is incomplete: missing ")
    assert UNLOGGED[line] in error
    (run,) = parent_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FAILED"


# What the store itself drops, the script as it is: a SQLite trigger deletes one record as it is
# written (as a store failing silently would), and the check, which reads the run back, notices.
DROPPED = {
    "metric": (
        ("AFTER INSERT ON latest_metrics WHEN NEW.key = 'best_cv_score' BEGIN DELETE FROM "
         "latest_metrics WHERE key = NEW.key AND run_uuid = NEW.run_uuid; END"),
        "metric best_cv_score",
    ),
    "param": (
        ("AFTER INSERT ON params WHEN NEW.key = 'best_max_depth' BEGIN DELETE FROM params "
         "WHERE key = NEW.key AND run_uuid = NEW.run_uuid; END"),
        "param best_max_depth",
    ),
    "child run": (  # one candidate's child run loses the tag that ties it to its parent
        ("AFTER INSERT ON tags WHEN NEW.key = 'mlflow.parentRunId' AND (SELECT name FROM runs "
         "WHERE run_uuid = NEW.run_uuid) = 'max_depth=3 n_estimators=10' BEGIN DELETE FROM "
         "tags WHERE key = NEW.key AND run_uuid = NEW.run_uuid; END"),
        "child runs (3 of 4)",
    ),
}  # fmt: skip


@pytest.mark.slow  # the copies above keep the promise in the quick tier
@pytest.mark.parametrize("trigger, missing", DROPPED.values(), ids=DROPPED.keys())
def test_a_run_whose_store_drops_a_record_ends_failed_naming_it(tmp_path, trigger, missing):
    store = empty_store_in(tmp_path)
    with sqlite3.connect(store) as db:
        db.execute(f"CREATE TRIGGER drop_one {trigger}")
    result = run_script(tmp_path, *QUICK)
    assert result.returncode == 1, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("autolog_mlflow.py: error: the run is incomplete: missing ")
    assert missing in error
    (run_id,) = re.findall(r"run (\w+) ended FAILED$", error)
    assert MlflowClient(f"sqlite:///{store}").get_run(run_id).info.status == "FAILED"
