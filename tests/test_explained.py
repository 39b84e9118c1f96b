"""The run explains itself in the MLflow UI: a Markdown description (the best candidate, held-out
scores, the comparison, the columns that matter, how to load the model), a line per child run,
the grid's scores as a picture, the raw columns' permutation importance, the held-out confusion
matrix."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import penguins
from sklearn.datasets import make_regression
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import get_scorer
from sklearn.model_selection import GridSearchCV

import autolog_mlflow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def artifact(run, path, tmp_path):
    with open(run.client.download_artifacts(run.run.info.run_id, path, tmp_path), "rb") as file:
        return file.read()


def test_run_description_names_the_best_candidate_and_the_held_out_score(table_run):
    description = table_run.run.data.tags["mlflow.note.content"]
    report = table_run.report
    best = autolog_mlflow.best_child(report)
    params = report["params"]  # the refitted candidate, not only one of those tied at rank 1
    assert (
        best["name"]
        == f"max_depth={params['best_max_depth']} n_estimators={params['best_n_estimators']}"
    )
    first_line = description.splitlines()[0]
    assert first_line.startswith(f"**Best: `{best['name']}`**, mean CV accuracy")
    accuracy = report["test_metrics"]["accuracy_score_X_test"]
    assert f"accuracy_score {accuracy:.3f}" in description
    assert report["load_model"] in description
    assert "the first run on this data" in description
    assert description == report["summary"]


def test_each_child_run_describes_its_rank_and_score(table_run):
    children = table_run.child_runs()
    for child in children:
        rank, scores = int(child.data.metrics["rank_test_score"]), child.data.metrics
        assert child.data.tags["mlflow.note.content"] == (
            f"rank {rank} of {len(children)}: mean CV accuracy {scores['mean_test_score']:.3f} "
            f"(+/- {2 * scores['std_test_score']:.3f})"
        )


@pytest.mark.parametrize(
    "name", ["grid_scores.png", "feature_importance.png", "held_out_confusion_matrix.png"]
)
def test_pictures_are_png_files_in_the_run(table_run, tmp_path, name):
    content = artifact(table_run, name, tmp_path)
    assert content.startswith(PNG_SIGNATURE) and len(content) > 5_000


def test_importance_lists_every_raw_column_of_the_table(table_run, tmp_path):
    table = pd.read_csv(table_run.client.download_artifacts(
        table_run.run.info.run_id, "feature_importance.csv", tmp_path))  # fmt: skip
    assert sorted(table["column"]) == sorted(penguins().drop(columns="species").columns)
    assert list(table["importance"]) == sorted(table["importance"], reverse=True)
    # The forest separates these species by flipper and bill length; the names are noise.
    top_two = set(table["column"][:2])
    assert top_two == {"flipper_length_mm", "bill_length_mm"}
    imported = table_run.report["importance"]
    assert imported["held_out_rows"] == table_run.report["data"]["test_rows"]
    assert [row["column"] for row in imported["columns"]] == list(table["column"])


def fitted_search(grid, rows=200):
    """A small search over the script's own pipeline, its table fitted once per fold as the
    script's, on the penguins table."""
    table = penguins(rows).dropna(subset=["species"])
    X, y = table.drop(columns="species"), table["species"]
    with autolog_mlflow.fold_cache() as folds:
        search = GridSearchCV(autolog_mlflow.table_pipeline(0, folds), grid, cv=2).fit(X, y)
    search.best_estimator_.memory = None
    return search, X, y


def test_shuffling_encoded_columns_scores_like_shuffling_the_raw_column():
    search, X, y = fitted_search({"n_estimators": [5]})
    vectorizer, estimator = search.best_estimator_.steps[0][1], search.best_estimator_.steps[-1][1]
    encoded = vectorizer.transform(X)
    for column in ["name", "observed", "island", "bill_length_mm"]:
        outputs = vectorizer.input_to_outputs_[column]
        shortcut = autolog_mlflow.shuffled(encoded, outputs, np.random.default_rng(7))
        raw = X.copy()
        raw[column] = X[column].iloc[np.random.default_rng(7).permutation(len(X))].to_numpy()
        assert search.scorer_(estimator, shortcut, y) == search.best_estimator_.score(raw, y)


