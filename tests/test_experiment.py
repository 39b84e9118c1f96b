"""What one run of the script leaves in the tracking store, checked with MLflow's own client."""

import itertools
import json
from importlib.metadata import packages_distributions
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import (
    QUICK,
    ROOT,
    SMALL_GRID,
    TINY,
    TINY_SEARCH,
    child_runs_once_made,
    finished_run,
    parent_runs,
    run_script,
    start_script,
)
from mlflow import MlflowClient
from sklearn.datasets import load_breast_cancer, load_iris, make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

import autolog_mlflow

DEFAULT_GRID = autolog_mlflow.PARAM_GRID
DEFAULT_CANDIDATES = np.prod([len(values) for values in DEFAULT_GRID.values()])
# Most tests read the quick run: a small grid, every other default. What depends on the grid
# and the folds is checked on the real default search as well.
SEARCHES = [
    pytest.param("quick_run", json.loads(SMALL_GRID), 3, id="quick"),
    pytest.param(
        "default_run", DEFAULT_GRID, autolog_mlflow.CV_FOLDS, id="default", marks=pytest.mark.slow
    ),
]


def pinned_requirements():
    """The top-level choices the model needs, e.g. mlflow==3.17.2, as requirements.in pins them."""
    lines = [
        line.split("#")[0].strip() for line in (ROOT / "requirements.in").read_text().splitlines()
    ]
    return {line for line in lines if line.split("==")[0] in autolog_mlflow.MODEL_PACKAGES}


def held_out_split():
    """The default split as the README states it (not by the script's own functions): the
    bundled data, a stratified quarter held out, seed 42."""
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    return train_test_split(X, y, test_size=0.25, random_state=42, stratify=y)


def test_default_grid_has_at_least_nine_candidates_over_two_hyperparameters():
    assert len(DEFAULT_GRID) >= 2 and DEFAULT_CANDIDATES >= 9


def test_parent_run_is_finished_under_the_default_experiment(quick_run):
    run = quick_run.run
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "breast-cancer -> target"  # its data and target
    experiment = quick_run.client.get_experiment(run.info.experiment_id)
    assert experiment.name == autolog_mlflow.EXPERIMENT_NAME
    assert (quick_run.workdir / "mlflow.db").is_file()


@pytest.mark.parametrize("search, grid, folds", SEARCHES)
def test_autologging_records_the_search_parameters_and_the_best_ones(request, search, grid, folds):
    params = request.getfixturevalue(search).run.data.params
    for name in grid:
        assert params[f"best_{name}"] in {str(value) for value in grid[name]}
    assert params["cv"] == str(folds)
    assert "RandomForestClassifier" in params["estimator"]


def test_autologging_records_cv_and_training_metrics(quick_run):
    metrics = quick_run.run.data.metrics
    assert 0.5 < metrics["best_cv_score"] <= 1
    for name in ["training_accuracy_score", "training_f1_score", "training_roc_auc"]:
        assert 0.5 < metrics[name] <= 1


def test_held_out_test_metrics_are_logged_in_the_run(quick_run):
    metrics = quick_run.run.data.metrics
    for name in ["accuracy_score_X_test", "f1_score_X_test", "roc_auc_score_X_test"]:
        assert 0.5 < metrics[name] <= 1, name


def test_run_artifacts_include_cv_results_estimator_and_confusion_matrix(quick_run):
    artifacts = {item.path for item in quick_run.client.list_artifacts(quick_run.run.info.run_id)}
    assert {"cv_results.csv", "estimator.html", "training_confusion_matrix.png"} <= artifacts
    assert "run_config.json" in artifacts


def test_training_dataset_digest_is_recorded(quick_run):
    inputs = quick_run.run.inputs.dataset_inputs
    contexts = {
        tag.value for item in inputs for tag in item.tags if tag.key == "mlflow.data.context"
    }
    assert "train" in contexts
    assert all(item.dataset.digest for item in inputs)


@pytest.mark.parametrize("search, grid, folds", SEARCHES)
def test_one_child_run_per_candidate_named_after_its_hyperparameters(request, search, grid, folds):
    children = request.getfixturevalue(search).child_runs()
    candidates = np.prod([len(values) for values in grid.values()])
    assert len(children) == candidates
    names = {child.info.run_name for child in children}
    assert len(names) == candidates
    for child in children:
        expected = " ".join(f"{key}={child.data.params[key]}" for key in sorted(grid))
        assert child.info.run_name == expected
        assert {"mean_test_score", "std_test_score", "rank_test_score"} <= set(child.data.metrics)


