"""The search preprocesses each CV fold once (autolog_mlflow.FoldCache), not once per candidate
and fold: the same scores, the same best model and the same run as preprocessing every time."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import ROOT, SMALL_GRID, finished_run, penguins, raw_rows
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.model_selection import GridSearchCV

import autolog_mlflow

FOLD_CACHE_LINE = "        fold_cache() as folds,\n"
GRID = {"n_estimators": [5, 10, 20], "max_depth": [None, 3]}  # 6 candidates
FOLDS = 3


class CountedStep(TransformerMixin, BaseEstimator):
    """Passes its rows on as they are, and writes a line to `log` for each fit and transform
    it really computes (in whichever process computes it)."""

    def __init__(self, log=None):
        self.log = log

    def fit(self, X, y=None):
        self.write("fit")
        return self

    def fit_transform(self, X, y=None):  # as the pipeline fits it: a fit, no transform
        self.fit(X, y)
        return X

    def transform(self, X):  # the rows it scores or predicts
        self.write("transform")
        return X

    def write(self, line):
        with open(self.log, "a") as file:
            file.write(line + "\n")


def counted_search(log, folds, n_jobs):
    pipeline = autolog_mlflow.table_pipeline(0, folds)
    pipeline.steps.insert(0, ("counted", CountedStep(str(log))))
    return GridSearchCV(pipeline, GRID, cv=FOLDS, n_jobs=n_jobs)


def searched(log, cached, n_jobs, X, y):
    """The search's fitted copy, and the lines its CountedStep wrote."""
    log.unlink(missing_ok=True)
    with autolog_mlflow.fold_cache() as folds:
        search = counted_search(log, folds if cached else None, n_jobs).fit(X, y)
    return search, log.read_text().splitlines()


@pytest.fixture(scope="module")
def table():
    frame = penguins().dropna(subset=["species"]).reset_index(drop=True)
    return frame.drop(columns=["species"]), frame["species"]


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_cached_search_scores_every_fold_and_picks_the_model_as_fitting_again(
    tmp_path, table, n_jobs
):
    X, y = table
    without, _ = searched(tmp_path / "log", False, n_jobs, X, y)
    cached, _ = searched(tmp_path / "log", True, n_jobs, X, y)
    scores = [key for key in without.cv_results_ if key.startswith("split") or "rank" in key]
    assert len(scores) == FOLDS + 1  # each fold's score, and the rank
    for key in [*scores, "mean_test_score", "std_test_score", "params"]:
        assert list(cached.cv_results_[key]) == list(without.cv_results_[key]), key
    assert cached.best_params_ == without.best_params_
    rows = raw_rows()
    np.testing.assert_array_equal(cached.predict_proba(rows), without.predict_proba(rows))


def test_each_fold_is_fitted_and_its_scored_rows_transformed_once_for_all_candidates(
    tmp_path, table
):
    # Fails if scikit-learn stops caching a step's fit (Pipeline.memory) or stops taking the
    # steps through Pipeline._iter when it scores (TablePipeline._iter): see FoldCache.
    X, y = table
    _, without = searched(tmp_path / "log", False, 1, X, y)
    _, cached = searched(tmp_path / "log", True, 1, X, y)
    candidates = len(GRID["n_estimators"]) * len(GRID["max_depth"])
    # Without the cache: a fit on the training folds and a transform of the scored fold for
    # every candidate and fold; then the refit on all rows.
    assert count(without, "fit") == candidates * FOLDS + 1
    assert count(without, "transform") == candidates * FOLDS
    # With it: once per fold, and once for the refit.
    assert count(cached, "fit") == FOLDS + 1
    assert count(cached, "transform") == FOLDS


def test_worker_processes_share_the_folds_they_fitted(tmp_path, table):
    X, y = table
    _, cached = searched(tmp_path / "log", True, 2, X, y)
    candidates = len(GRID["n_estimators"]) * len(GRID["max_depth"])
    # Two workers may both fit a fold they start at the same moment: at most twice each.
    assert FOLDS + 1 <= count(cached, "fit") <= 2 * FOLDS + 1 < candidates * FOLDS
    assert FOLDS <= count(cached, "transform") <= 2 * FOLDS < candidates * FOLDS


def count(lines, what):
    return sum(line.split()[0] == what for line in lines)


@pytest.mark.slow
def test_the_run_records_what_a_run_without_the_fold_cache_records(tmp_path):
    """Both runs search a table with text, gaps and dates in worker processes."""
    script = (ROOT / "autolog_mlflow.py").read_text()
    assert script.count(FOLD_CACHE_LINE) == 1
    without_cache = FOLD_CACHE_LINE.replace("fold_cache()", "contextlib.nullcontext()")
    runs = {}
    for name, text in [("cached", script),
                       ("uncached", script.replace(FOLD_CACHE_LINE, without_cache))]:  # fmt: skip
        folder = tmp_path / name  # both copies outside the repository: the same git tags
        folder.mkdir()
        (folder / "autolog_mlflow.py").write_text(text)
        penguins().to_csv(folder / "penguins.csv", index=False)
        runs[name] = finished_run(folder, "--data", "penguins.csv", "--target", "species",
                                  "--param-grid", SMALL_GRID, "--cv", "3", "--n-jobs", "-1",
                                  script=folder / "autolog_mlflow.py")  # fmt: skip
    cached, without = runs["cached"], runs["uncached"]
    assert "memory=FoldCache()" in cached.run.data.params["estimator"]
    assert "memory" not in without.run.data.params["estimator"]
    for record in ["params", "metrics", "tags"]:
        assert sorted(getattr(cached.run.data, record)) == sorted(
            getattr(without.run.data, record)
        ), record
    assert cached.report["artifacts"] == without.report["artifacts"]
    assert cached.run.data.metrics == without.run.data.metrics  # CV, training and held out
    assert children_scores(cached) == children_scores(without)
    assert cached.report["importance"] == without.report["importance"]
    models = []
    for run in (cached, without):
        mlflow.set_tracking_uri(run.tracking_uri)  # where models:/ URIs are looked up
        (model,) = run.logged_models()
        models.append(mlflow.sklearn.load_model(model.model_uri))
    assert models[0].memory is None  # the logged model carries no cache of a finished search
    rows = raw_rows()
    np.testing.assert_array_equal(models[0].predict_proba(rows), models[1].predict_proba(rows))


def children_scores(run):
    return {
        child.info.run_name: {k: v for k, v in child.data.metrics.items() if "test_score" in k}
        for child in run.child_runs()
    }


def test_fold_cache_is_written_as_such_in_the_runs_estimator_param():
    with autolog_mlflow.fold_cache() as folds:
        text = repr(autolog_mlflow.table_pipeline(0, folds))
        folder = Path(folds.location)
        assert folder.is_dir()
    assert "memory=FoldCache()" in text and str(folder) not in text
    assert not folder.exists()  # removed with the search
