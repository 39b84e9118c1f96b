"""Real tables as people have them: text categories, gaps, dates, a name per row, an unbalanced
class and rows without a target. The search tunes skrub's table-to-numbers pipeline, so the
logged model takes the raw rows, and the report says what was done to each column."""

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import SMALL_SEARCH, penguins, raw_rows, run_script, script_env
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow_ui import free_port
from test_registry import wait_until_serving

import autolog_mlflow


def test_a_table_with_text_gaps_and_dates_is_searched_and_scored_on_held_out_rows(table_run):
    run = table_run.run
    assert run.info.status == "FINISHED"
    assert len(table_run.child_runs()) == 4
    assert 0.6 < run.data.metrics["accuracy_score_X_test"] <= 1
    assert "f1_score_X_test" in run.data.metrics  # three classes: macro F1, no ROC AUC


def test_the_run_and_its_datasets_are_named_after_the_file_target_and_split(table_run):
    assert table_run.run.info.run_name == "penguins.csv -> species"
    names = {(tag.value, item.dataset.name) for item in table_run.run.inputs.dataset_inputs
             for tag in item.tags if tag.key == "mlflow.data.context"}  # fmt: skip
    assert names == {("train", "penguins.csv train"), ("eval", "penguins.csv test")}
    for child in table_run.child_runs():
        assert [item.dataset.name for item in child.inputs.dataset_inputs] == ["penguins.csv train"]