@pytest.mark.parametrize("run", ["quick_run", "second_quick_run"])  # fits here; in workers
def test_each_child_run_is_made_during_the_search_and_filled_in_after_it(request, run):
    made = request.getfixturevalue(run)
    parent = made.run.info
    # Autologging's first metric, logged once the search's fit has returned.
    searched = made.client.get_metric_history(parent.run_id, "training_score")[0].timestamp
    for child in made.child_runs():
        assert parent.start_time < child.info.start_time < searched
        assert child.info.status == "FINISHED"


@pytest.mark.parametrize("run", ["quick_run", "second_quick_run"])  # fits here; in workers
def test_child_runs_span_their_own_fits_not_the_whole_search(request, run):
    """The UI's Duration of a child run is its candidate's: from its first fold's start to its
    last fold's end, never the whole search. (scikit-learn's fit_time starts a little before the
    fold's callback, with the fold's rows taken from the table: hence the halves.)"""
    made = request.getfixturevalue(run)
    searched = made.client.get_metric_history(made.run.info.run_id, "training_score")[0].timestamp
    children = sorted(made.child_runs(), key=lambda child: child.info.start_time)
    folds = int(made.run.data.params["cv"])
    for child in children:
        seconds = (child.info.end_time - child.info.start_time) / 1000
        fold = child.data.metrics["mean_fit_time"] + child.data.metrics["mean_score_time"]
        assert fold / 2 <= seconds, child.info.run_name
        assert made.run.info.start_time < child.info.start_time
        assert child.info.end_time < searched
    if run == "quick_run":  # --n-jobs 1: one candidate after the other
        for before, after in itertools.pairwise(children):
            assert before.info.end_time <= after.info.start_time
            fits = folds * (before.data.metrics["mean_fit_time"]
                            + before.data.metrics["mean_score_time"])  # fmt: skip
            assert fits / 2 <= (before.info.end_time - before.info.start_time) / 1000


@pytest.mark.slow
def test_candidates_appear_in_the_store_while_the_search_runs(tmp_path):
    """A long search fills the MLflow UI as it goes: each candidate's child run exists, named
    and RUNNING, once its folds are fitted; the same runs hold its scores at the end."""
    grid = {"n_estimators": [10, 100, 200, 300]}  # the later candidates take longer
    process = start_script(tmp_path, "--json", "--param-grid", json.dumps(grid), "--cv", "3")
    line = process.stderr.readline()  # "run <id>: searching ..."
    assert line.startswith("run "), line + process.stderr.read()
    run_id = line.split()[1].rstrip(":")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    seen = child_runs_once_made(  # a child run is made, then given its scores
        client, run_id, until=lambda children: (
            process.poll() is not None or any(child.data.metrics for child in children))
    )  # fmt: skip
    searching = client.get_run(run_id)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr

    assert "training_score" not in searching.data.metrics  # the search had not returned
    scored = {}
    for child in seen:
        assert child.info.status == "RUNNING"
        assert child.info.run_name in {f"n_estimators={n}" for n in grid["n_estimators"]}
        if child.data.metrics:  # its CV scores, before the search's end, and their description
            scored[child.info.run_id] = child.data.metrics
            assert set(child.data.metrics) == {
                "split0_test_score", "split1_test_score", "split2_test_score", "mean_test_score",
                "std_test_score", "mean_fit_time", "std_fit_time", "mean_score_time",
                "std_score_time",
            }  # fmt: skip
            assert child.data.tags["mlflow.note.content"] == (
                f"Its folds are fitted: mean CV accuracy {child.data.metrics['mean_test_score']:.3f}"
                f" (+/- {2 * child.data.metrics['std_test_score']:.3f}); its rank when the search"
                " ends."
            )
    assert scored
    children = autolog_mlflow.find_child_runs(client, searching)
    assert len(children) == len(grid["n_estimators"])
    assert {child.info.run_id for child in seen} <= {child.info.run_id for child in children}
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.note.content"].startswith("rank ")
        assert {"mean_test_score", "rank_test_score", "split2_test_score"} <= set(
            child.data.metrics
        )
        # The scores seen during the search are the final ones, logged once.
        for name, value in scored.get(child.info.run_id, {}).items():
            assert child.data.metrics[name] == value
            assert len(client.get_metric_history(child.info.run_id, name)) == 1


