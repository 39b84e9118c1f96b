"""Track a scikit-learn hyperparameter search with MLflow autologging.

The script enables MLflow's scikit-learn autologging, runs a `GridSearchCV` over a
`RandomForestClassifier` inside one MLflow run and scores the best model on a held-out test
split that the search never sees. Autologging records the search's parameters, CV metrics,
artifacts, datasets and one child run per candidate; the script adds what autologging cannot
do well: descriptive child-run names, the best model logged once with its exact pinned
environment, and the test ROC AUC.

Then it reads the run back *from the tracking store* -- proof of what was logged, not what we
think we logged -- checks that everything expected is there, and prints a report: run ID and
status, params, metrics, artifacts, logged models, the child runs as a leaderboard, and how to
browse the run in the MLflow UI.

Run it:

    python autolog_mlflow.py                          # default store: ./mlflow.db
    python autolog_mlflow.py --cv 3 --param-grid '{"n_estimators": [50, 100], "max_depth": [null, 5]}'
    python autolog_mlflow.py --data my.csv --target label
    python autolog_mlflow.py --json                   # the report as one JSON document
    mlflow ui                                         # same folder: browse and compare runs

Exit codes: 0 success, 2 bad input, 1 any other failure.
"""

import argparse
import json
import logging
import os
import sys
import warnings
from importlib.metadata import version

import mlflow
import mlflow.sklearn
import pandas as pd
from mlflow import MlflowClient
from sklearn import metrics  # look functions up at call time: see score_on_test_split()
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, train_test_split

# %% Configuration: every default in one place; each can be changed on the command line.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default; artifacts go to ./mlruns
EXPERIMENT_NAME = "autolog_mlflow"
RUN_NAME = "rf-grid-search"
PARAM_GRID = {"n_estimators": [50, 100, 200], "max_depth": [None, 5, 10]}  # 9 candidates
CV_FOLDS = 5
TEST_SIZE = 0.25  # held-out share, stratified; the search never sees it
SEED = 42  # the split and every forest
N_JOBS = -1  # parallel CV fits on all cores; results do not depend on it
MAX_TUNING_RUNS = "all"  # child runs to log: the top N candidates, or all of them
# The packages the logged model needs to load, pinned to the installed versions, so MLflow
# need not infer them (a subprocess per model, seconds) and cannot get them wrong.
MODEL_PACKAGES = ["mlflow", "scikit-learn", "numpy", "pandas", "scipy", "cloudpickle"]
UI_URL = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


class BadInput(Exception):
    """A problem with the user's input: exit 2 with a one-line message."""


# %% Command line
class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv=None):
    parser = OneLineErrorParser(
        prog="autolog_mlflow.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else %(default)s)",
    )
    parser.add_argument("--experiment-name", default=EXPERIMENT_NAME, help="MLflow experiment")
    parser.add_argument("--run-name", default=RUN_NAME, help="name of the parent run")
    parser.add_argument(
        "--data", help="CSV file to use instead of scikit-learn's breast-cancer data set"
    )
    parser.add_argument("--target", help="the CSV column to predict (required with --data)")
    parser.add_argument(
        "--test-size", type=float, default=TEST_SIZE, help="held-out share, between 0 and 1"
    )
    parser.add_argument(
        "--param-grid",
        type=parse_param_grid,
        default=PARAM_GRID,
        help="JSON object of RandomForestClassifier hyperparameters to lists of values",
    )
    parser.add_argument("--cv", type=int, default=CV_FOLDS, help="cross-validation folds")
    parser.add_argument("--n-jobs", type=int, default=N_JOBS, help="parallel fits; -1 = all cores")
    parser.add_argument("--seed", type=int, default=SEED, help="seed for the split and forests")
    parser.add_argument(
        "--max-tuning-runs",
        type=parse_max_tuning_runs,
        default=MAX_TUNING_RUNS,
        help="child runs to log: the best N candidates, or 'all'",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    args = parser.parse_args(argv)
    if (args.data is None) != (args.target is None):
        parser.error("--data and --target go together: give both, or neither")
    return args


def parse_param_grid(text):
    try:
        grid = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}); example: {EXAMPLE_GRID}")
    if not isinstance(grid, dict) or not grid:
        raise argparse.ArgumentTypeError(f"give a non-empty JSON object, e.g. {EXAMPLE_GRID}")
    valid = RandomForestClassifier().get_params()
    for name, values in grid.items():
        if name not in valid:
            raise argparse.ArgumentTypeError(
                f"RandomForestClassifier has no hyperparameter {name!r}; "
                f"valid ones: {', '.join(sorted(valid))}"
            )
        if not isinstance(values, list) or not values:
            raise argparse.ArgumentTypeError(
                f"{name!r} needs a non-empty list of values, e.g. {EXAMPLE_GRID}"
            )
    return grid