@pytest.mark.parametrize(
    "scorer", ["accuracy", "balanced_accuracy", "roc_auc_ovr", "neg_log_loss", "f1_macro"]
)
def test_answers_made_in_one_call_score_each_shuffle_as_the_estimator_itself(scorer):
    search, X, y = fitted_search({"n_estimators": [5]})
    vectorizer, estimator = search.best_estimator_.steps[0][1], search.best_estimator_.steps[-1][1]
    encoded, rng = vectorizer.transform(X), np.random.default_rng(7)
    tables = [autolog_mlflow.shuffled(encoded, vectorizer.input_to_outputs_[column], rng)
              for column in ["name", "island", "bill_length_mm"]]  # fmt: skip
    answers = autolog_mlflow.AnswersInOneCall(estimator, [encoded, *tables])
    score = get_scorer(scorer)
    for table in [*tables, encoded]:  # in any order
        assert score(answers, table, y) == score(estimator, table, y)


def test_answers_made_in_one_call_score_a_regressors_shuffles_as_the_regressor_itself():
    X, y = make_regression(n_samples=120, n_features=4, random_state=0)
    X = pd.DataFrame(X, columns=list("abcd"))
    regressor = RandomForestRegressor(n_estimators=5, random_state=0).fit(X, y)
    tables = [X.sample(frac=1, random_state=seed).set_axis(X.index) for seed in range(3)]
    answers = autolog_mlflow.AnswersInOneCall(regressor, tables)
    assert not hasattr(answers, "predict_proba")  # a regressor's scorers find what it has
    for name in ["r2", "neg_mean_absolute_error"]:
        for table in tables:
            assert get_scorer(name)(answers, table, y) == get_scorer(name)(regressor, table, y)


def test_a_one_hyperparameter_grid_draws_a_line_with_error_bars():
    search, _, _ = fitted_search({"n_estimators": [2, 4, 8]})
    figure = autolog_mlflow.grid_scores_figure(search)
    (axes,) = [a for a in figure.axes]
    assert axes.get_xlabel() == "n_estimators"
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["2", "4", "8"]
    assert axes.containers  # the error bars


def test_the_pictures_are_drawn_outside_pyplot_so_that_a_thread_may_draw_them():
    search, X, y = fitted_search({"n_estimators": [2, 4], "max_depth": [None, 3]})
    autolog_mlflow.grid_scores_figure(search)
    importance, rows = autolog_mlflow.raw_column_importance(search, X, y, seed=0)
    autolog_mlflow.importance_figure(importance, rows)
    assert plt.get_fignums() == []  # pyplot's shared figures: none made, none to close


def test_a_three_hyperparameter_grid_draws_the_two_most_varied_the_third_at_its_best():
    grid = {"n_estimators": [2, 4, 8], "max_depth": [None, 3], "min_samples_leaf": [1, 5, 10, 20]}
    search, _, _ = fitted_search(grid)
    figure = autolog_mlflow.grid_scores_figure(search)
    axes = figure.axes[0]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("min_samples_leaf", "n_estimators")
    assert f"max_depth={search.best_params_['max_depth']}" in axes.get_title()
    shown = [text.get_text() for text in axes.texts]
    assert len(shown) == 12  # one cell per (min_samples_leaf, n_estimators) pair


def test_json_report_carries_the_summary_and_the_importance(table_run):
    report = json.loads(table_run.result.stdout)
    assert report["summary"].startswith("**Best: `")
    assert {"grid_scores.png", "feature_importance.png", "feature_importance.csv",
            "held_out_confusion_matrix.png"} <= set(report["artifacts"])  # fmt: skip