def test_best_model_is_logged_once_ready_with_signature_and_pinned_requirements(quick_run):
    models = quick_run.logged_models()
    assert [(model.name, str(model.status)) for model in models] == [("best_estimator", "READY")]
    model_dir = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=models[0].artifact_location, tracking_uri=quick_run.tracking_uri
        )
    )
    mlmodel = (model_dir / "MLmodel").read_text()
    assert "signature:" in mlmodel and "saved_input_example_info" in mlmodel
    logged = set((model_dir / "requirements.txt").read_text().split())
    assert pinned_requirements() <= logged


@pytest.mark.parametrize("module", ["sklearn.ensemble._forest", "skrub", "dateutil.parser"])
def test_the_distribution_pinned_for_the_estimators_module_is_the_one_python_names(module):
    """The estimator's distribution is pinned too (here scikit-learn, or any other a user's
    estimator comes from); found in MODEL_PACKAGES first, elsewhere as importlib finds it."""
    (expected,) = packages_distributions()[module.split(".")[0]]
    assert autolog_mlflow.distribution_of(module) == expected


def test_best_model_reloads_and_predicts_like_a_fresh_fit(quick_run):
    X_train, X_test, y_train, y_test = held_out_split()
    params = quick_run.run.data.params
    best = {
        key: None if params[f"best_{key}"] == "None" else int(params[f"best_{key}"])
        for key in json.loads(SMALL_GRID)
    }
    expected = (
        RandomForestClassifier(random_state=autolog_mlflow.SEED, **best)
        .fit(X_train, y_train)
        .predict(X_test)
    )

    mlflow.set_tracking_uri(quick_run.tracking_uri)
    uri = quick_run.logged_models()[0].model_uri
    assert np.array_equal(mlflow.sklearn.load_model(uri).predict(X_test), expected)
    assert np.array_equal(np.asarray(mlflow.pyfunc.load_model(uri).predict(X_test)), expected)
    assert quick_run.run.data.metrics["accuracy_score_X_test"] == accuracy_score(y_test, expected)


def test_json_report_matches_the_store(quick_run):
    report, run = quick_run.report, quick_run.run
    assert report["run_id"] == run.info.run_id and report["status"] == run.info.status
    assert report["params"] == run.data.params
    assert report["metrics"] == run.data.metrics
    assert {model["uri"] for model in report["logged_models"]} == {
        model.model_uri for model in quick_run.logged_models()
    }
    assert {child["name"] for child in report["child_runs"]} == {
        child.info.run_name for child in quick_run.child_runs()
    }
    assert [child["rank"] for child in report["child_runs"]] == sorted(
        child["rank"] for child in report["child_runs"]
    )
    assert report["duration_seconds"] == (run.info.end_time - run.info.start_time) / 1000
    (model,) = quick_run.logged_models()
    assert report["load_model"] == f'mlflow.sklearn.load_model("{model.model_uri}")'


def test_printed_ui_urls_open_the_model_training_view_of_the_run_and_its_experiment(quick_run):
    browse, run = quick_run.report["browse"], quick_run.run
    runs = f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs"
    assert browse["ui_command"] == "mlflow ui"
    assert browse["run_url"] == f"{runs}/{run.info.run_id}?workflowType=machine_learning"
    assert browse["experiment_url"] == f"{runs}?workflowType=machine_learning"


def test_text_report_shows_run_id_duration_models_leaderboard_and_how_to_browse(tmp_path):
    result = run_script(tmp_path, *TINY)  # without --json: the report as text
    assert result.returncode == 0, result.stderr
    client, out = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), result.stdout
    (run,) = parent_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert out.startswith(f"Run ID: {run.info.run_id}\n")
    seconds = (run.info.end_time - run.info.start_time) / 1000
    assert f"\nStatus: FINISHED in {seconds:.1f} s\n" in out
    for heading in [
        "Parameters:",
        "Metrics:",
        "Artifacts:",
        "Logged models",
        "Child runs",
        "Held-out test metrics",
        "Earlier runs on the same training and test data",
        'Browse in the MLflow UI ("Model training" view):',
    ]:
        assert heading in out
    assert "models:/m-" in out and "[READY]" in out
    assert "mlflow ui" in out and "http://127.0.0.1:5000/#/experiments/" in out
    (model,) = client.search_logged_models([run.info.experiment_id])
    assert f'Load the model:\n  mlflow.sklearn.load_model("{model.model_uri}")\n' in out


