"""The command line: documented defaults, and bad input rejected before any run exists.

Each rule is checked on a run forked by the tests' prestarted Python (fast: conftest's
`start_script`); a few of them also in a new Python, for its whole stderr, imports included.
"""

import json

import pytest
from conftest import run_script
from mlflow import MlflowClient

import autolog_mlflow

OPTIONS = [
    "--tracking-uri", "--experiment-name", "--run-name", "--data", "--target", "--test-size",
    "--param-grid", "--cv", "--n-jobs", "--seed", "--max-tuning-runs", "--dask-scheduler", "--json",
    "--register-model", "--reproduce", "--resume", "--close-dead-runs",
]  # fmt: skip


def test_help_documents_every_option_and_its_default(script_help):
    help_text = " ".join(script_help.split())
    for option in OPTIONS:
        assert option in help_text
    for default in ["sqlite:///mlflow.db", "autolog_mlflow", "DATA -> TARGET", "(default: 5)",
                    "(default: 0.25)", "(default: 42)", "(default: -1)", "(default: all)"]:  # fmt: skip
        assert default in help_text, default


def test_help_shows_the_grid_default_as_json_and_no_empty_defaults(script_help):
    help_text = " ".join(script_help.split())
    grid = json.dumps(autolog_mlflow.PARAM_GRID)
    assert f"(default: {grid})" in help_text and "null" in grid
    assert "None" not in help_text and "(default: False)" not in help_text


def test_defaults_are_the_configuration_at_the_top_of_the_script(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = autolog_mlflow.parse_args([])
    assert args.tracking_uri == "sqlite:///mlflow.db"
    assert args.experiment_name == autolog_mlflow.EXPERIMENT_NAME
    assert args.param_grid == autolog_mlflow.PARAM_GRID
    assert (args.cv, args.test_size, args.seed) == (5, 0.25, 42)
    assert (args.n_jobs, args.max_tuning_runs, args.json) == (-1, "all", False)
    assert args.data is None and args.target is None and args.dask_scheduler is None


def test_tracking_uri_defaults_to_the_environment_variable(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert autolog_mlflow.parse_args([]).tracking_uri == "sqlite:///elsewhere.db"


def test_max_tuning_runs_takes_a_count_or_all():
    assert autolog_mlflow.parse_args(["--max-tuning-runs", "3"]).max_tuning_runs == 3
    assert autolog_mlflow.parse_args(["--max-tuning-runs", "all"]).max_tuning_runs == "all"


def write_csv(folder, text):
    (folder / "data.csv").write_text(text)
    return ["--data", "data.csv"]


BAD_INPUTS = {
    "grid not JSON": (["--param-grid", "{n_estimators: [10]}"], "not valid JSON"),
    "grid not an object": (["--param-grid", "[10, 20]"], "JSON object"),
    "grid empty": (["--param-grid", "{}"], "non-empty JSON object"),
    "grid with an empty list": (["--param-grid", '{"max_depth": []}'], "non-empty list"),
    "grid with a scalar": (["--param-grid", '{"max_depth": 3}'], "non-empty list"),
    "unknown hyperparameter": (["--param-grid", '{"depth": [3]}'], "valid ones: bootstrap"),
    "cv below 2": (["--cv", "1"], "--cv must be between 2 and"),
    "cv above the smallest class": (["--cv", "500"], "--cv must be between 2 and"),
    "test size zero": (["--test-size", "0"], "--test-size must be between 0 and 1"),
    "test size one": (["--test-size", "1.5"], "--test-size must be between 0 and 1"),
    "max tuning runs zero": (["--max-tuning-runs", "0"], "positive integer or 'all'"),
    "n-jobs zero": (["--n-jobs", "0"], "--n-jobs: 0 runs no fit: give the number of parallel"),
    "n-jobs not a number": (["--n-jobs", "all"], "--n-jobs: give an integer, not 'all'"),
    "seed negative": (
        ["--seed", "-1"],
        "--seed: a seed is from 0 to 4294967295 (2**32 - 1), not -1",
    ),
    "seed too large": (["--seed", str(2**32)], "--seed: a seed is from 0 to 4294967295"),
    "data without target": (["--data", "x.csv"], "--data and --target go together"),
    "data missing": (["--data", "nope.csv", "--target", "y"], "cannot read --data nope.csv"),
}
BAD_CSVS = {
    "target not a column": ("a,b\n1,0\n2,1\n", "y", "'y' is not a column"),
    "one class": ("a,y\n1,0\n2,0\n3,0\n", "y", "single class"),
    "empty file": ("", "y", "--data data.csv is empty: give a CSV with a header line and rows"),
    "only a header": ("a,y\n", "y", "--data data.csv has a header but no rows"),
    "target all blank": ("a,y\n1,\n2,\n", "y", "--target y is empty in all 2 rows of data.csv"),
    "semicolons, target not a column": (
        "a;b;y\n1,5;2;0\n2,5;3;1\n",
        "x",
        "'x' is not a column of data.csv; columns: a, b, y",
    ),
    "tabs, target not a column": ("a\tb\ty\n1\tx\t0\n2\tz\t1\n", "x", "columns: a, b, y"),
}


def assert_rejected_before_any_run(result, workdir, message):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    store = workdir / "mlflow.db"
    if store.exists():
        client = MlflowClient(f"sqlite:///{store}")
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


@pytest.mark.parametrize("args, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_argument_is_rejected_in_one_line_with_exit_2(tmp_path, script_main, args, message):
    assert_rejected_before_any_run(script_main(*args), tmp_path, message)


@pytest.mark.parametrize("csv, target, message", BAD_CSVS.values(), ids=BAD_CSVS.keys())
def test_bad_csv_is_rejected_in_one_line_with_exit_2(tmp_path, script_main, csv, target, message):
    result = script_main(*write_csv(tmp_path, csv), "--target", target)
    assert_rejected_before_any_run(result, tmp_path, message)


# In a new Python too, for its whole stderr from its first line: a rule that argparse applies,
# and one that main() does.
@pytest.mark.parametrize("case", ["grid not JSON", "target not a column"])
def test_a_new_python_rejects_bad_input_in_one_line_with_exit_2(tmp_path, case):
    if case in BAD_CSVS:
        csv, target, message = BAD_CSVS[case]
        args = [*write_csv(tmp_path, csv), "--target", target]
    else:
        args, message = BAD_INPUTS[case]
    result = run_script(tmp_path, *args, new_python=True)
    assert_rejected_before_any_run(result, tmp_path, message)