@pytest.mark.slow  # a search of its own
def test_the_printed_report_names_a_single_numeric_column_and_the_positive_class(tmp_path):
    rng = np.random.default_rng(0)
    size = rng.random(200)
    table = pd.DataFrame({"size": size, "colour": rng.choice(["red", "blue"], 200),
                          "big": np.where(size > 0.5, "yes", "no")})  # fmt: skip
    table.to_csv(tmp_path / "sizes.csv", index=False)
    result = run_script(tmp_path, "--data", "sizes.csv", "--target", "big", "--cv", "2",
                        "--param-grid", '{"n_estimators": [5]}', "--n-jobs", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "\n  1 numeric column, as they are: size\n" in result.stdout
    assert "\n  (F1 and ROC AUC take yes as the positive class, of no and yes)\n" in result.stdout


def test_rows_without_a_target_are_left_out_and_counted(table_run):
    data = table_run.report["data"]
    assert data["rows_without_target"] == 3
    assert data["rows"] == 397 == data["train_rows"] + data["test_rows"]


def test_json_report_describes_the_data_as_pandas_counts_it(table_run):
    table = pd.read_csv(table_run.workdir / "penguins.csv").dropna(subset=["species"])
    data = table_run.report["data"]
    assert data["feature_columns"] == 6
    assert data["target"] == {"name": "species", "classes": table.species.value_counts().to_dict()}
    gaps = table.drop(columns="species").isna().sum()
    assert data["missing_values"] == gaps[gaps > 0].to_dict()
    assert data["numeric_columns"] == ["bill_length_mm", "flipper_length_mm"]


def test_each_non_numeric_column_says_how_it_became_numbers(table_run):
    treatment = table_run.report["data"]["treatment"]
    assert treatment["island"] == "text, 3 values -> ordinal"
    assert treatment["sex"] == "text, 2 values -> ordinal"
    assert treatment["name"] == "text, 397 values -> string encoder (30 columns)"
    assert treatment["observed"] == (
        "date -> observed_year, observed_month, observed_day, observed_total_seconds"
    )


def test_text_report_has_a_data_section(table_run, capsys):
    report = table_run.report | {"registration": None}
    autolog_mlflow.print_report(report)
    out = capsys.readouterr().out
    assert "\nData: penguins.csv, 397 rows (297 to train, 100 held out), 6 feature columns\n" in out
    assert "  left out: 3 rows without a target\n" in out
    assert "  target 'species': 3 classes: Adelie " in out
    assert "  island: text, 3 values -> ordinal\n" in out
    assert "  profile: data_profile.html (all 297 training rows)\n" in out


def test_data_description_and_skrub_profile_are_artifacts_of_the_run(table_run, tmp_path):
    client, run_id = table_run.client, table_run.run.info.run_id
    logged = json.loads(Path(client.download_artifacts(run_id, "data.json", tmp_path)).read_text())
    assert logged == table_run.report["data"]
    html = Path(client.download_artifacts(run_id, "data_profile.html", tmp_path)).read_text()
    assert html.lstrip().startswith("<") and "skrub" in html
    for column in penguins().columns:
        assert column in html


def test_best_params_child_runs_and_cv_results_use_the_estimators_own_names(table_run):
    params = table_run.run.data.params
    assert {"best_n_estimators", "best_max_depth"} <= params.keys()
    for child in table_run.child_runs():
        assert child.info.run_name == (
            f"max_depth={child.data.params['max_depth']} "
            f"n_estimators={child.data.params['n_estimators']}"
        )
    names = [*params, *(key for child in table_run.child_runs() for key in child.data.params)]
    assert not [name for name in names if name.startswith("randomforestclassifier__")]


def test_logged_model_signature_names_the_raw_columns_and_takes_any_values(table_run):
    (model,) = table_run.logged_models()
    mlflow.set_tracking_uri(table_run.tracking_uri)
    inputs = mlflow.models.get_model_info(model.model_uri).signature.inputs.to_dict()
    assert [(column["name"], column["type"]) for column in inputs] == [
        (name, "any") for name in penguins().columns.drop("species")
    ]
    with pytest.raises(MlflowException, match="missing inputs.*observed"):
        mlflow.pyfunc.load_model(model.model_uri).predict(raw_rows().drop(columns="observed"))


def test_reloaded_model_predicts_raw_rows_with_an_unseen_category_and_gaps(table_run):
    (model,) = table_run.logged_models()
    mlflow.set_tracking_uri(table_run.tracking_uri)
    by_sklearn = mlflow.sklearn.load_model(model.model_uri).predict(raw_rows())
    by_pyfunc = mlflow.pyfunc.load_model(model.model_uri).predict(raw_rows())
    assert set(by_sklearn) <= {"Adelie", "Gentoo", "Chinstrap"}
    assert list(by_pyfunc) == list(by_sklearn)


def test_reloaded_model_takes_a_csv_batch_as_pandas_reads_it(table_run, tmp_path):
    # Whole numbers without a gap are int64 to pd.read_csv, with one float64; nullable Int64
    # is what pandas' own readers give with dtype_backend="numpy_nullable"; a batch's text
    # column may be all gaps (float64) or all digits (int64).
    (model,) = table_run.logged_models()
    mlflow.set_tracking_uri(table_run.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(model.model_uri)
    table = penguins().drop(columns="species").head(20)
    table.to_csv(tmp_path / "batch.csv", index=False)
    whole = pd.read_csv(tmp_path / "batch.csv")
    assert whole["flipper_length_mm"].dtype == "int64"
    batches = {
        "whole numbers": whole,
        "a gap in an integer column": whole.assign(
            flipper_length_mm=whole["flipper_length_mm"].where(whole.index != 3)
        ),
        "nullable Int64": whole.astype({"flipper_length_mm": "Int64"}).assign(
            flipper_length_mm=lambda t: t["flipper_length_mm"].where(t.index != 3, pd.NA)
        ),
        "a text column all gaps": whole.assign(sex=np.nan),
        "a text column all digits": whole.assign(island=7),
    }
    expected = mlflow.sklearn.load_model(model.model_uri).predict(table)
    for what, batch in batches.items():
        predicted = pyfunc.predict(batch)
        assert len(predicted) == 20 and set(predicted) <= set(expected), what
    assert list(pyfunc.predict(whole)) == list(expected)


@pytest.mark.parametrize(
    ("column", "value", "says"),
    [
        ("observed", "not a date", "column 'observed': cannot read 'not a date' as a date like 2026-01-31"),
        ("observed", "06/01/2009", "column 'observed': cannot read '06/01/2009' as a date like 2026-01-31"),
        ("flipper_length_mm", "tall", "column 'flipper_length_mm': cannot read 'tall' as a number"),
    ],
)  # fmt: skip
def test_reloaded_model_refuses_a_value_its_column_cannot_read_naming_both(
    table_run, column, value, says
):
    (model,) = table_run.logged_models()
    mlflow.set_tracking_uri(table_run.tracking_uri)
    rows = raw_rows().astype({column: object})
    rows.loc[1, column] = value
    for loaded in mlflow.sklearn.load_model, mlflow.pyfunc.load_model:
        with pytest.raises(MlflowException, match=f"{says}; send .*, or leave it empty") as raised:
            loaded(model.model_uri).predict(rows)
        assert "(and" not in str(raised.value)
    rows.loc[2, column] = ""  # empty text is a gap, as in a CSV
    assert len(mlflow.sklearn.load_model(model.model_uri).predict(rows.drop(index=1))) == 2


@pytest.mark.slow
def test_served_model_answers_raw_json_records_and_refuses_a_bad_date_by_name(table_run):
    (model,) = table_run.logged_models()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model.model_uri,
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=table_run.workdir, env=script_env() | {"MLFLOW_TRACKING_URI": table_run.tracking_uri},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    # NaN and None become null; whole numbers stay whole, as a client writes them
    records = json.loads(raw_rows().to_json(orient="records"))
    records[0]["flipper_length_mm"] = 190
    bad = [records[1] | {"observed": "not a date"}]

    def post(rows):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            json.dumps({"dataframe_records": rows}).encode(),
            {"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server)
        (status, answer), (bad_status, refusal) = post(records), post(bad)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    mlflow.set_tracking_uri(table_run.tracking_uri)
    assert status == 200
    expected = raw_rows().assign(flipper_length_mm=[190, np.nan, 220.0])
    assert answer["predictions"] == list(
        mlflow.sklearn.load_model(model.model_uri).predict(expected)
    )
    assert bad_status == 400
    assert "column 'observed': cannot read 'not a date' as a date" in refusal["message"]


@pytest.mark.slow
def test_reproducing_a_table_run_gives_identical_results(table_run):
    """In a new Python: a string hash seed of its own, unlike the fork that made the run."""
    result = run_script(
        table_run.workdir, "--json", "--reproduce", table_run.run.info.run_id, new_python=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["reproduction"]["verdict"] == "identical"


BAD_TARGETS = {
    "continuous floats": (
        lambda t: t.assign(species=np.linspace(0, 1, len(t))),
        "looks continuous",
    ),
    "integer quantities": (lambda t: t.assign(species=np.arange(len(t)) * 7), "looks continuous"),
    "a class with one row": (
        lambda t: t.assign(species=["Emperor"] + list(t.species[1:])),
        "classes with a single row ('Emperor')",
    ),
}


@pytest.mark.parametrize("change, message", BAD_TARGETS.values(), ids=BAD_TARGETS.keys())
def test_a_target_a_classifier_cannot_learn_is_rejected_before_any_run(
    tmp_path, script_main, change, message
):
    change(penguins()).to_csv(tmp_path / "bad.csv", index=False)
    result = script_main("--data", "bad.csv", "--target", "species", *SMALL_SEARCH)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert message in line and "Traceback" not in result.stderr
    store = tmp_path / "mlflow.db"
    if store.exists():
        client = MlflowClient(f"sqlite:///{store}")
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
