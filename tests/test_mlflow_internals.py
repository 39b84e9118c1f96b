"""The MLflow internals the script works around give MLflow's own answers, and still apply.

autolog_mlflow.datasets_built_once() replaces two pieces of MLflow 3.17.2 for speed (see the
script's comment). If an MLflow upgrade changes what they compute, or stops going through them,
these tests fail: what the run records must never change silently.
"""

import cProfile
import json
import pstats

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.data.digest_utils import compute_pandas_digest
from mlflow.types.utils import _infer_pandas_column, _infer_required, _infer_schema
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, train_test_split

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
    assert autolog_mlflow.required(column, _infer_required) == _infer_required(column)


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
    except Exception as e:
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
            autolog_mlflow.register_datasets(dataset_of, X_train, X_test)
            search = GridSearchCV(RandomForestClassifier(n_estimators=5, random_state=0),
                                  {"max_depth": [2, 3]}, cv=2)  # fmt: skip
            profile.enable()
            search.fit(X_train, y_train)
            search.predict(X_test), search.predict_proba(X_test)
            profile.disable()
    finally:
        mlflow.sklearn.autolog(disable=True)

    built = sum(
        calls
        for (path, _, name), (_, calls, *_) in pstats.Stats(profile).stats.items()
        if path.endswith("mlflow/data/pandas_dataset.py") and name == "__init__"
    )
    assert built == 0, "autologging built datasets of its own: the script's builder is bypassed"
    recorded = {
        tag.value: item.dataset
        for item in mlflow.get_run(run.info.run_id).inputs.dataset_inputs
        for tag in item.tags
        if tag.key == "mlflow.data.context"
    }
    for context, frame in [("train", X_train), ("eval", X_test)]:
        assert recorded[context].digest == compute_pandas_digest(frame)
        expected_schema = {"mlflow_colspec": _infer_schema(frame).to_dict()}
        assert json.loads(recorded[context].schema) == expected_schema
