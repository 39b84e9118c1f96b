"""The MLflow internals the script works around give MLflow's own answers, and still apply.

autolog_mlflow.datasets_built_once() replaces pieces of MLflow 3.17.2's dataset logging,
autolog_mlflow.training_table_shared() its copy of the training table, and
autolog_mlflow.child_runs_named_at_creation() its child-run creation, for speed and memory (see
the script's comments). If an MLflow upgrade changes what they compute,
or stops going through them, these tests fail: what the run records must never change silently.
MLFLOW_SETTINGS turns MLflow's usage telemetry off; the last test shows why.
"""

import contextlib
import cProfile
import json
import os
import pstats
import subprocess
import sys

import mlflow
import mlflow.sklearn.utils
import numpy as np
import pandas as pd
import pytest
import sklearn.model_selection._search
import sqlalchemy
from mlflow.data.digest_utils import compute_pandas_digest
from mlflow.entities import DatasetInput
from mlflow.types.utils import _infer_pandas_column, _infer_required, _infer_schema
from mlflow.utils.autologging_utils.client import MlflowAutologgingQueueingClient
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import FitFailedWarning
from sklearn.experimental import enable_halving_search_cv  # noqa: F401 -- HalvingGridSearchCV
from sklearn.model_selection import GridSearchCV, HalvingGridSearchCV, train_test_split
from sklearn.model_selection._validation import _fit_and_score

import autolog_mlflow

