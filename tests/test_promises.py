"""What the README promises of a run, each checked against what the script printed or what the
store holds: CSVs separated by tabs or pipes, the best N candidates as child runs, the samples
above the profile's and the importance's thresholds, a moved data file reproduced."""

import json
import shutil

import pandas as pd
import pytest
from conftest import QUICK, SMALL_TABLE, TINY, TINY_SEARCH, edited_script, finished_run, run_script

TABLE = pd.read_csv(SMALL_TABLE[1])  # 569 rows, 5 numeric columns and `target`

pytestmark = pytest.mark.slow  # each needs a search of its own


@pytest.mark.parametrize("separator", ["\t", "|"], ids=["tabs", "pipes"])
def test_a_csv_separated_by_tabs_or_pipes_is_read_as_its_columns(tmp_path, separator):
    TABLE.to_csv(tmp_path / "table.csv", sep=separator, index=False)
    made = finished_run(tmp_path, "--data", "table.csv", "--target", "target", *TINY_SEARCH)
    data = made.report["data"]
    assert data["rows"] == 569 and data["feature_columns"] == 5
    assert data["numeric_columns"] == list(TABLE.columns.drop("target"))


def test_max_tuning_runs_logs_the_best_n_candidates_as_child_runs(tmp_path):
    made = finished_run(tmp_path, *QUICK, "--max-tuning-runs", "2")
    children = made.report["child_runs"]
    assert len(children) == 2 == len(made.child_runs())
    ranks = sorted(child.data.metrics["rank_test_score"] for child in made.child_runs())
    results = pd.read_csv(made.client.download_artifacts(made.run.info.run_id, "cv_results.csv"))
    assert len(results) == 4  # every candidate, in cv_results.csv
    assert ranks == sorted(results["rank_test_score"])[:2]
    assert made.report["params"]["best_n_estimators"] in children[0]["name"]


def test_the_profile_and_the_importance_sample_rows_above_their_thresholds(tmp_path):
    """The thresholds are 50,000 and 2,000 rows: a copy of the script with smaller ones."""
    script = edited_script(tmp_path, [("PROFILE_ROWS = 50_000", "PROFILE_ROWS = 100"),
                                      ("IMPORTANCE_ROWS = 2_000", "IMPORTANCE_ROWS = 50")])  # fmt: skip
    result = run_script(tmp_path, "--json", *TINY, script=script)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["data"]["profile"]["covers"] == "a sample of 100 of the 426 training rows"
    assert report["importance"]["held_out_rows"] == 50


def test_reproduce_takes_a_moved_data_file_given_with_data(tmp_path):
    (tmp_path / "then").mkdir()
    TABLE.to_csv(tmp_path / "then" / "table.csv", index=False)
    made = finished_run(tmp_path, "--data", "then/table.csv", "--target", "target", *TINY_SEARCH)
    (tmp_path / "now").mkdir()
    shutil.move(tmp_path / "then" / "table.csv", tmp_path / "now" / "table.csv")
    run_id = made.report["run_id"]

    gone = run_script(tmp_path, "--reproduce", run_id)
    assert gone.returncode == 2
    assert gone.stderr.strip() == (
        f"autolog_mlflow.py: error: the data of run {run_id}, {tmp_path / 'then' / 'table.csv'}, "
        "is gone; if it has moved, give its new path with --data"
    )
    again = run_script(tmp_path, "--json", "--reproduce", run_id, "--data", "now/table.csv")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["reproduction"]["verdict"] == "identical"
