"""The template adapts in one place: a copy of the script whose ESTIMATOR line alone is changed
runs end to end, registry and --reproduce included, for another classifier and a regressor."""

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import ROOT, SMALL_TABLE, penguins, raw_rows, run_script
from mlflow import MlflowClient

ESTIMATOR_LINE = "ESTIMATOR = ensemble.RandomForestClassifier()"


def script_with_estimator(folder, estimator):
    """A copy of the script in `folder` with only the ESTIMATOR line changed."""
    return script_with(folder, ESTIMATOR_LINE, f"ESTIMATOR = {estimator}")


def script_with(folder, start, replacement):
    """A copy of the script in `folder` with `start`, at the start of one line, replaced."""
    lines = (ROOT / "autolog_mlflow.py").read_text().splitlines(keepends=True)
    (number,) = [i for i, line in enumerate(lines) if line.startswith(start)]
    lines[number] = lines[number].replace(start, replacement)
    (folder / "autolog_mlflow.py").write_text("".join(lines))
    return folder / "autolog_mlflow.py"


def run_copy(script, *args):
    result = run_script(script.parent, "--json", "--n-jobs", "1", *args, script=script)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_script_says_its_estimator_in_one_line():
    lines = (ROOT / "autolog_mlflow.py").read_text().splitlines()
    assert len([line for line in lines if line.startswith(ESTIMATOR_LINE)]) == 1
    assert len([line for line in lines if "RandomForestClassifier" in line]) == 1