EXAMPLE_GRID = '\'{"n_estimators": [50, 100], "max_depth": [null, 5]}\''


def parse_max_tuning_runs(text):
    if text == "all":
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"give a positive integer or 'all', not {text!r}")
    return count


# %% Data
def load_data(args):
    """Return the features and target: the user's CSV, or the bundled breast-cancer set."""
    if args.data is None:
        X, y = load_breast_cancer(return_X_y=True, as_frame=True)
        return X, y
    try:
        frame = pd.read_csv(args.data)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read --data {args.data}: {e}")
    if args.target not in frame.columns:
        raise BadInput(
            f"--target {args.target!r} is not a column of {args.data}; "
            f"columns: {', '.join(map(str, frame.columns))}"
        )
    X, y = frame.drop(columns=[args.target]), frame[args.target]
    text_columns = [str(c) for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    if text_columns:
        raise BadInput(
            f"feature columns must be numeric; encode or drop: {', '.join(text_columns)}"
        )
    if frame.isna().any().any():
        missing = [str(c) for c in frame.columns if frame[c].isna().any()]
        raise BadInput(f"missing values in {', '.join(missing)}; fill or drop those rows")
    return X, y


def split_data(X, y, args):
    if not 0 < args.test_size < 1:
        raise BadInput(f"--test-size must be between 0 and 1, not {args.test_size}")
    if y.nunique() < 2:
        raise BadInput("the target has a single class; a classifier needs at least two")
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=args.test_size, stratify=y, random_state=args.seed
        )
    except ValueError as e:
        raise BadInput(f"cannot split the data with --test-size {args.test_size}: {e}")
    smallest_class = int(y_train.value_counts().min())
    if not 2 <= args.cv <= smallest_class:
        raise BadInput(
            f"--cv must be between 2 and {smallest_class} (the smallest class count in the "
            f"training split), not {args.cv}"
        )
    return X_train, X_test, y_train, y_test


# %% The search, under autologging
def enable_autologging(args):
    # Log the best model ourselves (log_best_model): autologging would log two models and
    # infer each one's requirements in a subprocess.
    mlflow.sklearn.autolog(
        log_models=False,
        max_tuning_runs=None if args.max_tuning_runs == "all" else args.max_tuning_runs,
        silent=True,
    )
    # Known, harmless noise: scikit-learn 1.9 deprecates an argument name that autologging's
    # log_loss call uses; MLflow hints that integer predictions cannot hold missing values.
    warnings.filterwarnings("ignore", message=".*`y_pred` was renamed", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")


def run_search(X_train, y_train, args):
    search = GridSearchCV(
        RandomForestClassifier(random_state=args.seed),
        args.param_grid,
        cv=args.cv,
        n_jobs=args.n_jobs,
    )
    return search.fit(X_train, y_train)


def score_on_test_split(search, X_test, y_test):
    """Score the best model on the held-out split; autologging records the metrics.

    Autologging replaces the functions of `sklearn.metrics` when it is enabled, so they are
    looked up on the module here, at call time: a function imported by name before that would
    bypass it. It names each metric after the variable passed in: `accuracy_score_X_test`.
    """
    y_pred = search.predict(X_test)
    metrics.accuracy_score(y_test, y_pred)
    if len(search.classes_) == 2:
        metrics.f1_score(y_test, y_pred, pos_label=search.classes_[1])
        # Autologging cannot tie a column of predict_proba to the model, so log it ourselves.
        y_score = search.predict_proba(X_test)[:, 1]
        mlflow.log_metric("roc_auc_score_X_test", metrics.roc_auc_score(y_test, y_score))
    else:
        metrics.f1_score(y_test, y_pred, average="macro")


def log_best_model(search, X_train):
    """Log the refitted best estimator once, with a signature, an input example, exact pins."""
    requirements = [f"{package}=={version(package)}" for package in MODEL_PACKAGES]
    return mlflow.sklearn.log_model(
        search.best_estimator_,
        name="best_estimator",
        serialization_format="cloudpickle",
        input_example=X_train.head(5),  # the signature is inferred from it
        pip_requirements=requirements,
    )


def log_configuration(args):
    """Record what the run ran with: the effective configuration and package versions."""
    configuration = {key: value for key, value in vars(args).items() if key != "tracking_uri"}
    environment = {"python": sys.version.split()[0]}
    environment |= {package: version(package) for package in MODEL_PACKAGES}
    mlflow.log_dict({"configuration": configuration, "environment": environment}, "run_config.json")


def name_child_runs(client, run_id, experiment_id, param_grid):
    """Rename each child run after its hyperparameters, e.g. `max_depth=5 n_estimators=100`."""
    for child in find_child_runs(client, run_id, experiment_id):
        name = " ".join(f"{key}={child.data.params[key]}" for key in sorted(param_grid))
        client.update_run(child.info.run_id, name=name)


def find_child_runs(client, run_id, experiment_id):
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
        max_results=10_000,
    )