def test_report_compares_with_the_best_earlier_run_on_the_same_data(quick_run, second_quick_run):
    score = autolog_mlflow.HELD_OUT_SCORE
    first = quick_run.report["compared_with_earlier_runs"]
    assert first == {
        "score": score,
        "this_run": quick_run.run.data.metrics[score],
        "earlier_runs": 0,
        "best_earlier_run_id": None,
        "best_earlier_score": None,
        "beats_best_earlier": None,
    }
    second = second_quick_run.report["compared_with_earlier_runs"]
    assert second["earlier_runs"] == 1
    assert second["best_earlier_run_id"] == quick_run.run.info.run_id
    assert second["best_earlier_score"] == second["this_run"]  # the same search, the same score
    assert second["beats_best_earlier"] is False  # a tie does not beat it


@pytest.mark.slow
def test_only_runs_on_the_same_training_and_test_data_are_compared(tmp_path):
    first = finished_run(tmp_path, *QUICK).report
    other_split = finished_run(tmp_path, *QUICK, "--seed", "7").report
    assert other_split["compared_with_earlier_runs"]["earlier_runs"] == 0

    fewer_folds = finished_run(tmp_path, *QUICK, "--cv", "2").report["compared_with_earlier_runs"]
    assert fewer_folds["earlier_runs"] == 1
    assert fewer_folds["best_earlier_run_id"] == first["run_id"]
    best = first["test_metrics"][autolog_mlflow.HELD_OUT_SCORE]
    assert fewer_folds["best_earlier_score"] == best
    assert fewer_folds["beats_best_earlier"] == (fewer_folds["this_run"] > best)


def test_two_runs_give_identical_results(quick_run, second_quick_run):
    """The second with its fits in parallel worker processes: results do not depend on it. (And
    the second is forked by the tests' prestarted Python, the first a new one: neither do they.)"""
    first, second = quick_run.run, second_quick_run.run
    assert first.info.run_id != second.info.run_id
    timing = ("fit_time", "score_time")
    for run in (first, second):
        assert run.info.status == "FINISHED"
    assert (first.data.params.pop("n_jobs"), second.data.params.pop("n_jobs")) == ("1", "-1")
    assert first.data.params == second.data.params
    assert first.data.metrics == second.data.metrics
    scores = [
        {
            child.info.run_name: {
                k: v for k, v in child.data.metrics.items() if not k.endswith(timing)
            }
            for child in run.child_runs()
        }
        for run in (quick_run, second_quick_run)
    ]
    assert scores[0] == scores[1]


@pytest.mark.slow
def test_own_csv_with_a_multiclass_text_target(tmp_path):
    iris = load_iris(as_frame=True)
    frame = iris.data.assign(species=iris.target_names[iris.target])
    frame.to_csv(tmp_path / "iris.csv", index=False)

    run = finished_run(
        tmp_path,
        "--data",
        "iris.csv",
        "--target",
        "species",
        "--param-grid",
        SMALL_GRID,
        "--cv",
        "3",
    )

    assert run.run.info.status == "FINISHED"
    assert len(run.child_runs()) == 4
    metrics = run.run.data.metrics
    assert 0.8 < metrics["accuracy_score_X_test"] <= 1
    assert "f1_score_X_test" in metrics and "roc_auc_score_X_test" not in metrics
    assert [str(model.status) for model in run.logged_models()] == ["READY"]
    features = pd.read_csv(tmp_path / "iris.csv").drop(columns="species")
    mlflow.set_tracking_uri(run.tracking_uri)
    model = mlflow.sklearn.load_model(run.logged_models()[0].model_uri)
    assert set(model.predict(features)) <= set(iris.target_names)


@pytest.mark.slow
def test_semicolon_separated_csv_with_decimal_commas_is_read_as_numbers(tmp_path):
    X, y = make_classification(n_samples=200, n_features=4, random_state=0)
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"]).assign(label=y)
    frame.to_csv(tmp_path / "semicolons.csv", sep=";", decimal=",", index=False)

    run = finished_run(tmp_path, "--data", "semicolons.csv", "--target", "label", *TINY_SEARCH)

    (train,) = [item for item in run.run.inputs.dataset_inputs for tag in item.tags
                if tag.key == "mlflow.data.context" and tag.value == "train"]  # fmt: skip
    schema = json.loads(train.dataset.schema)["mlflow_colspec"]
    assert [(column["name"], column["type"]) for column in schema] == [
        (name, "double") for name in "abcd"
    ]
    mlflow.set_tracking_uri(run.tracking_uri)
    model = mlflow.sklearn.load_model(run.logged_models()[0].model_uri)
    assert accuracy_score(y, model.predict(frame.drop(columns="label"))) > 0.8