@pytest.mark.slow
def test_another_classifier_is_one_line_registry_and_reproduce_included(tmp_path):
    script = script_with_estimator(tmp_path, "ensemble.HistGradientBoostingClassifier()")
    penguins().to_csv(tmp_path / "penguins.csv", index=False)
    options = ["--data", "penguins.csv", "--target", "species", "--cv", "3"]
    report = run_copy(script, *options, "--param-grid", '{"max_iter": [10, 30]}',
                      "--register-model", "penguins-hgb")  # fmt: skip

    assert report["params"]["best_max_iter"] in {"10", "30"}
    assert "HistGradientBoostingClassifier" in report["params"]["estimator"]
    assert 0.6 < report["test_metrics"]["accuracy_score_X_test"] <= 1
    assert report["data"]["treatment"]["island"] == "text, 3 values -> categories"
    assert report["registration"]["aliases"] == ["champion"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    predicted = mlflow.pyfunc.load_model("models:/penguins-hgb@champion").predict(raw_rows())
    assert set(predicted) <= {"Adelie", "Gentoo", "Chinstrap"}

    again = run_copy(script, "--reproduce", report["run_id"])
    assert again["reproduction"]["verdict"] == "identical"


@pytest.mark.slow
def test_a_regressor_is_one_line_scored_and_ranked_by_held_out_r2(tmp_path):
    script = script_with_estimator(tmp_path, "ensemble.RandomForestRegressor()")
    table = penguins().drop(columns="species")
    table["body_mass_g"] = table.flipper_length_mm * 50 - 6000 + (table.index % 7) * 40
    table.to_csv(tmp_path / "mass.csv", index=False)
    options = ["--data", "mass.csv", "--target", "body_mass_g", "--cv", "3",
               "--register-model", "mass"]  # fmt: skip
    weak = run_copy(script, *options, "--param-grid", '{"n_estimators": [2], "max_depth": [1]}')
    strong = run_copy(script, *options, "--param-grid", '{"n_estimators": [20], "max_depth": [8]}')

    metrics = strong["test_metrics"]
    assert set(metrics) == {"r2_score_X_test", "mean_absolute_error_X_test"}
    assert metrics["r2_score_X_test"] > weak["test_metrics"]["r2_score_X_test"]
    assert "training_confusion_matrix.png" not in strong["artifacts"]
    assert strong["data"]["target"]["name"] == "body_mass_g"
    comparison = strong["compared_with_earlier_runs"]
    assert comparison["score"] == "r2_score_X_test" and comparison["beats_best_earlier"] is True
    assert strong["registration"]["aliases"] == ["champion"]
    champion = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_model_version_by_alias(
        "mass", "champion"
    )
    assert champion.tags["run_id"] == strong["run_id"]

    again = run_copy(script, "--reproduce", strong["run_id"])
    assert again["reproduction"]["verdict"] == "identical"


@pytest.mark.slow
def test_a_scoring_of_its_own_is_logged_and_never_compared_with_another_scorings_champion(
    tmp_path,
):
    options = [*SMALL_TABLE, "--cv", "2", "--param-grid", '{"n_estimators": [5]}',
               "--register-model", "tumours"]  # fmt: skip
    script = script_with(tmp_path, "SCORING = None", "SCORING = None")  # the script as it is
    by_accuracy = run_copy(script, *options)
    script = script_with(tmp_path, "SCORING = None", 'SCORING = "balanced_accuracy"')
    balanced = run_copy(script, *options)

    assert by_accuracy["registration"]["aliases"] == ["champion"]
    assert "balanced_accuracy_X_test" in balanced["test_metrics"]
    assert balanced["compared_with_earlier_runs"]["score"] == "balanced_accuracy_X_test"
    assert balanced["registration"]["aliases"] == ["challenger"]
    assert balanced["registration"]["decision"] == (
        "stays challenger: champion version 1 has no balanced_accuracy_X_test to compare with "
        "(it was scored by another SCORING or estimator)"
    )


SMALL_ROWS = pd.read_csv(SMALL_TABLE[1]).drop(columns="target").head(30)  # rows to predict


def reloaded_elsewhere_and_reproduced(script, report, rows):
    """The run's model's predictions of `rows` in a fresh Python elsewhere, once `--reproduce`
    of the run has given an identical verdict."""
    again = run_copy(script, "--reproduce", report["run_id"])
    assert again["reproduction"]["verdict"] == "identical"
    rows.to_csv(script.parent / "rows.csv", index=False)
    (model,) = report["logged_models"]
    return predicted_in_a_fresh_python(script.parent / "elsewhere", model["uri"],
                                       script.parent / "rows.csv")  # fmt: skip


PREDICT = """import json, sys, mlflow, pandas
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
print(json.dumps(model.predict(pandas.read_csv(sys.argv[3])).tolist()))
"""


def predicted_in_a_fresh_python(folder, model_uri, rows_csv):
    """The model's predictions on a CSV's rows, in a new process that never ran the script,
    started in a new `folder` (its path's first entry) that holds only its code: no module of
    the script's folder to import there. Forked by the prestarted Python, as the runs are."""
    folder.mkdir()
    (folder / "predict.py").write_text(PREDICT)
    result = run_script(folder, f"sqlite:///{folder.parent / 'mlflow.db'}", model_uri,
                        str(rows_csv), script=folder / "predict.py")  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


OWN_CLASS = {
    "in the script": (
        "class ShallowForest(ensemble.RandomForestClassifier):\n"
        '    """A forest of your own, defined in the script."""\n\n\n'
        "ESTIMATOR = ShallowForest()"
    ),
    "in a module beside it": "import my_forests  # noqa: E402\nESTIMATOR = my_forests.ShallowForest()",
}


@pytest.mark.slow
@pytest.mark.parametrize("where", OWN_CLASS)
def test_an_estimator_class_of_your_own_is_logged_reloaded_elsewhere_and_reproduced(
    tmp_path, where
):
    (tmp_path / "my_forests.py").write_text(
        "from sklearn import ensemble\n\n\nclass ShallowForest(ensemble.RandomForestClassifier):\n"
        '    """A forest of your own, in a module beside the script."""\n'
    )
    script = script_with(tmp_path, ESTIMATOR_LINE, OWN_CLASS[where])
    report = run_copy(script, *SMALL_TABLE, "--cv", "2", "--param-grid", '{"max_depth": [2, 4]}')

    assert "ShallowForest" in report["params"]["estimator"]
    predicted = reloaded_elsewhere_and_reproduced(script, report, SMALL_ROWS)
    assert len(predicted) == 30 and set(predicted) <= {0, 1}


@pytest.mark.slow
def test_a_randomized_search_over_distributions_is_logged_reloaded_and_reproduced(tmp_path):
    script = script_with(tmp_path, "SEARCH, SEARCH_OPTIONS = GridSearchCV, {}",
                         'SEARCH, SEARCH_OPTIONS = RandomizedSearchCV, {"n_iter": 6}')  # fmt: skip
    text = script.read_text().replace(
        "PARAM_GRID = {",
        "from scipy import stats  # noqa: E402\n"
        'PARAM_GRID = {"n_estimators": stats.randint(5, 30), "max_depth": [None, 2, 4]}\n_ = {',
        1,
    )
    script.write_text(text)
    report = run_copy(script, *SMALL_TABLE, "--cv", "3")

    assert report["params"]["n_iter"] == "6"
    record = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").download_artifacts(
        report["run_id"], "run_config.json", str(tmp_path)
    )
    assert json.loads(Path(record).read_text())["configuration"]["param_grid"] == {
        "n_estimators": "scipy.stats.randint(5, 30)",
        "max_depth": [None, 2, 4],
    }
    children = report["child_runs"]
    assert len(children) == 6 == len({child["name"] for child in children})
    for child in children:
        n_estimators = int(child["name"].split("n_estimators=")[1])
        assert 5 <= n_estimators < 30
    assert "grid_scores.png" in report["artifacts"]
    assert len(reloaded_elsewhere_and_reproduced(script, report, SMALL_ROWS)) == 30