COLUMNS = {
    "float": pd.Series([1.5, 2.5, 3.5]),
    "float with NaN": pd.Series([1.5, np.nan, 3.5]),
    "float32 with NaN": pd.Series([1.5, np.nan, 3.5], dtype="float32"),
    "float with inf": pd.Series([1.5, np.inf, -np.inf]),
    "int": pd.Series([1, 2, 3]),
    "unsigned": pd.Series([1, 2, 3], dtype="uint8"),
    "bool": pd.Series([True, False, True]),
    "nullable int": pd.Series([1, 2, 3], dtype="Int64"),
    "nullable int with NA": pd.Series([1, pd.NA, 3], dtype="Int64"),
    "nullable float with NA": pd.Series([1.5, pd.NA, 3.5], dtype="Float64"),
    "nullable bool with NA": pd.Series([True, pd.NA, False], dtype="boolean"),
    "datetime": pd.Series(pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"])),
    "datetime with NaT": pd.Series(pd.to_datetime(["2026-01-01", None, "2026-01-03"])),
    "datetime with time zone and NaT": pd.Series(
        pd.to_datetime(["2026-01-01", None, "2026-01-03"]).tz_localize("UTC")
    ),
    "timedelta with NaT": pd.Series([pd.Timedelta(1), pd.NaT, pd.Timedelta(3)]),
    "complex with NaN": pd.Series([1 + 1j, complex(np.nan, 0), 3j]),
    "object": pd.Series(["a", 1, 2.5], dtype=object),
    "object with None": pd.Series(["a", None, "c"], dtype=object),
    "object with NaN": pd.Series(["a", np.nan, "c"], dtype=object),
    "object with pd.NA": pd.Series(["a", pd.NA, "c"], dtype=object),
    "object with NaT": pd.Series(["a", pd.NaT, "c"], dtype=object),
    "strings": pd.Series(["a", "b", "c"]),
    "strings with a gap": pd.Series(["a", None, "c"]),
    "nullable strings with NA": pd.Series(["a", pd.NA, "c"], dtype="string"),
    "strings, all missing": pd.Series([None, None, None], dtype="str"),
    "nullable strings, all NA": pd.Series([pd.NA, pd.NA, pd.NA], dtype="string"),
    "category with NaN": pd.Series(["a", np.nan, "a"], dtype="category"),
    "empty float": pd.Series([], dtype=float),
}


@pytest.mark.parametrize("name", COLUMNS)
def test_vectorised_missing_value_check_gives_mlflows_answer(name):
    column = COLUMNS[name]
    assert autolog_mlflow.has_no_gaps(column, _infer_required) == _infer_required(column)


def test_the_columns_cover_both_answers():
    answers = {_infer_required(column) for column in COLUMNS.values()}
    assert answers == {True, False}


def frames():
    """Frames of every kind of column above, a wide numeric one, mixed and empty ones."""
    X, _ = make_classification(n_samples=12_000, n_features=5, random_state=0)
    numeric = pd.DataFrame(X, columns=[f"x{i}" for i in range(5)])
    return {
        "every kind of column": pd.DataFrame(COLUMNS).drop(columns="empty float"),
        "every kind MLflow has a schema type for": pd.DataFrame(COLUMNS).drop(
            columns=["empty float", "timedelta with NaT", "complex with NaN"]
        ),
        "numeric, more rows than the digest reads": numeric,
        "numeric with a text column": numeric.assign(text="t", when=pd.Timestamp("2026-01-01")),
        "strings, not all of them str": pd.DataFrame({"a": ["x", 1, "z"], "b": ["x", "y", "z"]}),
        "repeated column names": pd.DataFrame([[1, "a"], [2, "b"]], columns=["c", "c"]),
        "no rows": numeric.head(0),
    }


def outcome(function, *args):
    """What a call returns, or the error it raises (MLflow has no schema type for some)."""
    try:
        return function(*args)
    except Exception as e:  # noqa: BLE001 -- the error is the answer compared
        return f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("name", list(frames()))
def test_schema_inferred_in_the_block_is_mlflows_own(name):
    frame = frames()[name]
    expected = outcome(_infer_schema, frame)
    with autolog_mlflow.datasets_built_once():
        assert outcome(_infer_schema, frame) == expected  # MLflow's function, with our check


@pytest.mark.parametrize("name", list(frames()))
def test_vectorised_digest_is_mlflows_own(name):
    frame = frames()[name]
    assert autolog_mlflow.pandas_digest(frame) == compute_pandas_digest(frame)


@pytest.mark.parametrize("name", COLUMNS)
def test_vectorised_column_type_gives_mlflows_answer(name):
    column = COLUMNS[name]
    expected = outcome(_infer_pandas_column, column)
    assert outcome(autolog_mlflow.column_type, column, _infer_pandas_column) == expected


def replaced():
    types = mlflow.types.utils
    return types._infer_required, types._infer_pandas_column, mlflow.sklearn.from_pandas


def test_the_block_puts_mlflow_back_as_it_was():
    before = replaced()
    with autolog_mlflow.datasets_built_once():
        assert all(now is not then for now, then in zip(replaced(), before))
    assert replaced() == before


def calls_in(profile, path_end, name):
    return sum(
        calls
        for (path, _, function), (_, calls, *_) in pstats.Stats(profile).stats.items()
        if path.endswith(path_end) and function == name
    )


def test_autologging_builds_one_dataset_per_frame_with_mlflows_digest_and_schema(tmp_path):
    """A real search under autologging: 2 datasets built (train, test), not 4 to 6."""
    X, y = make_classification(n_samples=3_000, n_features=8, random_state=0)
    X = pd.DataFrame(X, columns=[f"x{i}" for i in range(8)])
    X_train, X_test, y_train, _ = train_test_split(X, y, random_state=0)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.sklearn.autolog(log_models=False)
    profile = cProfile.Profile()
    try:
        with mlflow.start_run() as run, autolog_mlflow.datasets_built_once() as dataset_of:
            autolog_mlflow.register_datasets(dataset_of, X_train, X_test, "numbers")
            search = GridSearchCV(RandomForestClassifier(n_estimators=5, random_state=0),
                                  {"max_depth": [2, 3]}, cv=2)  # fmt: skip
            profile.enable()
            search.fit(X_train, y_train)
            search.predict(X_test), search.predict_proba(X_test)
            profile.disable()
    finally:
        mlflow.sklearn.autolog(disable=True)

    built = calls_in(profile, "mlflow/data/pandas_dataset.py", "__init__")
    assert built == 0, "autologging built datasets of its own: the script's builder is bypassed"
    recorded = {
        tag.value: item.dataset
        for item in mlflow.get_run(run.info.run_id).inputs.dataset_inputs
        for tag in item.tags
        if tag.key == "mlflow.data.context"
    }
    for context, frame, name in [
        ("train", X_train, "numbers train"),
        ("eval", X_test, "numbers test"),
    ]:
        assert recorded[context].name == name  # not autologging's `dataset`
        assert recorded[context].digest == compute_pandas_digest(frame)
        expected_schema = {"mlflow_colspec": _infer_schema(frame).to_dict()}
        assert json.loads(recorded[context].schema) == expected_schema


# Child runs named as they are made: child_runs_named_at_creation().
def search_of(grid):
    return GridSearchCV(RandomForestClassifier(n_estimators=3, random_state=0), grid, cv=2)


GRID = {"max_depth": [2, None], "min_samples_leaf": [1, 4]}


def children_of(run):
    return mlflow.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        output_format="list",
    )