# %% Read the run back from the store
def read_run_back(client, run_id):
    """Everything the store holds about the run, as plain data for the report."""
    run = client.get_run(run_id)
    experiment_id = run.info.experiment_id
    children = find_child_runs(client, run_id, experiment_id)
    models = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    return {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "experiment_id": experiment_id,
        "params": dict(sorted(run.data.params.items())),
        "metrics": dict(sorted(run.data.metrics.items())),
        "artifacts": list_artifacts(client, run_id),
        "logged_models": [
            {
                "name": model.name,
                "model_id": model.model_id,
                "uri": model.model_uri,
                "status": str(model.status),
            }
            for model in models
        ],
        "child_runs": sorted(
            (
                {
                    "run_id": child.info.run_id,
                    "name": child.info.run_name,
                    "rank": int(child.data.metrics["rank_test_score"]),
                    "mean_test_score": child.data.metrics["mean_test_score"],
                    "std_test_score": child.data.metrics["std_test_score"],
                }
                for child in children
            ),
            key=lambda child: (child["rank"], child["name"]),
        ),
        "test_metrics": {
            key: value for key, value in run.data.metrics.items() if key.endswith("_X_test")
        },
    }


def list_artifacts(client, run_id, path=None):
    """All artifact file paths of the run, recursively."""
    paths = []
    for item in client.list_artifacts(run_id, path):
        paths += list_artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return paths


# %% Report
def browse_hints(tracking_uri, report):
    run_path = f"#/experiments/{report['experiment_id']}/runs/{report['run_id']}"
    if tracking_uri.startswith(("http://", "https://")):
        return {"ui_command": None, "run_url": f"{tracking_uri.rstrip('/')}/{run_path}"}
    command = "mlflow ui"
    if tracking_uri != DEFAULT_TRACKING_URI:
        command += f" --backend-store-uri '{tracking_uri}'"
    return {"ui_command": command, "run_url": f"{UI_URL}/{run_path}"}


def print_report(report):
    print(f"\nRun {report['run_id']} ({report['run_name']}): {report['status']}")
    print("\nParameters:")
    for key, value in report["params"].items():
        print(f"  {key}: {value}")
    print("\nMetrics:")
    for key, value in report["metrics"].items():
        print(f"  {key}: {value:.3f}")
    print("\nArtifacts:")
    for path in report["artifacts"]:
        print(f"  {path}")
    print("\nLogged models (MLflow 3 stores them apart from the run's artifacts):")
    for model in report["logged_models"]:
        print(f"  {model['name']}: {model['uri']} [{model['status']}]")
    print(f"\nChild runs, best first ({len(report['child_runs'])}):")
    print(f"  {'rank':>4}  {'CV score (mean +/- 2 std)':<26} hyperparameters")
    for child in report["child_runs"]:
        score = f"{child['mean_test_score']:.3f} (+/- {2 * child['std_test_score']:.3f})"
        print(f"  {child['rank']:>4}  {score:<26} {child['name']}")
    print("\nHeld-out test metrics (the search never saw these rows):")
    for key, value in report["test_metrics"].items():
        print(f"  {key}: {value:.3f}")
    print("\nBrowse this run:")
    if report["browse"]["ui_command"]:
        print(f"  {report['browse']['ui_command']}")
    print(f"  {report['browse']['run_url']}")


# %% Main flow
def main(argv=None):
    args = parse_args(argv)
    try:
        X, y = load_data(args)
        X_train, X_test, y_train, y_test = split_data(X, y, args)
    except BadInput as e:
        print(f"autolog_mlflow.py: error: {e}", file=sys.stderr)
        return 2

    mlflow.set_tracking_uri(args.tracking_uri)
    experiment_id = mlflow.set_experiment(args.experiment_name).experiment_id
    client = MlflowClient()
    enable_autologging(args)
    with mlflow.start_run(run_name=args.run_name) as run:
        search = run_search(X_train, y_train, args)
        score_on_test_split(search, X_test, y_test)
        log_best_model(search, X_train)
        log_configuration(args)
        name_child_runs(client, run.info.run_id, experiment_id, args.param_grid)

    report = read_run_back(client, run.info.run_id)
    report["browse"] = browse_hints(args.tracking_uri, report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def hide_pickle_warning(record):
    # We log with cloudpickle on purpose (the README says why and when that is safe); MLflow
    # would repeat its caution on every run.
    return not record.getMessage().startswith("Saving scikit-learn models in the pickle")


if __name__ == "__main__":
    logging.getLogger("mlflow.sklearn").addFilter(hide_pickle_warning)
    sys.exit(main())