@pytest.mark.slow
def test_successive_halving_logs_a_child_run_per_candidate_and_round_and_is_reproduced(tmp_path):
    halving = ("from sklearn.experimental import enable_halving_search_cv  # noqa: E402, F401\n"
               "from sklearn.model_selection import HalvingGridSearchCV  # noqa: E402\n"
               "SEARCH, SEARCH_OPTIONS = HalvingGridSearchCV, {}")  # fmt: skip
    script = script_with(tmp_path, "SEARCH, SEARCH_OPTIONS = GridSearchCV, {}", halving)
    grid = '{"max_depth": [2, 4, null], "n_estimators": [5, 10]}'
    report = run_copy(script, *SMALL_TABLE, "--cv", "3", "--param-grid", grid)

    children = report["child_runs"]
    rounds = [int(child["name"].rsplit("round ", 1)[1]) for child in children]
    assert len(children) > 6 and set(rounds) == set(range(1, max(rounds) + 1))
    assert len({child["name"] for child in children}) == len(children)
    best = report["params"]
    assert children[0]["name"].startswith(
        f"max_depth={best['best_max_depth']} n_estimators={best['best_n_estimators']}, round "
    )
    assert children[0]["name"].endswith(f"round {max(rounds)}")  # the last round decides
    assert len(reloaded_elsewhere_and_reproduced(script, report, SMALL_ROWS)) == 30


@pytest.mark.slow
def test_preprocessing_of_your_own_is_searched_logged_reloaded_and_reproduced(tmp_path):
    own = (
        "from sklearn import compose, preprocessing  # noqa: E402\n"
        "PREPROCESSING = [compose.make_column_transformer(\n"
        '    (preprocessing.OneHotEncoder(handle_unknown="ignore"), ["island", "sex"]),\n'
        '    ("passthrough", ["bill_length_mm", "flipper_length_mm"]))]'
    )
    script = script_with(tmp_path, "PREPROCESSING = None", own)
    penguins().to_csv(tmp_path / "penguins.csv", index=False)
    report = run_copy(script, "--data", "penguins.csv", "--target", "species", "--cv", "3",
                      "--param-grid", '{"n_estimators": [10, 20]}')  # fmt: skip

    assert "ColumnTransformer" in report["params"]["estimator"]
    data = report["data"]
    assert data["treatment"] == {}
    assert data["treatment_not_described"] == (
        "your own preprocessing (columntransformer) turned the columns into numbers: not "
        "described column by column"
    )
    # Each raw column's importance, measured through the whole pipeline: the unused ones none.
    importance = {row["column"]: row["importance"] for row in report["importance"]["columns"]}
    assert set(importance) == set(penguins().columns.drop("species"))
    assert importance["name"] == importance["observed"] == 0.0
    assert max(importance.values()) > 0
    predicted = reloaded_elsewhere_and_reproduced(script, report, raw_rows())
    assert set(predicted) <= {"Adelie", "Gentoo", "Chinstrap"} and len(predicted) == 3


@pytest.mark.slow
def test_a_regressor_refuses_a_text_target(tmp_path):
    script = script_with_estimator(tmp_path, "ensemble.RandomForestRegressor()")
    penguins().dropna().to_csv(tmp_path / "penguins.csv", index=False)
    result = run_script(tmp_path, "--data", "penguins.csv", "--target", "species", script=script)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "--target species is not numeric: RandomForestRegressor is a regressor" in line