@pytest.fixture
def store(tmp_path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield
    mlflow.sklearn.autolog(disable=True)


@contextlib.contextmanager
def sql_statements():
    """The SQL statements the store sends, from any thread (autologging writes from a pool)."""
    sent = []

    def note(connection, cursor, statement, parameters, context, executemany):
        sent.append((statement, parameters))

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", note)


def test_autologging_names_each_child_run_in_the_statement_that_creates_it(store):
    X, y = make_classification(n_samples=200, n_features=4, random_state=0)
    with autolog_mlflow.child_runs_named_at_creation():
        mlflow.sklearn.autolog(log_models=False)
    with mlflow.start_run() as run, sql_statements() as sent:
        search_of(GRID).fit(X, y)

    children = children_of(run)
    assert len(children) == 4
    for child in children:
        params, metrics = child.data.params, child.data.metrics
        assert child.info.run_name == (
            f"max_depth={params['max_depth']} min_samples_leaf={params['min_samples_leaf']}"
        )
        assert child.data.tags["mlflow.note.content"] == (
            f"rank {int(metrics['rank_test_score'])} of 4: mean CV accuracy "
            f"{metrics['mean_test_score']:.3f} (+/- {2 * metrics['std_test_score']:.3f})"
        )
        assert child.info.status == "FINISHED"
    created = [parameters for statement, parameters in sent
               if statement.startswith("INSERT INTO runs ")]  # fmt: skip
    assert len(created) == 4
    assert {child.info.run_name for child in children} <= {
        value for parameters in created for value in parameters
    }
    renamed = [statement for statement, _ in sent
               if statement.startswith("UPDATE runs ") and " name=" in statement]  # fmt: skip
    assert renamed == [], "a child run was renamed after it was created: a second write"


def child_runs_made_by(create_child_runs, search, parent, max_tuning_runs, dataset):
    """Child runs made as autologging makes them: queued with these arguments, then flushed."""
    client = MlflowAutologgingQueueingClient()
    create_child_runs(
        autologging_client=client,
        cv_estimator=search,
        parent_run=parent,
        max_tuning_runs=max_tuning_runs,
        child_tags={"mlflow.autologging": "sklearn"},
        dataset=dataset,
        best_estimator_params=None,
        best_estimator_model_id=None,
    )
    client.flush(synchronous=True)
    return {child.info.run_name: child for child in children_of(parent)}


def recorded(child, parent):
    """What a child run holds, less its name, description, candidate index and end time."""
    tags = {key: value for key, value in child.data.tags.items()
            if key not in ("mlflow.runName", "mlflow.note.content", autolog_mlflow.CANDIDATE_TAG,
                           autolog_mlflow.CHOSEN_TAG)}  # fmt: skip
    inputs = [(item.dataset.name, item.dataset.digest, [(t.key, t.value) for t in item.tags])
              for item in child.inputs.dataset_inputs]  # fmt: skip
    tags["mlflow.parentRunId"] = child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    started = child.info.start_time - parent.info.start_time  # autologging's: the parent's
    return child.info.status, started, child.data.params, child.data.metrics, tags, inputs


# Every scikit-learn search logged as one: every_search_logged_as_one().


def test_successive_halving_gets_a_searchs_records_only_with_every_search_logged_as_one(store):
    """MLflow 3.17.2 alone logs none of a HalvingGridSearchCV's search records; within the
    block, autologging gives it what it gives GridSearchCV: best params and score, cv_results.csv
    and a child run per candidate and round. Fails if an upgrade moves what is replaced (or
    makes it unneeded)."""
    X, y = make_classification(n_samples=300, n_features=4, random_state=0)
    X = pd.DataFrame(X, columns=list("abcd"))

    def searched():
        search = HalvingGridSearchCV(RandomForestClassifier(n_estimators=5, random_state=0),
                                     {"max_depth": [2, 3, 4, None]}, cv=2, random_state=0)  # fmt: skip
        with mlflow.start_run() as run, autolog_mlflow.datasets_built_once() as dataset_of:
            # The data set exists before the child runs, as in the script (see above).
            autolog_mlflow.register_datasets(dataset_of, X, X.head(10), "numbers")
            search.fit(X, y)
        return mlflow.get_run(run.info.run_id), search

    mlflow.sklearn.autolog(log_models=False, max_tuning_runs=None)
    alone, _ = searched()
    with autolog_mlflow.every_search_logged_as_one():
        mlflow.sklearn.autolog(log_models=False, max_tuning_runs=None)
    logged, search = searched()

    assert "best_max_depth" not in alone.data.params and children_of(alone) == []
    assert "best_cv_score" not in alone.data.metrics
    assert logged.data.params["best_max_depth"] == str(search.best_params_["max_depth"])
    assert logged.data.metrics["best_cv_score"] == search.best_score_
    artifacts = [item.path for item in mlflow.MlflowClient().list_artifacts(logged.info.run_id)]
    assert "cv_results.csv" in artifacts
    children = children_of(logged)
    assert len(children) == len(search.cv_results_["params"]) > 4  # candidates x rounds
    assert {"iter", "n_resources"} <= set(children[0].data.metrics)
    assert autolog_mlflow.mlflow.sklearn.utils._is_parameter_search_estimator(search) is False


@pytest.mark.parametrize("max_tuning_runs", [None, 2])
def test_child_runs_named_at_creation_hold_what_mlflows_own_hold(store, max_tuning_runs):
    X, y = make_classification(n_samples=200, n_features=4, random_state=0)
    search = search_of(GRID).fit(X, y)
    dataset = mlflow.data.from_numpy(X, targets=y)
    theirs, ours = [mlflow.MlflowClient().create_run("0") for _ in range(2)]
    # The data set exists before its child runs, as autologging logs it on the parent first:
    # children that find it missing all insert it at once, and all but one fail.
    mlflow.MlflowClient().log_inputs(
        theirs.info.run_id, [DatasetInput(dataset._to_mlflow_entity())]
    )

    mlflows = child_runs_made_by(mlflow.sklearn.utils._create_child_runs_for_parameter_search,
                                 search, theirs, max_tuning_runs, dataset)  # fmt: skip
    with autolog_mlflow.child_runs_named_at_creation():
        named = child_runs_made_by(mlflow.sklearn.utils._create_child_runs_for_parameter_search,
                                   search, ours, max_tuning_runs, dataset)  # fmt: skip

    assert len(named) == len(mlflows) == (max_tuning_runs or 4)
    by_params = {tuple(sorted(c.data.params.items())): c for c in mlflows.values()}
    for name, child in named.items():
        own = by_params[tuple(sorted(child.data.params.items()))]
        assert recorded(child, ours) == recorded(own, theirs)
        assert name == " ".join(f"{key}={child.data.params[key]}" for key in sorted(GRID))
        assert child.data.tags["mlflow.note.content"].startswith(
            f"rank {int(child.data.metrics['rank_test_score'])} of {len(named)}: "
        )


def test_child_runs_made_during_the_search_are_filled_in_by_candidate(store):
    """Autologging goes through cv_results_ in order when every candidate gets a child run: the
    run made for candidate k during the search gets candidate k's params, metrics, tags and
    end, and no other run is made."""
    X, y = make_classification(n_samples=200, n_features=4, random_state=0)
    search = search_of(GRID).fit(X, y)
    dataset = mlflow.data.from_numpy(X, targets=y)
    client = mlflow.MlflowClient()
    theirs, ours = [client.create_run("0") for _ in range(2)]
    for parent in (theirs, ours):
        client.log_inputs(parent.info.run_id, [DatasetInput(dataset._to_mlflow_entity())])
    candidates = search.cv_results_["params"]

    # Made as during a search: named, a placeholder description, and some of the tags
    # autologging gives (not sent again, and still there).
    def made_with(k):
        name = " ".join(f"{p}={candidates[k][p]}" for p in sorted(GRID))
        return {"mlflow.parentRunId": ours.info.run_id, "mlflow.autologging": "sklearn",
                "mlflow.runName": name, "mlflow.note.content": "folds fitted"}  # fmt: skip

    search.child_runs_made_ = {
        k: (client.create_run("0", tags=made_with(k)).info.run_id, made_with(k), {})
        for k in range(len(candidates))
    }
    made = {k: run_id for k, (run_id, *_) in search.child_runs_made_.items()}

    mlflows = child_runs_made_by(mlflow.sklearn.utils._create_child_runs_for_parameter_search,
                                 search, theirs, None, dataset)  # fmt: skip
    with autolog_mlflow.child_runs_named_at_creation():
        filled = child_runs_made_by(mlflow.sklearn.utils._create_child_runs_for_parameter_search,
                                    search, ours, None, dataset)  # fmt: skip

    assert {child.info.run_id for child in filled.values()} == set(made.values())
    assert len(children_of(ours)) == len(candidates)  # no other child run
    by_params = {tuple(sorted(c.data.params.items())): c for c in mlflows.values()}
    for k, run_id in made.items():
        child = client.get_run(run_id)
        assert child.info.run_name == " ".join(f"{p}={candidates[k][p]}" for p in sorted(GRID))
        mine = recorded(child, ours)
        own = recorded(by_params[tuple(sorted(child.data.params.items()))], theirs)
        assert mine[:1] + mine[2:] == own[:1] + own[2:]  # the start: the parent's, or when made
        assert child.data.tags["mlflow.note.content"].startswith(
            f"rank {int(child.data.metrics['rank_test_score'])} of {len(candidates)}: "
        )


class CandidatesDone:
    """What SearchProgress hands the live child runs: each candidate's folds' results."""

    def __init__(self):
        self.results = {}

    def candidate_done(self, candidate, began, results):
        self.results[candidate] = results

    def made(self):  # asked at the search's end
        return {}


@pytest.mark.parametrize("n_jobs", [1, 2])  # the fits in this process; in workers
def test_each_candidates_cv_scores_are_read_as_its_folds_end_and_are_cv_results_own(n_jobs):
    """scikit-learn 1.9.1 gives callbacks no score: autolog_mlflow.cv_fit_result reads each
    fold's from _fit_and_score's frame. The child run made as a candidate finishes gets the
    very numbers of cv_results_ (then not sent again when the search ends)."""
    X, y = make_classification(n_samples=200, n_features=4, random_state=0)
    done = CandidatesDone()
    search = search_of(GRID).set_params(n_jobs=n_jobs, cv=3)
    search.set_callbacks(autolog_mlflow.SearchProgress(done)).fit(X, y)
    results = search.cv_results_
    assert sorted(done.results) == list(range(len(results["params"])))
    for candidate, folds in done.results.items():
        metrics = autolog_mlflow.cv_metrics(folds)
        assert set(metrics) == {f"split{k}_test_score" for k in range(3)} | {
            f"{stat}_{what}" for stat in ("mean", "std")
            for what in ("test_score", "fit_time", "score_time")
        }  # fmt: skip
        for name, value in metrics.items():
            assert value == results[name][candidate], name


@pytest.mark.filterwarnings("ignore:One or more of the test scores are non-finite")
def test_a_failed_fit_gives_no_score_to_save():
    """A fit that fails scores error_score (NaN): not a result --resume may reuse."""
    X, y = make_classification(n_samples=200, n_features=4, random_state=0)
    done = CandidatesDone()
    search = search_of({"max_depth": [2, -1]}).set_params(cv=3)  # -1: refused at fit
    with pytest.warns(FitFailedWarning, match="3 fits failed"):
        search.set_callbacks(autolog_mlflow.SearchProgress(done)).fit(X, y)
    assert autolog_mlflow.cv_metrics(done.results[0])  # the good candidate's
    assert set(done.results[1].values()) == {None}
    assert autolog_mlflow.cv_metrics(done.results[1]) == {}


@pytest.mark.parametrize("n_jobs", [1, 2])  # the saved results sent to workers
def test_a_search_given_saved_fold_results_fits_only_the_others_and_ends_the_same(n_jobs):
    """--resume: around the fit, autolog_mlflow.scores_reused replaces scikit-learn 1.9.1's
    _fit_and_score for the saved candidates; cv_results_, the choice and the refit are those
    of the search that fitted them all."""
    X, y = make_classification(n_samples=200, n_features=4, random_state=0)
    everything = CandidatesDone()
    whole = search_of(GRID).set_params(cv=3)
    whole.set_callbacks(autolog_mlflow.SearchProgress(everything)).fit(X, y)
    saved = {k: (f"child {k}", [everything.results[k][fold] for fold in range(3)]) for k in (0, 2)}
    fitted = CandidatesDone()
    resumed = search_of(GRID).set_params(cv=3, n_jobs=n_jobs)
    with autolog_mlflow.scores_reused(saved, None):
        resumed.set_callbacks(autolog_mlflow.SearchProgress(fitted, saved)).fit(X, y)
    assert sorted(fitted.results) == [1, 3]  # only the others were fitted
    for key in ("params", "mean_test_score", "std_test_score", "rank_test_score",
                *(f"split{k}_test_score" for k in range(3))):  # fmt: skip
        assert list(resumed.cv_results_[key]) == list(whole.cv_results_[key]), key
    assert resumed.best_params_ == whole.best_params_
    assert np.array_equal(resumed.predict(X), whole.predict(X))
    assert sklearn.model_selection._search._fit_and_score is _fit_and_score  # put back


def test_each_child_runs_params_are_turned_into_text_once(store):
    """The pipeline's steps are params of every child run; scikit-learn's repr of them is slow."""
    X, y = make_classification(n_samples=100, n_features=4, random_state=0)
    X = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    search = GridSearchCV(autolog_mlflow.table_pipeline(0), GRID, cv=2).fit(X, y)
    parent, dataset = mlflow.MlflowClient().create_run("0"), mlflow.data.from_pandas(X)

    def reprs_made(max_tuning_runs):
        profile = cProfile.Profile()
        with autolog_mlflow.child_runs_named_at_creation():
            profile.enable()
            mlflow.sklearn.utils._create_child_runs_for_parameter_search(
                autologging_client=MlflowAutologgingQueueingClient(), cv_estimator=search,
                parent_run=parent, max_tuning_runs=max_tuning_runs, dataset=dataset)  # fmt: skip
            profile.disable()
        return calls_in(profile, "sklearn/base.py", "__repr__")

    assert reprs_made(max_tuning_runs=1) > 0
    assert reprs_made(max_tuning_runs=None) == reprs_made(max_tuning_runs=1)


def test_the_workaround_puts_mlflow_back_as_it_was():
    utils = mlflow.sklearn.utils
    before = utils._create_child_runs_for_parameter_search
    with autolog_mlflow.child_runs_named_at_creation():
        assert utils._create_child_runs_for_parameter_search is not before
    assert utils._create_child_runs_for_parameter_search is before


# The training table shared, not deep-copied: training_table_shared().
def table_and_target():
    X, y = make_classification(n_samples=300, n_features=4, random_state=0)
    X = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    return X.assign(e=np.where(X.a > 0, "up", "down")), pd.Series(y)


def shares_data(copy, original):
    return np.shares_memory(copy.to_numpy(), original.to_numpy())


def test_autologging_takes_a_fits_pandas_table_shared_in_the_block_copied_outside():
    X, y = table_and_target()
    fit = RandomForestClassifier().fit
    take = mlflow.sklearn.utils._get_X_y_and_sample_weight  # autologging's, before each fit

    mlflows_X, _, _ = take(fit, (X, y), {})
    assert not shares_data(mlflows_X["a"], X["a"]), "MLflow no longer deep-copies X"
    with autolog_mlflow.training_table_shared():
        X_taken, y_taken, _ = take(fit, (X, y), {})
        numbers = X[["a", "b"]].to_numpy()
        numbers_taken, _, _ = take(fit, (numbers, y.to_numpy()), {})

    assert shares_data(X_taken["a"], X["a"]) and shares_data(y_taken, y)
    assert not np.shares_memory(numbers_taken, numbers)  # anything else: copied, as MLflow does
    X_taken.loc[0, "a"] = -1.0  # copy on write: a change on one side never reaches the other
    assert X.loc[0, "a"] != -1.0


def test_a_logged_fit_in_the_block_shares_its_table_and_records_the_same_metrics(
    store, monkeypatch
):
    """The script's case: a search of the table pipeline on a table with text, autologged."""
    X, y = table_and_target()
    as_given = X.copy(deep=True)
    utils, taken = mlflow.sklearn.utils, []
    take = utils._get_X_y_and_sample_weight

    def noted(*arguments):
        taken.append(take(*arguments))
        return taken[-1]

    monkeypatch.setattr(utils, "_get_X_y_and_sample_weight", noted)  # bound by autolog()
    mlflow.sklearn.autolog(log_models=False)
    recorded = []
    for block in (contextlib.nullcontext(), autolog_mlflow.training_table_shared()):
        with mlflow.start_run() as run, block:
            grid = {"n_estimators": [5], "max_depth": [2, None]}
            GridSearchCV(autolog_mlflow.table_pipeline(0), grid, cv=2).fit(X, y)
        recorded.append(mlflow.get_run(run.info.run_id).data.metrics)

    (copied, _, _), (shared, _, _) = taken
    assert not shares_data(copied["a"], X["a"]) and shares_data(shared["a"], X["a"])
    pd.testing.assert_frame_equal(X, as_given)
    assert {"training_score", "training_accuracy_score", "best_cv_score"} <= set(recorded[1])
    assert recorded[1] == recorded[0]


def test_the_shared_table_block_puts_mlflow_back_as_it_was():
    before = mlflow.sklearn.utils.deepcopy
    with autolog_mlflow.training_table_shared():
        assert mlflow.sklearn.utils.deepcopy is not before
    assert mlflow.sklearn.utils.deepcopy is before
    with pytest.raises(RuntimeError), autolog_mlflow.training_table_shared():
        raise RuntimeError("a failure inside the block")
    assert mlflow.sklearn.utils.deepcopy is before


# --- MLflow's usage telemetry -----------------------------------------------------------------

TELEMETRY_SESSION = """
import json, os, sys, threading
import mlflow
os.environ.update(json.loads(sys.argv[1]))  # as main() sets them, after the imports
had = "_MLFLOW_TELEMETRY_SESSION_ID" in os.environ
mlflow.set_tracking_uri("sqlite:///mlflow.db")
with mlflow.start_run():  # MLflow's first use: telemetry, if on, starts its thread
    pass
for thread in threading.enumerate():
    if thread.name == "GetTelemetryConfig":
        thread.join(30)
print(json.dumps([had, "_MLFLOW_TELEMETRY_SESSION_ID" in os.environ]))
"""


@pytest.mark.parametrize(
    "settings, kept",
    [({}, False), (autolog_mlflow.MLFLOW_SETTINGS, True)],
    ids=["MLflow's defaults", "the script's settings"],
)
def test_telemetry_left_on_deletes_a_variable_of_the_environment_from_its_thread(
    tmp_path, settings, kept
):
    """Why MLFLOW_SETTINGS turns MLflow's telemetry off: a run on a server failed with KeyError
    '_MLFLOW_TELEMETRY_SESSION_ID', the variable deleted by telemetry's thread while requests
    read the environment for proxies. Here offline for sure (a proxy on a closed port), outside
    any CI (MLflow keeps telemetry off there): on, it deletes it; with our settings, never."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"],
           "HTTPS_PROXY": "http://127.0.0.1:9"}  # fmt: skip
    command = [sys.executable, "-c", TELEMETRY_SESSION, json.dumps(settings)]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            check=False, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, kept]
