"""A run that lacks anything it should hold ends FAILED (autolog_mlflow.require_complete): copies
of the script that each leave one thing unlogged fail in one line naming what is missing."""

import pytest
from conftest import ROOT, TINY, parent_runs, run_script

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
