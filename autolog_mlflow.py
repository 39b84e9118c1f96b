"""Track a scikit-learn hyperparameter search with MLflow autologging.

The script enables MLflow's scikit-learn autologging, runs a `GridSearchCV` (or the search named
at the top) inside one MLflow run and scores the best model on a held-out test split that the
search never sees. The search tunes a pipeline: skrub's TableVectorizer turns the table into
numbers (text, dates and gaps included; fitted once per CV fold), then the estimator named once
at the top, a random forest classifier by default. Autologging records the search's parameters,
CV metrics, artifacts, datasets and one child run per candidate; the script adds what
autologging cannot do well: descriptive child-run names, the best model logged once with its
exact pinned environment, the held-out scores, whether the best beats the runner-up, what was
done to each column of the data, and a profile of the training table.

While the search fits, its progress shows on stderr, and each candidate's child run appears in
the MLflow UI once its folds are fitted, with its CV scores. Then the script reads the run back
*from the tracking store* -- proof of what was logged, not what we think we logged -- checks
that everything expected is there (a run missing anything ends FAILED), and prints a report:
the data, params, metrics, artifacts, the logged model and how to load it, the child runs as a
leaderboard, the columns that matter most, how the run compares with earlier runs on the same
data, and how to browse it in the MLflow UI, where the run's page opens with the same summary.

Run it:

    python autolog_mlflow.py                          # default store: ./mlflow.db
    python autolog_mlflow.py --cv 3 --param-grid '{"n_estimators": [50, 100], "max_depth": [null, 5]}'
    python autolog_mlflow.py --data my.csv --target label
    python autolog_mlflow.py --tracking-uri http://127.0.0.1:5000
    python autolog_mlflow.py --json                   # the report as one JSON document
    python autolog_mlflow.py --reproduce RUN_ID       # run a past run again, compare results
    python autolog_mlflow.py --resume RUN_ID          # go on with a stopped run's search
    python autolog_mlflow.py --register-model NAME    # register the best model; champion?
    python autolog_mlflow.py --close-dead-runs        # end FAILED the runs whose process died
    mlflow ui                                         # same folder: browse and compare runs

Every run records what it takes to run it again: the configuration and command line, the
script itself, the git commit and any uncommitted diff of the code it ran, the data file's
SHA-256, and every installed package. `--reproduce` reads that record back and ends with a
verdict.

Exit codes: 0 success (and, with --reproduce, identical results), 2 bad input (nothing
logged), 3 --reproduce found different results, 1 any other failure, 130 Ctrl-C, 143
SIGTERM and 129 SIGHUP (the run ends KILLED).
"""

import signal

# Ctrl-C, SIGTERM or SIGHUP during the seconds the imports take (where a user who notices a typo
# stops the run): noted here and taken by main() as any other stop, not a traceback from deep in
# an import, nor a stop lost where it came inherited as ignored (see main()).
STOPPED_DURING_IMPORTS = []
# The stops taken (here and in main()): Windows has no SIGHUP.
STOPS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
if __name__ == "__main__":
    for _stop in STOPS:
        signal.signal(_stop, lambda signum, frame: STOPPED_DURING_IMPORTS.append(signum))

import _thread  # interrupt_main: a signal for the main thread, on every platform
import argparse
import calendar
import concurrent.futures
import contextlib
import csv
import gc
import hashlib
import importlib.util
import inspect
import itertools
import json
import logging
import os
import pickle
import platform
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from importlib.metadata import distribution, distributions, packages_distributions, version
from multiprocessing import connection
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlparse

import cloudpickle
import mlflow
import mlflow.sklearn
import mlflow.sklearn.utils
import mlflow.types.utils
import numpy as np
import pandas as pd
import rich.console
import rich.progress
import scipy.stats
import sklearn.model_selection._search  # --resume replaces a function of it: see scores_reused
import skrub
from filelock import FileLock
from matplotlib.figure import Figure  # imported by skrub and autologging anyway
from matplotlib.patches import Rectangle
from mlflow import MlflowClient
from mlflow.data import digest_utils
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import DataType
from mlflow.types.schema import AnyType, ColSpec, Schema
from mlflow.utils.credentials import get_default_host_creds, read_mlflow_creds
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE
from mlflow.utils.rest_utils import http_request, verify_rest_response
from sklearn import (
    ensemble,  # the estimator's module: see ESTIMATOR
    metrics,  # look functions up at call time: see score_on_test_split()
)
from sklearn.base import BaseEstimator, TransformerMixin, clone, is_classifier
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import ConfusionMatrixDisplay
from sklearn.model_selection import (
    GridSearchCV,
    ParameterGrid,
    ParameterSampler,
    RandomizedSearchCV,
    train_test_split,
)
from sklearn.model_selection._search import BaseSearchCV  # every search's base: see below
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.utils.multiclass import type_of_target

# --- The experiment: yours to edit ---
# The estimator, its grid, the score, the search and the preprocessing are the experiment;
# everything below follows from them (classifier or regressor, the hyperparameters --param-grid
# accepts, the held-out metrics, the model's requirements). By default the search tunes skrub's
# tabular pipeline: your table's text, dates and gaps become numbers inside the logged model.
ESTIMATOR = ensemble.RandomForestClassifier()  # any scikit-learn classifier or regressor, e.g.
# ensemble.HistGradientBoostingClassifier() or ensemble.RandomForestRegressor(); random_state: --seed
PARAM_GRID = {"n_estimators": [50, 100, 200], "max_depth": [None, 5, 10]}  # ESTIMATOR's own names
SCORING = None  # what the search maximises and runs are ranked by: None for the estimator's own
# score (accuracy for a classifier, R2 for a regressor), or a scikit-learn scorer name such as
# "balanced_accuracy" or "neg_mean_absolute_error" (higher is better, as in scikit-learn)
SEARCH, SEARCH_OPTIONS = GridSearchCV, {}  # or RandomizedSearchCV, {"n_iter": 20} (PARAM_GRID's
# values may then be scipy.stats distributions); its random_state is --seed
PREPROCESSING = None  # the steps before ESTIMATOR: None for skrub's tabular pipeline (text, dates
# and gaps to numbers), or a list of your own, e.g. [compose.make_column_transformer(...)]

# --- Configuration: the defaults of the command line, then the machinery's settings ---
EXPERIMENT_NAME = "autolog_mlflow"
RUN_NAME = None  # the parent run's name; None: after its data and target, `penguins.csv -> species`
CV_FOLDS = 5
TEST_SIZE = 0.25  # held-out share (stratified for a classifier); the search never sees it
SEED = 42  # the split, and every random_state in the pipeline
N_JOBS = -1  # parallel CV fits on all cores; results do not depend on it
MAX_TUNING_RUNS = "all"  # child runs to log: the top N candidates, or all of them
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # MLflow 3's own default; artifacts go to ./mlruns

# The machinery's: rarely touched.
MAX_CLASSES = 20  # a numeric target with more values (and over 1 per 50 rows) looks continuous
PROFILE_ROWS = 50_000  # the data profile (data_profile.html) samples larger training tables
DATA_PROFILE = "data_profile.html"
IMPORTANCE_ROWS = 2_000  # the raw columns' permutation importance samples the held-out split
IMPORTANCE_REPEATS = 3  # shuffles per column (each one a prediction of the held-out rows)
# The packages the logged model needs to load (and ESTIMATOR's own), pinned to the installed
# versions, so MLflow need not infer them (a subprocess per model, seconds) nor get them wrong.
MODEL_PACKAGES = ["mlflow", "scikit-learn", "skrub", "numpy", "pandas", "scipy", "cloudpickle"]
UI_URL = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
# MLflow 3.17's UI starts in its GenAI mode in a browser that has not chosen a mode yet; printed
# URLs end with this query to open the "Model training" view, where runs and models are.
UI_VIEW = "?workflowType=machine_learning"
RESCUE_DIR = "autolog_mlflow-rescue"  # where a failed run's model and CV results are kept
SERVER_CHECK_TIMEOUT = 5  # seconds to wait for a tracking server's /health
SHUTDOWN_TIMEOUT = 10  # seconds the process may take to exit once the run has ended
HEARTBEAT_SECONDS = 30  # how often a run tells the store it is alive: see "Runs that died"
STALE_HEARTBEATS = 4  # a run of another machine silent for this many periods has died
DASK_CONNECT_TIMEOUT = 10  # seconds to reach a Dask scheduler
MLFLOW_SETTINGS = {  # environment variables; the user's own values win
    # MLflow retries a failing HTTP call for minutes (7 tries, backoff up to 120 s): a lost
    # server fails the run in seconds instead. (A slow answer still has MLflow's 120 s.)
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    # MLflow prints run URLs on stdout, passwords included; the report gives them redacted.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    # MLflow 3.17's usage telemetry: offline or turned down, its thread deletes a variable of
    # os.environ while the run's HTTP calls read it, and the run fails ("KeyError:
    # '_MLFLOW_TELEMETRY_SESSION_ID'"). Off also means no call home from your experiments.
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
STORE_SCHEMES = {"sqlite", "postgresql", "mysql", "mssql", "http", "https", "file", "databricks"}
SERVER_URIS = ("http://", "https://")  # how a tracking server's URI starts
RECORD_FILE = "run_config.json"  # the artifact that records what it takes to run the run again
# The options that define an experiment: --reproduce takes them from the record.
RECORDED_OPTIONS = [
    "experiment_name",
    "target",
    "test_size",
    "param_grid",
    "cv",
    "seed",
    "max_tuning_runs",
]
EXIT_DIFFERENT = 3  # --reproduce: the results differ from the original run's


# --- Main flow ---
# Check the input and the store before any run exists, run the experiment in one tracked run,
# verify what the store holds, then register, compare and report.
class BadInput(Exception):
    """A problem with the user's input, found before any run exists: exit 2."""


class Unreachable(Exception):
    """A tracking server or Dask scheduler that does not answer: exit 1, before any run."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, or SIGHUP (the terminal closed): stop like Ctrl-C, so the run ends KILLED."""

    def __init__(self, signum=signal.SIGTERM):
        super().__init__(signum)
        self.signum = signal.Signals(signum)


def main(argv=None):
    args = parse_args(argv)
    for name, value in MLFLOW_SETTINGS.items():
        os.environ.setdefault(name, value)
    mlflow_warnings = watch_mlflow_logging()
    # Known, harmless noise: scikit-learn 1.9 deprecates an argument name that autologging's
    # log_loss call uses; MLflow hints that integer predictions cannot hold missing values.
    warnings.filterwarnings("ignore", message=".*`y_pred` was renamed", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
    # Ctrl-C stops the run even where the script was started with SIGINT ignored (some job
    # runners, a shell's background jobs), which Python would otherwise leave ignored.
    for stop in STOPS:
        signal.signal(stop, raise_stop)
    sys.unraisablehook = raise_dropped_stop_again

    def fail(message, code):
        print(f"autolog_mlflow.py: error: {redact(message, args.tracking_uri)}", file=sys.stderr)
        return code

    try:
        if STOPPED_DURING_IMPORTS:
            raise stop_error(STOPPED_DURING_IMPORTS[0])
        if args.close_dead_runs:  # the sweep alone: no data, no run
            return sweep_only(args)
        # The experiment to run: the options given, or a past run's record (--reproduce, --resume).
        past = args.reproduce or args.resume
        args, original = experiment_to_reproduce(args) if past else (args, None)
        data = split_data(*load_data(args), args)
        experiment = Experiment(args, data, record_of(args), original)
        client = prepare_tracking(args)
        with search_backend(args) as where:
            report = run_experiment(experiment, client, mlflow_warnings, where)
        report["registration"], unregistered = None, None
        if args.register_model is not None:
            try:
                report["registration"] = register_best_model(client, args.register_model, report)
            except RegistrationFailed as e:  # the run FINISHED: its report still comes
                unregistered = e
    except BadInput as e:
        return fail(str(e), 2)
    except Terminated as e:  # exit 143 for SIGTERM, 129 for SIGHUP, as a shell says them
        return fail(with_notes(f"stopped by {e.signum.name}", e), 128 + e.signum)
    except KeyboardInterrupt as e:
        return fail(with_notes("interrupted", e), 130)
    except Exception as e:  # noqa: BLE001 -- any other failure: one line, exit 1
        return fail(with_notes(first_line(e), e), 1)

    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    if unregistered:
        return fail(str(unregistered), 1)
    reproduction = report["reproduction"]
    return EXIT_DIFFERENT if reproduction and reproduction["verdict"] != "identical" else 0


class Data(NamedTuple):
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series
    rows_without_target: int  # left out of both splits


class Experiment(NamedTuple):
    args: argparse.Namespace  # the options
    data: Data  # the split
    record: dict  # what it takes to run it again
    original: dict | None  # with --reproduce or --resume: that run, and its record


def run_experiment(experiment, client, mlflow_warnings, where):
    """Autologging on, one run, the search fitted in it, its held-out score, the run read back."""
    args, data = experiment.args, experiment.data
    # Autologging records the search; the best model is logged once, by log_best_model (with
    # log_models, two models, each one's requirements inferred in a subprocess).
    with child_runs_named_at_creation(), every_search_logged_as_one():  # see their sections
        mlflow.sklearn.autolog(
            log_models=False,
            max_tuning_runs=None if args.max_tuning_runs == "all" else args.max_tuning_runs,
        )
    search = build_search(args)
    candidates = candidate_params(search)  # None: chosen as it goes (halving)
    basis = scores_basis(experiment.record, search)  # what the candidates' scores depend on
    resumed = args.resume and experiment.original["run"].info.run_id
    reused = saved_scores(client, experiment.original, search, candidates, basis) if resumed else {}
    with (
        # Who runs it (see "Runs that died") in the write that creates it: never a run without.
        run_ending_right(
            lambda: mlflow.start_run(
                run_name=args.run_name or f"{data_name(args)} -> {target_name(args)}",
                tags=who_runs_it() | ({RESUMES_TAG: resumed} if resumed else {}),
            )
        ) as run,
        heartbeat(run.info.run_id),
        live_child_runs(run, args, candidates, basis) as live,
        datasets_built_once() as dataset_of,
        training_table_shared(),
        data_profile(data.X_train, data.y_train, args.seed) as profile,
        fold_cache() as folds,
    ):
        closed_dead_runs = close_dead_runs(client, run.info.experiment_id)
        count = f"{len(candidates)} candidate{'s' * (len(candidates) > 1)}" if candidates else (
            "candidates")  # fmt: skip
        progress(f"run {run.info.run_id}: searching {count} with {args.cv}-fold CV on {where} ..."
                 + (f" (resuming run {resumed}: {len(reused)} reused)" if resumed else ""))  # fmt: skip
        if resumed:  # on the stopped run too, if the store lets this user write to it
            with contextlib.suppress(MlflowException):
                client.set_tag(resumed, RESUMED_BY_TAG, run.info.run_id)
        log_record(experiment.record)
        register_datasets(dataset_of, data.X_train, data.X_test, data_name(args))
        search.estimator.memory = folds  # the preprocessing fitted once per CV fold
        with scores_reused(reused, live):  # --resume: the candidates scored before, not refitted
            search.set_callbacks(SearchProgress(live, reused)).fit(data.X_train, data.y_train)
        search.best_estimator_.memory = None  # the model to log keeps no cache of the search
        with rescued_on_failure(search, data.X_train, run.info.run_id):
            # Autologging names a held-out metric after the variable that holds the rows, in
            # the outermost frame that passes them on: here, X_test (accuracy_score_X_test).
            X_test = data.X_test
            held_out_metrics, y_pred = score_on_test_split(search, X_test, data.y_test)
            mlflow_warnings.raise_if_any()
            mlflow.sklearn.autolog(disable=True)  # its work is done; what follows is ours
            logged = log_what_autologging_cannot(experiment, search, y_pred, profile, client)
            report = read_run_back(client, run.info.run_id)
            require_complete(report, args, search, [*held_out_metrics, *logged["metrics"]])
            report |= logged["report"] | {
                "compared_with_earlier_runs": compare_with_earlier_runs(client, run.info.run_id),
                "resumed": resumed and {"run_id": resumed, "reused": len(reused),
                                        "fitted": len(candidates) - len(reused)},
            }  # fmt: skip
            report["summary"] = summary_of(report)
            mlflow.set_tag(MLFLOW_RUN_NOTE, report["summary"])
            mlflow_warnings.raise_if_any()
    finished = client.get_run(run.info.run_id)
    report["status"] = finished.info.status
    report["duration_seconds"] = (finished.info.end_time - finished.info.start_time) / 1000
    report["browse"] = browse_hints(args.tracking_uri, report)
    report["closed_dead_runs"] = (experiment.original or {}).get("closed", []) + closed_dead_runs
    return report


def log_what_autologging_cannot(experiment, search, y_pred, profile, client):
    """The best model, the runner-up, the data, the explanation, the reproduction: logged, and
    returned as the metrics it logged and what goes in the report."""
    (args, data, record, original), run_id = experiment, mlflow.active_run().info.run_id
    progress("logging the best model, explaining the run, checking what the store holds ...")
    runner_up = best_vs_runner_up(search)
    if runner_up:
        mlflow.log_metric(RUNNER_UP_P_VALUE, runner_up["p_value"])
    log_best_model(search, data.X_train)
    described = describe_data(data, search.best_estimator_, args)
    log_data_description(described, *profile())
    importance, importance_rows = explain_run(search, data, y_pred, args.seed)
    reproduction = args.reproduce and log_reproduction(
        client, original, run_id, record, data.X_test
    )
    return {
        "metrics": [RUNNER_UP_P_VALUE] if runner_up else [],
        "report": {
            "data": described,
            "importance": {
                "held_out_rows": importance_rows,
                "columns": importance.to_dict(orient="records"),
            },
            "reproduction": reproduction,
            "best_vs_runner_up": runner_up,
            "f1": f1_of(search),
        },
    }


def raise_stop(signum, frame):
    """Raise the stop where the main thread is, unless it is inside SQLAlchemy: there it comes
    again 10 ms later, until the store call is done (or 2 s have passed: a server's database
    waiting on a lock). A read cut short by KeyboardInterrupt keeps its cursor open, and
    SQLite's read lock with it (SQLAlchemy 2.1 closes cursors on errors, not on stops), so the
    run could not be ended KILLED: "database is locked". Stops while one waits are that one."""
    first, since = WAITING_STOP.get("stop", (signum, time.monotonic()))
    inside = frame
    while inside is not None and not inside.f_code.co_filename.startswith(SQLALCHEMY_CODE):
        inside = inside.f_back
    if inside is not None and time.monotonic() - since < 2:
        WAITING_STOP["stop"] = (first, since)
        if not WAITING_STOP.get("sent again"):
            WAITING_STOP["sent again"] = True
            threading.Timer(0.01, send_stop_again, [first]).start()
        return
    WAITING_STOP.clear()
    raise stop_error(first)


def send_stop_again(signum):
    if WAITING_STOP.pop("sent again", False):  # still waiting
        _thread.interrupt_main(signum)


WAITING_STOP = {}  # a stop waiting for a store call to end: its signal and since when
SQLALCHEMY_CODE = os.path.join(
    importlib.util.find_spec("sqlalchemy").submodule_search_locations[0], ""
)


def stop_error(signum):
    """What a stop raises: KeyboardInterrupt for Ctrl-C, Terminated for SIGTERM and SIGHUP."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def raise_dropped_stop_again(unraisable):
    """Ctrl-C or SIGTERM landing in a callback of the garbage collector (a weakref's, a __del__) is
    dropped by Python ("Exception ignored in ...") and the run would go on: raise it again."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        stopped_by = getattr(unraisable.exc_value, "signum", signal.SIGINT)
        # The signal again, a moment later: its handler then runs in the main thread once this
        # hook has returned (raised in the hook, it would be dropped too).
        threading.Timer(0.1, _thread.interrupt_main, [stopped_by]).start()
    else:
        sys.__unraisablehook__(unraisable)


def with_notes(message, error):
    return "; ".join([message, *getattr(error, "__notes__", [])])


def first_line(error):
    """The gist of an error, on one line."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    if "Max retries exceeded" in text:  # requests' long story of a server that is gone
        cause = re.search(r"\[Errno \d+\] [^\"')]+", text)
        text = f"lost the tracking server ({cause.group(0) if cause else 'no answer'})"
    return text


# --- The experiment's data, search and held-out score: the functions behind the choices above ---
def load_data(args):
    """X, y and the rows without a target (left out): the CSV as it is, or the bundled set."""
    if args.data is None:
        X, y = load_breast_cancer(return_X_y=True, as_frame=True)
        return X, y, 0
    try:
        frame = read_csv_of_any_locale(args.data)
    except pd.errors.EmptyDataError:
        raise BadInput(f"--data {args.data} is empty: give a CSV with a header line and rows")
    except (OSError, ValueError, csv.Error) as e:
        raise BadInput(f"cannot read --data {args.data}: {e}")
    if args.target not in frame.columns:
        raise BadInput(
            f"--target {args.target!r} is not a column of {args.data}; "
            f"columns: {', '.join(map(str, frame.columns))}"
        )
    if frame.empty:
        raise BadInput(f"--data {args.data} has a header but no rows: nothing to learn from")
    labelled = frame[args.target].notna()
    if not labelled.any():
        raise BadInput(f"--target {args.target} is empty in all {len(frame)} rows of {args.data}: "
                       "choose the column that holds what to predict")  # fmt: skip
    frame = frame[labelled].reset_index(drop=True)
    return frame.drop(columns=[args.target]), frame[args.target], int((~labelled).sum())


def data_name(args):
    """What the run and its datasets are named after: the CSV's file name, or the bundled set's."""
    return Path(args.data).name if args.data else "breast-cancer"


def target_name(args):
    return args.target or "target"  # the bundled set's name for it


def read_csv_of_any_locale(path):
    """A CSV separated by commas, semicolons (with decimal commas, as many locales write them),
    tabs or pipes: the separator is told by the first lines."""
    with open(path, newline="") as file:
        head = "".join(itertools.islice(file, 100))
    try:
        separator = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
    except csv.Error:  # a single column, say
        separator = ","
    frame = pd.read_csv(path, sep=separator)
    if separator == ";" and text_columns(frame):
        with_decimal_commas = pd.read_csv(path, sep=separator, decimal=",")
        if len(text_columns(with_decimal_commas)) < len(text_columns(frame)):
            return with_decimal_commas
    return frame


def text_columns(frame):
    return [str(column) for column in frame.columns
            if not pd.api.types.is_numeric_dtype(frame[column])]  # fmt: skip


def split_data(X, y, rows_without_target, args):
    """The training split for the search, and the held-out split it never sees."""
    if not 0 < args.test_size < 1:
        raise BadInput(f"--test-size must be between 0 and 1, not {args.test_size}")
    name, distinct = target_name(args), y.nunique()
    if not CLASSIFIER and not pd.api.types.is_numeric_dtype(y):
        raise BadInput(f"--target {name} is not numeric: {type(ESTIMATOR).__name__} is a "
                       "regressor and needs numbers")  # fmt: skip
    # Integer quantities (prices, ages) look like many classes to scikit-learn's type_of_target.
    if (
        CLASSIFIER
        and pd.api.types.is_numeric_dtype(y)
        and not pd.api.types.is_bool_dtype(y)
        and (type_of_target(y) == "continuous" or distinct > max(MAX_CLASSES, len(y) // 50))
    ):
        raise BadInput(
            f"--target {name} looks continuous ({distinct} distinct numbers in {len(y)} rows): "
            f"this script trains a classifier; set ESTIMATOR to a regressor (e.g. "
            "ensemble.RandomForestRegressor()) at the top of the script to predict numbers"
        )
    if CLASSIFIER and distinct < 2:
        raise BadInput(f"--target {name} has a single class; a classifier needs at least two")
    if CLASSIFIER and (counts := y.value_counts()).min() < 2:
        single = ", ".join(map(repr, counts[counts < 2].index[:5]))
        raise BadInput(f"--target {name} has classes with a single row ({single}): a classifier "
                       "needs two or more of each; drop those rows or merge the classes")  # fmt: skip
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=args.test_size, random_state=args.seed,
            stratify=y if CLASSIFIER else None,
        )  # fmt: skip
    except ValueError as e:
        raise BadInput(f"cannot split the data with --test-size {args.test_size}: {e}")
    if CLASSIFIER:
        most, bound = int(y_train.value_counts().min()), "rows of the smallest class"
    else:
        most, bound = len(y_train), "rows"
    if not 2 <= args.cv <= most:
        raise BadInput(f"--cv must be between 2 and {most} (the {bound} in the training split), "
                       f"not {args.cv}")  # fmt: skip
    return Data(X_train, X_test, y_train, y_test, rows_without_target)


def build_search(args):
    """SEARCH over the pipeline (the table to numbers, then ESTIMATOR), seeded if it samples."""
    accepts = inspect.signature(SEARCH).parameters
    space = "param_grid" if "param_grid" in accepts else "param_distributions"
    seeded = {"random_state": args.seed} if "random_state" in accepts else {}
    return SEARCH(
        table_pipeline(args.seed), **{space: args.param_grid}, scoring=SCORING, cv=args.cv,
        n_jobs=args.n_jobs, **seeded, **SEARCH_OPTIONS,
    )  # fmt: skip


def candidate_params(search):
    """The candidates a search will fit, in its order; None where it chooses as it goes."""
    if isinstance(search, GridSearchCV):
        return list(ParameterGrid(search.param_grid))
    if isinstance(search, RandomizedSearchCV):  # the same samples: same distributions and seed
        return list(ParameterSampler(search.param_distributions, search.n_iter,
                                     random_state=search.random_state))  # fmt: skip
    return None


# What follows from ESTIMATOR and SCORING, said once: a classifier or a regressor; the score that
# ranks the candidates (SCORING, else the estimator's own); its held-out metric, which ranks
# runs on the same data and decides, with --register-model, which version is the champion
# (SCORING's, logged by the script, else autologging's of the estimator's own score).
CLASSIFIER = is_classifier(ESTIMATOR)
SCORE_NAME = SCORING or ("accuracy" if CLASSIFIER else "R2")
HELD_OUT_SCORE = f"{SCORING or ('accuracy_score' if CLASSIFIER else 'r2_score')}_X_test"


def score_on_test_split(search, X_test, y_test):
    """Score the best model on the held-out split: (the metrics logged, the predictions).
    Autologging replaces `sklearn.metrics`' functions: they are looked up at call time."""
    y_pred = search.predict(X_test)
    if CLASSIFIER:
        metrics.accuracy_score(y_test, y_pred)
        logged = ["accuracy_score_X_test", "f1_score_X_test"]
        if len(search.classes_) > 2:
            metrics.f1_score(y_test, y_pred, average="macro")
        else:
            metrics.f1_score(y_test, y_pred, pos_label=search.classes_[1])
            if hasattr(search, "predict_proba"):
                # Autologging cannot tie a column of predict_proba to the model: log it here.
                y_score = search.predict_proba(X_test)[:, 1]
                mlflow.log_metric("roc_auc_score_X_test", metrics.roc_auc_score(y_test, y_score))
                logged.append("roc_auc_score_X_test")
    else:
        metrics.r2_score(y_test, y_pred)
        metrics.mean_absolute_error(y_test, y_pred)
        logged = ["r2_score_X_test", "mean_absolute_error_X_test"]
    if SCORING:
        mlflow.log_metric(HELD_OUT_SCORE, search.score(X_test, y_test))
    return ([*logged, HELD_OUT_SCORE] if HELD_OUT_SCORE not in logged else logged), y_pred


def f1_of(search):
    """What the held-out F1 (and ROC AUC) measure; None for a regressor."""
    if not CLASSIFIER:
        return None
    classes = search.classes_
    if len(classes) == 2:
        return f"F1 and ROC AUC take {classes[1]} as the positive class, of {classes[0]} and {classes[1]}"
    return f"F1 is macro-averaged over the {len(classes)} classes"


# --- Command line ---
class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class DefaultsAsTyped(argparse.HelpFormatter):
    """--help shows each default as one would type it (the grid as JSON), and no 'None'."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS:
            return action.help
        if "%(default)" in action.help:  # the help says it in its own words
            return action.help
        shown = json.dumps(space_as_json(default)) if isinstance(default, dict) else str(default)
        return f"{action.help} (default: {shown.replace('%', '%%')})"


def parse_args(argv=None):
    parser = OneLineErrorParser(
        prog="autolog_mlflow.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=DefaultsAsTyped,
    )
    add = parser.add_argument
    add(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else %(default)s)",
    )
    add("--experiment-name", default=EXPERIMENT_NAME, help="MLflow experiment")
    add("--run-name", default=RUN_NAME, help="name of the parent run (default: DATA -> TARGET)")
    add(
        "--data",
        help="CSV file (separated by commas, semicolons, tabs or pipes) to use instead of "
        "scikit-learn's breast-cancer data set",
    )
    add("--target", help="the CSV column to predict (required with --data)")
    add("--test-size", type=float, default=TEST_SIZE, help="held-out share, between 0 and 1")
    add(
        "--param-grid",
        type=parse_param_grid,
        default=PARAM_GRID,
        help=f"JSON object of {type(ESTIMATOR).__name__} hyperparameters to lists of values",
    )
    add("--cv", type=int, default=CV_FOLDS, help="cross-validation folds")
    add("--n-jobs", type=parse_n_jobs, default=N_JOBS, help="parallel fits; -1 = all cores")
    add(
        "--seed",
        type=parse_seed,
        default=SEED,
        help=f"seed for the split and forests, 0-{MAX_SEED}",
    )
    add(
        "--max-tuning-runs",
        type=parse_max_tuning_runs,
        default=MAX_TUNING_RUNS,
        help="child runs to log: the best N candidates, or 'all'",
    )
    add(
        "--dask-scheduler",
        help="run the search's fits on this Dask scheduler (tcp://HOST:PORT), or 'local' for a "
        "LocalCluster on 127.0.0.1 (needs requirements-dask.txt)",
    )
    add("--json", action="store_true", help="print the report as one JSON document")
    add(
        "--register-model",
        metavar="NAME",
        help="register the best model as a new version of NAME in the model registry; it "
        f"becomes NAME@champion if it beats the champion's held-out {HELD_OUT_SCORE}",
    )
    add(
        "--reproduce",
        metavar="RUN_ID",
        help="run that past run's experiment again, from its record, and compare the results "
        f"(exit {EXIT_DIFFERENT} if they differ)",
    )
    add(
        "--resume",
        metavar="RUN_ID",
        help="go on with that stopped run's search (KILLED, FAILED, or died): a new run that "
        "reuses every candidate it scored and fits the others",
    )
    add(
        "--close-dead-runs",
        action="store_true",
        help="only end FAILED the experiment's runs whose process died (killed, out of memory, "
        "power lost) and say which; every run does this before it starts",
    )
    args = parser.parse_args(argv)
    if args.close_dead_runs and (args.reproduce or args.resume or args.register_model):
        parser.error("--close-dead-runs starts no run: give it without --reproduce, --resume "
                     "and --register-model")  # fmt: skip
    if args.reproduce and args.resume:
        parser.error("--reproduce runs a past run again, --resume goes on with one: give one")
    if args.reproduce or args.resume:  # the options that define the experiment: the record's
        unset = object()  # what argparse leaves alone in a given namespace: not on the line
        given = parser.parse_args(
            argv, argparse.Namespace(**dict.fromkeys(RECORDED_OPTIONS, unset))
        )
        fixed = [name for name in RECORDED_OPTIONS if getattr(given, name) is not unset]
        args.given = fixed  # --resume: each must be the record's, checked once it is read
        if fixed and args.reproduce:
            parser.error(
                f"--{fixed[0].replace('_', '-')} comes from the record of run {args.reproduce}; "
                "with --reproduce give only --tracking-uri, --n-jobs, --dask-scheduler, "
                "--run-name, --json, --register-model, and --data if the same file has moved"
            )
    elif (args.data is None) != (args.target is None):
        parser.error("--data and --target go together: give both, or neither")
    return args


EXAMPLE_GRID = '\'{"n_estimators": [50, 100], "max_depth": [null, 5]}\''


def parse_param_grid(text):
    """A JSON grid of ESTIMATOR's hyperparameters, checked with scikit-learn's own rules."""
    try:
        grid = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}); example: {EXAMPLE_GRID}")
    if not isinstance(grid, dict) or not grid:
        raise argparse.ArgumentTypeError(f"give a non-empty JSON object, e.g. {EXAMPLE_GRID}")
    name, valid = type(ESTIMATOR).__name__, ESTIMATOR.get_params()
    for key, values in grid.items():
        if key not in valid:
            raise argparse.ArgumentTypeError(
                f"{name} has no hyperparameter {key!r}; valid ones: {', '.join(sorted(valid))}"
            )
        if not isinstance(values, list) or not values:
            raise argparse.ArgumentTypeError(
                f"{key!r} needs a non-empty list of values, e.g. {EXAMPLE_GRID}"
            )
        for value in values:
            try:  # scikit-learn's own check, which would otherwise fail inside the run
                clone(ESTIMATOR).set_params(**{key: value})._validate_params()
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e).replace("\n", " "))
    return grid


def parse_integer(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"give an integer, not {text!r}")


def parse_n_jobs(text):
    n_jobs = parse_integer(text)
    if n_jobs == 0:
        raise argparse.ArgumentTypeError(
            "0 runs no fit: give the number of parallel fits, or -1 for all cores"
        )
    return n_jobs


MAX_SEED = 2**32 - 1  # the largest seed numpy's random generators take


def parse_seed(text):
    seed = parse_integer(text)
    if not 0 <= seed <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is from 0 to {MAX_SEED} (2**32 - 1), not {seed}")
    return seed


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


# --- The tracking store, checked before any run exists (a new kind of store starts here) ---
def redact(text, uri):
    """`text` with the password of `uri` (if it has one) replaced by ***."""
    password = urlparse(uri).password
    if password:
        text = text.replace(password, "***").replace(unquote(password), "***")
    return text


def check_uri_form(uri):
    """Catch malformed URIs that MLflow would answer with a misleading error."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    hint = "e.g. sqlite:///mlflow.db or http://127.0.0.1:5000"
    if scheme and scheme not in STORE_SCHEMES:
        if parsed.path.isdigit():  # host:port, no scheme
            hint = f"did you mean http://{uri}?"
        raise BadInput(f"--tracking-uri {redact(uri, uri)} has an unknown scheme; {hint}")
    if scheme == "sqlite" and (parsed.netloc or parsed.path in ("", "/")):
        raise BadInput(
            f"--tracking-uri {uri} is not a SQLite file URI: use three slashes before a "
            "relative path (sqlite:///mlflow.db) and four before an absolute one"
        )
    if scheme in ("http", "https") and not parsed.hostname:
        raise BadInput(f"--tracking-uri {redact(uri, uri)} names no host; {hint}")


# MLflow's login (`mlflow server --app-name basic-auth`): who the server says the user is, and
# what the user may do there, resolved as for the user's own requests (tools/TEAM-SERVER.md).
WHO_AM_I = "/api/2.0/mlflow/users/current"
PERMISSION = "/api/3.0/mlflow/users/permissions/get"
MAY_WRITE = ("EDIT", "MANAGE")


def check_store(uri):
    """Check the URI's form, and that a tracking server answers; returns the user its login
    knows ({"username", "is_admin"}), or None. Credentials are MLflow's (MLFLOW_TRACKING_USERNAME
    and MLFLOW_TRACKING_PASSWORD, or ~/.mlflow/credentials): to the server only, never to the
    output or the run."""
    check_uri_form(uri)
    if not uri.startswith(SERVER_URIS):
        return None
    parsed = urlparse(uri)
    port = f":{parsed.port}" if parsed.port else ""
    health = f"{parsed.scheme}://{parsed.hostname}{port}{parsed.path.rstrip('/')}/health"
    try:
        urllib.request.urlopen(health, timeout=SERVER_CHECK_TIMEOUT).close()
    except urllib.error.HTTPError as e:
        # Under 500 it answers: authentication and the rest are MLflow's to report. Over, a
        # proxy or gateway answers for it: 502 Bad Gateway, 503 with the server down.
        if e.code >= 500:
            raise Unreachable(f"the tracking server {redact(uri, uri)} does not work: {health} "
                              f"answers {e.code} {e.reason}")  # fmt: skip
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):
            reason = f"no answer within {SERVER_CHECK_TIMEOUT} s"
        raise Unreachable(f"cannot reach the tracking server {redact(uri, uri)}: {reason}")
    response = http_request(get_default_host_creds(uri), WHO_AM_I, "GET", max_retries=0,
                            timeout=SERVER_CHECK_TIMEOUT)  # fmt: skip
    if response.status_code == 401:
        creds = read_mlflow_creds()
        if not (creds.username and creds.password):
            raise BadInput(
                f"the server at {redact(uri, uri)} needs a login: set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD"
            )
        raise BadInput(f"the server at {redact(uri, uri)} refused the login for {creds.username}")
    return verify_rest_response(response, WHO_AM_I).json()["user"] if response.ok else None


def user_may(uri, user, resource_type, resource_id, permissions):
    """Whether `user` holds one of `permissions` on the resource (an admin holds all)."""
    if user["is_admin"]:
        return True
    asked = {"username": user["username"], "resource_type": resource_type,
             "resource_id": resource_id}  # fmt: skip
    response = http_request(get_default_host_creds(uri), PERMISSION, "GET", params=asked,
                            max_retries=0, timeout=SERVER_CHECK_TIMEOUT)  # fmt: skip
    return verify_rest_response(response, PERMISSION).json()["permission"] in permissions


def write_refused(user, experiment_name, uri):
    return BadInput(
        f"{user['username']} may not write to experiment {experiment_name} on {redact(uri, uri)}: "
        "ask its owner for EDIT"
    )


def sqlite_path(uri):
    return Path(urlparse(uri).path[1:]) if uri.startswith("sqlite:///") else None


def require_writable(folder, what):
    """Fail fast where MLflow would retry for minutes: try to write in `folder`."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise BadInput(
            f"cannot write the {what} in {folder} ({e.strerror}); run from a writable folder "
            "or choose another --tracking-uri"
        )


@contextlib.contextmanager
def stops_deferred():
    """Ctrl-C, SIGTERM and SIGHUP take effect when the block ends, not inside it.

    MLflow creates or migrates a store's tables in dozens of statements, not in one
    transaction: stopped in between, a SQLite store is broken for good (every later run fails
    with "table spans already exists"). So the stop waits the second or two it takes.
    """
    stops = []
    previous = {stop: signal.signal(stop, lambda signum, frame: stops.append(signum))
                for stop in STOPS}  # fmt: skip
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
    if stops:  # the first one, now
        raise stop_error(stops[0])


# Why a store refuses to create an experiment when the user can put it right: the remedy.
EXPERIMENT_REFUSALS = {
    "INVALID_PARAMETER_VALUE": "choose another --experiment-name",  # e.g. empty, too long
    "PERMISSION_DENIED": "ask for permission to create experiments, or give an existing "
    "--experiment-name",
}


def open_experiment(client, name):
    """The experiment of the run `mlflow run` created, else `name`'s, created if need be."""
    if run_id := os.environ.get("MLFLOW_RUN_ID"):
        return client.get_experiment(client.get_run(run_id).info.experiment_id)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment = client.get_experiment(client.create_experiment(name))
        except MlflowException as e:
            experiment = client.get_experiment_by_name(name)  # made by another process meanwhile
            if experiment is None and (remedy := EXPERIMENT_REFUSALS.get(e.error_code)):
                raise BadInput(f"cannot create experiment {name!r} ({first_line(e)}); {remedy}")
            if experiment is None:
                raise RuntimeError(f"cannot create experiment {name!r}: {first_line(e)}") from e
    if experiment.lifecycle_stage == "deleted":
        raise BadInput(
            f"experiment {name!r} is deleted; restore it (mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}) or choose another --experiment-name"
        )
    return experiment


def prepare_tracking(args):
    """Check the store and open the experiment, so that bad input never leaves a run behind."""
    uri = args.tracking_uri
    user = check_store(uri)
    if path := sqlite_path(uri):
        require_writable(path.parent, "tracking store")
    mlflow.set_tracking_uri(uri)
    # Concurrent first runs on a fresh SQLite file race in MLflow's schema migrations (and in
    # creating the experiment): a lock lets one process at a time. filelock locks with fcntl on
    # POSIX and msvcrt on Windows, on a file beside the database: locking the database file
    # itself would clash with SQLite's own locks on Windows, where locks are mandatory.
    with FileLock(f"{path}.lock") if path else contextlib.nullcontext(), stops_deferred():
        client = MlflowClient()  # its first call creates or migrates the store's tables
        try:
            experiment = open_experiment(client, args.experiment_name)
        except MlflowException as e:
            if user is None or e.error_code != "PERMISSION_DENIED":
                raise
            raise write_refused(user, args.experiment_name, uri)
    if user and not user_may(uri, user, "experiment", experiment.experiment_id, MAY_WRITE):
        raise write_refused(user, experiment.name, uri)
    location = urlparse(experiment.artifact_location)
    if location.scheme in ("", "file"):
        require_writable(location.path, "run artifacts")
    if args.register_model is not None:
        check_registry(client, args.register_model, uri, user)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return client


def check_registry(client, name, uri, user):
    """A name the registry refuses, a model the user may not change, or a store without a usable
    registry: bad input, now. Registering moves the model's aliases, and MLflow's login lets
    only MANAGE remove one (the challenger, when the new version becomes the champion)."""
    try:
        client.get_registered_model(name)
        allowed = user is None or user_may(uri, user, "registered_model", name, ["MANAGE"])
    except MlflowException as e:
        if e.error_code == "INVALID_PARAMETER_VALUE":
            raise BadInput(f"--register-model {name!r}: {first_line(e)}")
        refused = e.error_code == "PERMISSION_DENIED" and user is not None
        if e.error_code != "RESOURCE_DOES_NOT_EXIST" and not refused:
            raise BadInput(
                f"the tracking store has no usable model registry ({first_line(e)}); "
                "drop --register-model or choose another --tracking-uri"
            )
        allowed = not refused  # a new name: created at registration, and managed by its creator
    if not allowed:
        raise BadInput(
            f"{user['username']} may not register versions of model {name} on "
            f"{redact(uri, uri)}: ask its owner for MANAGE"
        )


# --- Where the search's fits run: local processes, or a Dask cluster ---
@contextlib.contextmanager
def search_backend(args):
    """Local processes (joblib's default), or the workers of a Dask cluster."""
    if args.dask_scheduler is None:
        yield "local processes"
        return
    try:  # optional: imported only when asked for
        import joblib
        from distributed import Client as DaskClient
        from distributed import LocalCluster
    except ImportError:
        raise BadInput("--dask-scheduler needs Dask: pip install -r requirements-dask.txt")
    with contextlib.ExitStack() as stack:
        address = args.dask_scheduler
        if address == "local":
            address = stack.enter_context(
                LocalCluster(host="127.0.0.1", threads_per_worker=1, dashboard_address=None)
            ).scheduler_address
        try:
            client = stack.enter_context(DaskClient(address, timeout=DASK_CONNECT_TIMEOUT))
        except OSError as e:
            raise Unreachable(f"cannot reach the Dask scheduler {address}: {e}")
        stack.enter_context(joblib.parallel_config(dask_for_the_search_only(client)))
        yield f"the Dask cluster at {address}"


def dask_for_the_search_only(client):
    """joblib's Dask backend, for the search's fits only. As it comes, it sends every joblib call
    to the cluster whatever its n_jobs, and so do the workers with the calls nested in a fit:
    each of skrub's columns and each forest's trees a task, many times slower
    (benchmarks/README.md). Here a call that leaves n_jobs unset (the estimators' own) runs in
    place, as in a local process, and a worker runs the fits it is sent as a plain loop."""
    # joblib 1.6.0's private module, not its API: joblib is pinned in the locks, and
    # tests/test_scaling_out.py counts the tasks (12 for 4 candidates x 3 folds), so an upgrade
    # that changes what is relied on here fails it.
    from joblib._dask import Batch, DaskDistributedBackend

    class BatchAsAPlainLoop(Batch):
        def __call__(self, tasks=None):  # joblib's Batch sets the Dask backend around them
            return [function(*args, **kwargs) for function, args, kwargs in tasks]

    class SearchOnDask(DaskDistributedBackend):
        default_n_jobs = 0  # what joblib gives a call that leaves n_jobs unset

        def effective_n_jobs(self, n_jobs):
            return 1 if n_jobs == 0 else super().effective_n_jobs(n_jobs)

        def compute_batch_size(self):  # a task a fit, never a batch: a fit is work enough
            return 1

        async def _to_func_args(self, func):
            _, tasks = await super()._to_func_args(func)
            return BatchAsAPlainLoop(tasks), tasks

    return SearchOnDask(client=client)


# --- The pipeline the search tunes, and what it did to the data (skrub) ---
class TablePipeline(Pipeline):
    """skrub's TableVectorizer, then the estimator, which keeps its own hyperparameter names.

    In a plain Pipeline they carry the step's name (`randomforestclassifier__max_depth`): on the
    command line, in `best_*` params, child-run params and names, cv_results.csv. Here a name
    without `__` goes to the estimator, and get_params lists the estimator's under their own.
    With a FoldCache as `memory`, the steps before the estimator run once per CV fold.
    """

    def get_params(self, deep=True):
        params = super().get_params(deep)
        if deep:
            prefix = f"{self.steps[-1][0]}__"
            for key in [key for key in params if key.startswith(prefix)]:
                params[key.removeprefix(prefix)] = params.pop(key)
        return params

    def set_params(self, **params):
        estimator, own = self.steps[-1][0], self.steps[-1][1].get_params(deep=False)
        return super().set_params(
            **{f"{estimator}__{key}" if key in own else key: value for key, value in params.items()}
        )

    def _iter(self, with_final=True, filter_passthrough=True):
        # scikit-learn 1.9.1 caches a step's fit (`memory`), not its transform: predict, score,
        # predict_proba, decision_function... take the steps before the estimator from this
        # private generator, so here each of them transforms through the FoldCache. (_fit asks
        # with filter_passthrough=False, for steps to fit.) tests/test_fold_cache.py counts the
        # transforms of a search: it fails if an upgrade bypasses this.
        for index, name, step in super()._iter(with_final, filter_passthrough):
            if isinstance(self.memory, FoldCache) and not with_final and filter_passthrough:
                step = CachedTransform(step, self.memory.cache(transformed))
            yield index, name, step


class FoldCache:
    """The preprocessing fitted once per CV fold, not once per candidate and fold.

    Only the estimator's hyperparameters vary from one candidate to the next, so the steps
    before it see the same rows in every candidate of a fold. On disk, for the search's worker
    processes (or each Dask worker) to share, keyed by a step's parameters and its rows: each
    step's fit and output (scikit-learn's pipeline caching, through `cache`) and its output on
    the scored rows (TablePipeline._iter). The results are those of fitting again: same CV
    scores, same model.

    It has joblib.Memory's interface, which the pipeline asks for, not its implementation: joblib
    hashes and loads in pure Python, a quarter of a search of 80 candidates, where C's pickle takes
    milliseconds (benchmarks/README.md). A write that fails (a full disk, a Dask worker on a machine
    without the folder) only loses the reuse.
    """

    def __init__(self, location):
        self.location = location

    def __repr__(self):  # in the run's `estimator` param: no temporary path
        return "FoldCache()"

    def cache(self, function, ignore=()):
        """`function`, whose result is read from the cache when it was called with the same
        arguments (but those named in `ignore`) before."""

        def cached(*args, **kwargs):
            named = {name: value for name, value in kwargs.items() if name not in ignore}
            what = (function.__module__, function.__qualname__, args, named)
            key = hashlib.sha256(pickle.dumps(what, pickle.HIGHEST_PROTOCOL)).hexdigest()
            path = Path(self.location, f"{key}.pickle")
            with contextlib.suppress(FileNotFoundError), path.open("rb") as file:
                return pickle.load(file)
            result = function(*args, **kwargs)
            with contextlib.suppress(OSError):  # a full disk: the same result, not reused
                with tempfile.NamedTemporaryFile(dir=self.location, delete=False) as file:
                    pickle.dump(result, file, pickle.HIGHEST_PROTOCOL)
                os.replace(file.name, path)  # whole or not at all, for the other processes
            return result

        return cached


@contextlib.contextmanager
def fold_cache():
    """A FoldCache for one search, removed with its folder when the search is over."""
    with tempfile.TemporaryDirectory(prefix="autolog_mlflow-folds-") as folder:
        yield FoldCache(folder)


class CachedTransform:
    """A fitted step whose transform is looked up in a FoldCache before it is computed."""

    def __init__(self, step, cached_transformed):
        self.step, self.cached_transformed = step, cached_transformed

    def transform(self, X, **params):
        return self.cached_transformed(self.step, X, params)

    def __getattr__(self, name):  # anything else: the step's own
        return getattr(self.step, name)


def transformed(step, X, params):
    return step.transform(X, **params)


def table_pipeline(seed, folds=None):
    """skrub's pipeline for ESTIMATOR (numbers as they are, text encoded, dates split into
    numbers), or PREPROCESSING then ESTIMATOR, with every random_state in it set to the seed;
    its preprocessing fitted once per CV fold with a FoldCache as `folds`."""
    steps = make_pipeline(*clone(PREPROCESSING), clone(ESTIMATOR)).steps if PREPROCESSING else (
        skrub.tabular_pipeline(clone(ESTIMATOR)).steps)  # fmt: skip
    pipeline = TablePipeline(steps, memory=folds)
    seeded = [key for key in pipeline.get_params() if key.split("__")[-1] == "random_state"]
    return pipeline.set_params(**dict.fromkeys(seeded, seed))


def table_vectorizer(pipeline):
    """The pipeline's skrub TableVectorizer, its first step; None with your PREPROCESSING."""
    first = pipeline.steps[0][1]
    return first if isinstance(first, skrub.TableVectorizer) else None


def model_of(search):
    """The model to log: the search's best pipeline, behind a first step that refuses values
    its columns cannot read (ReadableValues)."""
    pipeline = search.best_estimator_
    vectorizer = table_vectorizer(pipeline)
    if vectorizer is None:  # your own preprocessing: as it is
        return pipeline
    kinds = vectorizer.kind_to_columns_
    dates = {
        column: step.format_
        for column in kinds["datetime"]
        for step in vectorizer.all_processing_steps_[column]
        if isinstance(step, skrub.ToDatetime)
    }
    guard = ReadableValues(numbers=list(kinds["numeric"]), dates=dates)
    return TablePipeline([("readable_values", guard), *pipeline.steps])


class ReadableValues(TransformerMixin, BaseEstimator):
    """Refuses a value its column cannot read: text in a column of numbers, a date in another
    format than the column's, with an error naming the column and the value (skrub's
    TableVectorizer would read either as a gap, without a word). Passes the rows on as they
    came: whole numbers, decimals, nullable integers, text and gaps (empty text too)."""

    def __init__(self, numbers=(), dates=None):
        self.numbers, self.dates = numbers, dates

    def fit(self, X, y=None):
        return self

    def __sklearn_is_fitted__(self):  # nothing to learn: its columns come from the vectorizer
        return True

    def transform(self, X):
        to_read = [(column, "a number", lambda text: pd.to_numeric(text, errors="coerce"))
                   for column in self.numbers]  # fmt: skip
        to_read += [
            (column, f"a date like {pd.Timestamp('2026-01-31').strftime(date_format)}",
             lambda text, f=date_format: pd.to_datetime(text, format=f, errors="coerce"))
            for column, date_format in (self.dates or {}).items() if date_format
        ]  # fmt: skip
        for column, what, read in to_read:
            if column not in X or X[column].dtype.kind in "biufmM":  # typed: nothing to read
                continue
            text = X[column].astype("string").str.strip()
            unreadable = text[text.fillna("").ne("") & read(text).isna()]
            if len(unreadable):
                more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
                # An MlflowException: `mlflow models serve` answers 400 with this message.
                raise MlflowException.invalid_parameter_value(
                    f"column {column!r}: cannot read {unreadable.iloc[0]!r}{more} as {what}; "
                    f"send {what}, or leave it empty for a missing value"
                )
        return X


def describe_data(data, pipeline, args):
    """What the search learned from: rows, columns, target, gaps, each column's treatment."""
    X = pd.concat([data.X_train, data.X_test])
    y = pd.concat([data.y_train, data.y_test])
    vectorizer = table_vectorizer(pipeline)
    numeric = [str(column) for column in X.columns if str(column) not in text_columns(X)]
    described = vectorizer is not None  # column by column: said here
    return {
        "source": args.data or "scikit-learn's breast-cancer data set",
        "rows": len(X),
        "train_rows": len(data.X_train),
        "test_rows": len(data.X_test),
        "rows_without_target": data.rows_without_target,
        "feature_columns": X.shape[1],
        "target": {"name": target_name(args)} | (
            {"classes": {str(label): int(count) for label, count in y.value_counts().items()}}
            if CLASSIFIER
            else {"min": float(y.min()), "mean": float(y.mean()), "max": float(y.max())}
        ),
        "missing_values": {str(c): int(n) for c, n in X.isna().sum().items() if n},
        "numeric_columns": numeric,
        "treatment": {column: treatment(X[column], vectorizer)
                      for column in text_columns(X) if described},
        "treatment_not_described": None if described else (
            f"your own preprocessing ({' -> '.join(name for name, _ in pipeline.steps[:-1])}) "
            "turned the columns into numbers: not described column by column"),
    }  # fmt: skip


# Text encoders as the report names them (dates and numbers are said in treatment()).
ENCODERS = {"OrdinalEncoder": "ordinal", "OneHotEncoder": "one-hot", "ToCategorical": "categories",
            "StringEncoder": "string encoder"}  # fmt: skip


def treatment(column, vectorizer):
    """How the TableVectorizer turned a column into numbers, e.g. `text, 3 values -> ordinal`."""
    outputs = vectorizer.input_to_outputs_.get(column.name)
    if outputs is None:
        return "dropped: no information in it (empty, or a single value)"
    kind = next(kind for kind, names in vectorizer.kind_to_columns_.items() if column.name in names)
    encoder = type(vectorizer.transformers_[column.name]).__name__
    if kind == "datetime":
        return f"date -> {', '.join(outputs)}"
    if kind == "numeric":
        return "numbers written as text -> numbers"
    encoded = ENCODERS.get(encoder, encoder)
    columns = f" ({len(outputs)} columns)" if len(outputs) > 1 else ""
    return f"text, {column.nunique()} values -> {encoded}{columns}"


@contextlib.contextmanager
def data_profile(X_train, y_train, seed):
    """skrub's TableReport of the training table, made in a thread while the search fits (its fits
    run in other processes); yields a function that returns the HTML and what it covers."""
    table = X_train.assign(**{str(y_train.name or "target"): y_train})
    sampled = len(table) > PROFILE_ROWS
    if sampled:
        table = table.sample(PROFILE_ROWS, random_state=seed)
    covers = f"a sample of {PROFILE_ROWS} of the {len(X_train)} training rows" if sampled else (
        f"all {len(X_train)} training rows")  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        html = pool.submit(lambda: skrub.TableReport(table, verbose=0).html())
        yield lambda: (html.result(), covers)


# --- Live progress of the search, on stderr (scikit-learn 1.9's experimental callback API) ---
# A search with callbacks set (`set_callbacks`) calls them around each task of its fit, in
# whichever process runs the task: here, in joblib's or Dask's workers. scikit-learn's own
# ProgressBar draws nested bars with a percentage but no count of fits, on rich's default
# console (stdout, where the report goes), leaves a log file nothing until the end, and warns
# at every fit that the forest takes no callbacks. So this callback counts the fits itself
# (it is not propagated to the forests) and draws one bar on stderr, or writes plain lines.
class SearchProgress:
    """Fits done of the total (every CV fit, and the refit), time elapsed and left, on stderr: a
    live bar on a terminal, elsewhere (CI logs, pipes) a line at each further tenth. Copies in
    worker processes report each fit over a local socket. A candidate whose folds are all fitted
    goes to `live_child_runs` (see "Child runs as candidates finish")."""

    in_worker, address, authkey = False, None, None  # until the fit begins

    def __init__(self, live_child_runs=None, reused=None):
        self.live_child_runs = live_child_runs
        self.reused_fits = sum(len(folds) for _, folds in (reused or {}).values())

    def setup(self, estimator, context):  # in this process, as the search's fit begins
        self.total, self.done, self.tenths_shown = context.max_subtasks - self.reused_fits, 0, 0
        self.folds, self.results = None, {}  # candidate -> {fold: (score, fit and score times)}
        self.spans = {}  # candidate -> (when its first fold began, its last ended), in ms
        self.start, self.lock, self.began = time.monotonic(), threading.Lock(), {}
        console = rich.console.Console(stderr=True)
        self.bar = live_bar(console) if console.is_interactive else None
        self.authkey = os.urandom(32)
        self.listener = connection.Listener(authkey=self.authkey, backlog=128)
        self.address = self.listener.address
        threading.Thread(target=self.count_reported_fits, daemon=True).start()

    def __getstate__(self):  # what a worker's copy gets: where to report, not the display
        return {"in_worker": True, "address": self.address, "authkey": self.authkey, "began": {}}

    def on_fit_task_begin(self, estimator, context):
        if context.task_name == "candidate-split-evaluation":  # a CV fit begins
            self.began[context.task_id] = round(time.time() * 1000)
        if context.max_subtasks and context.parent is not None:  # the search: its fits take
            self.total += context.max_subtasks - 1  # the place of one task in the total
            self.folds = estimator.n_splits_
            if self.bar:
                self.bar.update(self.bar.task_ids[0], total=self.total)
                self.bar.start()

    def on_fit_task_end(self, estimator, context):
        # A CV fit's task is candidate x folds + fold (scikit-learn 1.9's _search.py).
        cv_fit = context.task_id if context.task_name == "candidate-split-evaluation" else None
        if context.parent is None:  # the whole fit succeeded: every fit is done
            self.fit_done(all_of_them=True)
            # For autologging's child runs (ChildRunsQueued): their times, those made already.
            estimator.candidate_spans_ = dict(self.spans)
            if self.live_child_runs:
                estimator.child_runs_made_ = self.live_child_runs.made()
        elif context.max_subtasks == 0 and not self.in_worker:
            self.fit_done(cv_fit, self.began.pop(cv_fit, None), cv_fit_result(cv_fit))
        elif context.max_subtasks == 0:  # a copy in a worker: tell this process
            # Progress must never fail a fit: a worker that cannot reach this process (a Dask
            # worker on another machine) stays silent, and the count jumps at the end.
            with (
                contextlib.suppress(Exception),
                connection.Client(self.address, authkey=self.authkey) as c,
            ):
                c.send((cv_fit, self.began.pop(cv_fit, None), cv_fit_result(cv_fit)))
                c.recv()

    def teardown(self, estimator, context):
        # After a setup cut short (Ctrl-C, an error), what it made: scikit-learn runs the
        # teardown in a `finally`, and an error here would take the place of the setup's.
        if getattr(self, "listener", None):
            self.listener.close()
        if getattr(self, "bar", None):
            self.bar.stop()

    def count_reported_fits(self):
        while True:
            try:
                connection = self.listener.accept()
            except OSError:  # closed: the fit is over
                return
            except Exception:  # noqa: BLE001, S112 -- a connection that did not authenticate
                continue
            with connection, contextlib.suppress(Exception):  # one that did not report a fit
                cv_fit, began, result = connection.recv()
                self.fit_done(cv_fit if isinstance(cv_fit, int) else None, began, result)
                # The worker waits for this, so every fit is counted before the search ends.
                connection.send("counted")

    def fit_done(self, cv_fit=None, began=None, result=None, all_of_them=False):
        with self.lock:
            self.done = self.total if all_of_them else min(self.done + 1, self.total)
            if cv_fit is not None and self.folds:
                self.fold_done(cv_fit, began, result)
            if self.bar:  # redrawn at once, and every second for the clock
                self.bar.update(self.bar.task_ids[0], completed=self.done, total=self.total)
                self.bar.refresh()
            elif self.done * 10 // self.total > self.tenths_shown:
                self.tenths_shown = self.done * 10 // self.total
                progress(progress_line(self.done, self.total, time.monotonic() - self.start))

    def fold_done(self, cv_fit, began, result):
        """A CV fit counted for its candidate; one whose folds are all fitted gets its child run."""
        (candidate, fold), ended = divmod(cv_fit, self.folds), round(time.time() * 1000)
        first, _ = self.spans.get(candidate, (began or ended, None))
        self.spans[candidate] = min(first, began or ended), ended
        self.results.setdefault(candidate, {})[fold] = result
        if len(self.results[candidate]) == self.folds and self.live_child_runs:
            results = self.results.pop(candidate)
            self.live_child_runs.candidate_done(candidate, self.spans[candidate][0], results)


# scikit-learn 1.9.1 tells a callback that a CV fit ended, not its score: on_fit_task_end is
# called in a `finally` of model_selection._validation._fit_and_score, after the fold is scored,
# with the estimator and the training rows only. The score and times are that frame's locals
# `test_scores`, `fit_time` and `score_time` (its `result` says whether the fit failed); read
# there, each candidate's child run gets its CV scores as soon as its folds are done (the very
# numbers of cv_results_). Not found (a failed fit, an upgrade that moved them): the scores come
# at the end. tests/test_mlflow_internals.py fails if an upgrade moves them.
def cv_fit_result(cv_fit):
    """(test score, fit and score seconds) of the CV fit whose end is being reported, or None."""
    frame = sys._getframe(1) if cv_fit is not None else None
    while frame is not None and frame.f_code.co_name != "_fit_and_score":
        frame = frame.f_back
    if frame is None or frame.f_locals.get("result", {}).get("fit_error") is not None:
        return None  # not found, or a fit that failed (error_score stands for its score)
    score, *times = (frame.f_locals.get(name) for name in ("test_scores", "fit_time", "score_time"))
    if not isinstance(score, float | np.floating) or not all(isinstance(t, float) for t in times):
        return None  # several scorers (a dict)
    return float(score), *times


def live_bar(console):
    bar = rich.progress.Progress(
        rich.progress.TextColumn("search"),
        rich.progress.BarColumn(),
        rich.progress.MofNCompleteColumn(),
        rich.progress.TextColumn("fits"),
        rich.progress.TimeElapsedColumn(),
        rich.progress.TextColumn("elapsed,"),
        rich.progress.TimeRemainingColumn(),
        rich.progress.TextColumn("left"),
        console=console,
        refresh_per_second=1,  # rich's 10 a second slowed a search on one core
    )
    bar.add_task("search", total=None)  # started once the search knows its total
    return bar


def progress_line(done, total, seconds):
    """E.g. `search: 23/46 fits (50%), 0:00:12 elapsed, about 0:00:12 left`."""
    line = f"search: {done}/{total} fits ({100 * done // total}%), {clock(seconds)} elapsed"
    return line if done == total else f"{line}, about {clock(seconds * (total - done) / done)} left"


def clock(seconds):
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


# --- Autologging, and what the script logs beside it (the model, the rescue) ---
class MlflowWarnings(logging.Handler):
    """Collects MLflow's warnings: autologging reports its failures only as warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def raise_if_any(self):
        if self.messages:
            raise RuntimeError(f"MLflow reported a problem: {self.messages[0]}")


def watch_mlflow_logging():
    """MLflow's warnings, printed as usual and collected (returned) to fail the run on them."""
    mlflow_logger = logging.getLogger("mlflow")
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:  # the user's choice wins
        # MLflow's INFO lines ("Creating initial MLflow database tables...") are no news
        # beside the script's own progress lines.
        mlflow_logger.setLevel(logging.WARNING)
    # We log with cloudpickle on purpose (the README says why and when that is safe). The
    # filter sits on the logger that warns of it, so neither MLflow's handler nor ours sees it.
    cloudpickle_warning = "Saving scikit-learn models in the pickle"
    logging.getLogger("mlflow.sklearn").addFilter(
        lambda record: not record.getMessage().startswith(cloudpickle_warning)
    )
    collector = MlflowWarnings()
    mlflow_logger.addHandler(collector)  # beside MLflow's own handler, which prints
    return collector


def register_datasets(dataset_of, X_train, X_test, name):
    """Record the training and test data sets, named after the data and the split, before
    autologging does: MLflow checks whether a data set is known, then inserts it, so concurrent
    runs on the same data collide, and autologging drops the loser's logging with a warning."""
    for context, X, split in [("train", X_train, "train"), ("eval", X_test, "test")]:
        dataset = dataset_of(X, name=f"{name} {split}")  # the very one autologging will log
        for attempt in range(3):
            try:
                mlflow.log_input(dataset, context=context)
                break
            except MlflowException:
                if attempt == 2:
                    raise
                time.sleep(0.5)


def distribution_of(module):
    """The installed distribution that provides a module (scikit-learn for sklearn.ensemble),
    or None (the script itself, a module of your own beside it): looked up in MODEL_PACKAGES'
    file lists first, as looking in all distributions' is slower (benchmarks/README.md)."""
    top = module.split(".")[0]
    for package in MODEL_PACKAGES:
        if any(path.parts[0] in (top, f"{top}.py") for path in distribution(package).files or []):
            return package
    return packages_distributions().get(top, [None])[0]


def model_options(model, X_train):
    """How the best model is saved: cloudpickle, an input example, a signature that takes what
    users send, MODEL_PACKAGES and ESTIMATOR's own at their installed versions."""
    # Every column declared Any: MLflow 3.17.2 refuses int64 (what pd.read_csv gives whole
    # numbers) in a `double` column and a gap in a `long` one, and a text column of a small
    # batch may come as numbers or as all gaps. The signature still names the columns and
    # refuses a batch without one; the model's ReadableValues step checks their values.
    module = type(ESTIMATOR).__module__
    estimator_package = distribution_of(module)
    if estimator_package is None and module != "__main__":
        # An estimator class of your own in a module beside the script: its code goes into the
        # model's pickle, as the script's own classes do, so the model loads without the module.
        cloudpickle.register_pickle_by_value(sys.modules[module.split(".")[0]])
    example = X_train.head(5)
    signature = ModelSignature(
        inputs=Schema([ColSpec(AnyType(), str(column)) for column in X_train.columns]),
        outputs=infer_signature(example, model.predict(example)).outputs,
    )
    packages = [*MODEL_PACKAGES, *([estimator_package] if estimator_package else [])]
    return {
        "serialization_format": "cloudpickle",
        "input_example": example,
        "signature": signature,
        "pip_requirements": [f"{name}=={version(name)}" for name in dict.fromkeys(packages)],
    }


def log_data_description(described, profile_html, covers):
    """The data's description (data.json) and skrub's profile of the training table."""
    described["profile"] = {"artifact": DATA_PROFILE, "covers": covers}
    mlflow.log_dict(described, "data.json")
    mlflow.log_text(profile_html, DATA_PROFILE)


def log_best_model(search, X_train):
    """Log the refitted best estimator once, as a LoggedModel of the run."""
    model = model_of(search)
    mlflow.sklearn.log_model(model, name="best_estimator", **model_options(model, X_train))


def logged_models_of(client, run):
    return client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )


def find_child_runs(client, run):
    return client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        max_results=10_000,
    )


@contextlib.contextmanager
def run_ending_right(start_run):
    """The run `start_run()` starts, which always ends: FINISHED, FAILED on an error, KILLED on
    Ctrl-C, SIGTERM or SIGHUP (`mlflow.start_run`'s own block would mark it FAILED). A stop
    while the run is being started waits until it exists, so that it is ended too."""
    run = None
    try:
        with stops_deferred():
            run = start_run()
        yield run
    except BaseException as e:
        if run is None:  # it failed to start: nothing to end
            raise
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        # The run's own end matters more: an error here, or a second stop, cuts this short.
        with contextlib.suppress(Exception, KeyboardInterrupt):
            end_running_children(MlflowClient(), run, status)
            revived_if_closed(MlflowClient(), run.info.run_id)
        for attempt in range(3):  # a stop during the end itself: the end again
            try:
                mlflow.end_run(status)
                e.add_note(f"run {run.info.run_id} ended {status}")
                break
            except KeyboardInterrupt:
                if attempt == 2:
                    raise
            except Exception as error:  # noqa: BLE001 -- even if the store is gone: say so
                e.add_note(
                    f"run {run.info.run_id} could not be marked {status}: {first_line(error)}"
                )
                break
        raise
    revived_if_closed(MlflowClient(), run.info.run_id)  # its end says what truly happened
    mlflow.end_run("FINISHED")


@contextlib.contextmanager
def rescued_on_failure(search, X_train, run_id):
    """If logging fails after the search, keep its results on disk: nothing is lost."""
    try:
        yield
    except Exception as e:
        folder = Path(RESCUE_DIR, run_id).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(search.cv_results_).to_csv(folder / "cv_results.csv", index=False)
        model = model_of(search)
        mlflow.sklearn.save_model(model, folder / "best_model", **model_options(model, X_train))
        e.add_note(f"the best model and cv_results are saved in {folder}")
        raise


# --- Runs that died: found and closed ---
# Ctrl-C and SIGTERM end a run KILLED, but a process that dies without a word (the out-of-memory
# killer, kill -9, power lost, a lost container) would leave its run RUNNING forever. So each run
# says which process runs it and refreshes a heartbeat while it lives, and each new run (or
# --close-dead-runs) ends FAILED the runs of this script in its experiment whose process is gone.
# Nothing here can close a live run or another tool's run.
HOST_TAG, MACHINE_TAG = "autolog_mlflow.host", "autolog_mlflow.machine"
PID_TAG = "autolog_mlflow.pid"
PROCESS_START_TAG, CRASHED_TAG = "autolog_mlflow.process_start", "autolog_mlflow.crashed"
REVIVED_TAG = "autolog_mlflow.revived"  # a live run that a sweep had closed as dead
HEARTBEAT_TAG, PERIOD_TAG = "autolog_mlflow.heartbeat", "autolog_mlflow.heartbeat_seconds"
BEAT_FORMAT = "%Y-%m-%d %H:%M:%S UTC"  # readable in the UI's tags, and parsed back
CANDIDATE_TAG = "autolog_mlflow.candidate"  # a child run's index in cv_results_
CHOSEN_TAG = "autolog_mlflow.best"  # the child run of the candidate the search chose
# What a candidate's CV scores depend on, and each fold's (score, fit and score seconds): the
# child run made as its folds end carries them, for --resume to reuse.
FINGERPRINT_TAG, FOLDS_TAG = "autolog_mlflow.fingerprint", "autolog_mlflow.folds"
REUSED_TAG = "autolog_mlflow.reused_from"  # the stopped run's child run whose scores it reuses
RESUMES_TAG, RESUMED_BY_TAG = "autolog_mlflow.resumes", "autolog_mlflow.resumed_by"
MAX_TAG_LENGTH = 5000  # what every store takes (MLflow 3.17.2 allows 8,000; some stores less)
UNKNOWN = "unknown"  # where /proc is missing (macOS, Windows): the heartbeat alone decides


def this_machine():
    """Where a PID and a start time name one process: this boot of this kernel and this PID
    namespace (containers on one kernel each have their own), or None without Linux's /proc."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"boot {boot}, {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def process_start(pid):
    """Process `pid`'s start, in clock ticks after boot (field 22 of /proc/PID/stat), so that a
    PID reused by a newer process never passes for the old one; None if it is gone, or a zombie
    (dead, its parent not told yet), or this system has no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, *fields = stat.rpartition(")")[2].split()  # after the name, which may hold spaces
    return None if state in ("Z", "X") else f"{fields[18]} clock ticks after boot"


def beat_now():
    return time.strftime(BEAT_FORMAT, time.gmtime())


def last_beat(tags):
    """The time of the run's last heartbeat, in seconds since the epoch."""
    return calendar.timegm(time.strptime(tags[HEARTBEAT_TAG], BEAT_FORMAT))


def who_runs_it():
    """The tags that tie a new run to this process, and its first heartbeat."""
    return {
        HOST_TAG: platform.node(),
        MACHINE_TAG: this_machine() or UNKNOWN,
        PID_TAG: str(os.getpid()),
        PROCESS_START_TAG: process_start(os.getpid()) or UNKNOWN,
        HEARTBEAT_TAG: beat_now(),
        PERIOD_TAG: str(HEARTBEAT_SECONDS),
    }


@contextlib.contextmanager
def heartbeat(run_id):
    """Refresh the run's heartbeat tag every HEARTBEAT_SECONDS while the block runs, from a
    daemon thread with its own client (the fluent API's active run belongs to the main thread):
    a sweeper on another machine cannot see this process, only how recent its last beat is."""
    stop, client = threading.Event(), MlflowClient()

    def beat():
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a missed beat must never fail the run
                client.set_tag(run_id, HEARTBEAT_TAG, beat_now())
                revived_if_closed(client, run_id)

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()
    try:
        yield
    finally:
        stop.set()  # not joined: a beat stuck on a lost server must not hold the run's end


def revived_if_closed(client, run_id):
    """A live run that a sweep closed as dead (its clock lags, or it was suspended for over
    STALE_HEARTBEATS periods), RUNNING again, the evidence kept as REVIVED_TAG: its next beat,
    or its end, undoes the closing."""
    run = client.get_run(run_id)
    if CRASHED_TAG not in run.data.tags:
        return
    client.set_tag(run_id, REVIVED_TAG, f"closed as dead while alive "
                   f"({run.data.tags[CRASHED_TAG]}); running again at {beat_now()}")  # fmt: skip
    client.delete_tag(run_id, CRASHED_TAG)
    if run.data.tags.get(MLFLOW_RUN_NOTE, "").startswith("**Died**"):
        client.delete_tag(run_id, MLFLOW_RUN_NOTE)
    if run.info.status != "RUNNING":
        client.update_run(run_id, status="RUNNING")


def death_evidence(run):
    """Why a RUNNING run of this script has died (on this machine: its process is gone; else
    its heartbeat is older than STALE_HEARTBEATS periods), or None while it may be alive. The
    words depend only on the run's tags: two sweepers closing a run write the same evidence."""
    tags = run.data.tags
    try:
        pid, period, last = int(tags[PID_TAG]), float(tags[PERIOD_TAG]), last_beat(tags)
    except (KeyError, ValueError):  # tags edited by hand: never close what cannot be judged
        return None
    where = f"process {pid} on host {tags.get(HOST_TAG)}"
    here = this_machine()
    if here and (tags.get(HOST_TAG), tags.get(MACHINE_TAG)) == (platform.node(), here):
        if process_start(pid) == tags.get(PROCESS_START_TAG):
            return None
        return f"{where} is gone; last heartbeat {tags[HEARTBEAT_TAG]}"
    if time.time() - last <= STALE_HEARTBEATS * period:
        return None
    return (f"no heartbeat from {where} since {tags[HEARTBEAT_TAG]}, over {STALE_HEARTBEATS} "
            f"periods of {period:g} s")  # fmt: skip


def close_dead_runs(client, experiment_id):
    """End FAILED, tagged CRASHED_TAG with the evidence, every run of this script in the
    experiment whose process has died, and the children its end left RUNNING; returns them.

    Concurrent sweepers may find the same dead run: each reads it again just before closing it,
    and all write the same status, end time (its last heartbeat) and evidence."""
    closed = []
    for found in client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.`{HEARTBEAT_TAG}` IS NOT NULL"
    ):
        if death_evidence(found) is None:
            continue
        run = client.get_run(found.info.run_id)
        evidence = run.info.status == "RUNNING" and death_evidence(run)
        if not evidence:
            continue
        # It ran at least until its last beat (whole seconds: never before its start).
        end_time = max(last_beat(run.data.tags) * 1000, run.info.start_time)
        tags = [RunTag(CRASHED_TAG, evidence)]
        if MLFLOW_RUN_NOTE not in run.data.tags:  # no summary atop its UI page: it died before
            tags.append(RunTag(MLFLOW_RUN_NOTE, f"**Died**: {evidence}."))
        client.log_batch(run.info.run_id, tags=tags)
        # Its children first: a sweep stopped in between leaves the parent RUNNING, found again.
        end_running_children(client, run, "FAILED", end_time)
        client.set_terminated(run.info.run_id, "FAILED", end_time=end_time)
        progress(f"closed run {run.info.run_id}, which had died: {evidence}")
        closed.append({"run_id": run.info.run_id, "run_name": run.info.run_name,
                       "status": "FAILED", "evidence": evidence})  # fmt: skip
    # Child runs left RUNNING under a run of this script that has ended (its process stopped
    # while they were being ended): ended as their parent, KILLED or FAILED, at its end.
    parents = {}
    for child in client.search_runs(
        [experiment_id],
        f"attributes.status = 'RUNNING' and tags.`{MLFLOW_PARENT_RUN_ID}` IS NOT NULL",
    ):
        parent_id = child.data.tags[MLFLOW_PARENT_RUN_ID]
        if parent_id not in parents:
            parents[parent_id] = client.get_run(parent_id)
        parent = parents[parent_id]
        if parent.info.status == "RUNNING" or PID_TAG not in parent.data.tags:  # alive, or not ours
            continue
        status = "KILLED" if parent.info.status == "KILLED" else "FAILED"
        client.set_terminated(child.info.run_id, status, end_time=parent.info.end_time)
        evidence = (
            f"a child run left RUNNING under run {parent_id}, which ended {parent.info.status}"
        )
        progress(f"closed run {child.info.run_id} ({status}): {evidence}")
        closed.append({"run_id": child.info.run_id, "run_name": child.info.run_name,
                       "status": status, "evidence": evidence})  # fmt: skip
    return closed


def sweep_only(args):
    """--close-dead-runs: the sweep, in --experiment-name's experiment, and what it closed."""
    client = prepare_tracking(args)
    experiment = client.get_experiment_by_name(args.experiment_name)
    closed = close_dead_runs(client, experiment.experiment_id)
    if args.json:
        print(json.dumps({"closed_dead_runs": closed}, indent=2))
    elif closed:
        print_closed_runs(closed)
    else:
        print(f"No run had died in experiment {args.experiment_name!r}.")
    return 0


def print_closed_runs(closed):
    print(f"Closed {len(closed)} run{'s' * (len(closed) > 1)} left RUNNING:")
    for run in closed:
        print(f"  {run['run_id']} ({run['run_name']}), now {run['status']}: {run['evidence']}")


# --- A function of MLflow or scikit-learn replaced within a block (the workarounds below) ---
@contextlib.contextmanager
def replaced(owner, name, replacement):
    """Within the block, `owner`'s attribute `name` is `replacement`; after it, the original."""
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


# --- Dataset logging in proportion to the data (works around MLflow 3.17.2 internals) ---
# Autologging builds a dataset for the same frame up to three times (before the fit, after it,
# and at every predict call on the test split), each build visiting every value in Python: to
# infer the schema (mlflow.types.utils._infer_required, _infer_pandas_column) and to find the
# string columns for the digest (compute_pandas_digest); on a large table that took longer than
# the search (benchmarks/README.md). Within the run, each frame's dataset is built once, and the
# visits are vectorised where that cannot change the answer. tests/test_mlflow_internals.py
# compares the results with MLflow's own and fails if an upgrade moves what is replaced here.
@contextlib.contextmanager
def datasets_built_once():
    """Within the block, autologging builds one dataset per frame; yields the builder."""
    types, from_pandas = mlflow.types.utils, mlflow.sklearn.from_pandas
    infer_required, infer_pandas_column = types._infer_required, types._infer_pandas_column
    built = {}  # digest -> dataset: the store keeps one record per name and digest anyway

    def dataset_of(df, source=None, name=None):  # as autologging calls it: a frame, a source
        digest = pandas_digest(df)  # by content: autologging digests its copy of X_train
        if digest not in built:
            built[digest] = from_pandas(df, source=source, digest=digest, name=name)
        return built[digest]

    with (
        replaced(types, "_infer_required", lambda column: has_no_gaps(column, infer_required)),
        replaced(
            types, "_infer_pandas_column", lambda column: column_type(column, infer_pandas_column)
        ),
        replaced(mlflow.sklearn, "from_pandas", dataset_of),
    ):
        yield dataset_of


def column_type(column, infer_pandas_column):
    """MLflow's schema type of a column; for a pandas string column with a value, `string`
    (MLflow's loop finds str values and missing ones, the latter of no type)."""
    if isinstance(column, pd.Series) and is_string(column) and column.notna().any():
        return DataType.string
    return infer_pandas_column(column)


def has_no_gaps(column, infer_required):
    """MLflow's answer (no None, NaN, pd.NA or NaT in the column), vectorised where pandas and
    MLflow agree on what is missing; object and category columns keep MLflow's own loop."""
    if isinstance(column, pd.Series) and (is_string(column) or column.dtype.kind in "biufmM"):
        return not column.isna().any()  # (not complex: MLflow does not count its NaN as missing)
    return infer_required(column)


def is_string(column):
    return isinstance(column.dtype, pd.StringDtype)


def pandas_digest(df):
    """MLflow's compute_pandas_digest, visiting values only in object columns, where it cannot
    be told from the dtype whether every value is a str."""
    trimmed = df.head(digest_utils.MAX_ROWS)
    all_str = [df.empty or all_str_values(df.iloc[:, i]) for i in range(df.shape[1])]
    columns = trimmed.columns[all_str].union(trimmed.select_dtypes(include=[np.number]).columns)
    return digest_utils.get_normalized_md5_digest(
        [pd.util.hash_pandas_object(trimmed[columns]).values, np.int64(len(df))]
        + [str(x).encode() for x in df.columns]
    )


def all_str_values(column):
    if is_string(column):  # str, or missing
        return not column.isna().any()
    if column.dtype.kind in "biufcmM":  # never str
        return False
    return bool((column.map(type) == str).all())


# --- The training table shared, not deep-copied (works around MLflow 3.17.2 internals) ---
# Before a logged fit, autologging deep-copies the fit's X and y (the one user of
# mlflow.sklearn.utils' `deepcopy`, in _get_X_y_and_sample_weight), so that what it logs after
# the fit cannot see changes the fit made to them. pandas 3 copies on write: a shallow copy is
# already safe from changes made through pandas (scikit-learn makes none), costs nothing, and
# lowers the run's peak memory on a large table (benchmarks/README.md). Checked by
# tests/test_mlflow_internals.py, which fails if an upgrade copies another way.
def training_table_shared():
    """Within the block, autologging's copies of a fit's pandas X and y share their data."""
    deepcopy = mlflow.sklearn.utils.deepcopy

    def copied(value, memo=None):
        if isinstance(value, pd.DataFrame | pd.Series):
            return value.copy(deep=False)
        return deepcopy(value, memo)

    return replaced(mlflow.sklearn.utils, "deepcopy", copied)


# --- Every scikit-learn search logged as one (works around MLflow 3.17.2 internals) ---
# Autologging logs a search's best params and score, cv_results.csv and a child run per
# candidate only for GridSearchCV and RandomizedSearchCV
# (mlflow.sklearn.utils._is_parameter_search_estimator): successive halving, which
# scikit-learn recommends for expensive grids, would get none of them. Autologging binds the
# function when mlflow.sklearn.autolog() is called: it is replaced around that call by one that
# takes every BaseSearchCV. tests/test_mlflow_internals.py fails if an upgrade moves it.
def every_search_logged_as_one():
    """Around mlflow.sklearn.autolog(): any BaseSearchCV is a parameter search to autologging."""
    return replaced(
        mlflow.sklearn.utils,
        "_is_parameter_search_estimator",
        lambda estimator: isinstance(estimator, BaseSearchCV),
    )


# --- Child runs named as they are made (works around MLflow 3.17.2 internals) ---
# After the search's fit, autologging rebuilds a child run per candidate from cv_results_
# (mlflow.sklearn.utils._create_child_runs_for_parameter_search) and queues it on its client:
# a create call with the child's tags, a batch of params and metrics, its dataset, its end.
# Queueing made scikit-learn's repr of the pipeline's steps (a param of every child) twice per
# child, and naming the children afterwards took a second write each. Here each distinct param
# value becomes text once, and each child's name (`max_depth=5 n_estimators=100`) and
# description (`rank 1 of 9: mean CV accuracy 0.960 (+/- 0.041)`) are queued as tags, which
# MLflow's client sends in the create call: a child costs less (benchmarks/README.md).
# Autologging binds the function when mlflow.sklearn.autolog() is called: replaced around that.
# tests/test_mlflow_internals.py checks that the children hold what MLflow's own function
# records, and fails if an upgrade moves what is replaced here.
def child_runs_named_at_creation():
    """Around mlflow.sklearn.autolog(): each child run named and described in its create call."""
    utils = mlflow.sklearn.utils
    create_child_runs = utils._create_child_runs_for_parameter_search

    def child_runs_named(autologging_client, cv_estimator, **rest):  # as autologging calls it
        # The child runs made during the search (see "Child runs as candidates finish") are
        # filled in, if every candidate gets one: autologging then goes in cv_results_' order.
        top = rest["max_tuning_runs"]
        made = getattr(cv_estimator, "child_runs_made_", {}) if top is None else {}
        ranks = pd.Series(cv_estimator.cv_results_["rank_test_score"])
        order = list(ranks.index if top is None else ranks.nsmallest(top).index)  # as autologging
        # The callback's candidates are cv_results_' rows where the search fits each once.
        spans = (
            getattr(cv_estimator, "candidate_spans_", {}) if candidate_params(cv_estimator) else {}
        )
        queued = ChildRunsQueued(autologging_client, made, order, spans)
        create_child_runs(autologging_client=queued, cv_estimator=cv_estimator, **rest)
        varied = varied_in(cv_estimator.cv_results_["params"])
        for run_id, params in queued.params.items():
            metrics, candidate = queued.metrics[run_id], queued.candidate_of[run_id]
            rank = f"rank {int(metrics['rank_test_score'])} of {len(queued.params)}"
            tags = {
                MLFLOW_RUN_NAME: child_run_name(varied, params, metrics.get("iter")),
                MLFLOW_RUN_NOTE: f"{rank}: mean CV {SCORE_NAME} {mean_and_spread(metrics)}",
                CANDIDATE_TAG: str(candidate),  # the leaderboard's order on ties
            }
            if candidate == cv_estimator.best_index_:
                tags[CHOSEN_TAG] = "true"  # successive halving's is not always of rank 1
            queued.set_tags(run_id, tags)  # sent with the create call, or in the batch

    return replaced(utils, "_create_child_runs_for_parameter_search", child_runs_named)


class ChildRunsQueued:
    """Autologging's queueing client, with each distinct param value written once, the child
    runs `made` already filled in, and each child's times those its candidate's fits spanned
    (autologging gives them all the parent's start and its own end: not the candidate's)."""

    def __init__(self, client, made, order, spans):
        self.client, self.params, self.metrics, self.texts = client, {}, {}, {}
        self.made, self.order, self.spans, self.created, self.sent = made, order, spans, 0, {}
        self.candidate_of, self.sent_metrics = {}, {}

    def __getattr__(self, name):  # log_inputs: as it is
        return getattr(self.client, name)

    def create_run(self, experiment_id, start_time, tags):
        """The next candidate's child run, in `order`: the one made during the search, or new."""
        candidate, self.created = self.order[self.created], self.created + 1
        if candidate in self.made:
            run_id, sent, self.sent_metrics[run_id] = self.made[candidate]
            self.sent[run_id] = sent
            self.set_tags(run_id, tags)
        else:
            began = self.spans.get(candidate, (start_time,))[0]
            run_id = self.client.create_run(
                experiment_id=experiment_id, start_time=began, tags=tags
            )
        self.candidate_of[run_id] = candidate
        return run_id

    def set_terminated(self, run_id, end_time):
        ended = self.spans.get(self.candidate_of[run_id], (None, end_time))[1]
        self.client.set_terminated(run_id=run_id, end_time=ended)

    def set_tags(self, run_id, tags):
        """Queued (sent in one batch with the params and metrics), less those the run has."""
        sent = self.sent.get(run_id, {})
        self.client.set_tags(run_id, {k: v for k, v in tags.items() if sent.get(k) != v})

    def log_params(self, run_id, params):
        self.params[run_id] = params
        self.client.log_params(run_id=run_id, params={k: self.text(v) for k, v in params.items()})

    def text(self, value):
        """str(value), as MLflow logs a param; made once for the objects every child shares."""
        if id(value) not in self.texts:  # the value is kept with its text: its id stays its own
            self.texts[id(value)] = value, str(value)
        return self.texts[id(value)][1]

    def log_metrics(self, run_id, metrics, **options):
        """Queued, less those logged already with the same value as the candidate finished."""
        self.metrics[run_id] = metrics
        sent = self.sent_metrics.get(run_id, {})
        metrics = {key: value for key, value in metrics.items() if sent.get(key) != value}
        self.client.log_metrics(run_id=run_id, metrics=metrics, **options)


def varied_in(candidates):
    """The hyperparameters a search's candidates set, in the order child-run names give them."""
    return sorted(set().union(*candidates))


def child_run_name(varied, params, iteration=None):
    """E.g. `max_depth=5 n_estimators=100`; with successive halving `..., round 2`."""
    name = " ".join(f"{key}={params[key]}" for key in varied)
    return name if iteration is None else f"{name}, round {int(iteration) + 1}"


def mean_and_spread(metrics):
    """A candidate's mean CV score and twice its spread, e.g. `0.960 (+/- 0.041)`."""
    return f"{metrics['mean_test_score']:.3f} (+/- {2 * metrics['std_test_score']:.3f})"


# --- Child runs as candidates finish ---
# So that the MLflow UI lists a long search's candidates while it runs. scikit-learn 1.9's callbacks
# tell this process when each CV fit ends, and with what score (SearchProgress, cv_fit_result): when
# a candidate's last fold ends, its child run is made, named, RUNNING, with its CV scores (each
# fold's, their mean and spread, the fit times); when the search ends, autologging fills it in (its
# params, rank, dataset) and ends it, instead of making it (ChildRunsQueued.create_run). With
# --max-tuning-runs N, the top N are known only at the end: they are made then. A run that fails
# ends its children as itself; one that dies, the sweep ends them with it.
def live_child_runs(run, args, candidates, basis):
    """LiveChildRuns for the search's candidates, if known ahead and all logged; else None."""
    if args.max_tuning_runs != "all" or candidates is None:
        return contextlib.nullcontext()
    return contextlib.closing(LiveChildRuns(run, candidates, basis))


class LiveChildRuns:
    """The child runs made while the search runs: {candidate: (run ID, its tags, its metrics)}."""

    def __init__(self, parent, candidates, basis):
        self.parent, self.candidates, self.basis = parent, candidates, basis
        self.varied = varied_in(self.candidates)
        # Of the tags autologging gives a child run, those known now: its source (the parent's).
        # Sent when the run is made, they need not be sent again in its final batch, where a tag
        # costs ten times more (benchmarks/README.md).
        self.common = {key: value for key, value in parent.data.tags.items()
                       if key == "mlflow.user" or key.startswith("mlflow.source.")}  # fmt: skip
        self.common |= {MLFLOW_PARENT_RUN_ID: parent.info.run_id, "mlflow.autologging": "sklearn"}
        self.client, self.runs, self.stopped = MlflowClient(), {}, threading.Event()
        self.queue = queue.SimpleQueue()
        self.writer = threading.Thread(target=self.write, name="child runs", daemon=True)
        self.writer.start()

    def candidate_done(self, candidate, began, results, reused_from=None):
        # Where the fits run in this very thread (--n-jobs 1), a thread beside them would fight
        # them for the interpreter (benchmarks/README.md): made here, each costs what it costs.
        # Reported by workers: the writer makes it.
        if self.stopped.is_set():
            return
        if threading.current_thread() is threading.main_thread():
            self.make(candidate, began, results, reused_from)
        else:
            self.queue.put((candidate, began, results, reused_from))

    def write(self):
        while (done := self.queue.get()) is not None and not self.stopped.is_set():
            self.make(*done)

    def make(self, candidate, began, results, reused_from):
        metrics, params = cv_metrics(results), self.candidates[candidate]
        scores = "its scores"
        if metrics:
            scores = f"mean CV {SCORE_NAME} {mean_and_spread(metrics)}; its rank"
        tags = self.common | {
            MLFLOW_RUN_NAME: child_run_name(self.varied, params),
            MLFLOW_RUN_NOTE: f"Its folds are fitted: {scores} when the search ends.",
            FINGERPRINT_TAG: fingerprint(self.basis, params),
        }
        folds = json.dumps([results[fold] for fold in sorted(results)])  # JSON: floats exact
        if metrics and len(folds) <= MAX_TAG_LENGTH:  # for --resume to read back
            tags[FOLDS_TAG] = folds
        if reused_from:
            tags[REUSED_TAG] = reused_from
            tags[MLFLOW_RUN_NOTE] = f"Scored by run {reused_from}: {scores} when it ends."
        # Never fails the search: a child not made here, autologging makes at the end. After a
        # failure, none is tried again (a lost server would cost each candidate MLflow's retries).
        try:
            run_id = self.client.create_run(self.parent.info.experiment_id, began, tags).info.run_id
            now = round(time.time() * 1000)
            metric_list = [Metric(key, value, now, 0) for key, value in metrics.items()]
            self.client.log_batch(run_id, metrics=metric_list, synchronous=True)
        except Exception:  # noqa: BLE001 -- whatever it is, the search goes on
            self.stopped.set()
            return
        self.runs[candidate] = run_id, tags, metrics

    def made(self):
        """The child runs made, once the search has succeeded (none made after)."""
        self.queue.put(None)
        self.writer.join()
        return dict(self.runs)

    def close(self):
        """No more child runs (one under way may finish, if the store answers in time)."""
        self.stopped.set()
        self.queue.put(None)
        self.writer.join(SERVER_CHECK_TIMEOUT)


def cv_metrics(results):
    """A candidate's CV metrics as cv_results_ has them, from each fold's (test score, fit and
    score seconds); {} if a fold's are unknown."""
    if None in results.values():
        return {}
    scores, *times = (np.array(values) for values in zip(*(results[k] for k in sorted(results))))
    metrics = {f"split{fold}_test_score": score for fold, score in enumerate(scores)}
    for name, values in zip(("test_score", "fit_time", "score_time"), (scores, *times)):
        mean = np.average(values)  # as scikit-learn's _search.py computes them
        metrics |= {f"mean_{name}": mean, f"std_{name}": np.sqrt(np.average((values - mean) ** 2))}
    return {key: float(value) for key, value in metrics.items()}


def end_running_children(client, run, status, end_time=None):
    """End `status` the child runs of `run` still RUNNING (made while its search ran)."""
    for child in find_child_runs(client, run):
        if child.info.status != "RUNNING":
            continue
        child_end = None if end_time is None else max(end_time, child.info.start_time)
        client.set_terminated(child.info.run_id, status, end_time=child_end)


# --- A stopped search resumed (--resume RUN_ID) (works around scikit-learn 1.9.1 internals) ---
# Each child run made as its candidate's folds end carries the fold results and a fingerprint of
# what they depend on: the store is the search's checkpoint. A search fits every candidate on
# every fold through model_selection._search._fit_and_score, looked up by its module-global name
# when the search's fit builds its tasks; replaced around the fit by one that gives a saved
# candidate's results (the very dict _fit_and_score returns: its score, times and test rows)
# instead of fitting it, the search ranks, chooses and refits as ever, and cv_results_ is that
# of a search never stopped. tests/test_mlflow_internals.py fails if an upgrade moves it.
def scores_basis(record, search):
    """What every candidate's CV scores depend on but its hyperparameters, as text."""
    configuration = record["configuration"]
    return json.dumps({
        "data": (record["data"] or {}).get("sha256") or configuration["data"],
        **{name: configuration[name] for name in ("target", "test_size", "cv", "seed")},
        "pipeline": sorted((name, repr(value)) for name, value in search.estimator.get_params().items()),
        "script": record["script"]["sha256"],
        "python": record["environment"]["python"],
        "packages": {name: version(name) for name in MODEL_PACKAGES},
    }, sort_keys=True, default=str)  # fmt: skip


def fingerprint(basis, params):
    text = basis + json.dumps(params, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def saved_scores(client, original, search, candidates, basis):
    """{candidate: (child run ID, each fold's results)} that `original` scored, fingerprints equal."""
    run_id = original["run"].info.run_id
    if candidates is None:
        raise BadInput(f"--resume {run_id}: successive halving chooses its candidates as it goes, "
                       "so none can be reused; run it anew without --resume")  # fmt: skip
    saved = {}
    for child in find_child_runs(client, original["run"]):
        with contextlib.suppress(ValueError, TypeError):  # a tag edited by hand: not reused
            folds = [tuple(fold) for fold in json.loads(child.data.tags.get(FOLDS_TAG, "null"))]
            saved[child.data.tags.get(FINGERPRINT_TAG)] = child.info.run_id, folds
    reused = {k: saved[key] for k, params in enumerate(candidates)
              if (key := fingerprint(basis, params)) in saved}  # fmt: skip
    if saved and (not reused or search.return_train_score):
        progress(f"--resume {run_id}: none of its {len(saved)} scored candidates can be reused "
                 "(the packages changed, or the search keeps training scores): all are fitted")  # fmt: skip
        return {}
    return reused


@contextlib.contextmanager
def scores_reused(reused, live):
    """Around a search's fit: the candidates in `reused` not fitted, their saved results stand."""
    search_module = sklearn.model_selection._search
    fit_and_score = search_module._fit_and_score
    saved = {candidate: folds for candidate, (_, folds) in reused.items()}

    def fit_or_reuse(*args, candidate_progress, split_progress, test, **options):
        if candidate_progress[0] not in saved:
            return fit_and_score(*args, candidate_progress=candidate_progress,
                                 split_progress=split_progress, test=test, **options)  # fmt: skip
        score, fit_time, score_time = saved[candidate_progress[0]][split_progress[0]]
        return {"fit_error": None, "test_scores": score, "n_test_samples": len(test),
                "fit_time": fit_time, "score_time": score_time}  # fmt: skip

    for candidate, (child, folds) in reused.items() if live else ():
        live.candidate_done(candidate, round(time.time() * 1000), dict(enumerate(folds)), child)
    with replaced(search_module, "_fit_and_score", fit_or_reuse if reused else fit_and_score):
        yield


# --- What each run records, so that it can be run again (read back by --reproduce) ---
def record_of(args):
    """The effective configuration, the command line, the code, the data file, the packages."""
    uri = args.tracking_uri
    script = Path(__file__).resolve()
    metadata = (d.metadata for d in distributions())  # each parsed once (`.version` parses again)
    packages = {re.sub(r"[-_.]+", "-", meta["Name"]).lower(): meta["Version"] for meta in metadata}
    return {
        "configuration": vars(args)
        | {"tracking_uri": redact(uri, uri), "param_grid": space_as_json(args.param_grid)},
        "command_line": [redact(word, uri) for word in sys.argv],
        "script": {"file": script.name, "sha256": sha256_of(script)},
        "git": git_state(script),
        "data": None if args.data is None else data_file(args.data),
        "environment": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "packages": dict(sorted(packages.items())),  # every installed one, by normalised name
            # As the run had them: the script's (MLFLOW_SETTINGS) or the user's own.
            "mlflow_settings": {name: os.environ.get(name) for name in MLFLOW_SETTINGS},
        },
    }


def space_as_json(space):
    """The search space as JSON, a distribution as its call: `scipy.stats.randint(5, 30)`."""

    def as_json(values):
        if isinstance(values, list):
            return values
        arguments = [*map(repr, values.args), *(f"{k}={v!r}" for k, v in values.kwds.items())]
        return f"scipy.stats.{values.dist.name}({', '.join(arguments)})"

    return {key: as_json(values) for key, values in space.items()}


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_file(path):
    try:
        return {
            "path": str(Path(path).resolve()),
            "sha256": sha256_of(path),
            "size": os.path.getsize(path),
        }
    except OSError as e:
        raise BadInput(f"cannot read --data {path}: {e.strerror}")


def git_state(script):
    """The commit of the repository holding the script, and the uncommitted edits of the code
    this run executes: the script and the modules it imported from that repository (None
    without git). Nothing else of the repository: copied into a bigger one, the script must
    not upload everybody's work in progress there (configuration files, secrets)."""

    def git(folder, *words):
        command = ["git", "-C", str(folder), *words]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    try:
        top = Path(git(script.parent, "rev-parse", "--show-toplevel").strip())
        commit = git(top, "rev-parse", "HEAD").strip()
        # The script and the modules imported so far from the repository. The interpreter's
        # own (standard library, installed packages) are passed over before resolving links,
        # which is slow (benchmarks/README.md), unless the repository lies there too.
        interpreter = tuple(os.path.join(prefix, "") for prefix in {sys.prefix, sys.base_prefix}
                            if not top.is_relative_to(Path(prefix).resolve()))  # fmt: skip
        files = {module.__file__ for module in list(sys.modules.values())
                 if isinstance(getattr(module, "__file__", None), str)}  # fmt: skip
        paths = {script.resolve(), *(Path(file).resolve() for file in files
                                     if not file.startswith(interpreter))}  # fmt: skip
        imported = {path.relative_to(top).as_posix() for path in paths if path.is_relative_to(top)}
        # Tracked files only: untracked ones have no diff, and a virtual environment inside
        # the repository would otherwise put thousands of paths on the command line.
        code = sorted(imported & set(git(top, "ls-files", "-z").split("\0")))
        # Staged or not. Without paths `git diff` shows the whole repository: hence the guard.
        diff = git(top, "diff", "HEAD", "--no-ext-diff", "--", *code) if code else ""
    except (OSError, subprocess.CalledProcessError):  # no git, or not a repository
        return None
    return {"commit": commit, "dirty": bool(diff), "diff": diff}


def log_record(record):
    """The record as run_config.json, the script beside it, and the diff of uncommitted edits."""
    git = record["git"]
    mlflow.log_dict(
        record | {"git": git and {key: git[key] for key in ("commit", "dirty")}}, RECORD_FILE
    )
    mlflow.log_artifact(__file__, "code")
    if git and git["dirty"]:
        mlflow.log_text(git["diff"], "code/uncommitted.diff")


# --- The run explains itself in the MLflow UI ---
# A summary as its description, the grid as a picture, what drives the model, the held-out
# confusion matrix. Made after autologging is switched off, so that the predictions made here
# are not logged as metrics of their own.
def explain_run(search, data, y_pred, seed):
    """Log the grid's picture, the columns' importance, the confusion matrix: (importance, rows)."""
    mlflow.log_figure(grid_scores_figure(search), "grid_scores.png")
    importance, rows = raw_column_importance(search, data.X_test, data.y_test, seed)
    mlflow.log_text(importance.to_csv(index=False), "feature_importance.csv")
    mlflow.log_figure(importance_figure(importance, rows), "feature_importance.png")
    if CLASSIFIER:
        figure, axes = figure_and_axes(5, 4)
        ConfusionMatrixDisplay.from_predictions(data.y_test, y_pred, ax=axes, colorbar=False)
        axes.set_title(f"Held-out confusion matrix ({len(data.y_test)} rows)")
        mlflow.log_figure(figure, "held_out_confusion_matrix.png")
    return importance, rows


EXPLANATION = ["grid_scores.png", "feature_importance.csv", "feature_importance.png"]
RUNNER_UP_P_VALUE = "best_vs_runner_up_p_value"  # the metric of best_vs_runner_up()
DISTINGUISHABLE = 0.05  # a p-value below: the best is better than the runner-up


def best_vs_runner_up(search):
    """Is the best candidate better than the runner-up, or within the noise of the CV folds?

    The corrected repeated k-fold t-test of Nadeau and Bengio (2003), as in scikit-learn's
    example "Statistical comparison of models using grid search": the folds' training sets
    overlap, so the variance of the score differences is inflated by n_test / n_train. One-sided:
    the best was chosen for scoring higher. None with a single candidate (in successive
    halving, of its round).
    """
    results = pd.DataFrame(search.cv_results_)
    if "iter" in results:  # successive halving: against its last round's others, if any
        results = results[results["iter"] == results.loc[search.best_index_, "iter"]]
    ranked = results.sort_values("rank_test_score", kind="stable").index  # ties: grid order
    runner_up = next((candidate for candidate in ranked if candidate != search.best_index_), None)
    if runner_up is None:
        return None
    folds = [f"split{k}_test_score" for k in range(search.n_splits_)]
    best, second = results.loc[search.best_index_, folds], results.loc[runner_up, folds]
    differences = (best - second).to_numpy(float)
    mean, variance, k = differences.mean(), differences.var(ddof=1), len(differences)
    corrected = (1 / k + 1 / (k - 1)) * variance  # n_test / n_train of k equal folds: 1 / (k - 1)
    if corrected > 0:
        p_value = float(scipy.stats.t.sf(mean / np.sqrt(corrected), df=k - 1))
    else:  # the same difference on every fold: none at all, or one the folds agree on
        p_value = 1.0 if mean <= 0 else 0.0
    varied = varied_in(search.cv_results_["params"])
    iteration = search.cv_results_["iter"][runner_up] if "iter" in search.cv_results_ else None
    return {
        "runner_up": child_run_name(varied, search.cv_results_["params"][runner_up], iteration),
        "mean_difference": float(mean),
        "p_value": p_value,
        "verdict": "better" if p_value < DISTINGUISHABLE else "not distinguishable",
    }


def runner_up_line(comparison, folds):
    """What follows "best vs" in the report and the run's description."""
    return (f"runner-up {comparison['runner_up']}: {comparison['verdict']} (mean CV "
            f"difference {comparison['mean_difference']:+.3f} over {folds} folds; corrected "
            f"t-test, p = {comparison['p_value']:.3f})")  # fmt: skip


def figure_and_axes(width, height):
    """A Figure of its own (inches) with one axes, never pyplot's: its shared state is not
    thread-safe, and the data profile's thread (skrub's TableReport) draws with it."""
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots()


def grid_scores_figure(search):
    """Mean CV score over the grid's two most varied hyperparameters (the others at their best
    values) as a heatmap, best cell framed; one varied hyperparameter: a line with error bars."""
    grid, best = {}, search.best_params_  # the values each took: in the grid's order
    for params in search.cv_results_["params"]:
        for key, value in params.items():
            if value not in grid.setdefault(key, []):
                grid[key].append(value)
    if not isinstance(search, GridSearchCV):  # sampled: sorted
        for key, values in grid.items():
            with contextlib.suppress(TypeError):  # values of mixed kinds: as they came
                grid[key] = sorted(values, key=lambda value: (value is not None, value))
    varied = sorted((key for key in grid if len(grid[key]) > 1), key=lambda k: -len(grid[k]))
    axes_keys, fixed = varied[:2] or list(grid)[:1], [key for key in grid if key not in varied[:2]]
    rows = [i for i, params in enumerate(search.cv_results_["params"])
            if all(params[key] == best[key] for key in fixed)]  # fmt: skip
    mean, std = search.cv_results_["mean_test_score"], search.cv_results_["std_test_score"]

    def position(key, i):
        return grid[key].index(search.cv_results_["params"][i][key])

    title = f"Mean CV {SCORE_NAME}, +/- 2 std"
    if [key for key in fixed if len(grid[key]) > 1]:
        title += "\n" + ", ".join(f"{key}={best[key]}" for key in fixed if len(grid[key]) > 1)
    if len(axes_keys) == 1:
        (key,) = axes_keys
        figure, axes = figure_and_axes(6, 4)
        order = sorted(rows, key=lambda i: position(key, i))
        axes.errorbar(range(len(order)), mean[order], yerr=2 * std[order], marker="o", capsize=4)
        best_at = order.index(search.best_index_)
        axes.plot(best_at, mean[search.best_index_], "r*", markersize=16, label="best")
        axes.set_xticks(range(len(order)), [str(grid[key][position(key, i)]) for i in order])
        axes.set_xlabel(key)
        axes.set_ylabel(f"mean CV {SCORE_NAME}")
        axes.legend()
    else:
        x, y = axes_keys
        cells = np.full((len(grid[y]), len(grid[x])), np.nan)
        spread = np.full_like(cells, np.nan)
        for i in rows:
            cells[position(y, i), position(x, i)], spread[position(y, i), position(x, i)] = (
                mean[i], 2 * std[i])  # fmt: skip
        figure, axes = figure_and_axes(1.4 * len(grid[x]) + 3, 0.7 * len(grid[y]) + 2.5)
        image = axes.imshow(cells, cmap="viridis", aspect="auto")
        figure.colorbar(image, ax=axes, label=f"mean CV {SCORE_NAME}")
        bright = np.nanmin(cells) + 0.6 * (np.nanmax(cells) - np.nanmin(cells))  # viridis: yellow
        for (row, column), value in np.ndenumerate(cells):
            if not np.isnan(value):
                axes.text(column, row, f"{value:.3f}\n+/- {spread[row, column]:.3f}", ha="center",
                          va="center", color="black" if value > bright else "white")  # fmt: skip
        frame = Rectangle((position(x, search.best_index_) - 0.5,
                           position(y, search.best_index_) - 0.5), 1, 1,
                          fill=False, edgecolor="red", linewidth=3, label="best")  # fmt: skip
        axes.add_patch(frame)
        axes.set_xticks(range(len(grid[x])), [str(value) for value in grid[x]])
        axes.set_yticks(range(len(grid[y])), [str(value) for value in grid[y]])
        axes.set_xlabel(x)
        axes.set_ylabel(y)
    axes.set_title(title)
    return figure


def raw_column_importance(search, X, y, seed):
    """Permutation importance of each raw column on the held-out rows (a seeded sample above
    IMPORTANCE_ROWS): the score's drop when the column is shuffled, IMPORTANCE_REPEATS times.

    TableVectorizer encodes each column on its own, so shuffling a raw column shuffles the
    columns it became: the table is encoded once, and only the steps after it predict again,
    in one call for all the shuffles (AnswersInOneCall)."""
    if len(X) > IMPORTANCE_ROWS:
        X = X.sample(IMPORTANCE_ROWS, random_state=seed)
        y = y.sample(IMPORTANCE_ROWS, random_state=seed)
    pipeline, rng = search.best_estimator_, np.random.default_rng(seed)
    vectorizer = table_vectorizer(pipeline)
    if vectorizer:  # raw column -> the columns it became
        encoded, outputs_of = vectorizer.transform(X), vectorizer.input_to_outputs_
        rest = pipeline[1:]
    else:  # your own preprocessing: the raw columns shuffled, the whole pipeline predicts
        encoded, outputs_of, rest = X, {column: [column] for column in X.columns}, pipeline
    shuffles = {
        column: [shuffled(encoded, outputs, rng) for _ in range(IMPORTANCE_REPEATS)]
        for column in X.columns
        if (outputs := outputs_of.get(column))  # none: dropped, no information
    }  # fmt: skip
    answers = AnswersInOneCall(rest, [encoded, *itertools.chain(*shuffles.values())])
    # The scorer by name, as estimator.score (SCORING None) would not go through `answers`.
    scorer = metrics.get_scorer(SCORE_NAME.lower())  # accuracy, r2 or SCORING
    baseline = scorer(answers, encoded, y)
    drops = {column: [baseline - scorer(answers, table, y) for table in tables]
             for column, tables in shuffles.items()}  # fmt: skip
    table = []
    for column in X.columns:
        column_drops = drops.get(column, [0.0])
        table.append({"column": str(column), "importance": np.mean(column_drops),
                      "std": np.std(column_drops)})  # fmt: skip
    return pd.DataFrame(table).sort_values("importance", ascending=False, kind="stable"), len(X)


class AnswersInOneCall:
    """`estimator`, whose predictions (or probabilities, or decision function) for `tables` of
    the same rows are made in one call on all of them, and given to a scorer table by table.

    A forest's predict costs nearly as much on a hundred rows as on ten thousand (its work per
    call, tree by tree, dominates): the 90 shuffles of a small table cost one call, not 90.
    """

    RESPONSES = ("predict", "predict_proba", "predict_log_proba", "decision_function")

    def __init__(self, estimator, tables):
        self.estimator, self.tables, self.answers = estimator, tables, {}

    def __sklearn_tags__(self):  # a classifier or a regressor, as the estimator is
        return self.estimator.__sklearn_tags__()

    def __getattr__(self, name):  # classes_ and the rest: the estimator's
        attribute = getattr(self.estimator, name)  # AttributeError if it has none
        if name not in self.RESPONSES:
            return attribute

        def respond(X):
            if name not in self.answers:
                answers = attribute(pd.concat(self.tables))
                self.answers[name] = np.split(answers, len(self.tables))
            (index,) = [i for i, table in enumerate(self.tables) if table is X]
            return self.answers[name][index]

        respond.__name__ = name  # scikit-learn's scorers look at it
        return respond


def shuffled(encoded, columns, rng):
    table = encoded.copy(deep=False)  # copy-on-write (pandas 3): only `columns` are new
    table[columns] = encoded[columns].iloc[rng.permutation(len(encoded))].set_axis(encoded.index)
    return table


def importance_figure(importance, rows):
    shown = importance.head(20).iloc[::-1]  # the largest on top
    figure, axes = figure_and_axes(7, 0.3 * len(shown) + 1.5)
    axes.barh(shown["column"], shown["importance"], xerr=shown["std"], capsize=3)
    axes.set_xlabel(f"drop in held-out {SCORE_NAME} when the column is shuffled")
    axes.set_title(f"What drives the model\npermutation importance on {rows} held-out rows")
    return figure


def best_child(report):
    """The child run of the candidate the search chose: the first of the leaderboard."""
    return report["child_runs"][0]


def summary_of(report):
    """The run's description, in Markdown: what a reviewer needs in ten seconds."""
    data, best = report["data"], best_child(report)
    comparison = report["compared_with_earlier_runs"]
    held_out = ", ".join(f"{key.removesuffix('_X_test')} {value:.3f}"
                         for key, value in report["test_metrics"].items())  # fmt: skip
    if comparison["earlier_runs"]:
        verdict = "beats" if comparison["beats_best_earlier"] else "does not beat"
        compared = (f"{verdict} the best of {comparison['earlier_runs']} earlier runs on the same "
                    f"data ({comparison['best_earlier_score']:.3f}, run "
                    f"{comparison['best_earlier_run_id']})")  # fmt: skip
    else:
        compared = "the first run on this data in the experiment"
    top = ", ".join(
        f"{row['column']} ({row['importance']:.3f})" for row in report["importance"]["columns"][:5]
    )
    pictures = ", ".join(name for name in report["artifacts"] if name.endswith(".png"))
    searched = (f"{type(ESTIMATOR).__name__}, {len(report['child_runs'])} candidates x "
                f"{report['params']['cv']}-fold CV, on {data['source']} ({data['train_rows']} "
                f"training rows, {data['feature_columns']} columns)")  # fmt: skip
    headline = (f"**Best: `{best['name']}`**, mean CV {SCORE_NAME} "
                f"{best['mean_test_score']:.3f} (+/- {2 * best['std_test_score']:.3f}, 2 std)")  # fmt: skip
    runner_up, resumed = report["best_vs_runner_up"], report["resumed"]
    resumed_line = resumed and (f"- Resumed run {resumed['run_id']}: its {resumed['reused']} "
                                f"scored candidates reused, {resumed['fitted']} fitted")  # fmt: skip
    return "\n".join([
        headline,
        "",
        *([f"- Best vs {runner_up_line(runner_up, report['params']['cv'])}"] if runner_up else []),
        f"- Searched: {searched}",
        *([resumed_line] if resumed_line else []),
        f"- Held out ({data['test_rows']} rows): {held_out}"
        + (f"; {report['f1']}" if report["f1"] else ""),
        f"- Compared on {comparison['score']}: {compared}",
        f"- Columns that matter most (permutation importance): {top}",
        f"- Load the model: `{report['load_model']}`",
        f"- Pictures: {pictures}; the data: {DATA_PROFILE}",
    ])  # fmt: skip


# --- Read the run back from the store, and check it is complete ---
def read_run_back(client, run_id):
    """Everything the store holds about the run, as plain data for the report."""
    run = client.get_run(run_id)
    models = logged_models_of(client, run)
    return {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "experiment_id": run.info.experiment_id,
        "params": dict(sorted(run.data.params.items())),
        "metrics": dict(sorted(run.data.metrics.items())),
        "artifacts": list_artifacts(client, run_id),
        "logged_models": [
            {
                "name": model.name,
                "model_id": model.model_id,
                "uri": model.model_uri,
                "status": str(model.status),
                "files": [item.path for item in client.list_logged_model_artifacts(model.model_id)],
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
                    "candidate": int(child.data.tags.get(CANDIDATE_TAG, -1)),
                    "chosen": child.data.tags.get(CHOSEN_TAG) == "true",
                }
                for child in find_child_runs(client, run)
            ),
            # The one the search chose first, then by rank, ties in the search's order (as
            # best_vs_runner_up() ranks them).
            key=lambda child: (not child["chosen"], child["rank"], child["candidate"]),
        ),
        "test_metrics": {
            key: value for key, value in run.data.metrics.items() if key.endswith("_X_test")
        },
        "load_model": models and f'mlflow.sklearn.load_model("{models[0].model_uri}")',
    }


def list_artifacts(client, run_id, path=None):
    """All artifact file paths of the run, recursively."""
    paths = []
    for item in client.list_artifacts(run_id, path):
        paths += list_artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return paths


def require_complete(report, args, search, held_out_metrics):
    """Never trust autologging blindly: it drops what it fails to log with only a warning."""
    candidates = len(search.cv_results_["params"])
    classifier_plots = ["training_confusion_matrix.png", "held_out_confusion_matrix.png"]
    expected = {
        "params": [f"best_{name}" for name in args.param_grid]
        + ["cv", "param_grid" if hasattr(search, "param_grid") else "param_distributions"],
        "metrics": ["best_cv_score", "training_score", *held_out_metrics],
        "artifacts": ["cv_results.csv", "estimator.html", RECORD_FILE, "data.json", DATA_PROFILE]
        + EXPLANATION
        + (classifier_plots if CLASSIFIER else []),
    }
    missing = [
        f"{kind[:-1]} {name}" for kind, names in expected.items() for name in names
        if name not in report[kind]
    ]  # fmt: skip
    child_runs = (
        candidates if args.max_tuning_runs == "all" else min(candidates, args.max_tuning_runs)
    )
    if len(report["child_runs"]) != child_runs:
        missing.append(f"child runs ({len(report['child_runs'])} of {child_runs})")
    models = report["logged_models"]
    if [model["name"] for model in models] != ["best_estimator"]:
        missing.append("the one logged model best_estimator")
    for model in models:
        if model["status"] != "READY" or not {"MLmodel", "model.pkl"} <= set(model["files"]):
            missing.append(f"model {model['name']} is {model['status']}, files {model['files']}")
    if missing:
        raise RuntimeError(f"the run is incomplete: missing {'; '.join(missing)}")


# --- Compare with earlier runs of the experiment on the same data ---
def compare_with_earlier_runs(client, run_id):
    """This run's held-out score against the best earlier run's on the same training and test
    data (same dataset digests): scores on other data are not comparable."""
    run = client.get_run(run_id)
    digests = dataset_digests(run)
    conditions = [
        "tags.mlflow.parentRunId IS NULL",
        "attributes.status = 'FINISHED'",
        f"attributes.start_time < {run.info.start_time}",
        *(f"dataset.digest = '{digest}'" for digest in digests.values()),
    ]
    earlier = [
        other
        for other in client.search_runs(
            [run.info.experiment_id],
            filter_string=" and ".join(conditions),
            order_by=[f"metrics.{HELD_OUT_SCORE} DESC", "attributes.start_time ASC"],
            max_results=10_000,
        )
        if dataset_digests(other) == digests and HELD_OUT_SCORE in other.data.metrics
    ]
    best = earlier[0] if earlier else None
    score = run.data.metrics[HELD_OUT_SCORE]
    return {
        "score": HELD_OUT_SCORE,
        "this_run": score,
        "earlier_runs": len(earlier),
        "best_earlier_run_id": best and best.info.run_id,
        "best_earlier_score": best and best.data.metrics[HELD_OUT_SCORE],
        "beats_best_earlier": best and score > best.data.metrics[HELD_OUT_SCORE],
    }


def dataset_digests(run):
    """The digests of the run's training and test data sets, e.g. {"train_data_digest": ...}."""
    return {
        f"{tag.value}_data_digest": item.dataset.digest
        for item in run.inputs.dataset_inputs
        for tag in item.tags
        if tag.key == "mlflow.data.context"
    }


# --- Reproduce a past run (--reproduce RUN_ID): its record in, a verdict out ---
def experiment_to_reproduce(args):
    """A past run's options (--reproduce, --resume) from its record, and that run with its record:
    bad input unless this script logged it, or, to resume it, it stopped and nothing changed."""
    uri, run_id = args.tracking_uri, args.reproduce or args.resume
    option = "--reproduce" if args.reproduce else "--resume"
    check_store(uri)
    if (path := sqlite_path(uri)) and not path.is_file():
        raise BadInput(f"no tracking store at {path}; give run {run_id}'s --tracking-uri")
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise BadInput(f"{option} {run_id}: no such run in {redact(uri, uri)}")
    try:
        with tempfile.TemporaryDirectory() as folder:
            record = json.loads(
                Path(client.download_artifacts(run_id, RECORD_FILE, folder)).read_text()
            )
    except (MlflowException, OSError, ValueError):
        record = {}
    if not set(RECORDED_OPTIONS) <= record.get("configuration", {}).keys():
        raise BadInput(f"run {run_id} was not logged by autolog_mlflow.py: it has no {RECORD_FILE}")
    experiment = client.get_experiment(run.info.experiment_id).name
    configuration, recorded_data = record["configuration"], record.get("data")
    recorded = {name: configuration[name] for name in RECORDED_OPTIONS}
    if not all(isinstance(values, list) for values in recorded["param_grid"].values()):
        if recorded["param_grid"] != space_as_json(PARAM_GRID):  # distributions are not in JSON
            raise BadInput(f"run {run_id} sampled {json.dumps(recorded['param_grid'])}; "
                           f"put those distributions back in PARAM_GRID to {option[2:]} it")  # fmt: skip
        recorded["param_grid"] = PARAM_GRID
    data = args.data or (recorded_data or {}).get("path") or configuration["data"]
    if data and not args.data and not Path(data).is_file():
        raise BadInput(f"the data of run {run_id}, {data}, is gone; if it has moved, "
                       "give its new path with --data")  # fmt: skip
    if recorded_data and recorded_data["sha256"] != (now := data_file(data)["sha256"]):
        raise BadInput(
            f"{Path(data).name} changed since run {run_id}: sha256 "
            f"{recorded_data['sha256']} then, {now} now"
        )
    closed = []  # --resume of a RUNNING run whose process died: it, and any other, closed first
    if args.resume:
        for name in args.given:  # each option given as the record has it, or refused
            now = space_as_json(args.param_grid) if name == "param_grid" else getattr(args, name)
            if now != configuration[name]:
                raise BadInput(f"--{name.replace('_', '-')} {json.dumps(now)} is not run {run_id}'s "
                               f"{json.dumps(configuration[name])}: a resumed search keeps its "
                               "experiment; run it anew without --resume")  # fmt: skip
        if record.get("script", {}).get("sha256") != sha256_of(Path(__file__).resolve()):
            raise BadInput(f"{Path(__file__).name} has changed since run {run_id} (its estimator, "
                           "pipeline or code): a resumed search needs the script that ran it; "
                           "run it anew without --resume")  # fmt: skip
        if run.info.status == "RUNNING":  # its process may have died: closed as a sweep would
            closed = close_dead_runs(client, run.info.experiment_id)
            run = client.get_run(run.info.run_id)
        if run.info.status == "FINISHED":
            raise BadInput(f"run {run.info.run_id} FINISHED: nothing to resume (--reproduce "
                           f"{run.info.run_id} runs it again)")  # fmt: skip
        if run.info.status == "RUNNING":
            raise BadInput(f"run {run.info.run_id} is still running; resume it once it has stopped")
    options = vars(args) | recorded | {"data": data, "experiment_name": experiment}
    options.pop("given")  # checked: not to be recorded
    return argparse.Namespace(**options), {"run": run, "record": record, "closed": closed}


def log_reproduction(client, original, run_id, record, X_test):
    """This run's results against the original's, and what changed around them, logged."""
    progress(f"comparing with run {original['run'].info.run_id} ...")
    old, new = original["run"], client.get_run(run_id)
    was_cv, now_cv = cv_scores(client, old.info.run_id), cv_scores(client, run_id)
    params = [key for key in sorted(old.data.params.keys() | new.data.params.keys())
              if key.startswith("best_")]  # fmt: skip
    metrics = [key for key in sorted(old.data.metrics.keys() | new.data.metrics.keys())
               if key.endswith("_X_test")]  # fmt: skip
    results = differing(
        [(f"param {key}", old.data.params.get(key), new.data.params.get(key)) for key in params]
        + [(f"{score} of {candidate}", was_cv.get(candidate, {}).get(score),
            now_cv.get(candidate, {}).get(score))
           for candidate in sorted(was_cv.keys() | now_cv.keys())
           for score in CV_SCORES]
        + [(f"metric {key}", old.data.metrics.get(key), new.data.metrics.get(key))
           for key in metrics]
        + [prediction_difference(client, old, new, X_test)]
    )  # fmt: skip
    reproduction = {
        "reproduces": old.info.run_id,
        "verdict": "different" if results else "identical",
        "compared": {
            "best params": len(params),
            "candidates' CV scores": len(was_cv),
            "held-out metrics": len(metrics),
            "held-out predictions": len(X_test),
        },
        "differences": results,
        "changed_around_it": differing(environment_pairs(original["record"], record)),
    }
    mlflow.set_tags({"autolog_mlflow.reproduces": reproduction["reproduces"],
                     "autolog_mlflow.reproduction": reproduction["verdict"]})  # fmt: skip
    mlflow.log_dict(reproduction, "reproduction.json")
    return reproduction


def differing(pairs):
    return [{"what": what, "original": was, "now": now} for what, was, now in pairs if was != now]


CV_SCORES = ("mean_test_score", "std_test_score")  # of each candidate, compared


def cv_scores(client, run_id):
    """Each candidate's CV_SCORES, from the run's cv_results.csv."""
    with tempfile.TemporaryDirectory() as folder:
        table = pd.read_csv(client.download_artifacts(run_id, "cv_results.csv", folder))
    return {
        row.params: {score: float(getattr(row, score)) for score in CV_SCORES}
        for row in table.itertuples()
    }


def prediction_difference(client, old, new, X_test):
    """(what, then, now) of the two runs' logged models' predictions on the held-out split."""
    predictions = []
    for run in (old, new):
        try:
            (model,) = logged_models_of(client, run)
            predictions.append(mlflow.sklearn.load_model(model.model_uri).predict(X_test))
        except Exception as e:  # noqa: BLE001 -- a model gone or unloadable: a difference
            predictions.append(f"no predictions: {first_line(e)}")
    was, now = predictions
    for side in (was, now):
        if isinstance(side, str):  # a model that would not predict: never "identical"
            return "held-out predictions", "could not be compared", side
    rows = np.flatnonzero(was != now)
    what = f"held-out predictions ({len(rows)} of {len(was)} rows differ; the first shown)"
    return what, was[rows[:5]].tolist(), now[rows[:5]].tolist()


def environment_pairs(was, now):
    """(what, then, now) for the code, Python, platform, MLflow's settings, every package."""
    then_git, now_git = was.get("git") or {}, now["git"] or {}
    then_env, now_env = was["environment"], now["environment"]
    pairs = [
        ("script sha256", was.get("script", {}).get("sha256"), now["script"]["sha256"]),
        ("git commit", then_git.get("commit"), now_git.get("commit")),
        ("uncommitted edits", then_git.get("dirty"), now_git.get("dirty")),
        ("python", then_env["python"], now_env["python"]),
        ("platform", then_env.get("platform"), now_env["platform"]),
    ]
    then_settings = then_env.get("mlflow_settings", {})  # recorded since 2026-12-06
    pairs += [(name, then_settings[name], now_env["mlflow_settings"].get(name))
              for name in sorted(then_settings)]  # fmt: skip
    if "packages" not in then_env:  # a record from before every package was recorded
        return pairs + [("packages", "not recorded", f"{len(now_env['packages'])} installed")]
    packages = then_env["packages"]
    return pairs + [
        (f"package {name}", packages.get(name), now_env["packages"].get(name))
        for name in sorted(packages.keys() | now_env["packages"].keys())
    ]


# --- Register the best model (--register-model NAME): a new version, champion or challenger ---
class RegistrationFailed(Exception):
    """The run is complete and FINISHED, but the registry did not take its model: exit 1."""


def register_best_model(client, name, report):
    """The run's model as a new version of `name`: the challenger, or the champion."""
    model_uri = report["logged_models"][0]["uri"]
    try:
        metrics = {key: str(value) for key, value in report["test_metrics"].items()}
        digests = dataset_digests(client.get_run(report["run_id"]))
        tags = {"run_id": report["run_id"]} | metrics | digests
        version = mlflow.register_model(model_uri, name, tags=tags).version
        client.set_registered_model_alias(name, "challenger", version)
        promote, reason = decide_champion(client, name, tags)
        if promote:
            client.set_registered_model_alias(name, "champion", version)
            client.delete_registered_model_alias(name, "challenger")
        aliases = client.get_model_version(name, version).aliases
    except Exception as e:
        raise RegistrationFailed(
            f"registration failed ({first_line(e)}); run {report['run_id']} is FINISHED with its "
            f'model logged: retry with mlflow.register_model("{model_uri}", "{name}")'
        ) from e
    return {
        "name": name,
        "version": int(version),
        "aliases": sorted(aliases),
        "decision": reason,
        "champion_uri": f"models:/{name}@champion",
    }


def decide_champion(client, name, tags):
    """(promote?, why): the champion alias goes to the first version, and to one that beats the
    champion's held-out score on the same test data (a tie keeps the champion).

    Whether there is a champion is read from the aliases, not guessed from an error (MLflow answers
    a missing alias with INVALID_PARAMETER_VALUE, which means other things too): a lookup that fails
    fails the registration, instead of promoting a version that may not deserve it."""
    champion_version = client.get_registered_model(name).aliases.get("champion")
    if champion_version is None:
        return True, "no champion yet: this version is the champion"
    champion = client.get_model_version(name, champion_version)
    score, theirs = float(tags[HELD_OUT_SCORE]), champion.tags.get(HELD_OUT_SCORE)
    if champion.tags.get("eval_data_digest") != tags["eval_data_digest"]:
        return False, (
            f"stays challenger: champion version {champion.version} was scored on other test "
            f"data (digest {champion.tags.get('eval_data_digest')}, this run "
            f"{tags['eval_data_digest']})"
        )
    if theirs is None:  # a champion of another SCORING, or of the estimator's other score
        return False, (
            f"stays challenger: champion version {champion.version} has no {HELD_OUT_SCORE} to "
            "compare with (it was scored by another SCORING or estimator)"
        )
    if score > float(theirs):
        return True, (
            f"held-out {HELD_OUT_SCORE} {score:.4f} beats champion version "
            f"{champion.version}'s {float(theirs):.4f}: this version is the champion"
        )
    return False, (
        f"stays challenger: held-out {HELD_OUT_SCORE} {score:.4f} does not beat champion "
        f"version {champion.version}'s {float(theirs):.4f}"
    )


# --- Report ---
def browse_hints(tracking_uri, report):
    if tracking_uri.startswith(SERVER_URIS):  # the server's own UI
        parsed = urlparse(tracking_uri)
        netloc = parsed.hostname + (f":{parsed.port}" if parsed.port else "")  # no password
        ui, command = parsed._replace(netloc=netloc).geturl().rstrip("/"), None
    else:
        ui, command = UI_URL, "mlflow ui"
        if tracking_uri != DEFAULT_TRACKING_URI:
            command += f" --backend-store-uri '{redact(tracking_uri, tracking_uri)}'"
    runs = f"{ui}/#/experiments/{report['experiment_id']}/runs"
    return {
        "ui_command": command,
        "run_url": f"{runs}/{report['run_id']}{UI_VIEW}",
        "experiment_url": f"{runs}{UI_VIEW}",
    }


def print_report(report):
    print(f"Run ID: {report['run_id']}")
    print(f"Run name: {report['run_name']}")
    print(f"Status: {report['status']} in {report['duration_seconds']:.1f} s")
    if report["closed_dead_runs"]:
        print_closed_runs(report["closed_dead_runs"])
    if resumed := report["resumed"]:
        print(f"Resumed run {resumed['run_id']}: reused {resumed['reused']} of "
              f"{resumed['reused'] + resumed['fitted']} candidates' CV scores; fitted "
              f"{resumed['fitted']}")  # fmt: skip
    data, target = report["data"], report["data"]["target"]
    print(f"\nData: {data['source']}, {data['rows']} rows ({data['train_rows']} to train, "
          f"{data['test_rows']} held out), {data['feature_columns']} feature columns")  # fmt: skip
    if data["rows_without_target"]:
        print(f"  left out: {data['rows_without_target']} rows without a target")
    if "classes" in target:
        counts = ", ".join(f"{label} {count}" for label, count in target["classes"].items())
        print(f"  target {target['name']!r}: {len(target['classes'])} classes: {counts}")
    else:
        print(f"  target {target['name']!r}: numbers from {target['min']:.4g} to {target['max']:.4g}"
              f", mean {target['mean']:.4g}")  # fmt: skip
    gaps = ", ".join(f"{column} {count}" for column, count in data["missing_values"].items())
    print(f"  missing values: {gaps or 'none'}")
    numeric = data["numeric_columns"]
    shown = ", ".join(numeric[:5]) + (f" and {len(numeric) - 5} more" if len(numeric) > 5 else "")
    print(f"  {len(numeric)} numeric column{'s' * (len(numeric) != 1)}, as they are: "
          f"{shown or 'none'}")  # fmt: skip
    for column, treatment in data["treatment"].items():
        print(f"  {column}: {treatment}")
    if data["treatment_not_described"]:
        print(f"  {data['treatment_not_described']}")
    print(f"  profile: {data['profile']['artifact']} ({data['profile']['covers']})")
    print("\nParameters:")
    for key, value in report["params"].items():
        text = " ".join(value.split())  # on one line, e.g. the repr of the pipeline
        print(f"  {key}: {text if len(text) <= 100 else f'{text[:97]}...'}")
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
        print(f"  {child['rank']:>4}  {mean_and_spread(child):<26} {child['name']}")
    if report["best_vs_runner_up"]:
        print(f"  best vs {runner_up_line(report['best_vs_runner_up'], report['params']['cv'])}")
    print("\nHeld-out test metrics (the search never saw these rows):")
    for key, value in report["test_metrics"].items():
        print(f"  {key}: {value:.3f}")
    if report["f1"]:
        print(f"  ({report['f1']})")
    importance = report["importance"]
    print(f"\nWhat drives the model: held-out {SCORE_NAME} lost when a column is shuffled "
          f"({importance['held_out_rows']} rows; feature_importance.png):")  # fmt: skip
    for row in importance["columns"][:5]:
        print(f"  {row['column']}: {row['importance']:.3f} (+/- {row['std']:.3f})")
    comparison = report["compared_with_earlier_runs"]
    print(f"\nEarlier runs on the same training and test data, by held-out {comparison['score']}:")
    if comparison["earlier_runs"]:
        best, this = comparison["best_earlier_score"], comparison["this_run"]
        verdict = "beats it" if this > best else "ties it" if this == best else "does not beat it"
        print(f"  best of {comparison['earlier_runs']}: {best:.3f}, run "
              f"{comparison['best_earlier_run_id']}")  # fmt: skip
        print(f"  this run: {this:.3f}, {verdict}")
    else:
        print("  none in this experiment: this run is the first")
    print('\nBrowse in the MLflow UI ("Model training" view):')
    if report["browse"]["ui_command"]:
        print(f"  {report['browse']['ui_command']}")
    print(f"  this run: {report['browse']['run_url']}")
    print(f"  all runs: {report['browse']['experiment_url']}")
    print("\nLoad the model:")
    print(f"  {report['load_model']}")
    if registration := report["registration"]:
        aliases = ", ".join(registration["aliases"]) or "none"
        print(f"\nModel registry: {registration['name']} version {registration['version']} "
              f"(aliases: {aliases})")  # fmt: skip
        print(f"  {registration['decision']}")
        print(f"  serve the champion: mlflow models serve -m {registration['champion_uri']} "
              "--env-manager local")  # fmt: skip
    if reproduction := report["reproduction"]:  # the verdict last
        original, changes = reproduction["reproduces"], reproduction["changed_around_it"]
        compared = ", ".join(f"{count} {what}" for what, count in reproduction["compared"].items())
        print(f"\nReproduction of run {original}: compared {compared}")
        print(f"  changed since then: {len(changes) or 'nothing'} (code, Python, platform, MLflow "
              "settings, packages)")  # fmt: skip
        print_differences(changes, "    ")
        if reproduction["verdict"] == "identical":
            print(f"\nVerdict: identical to run {original}")
        else:
            differences = reproduction["differences"]
            print(f"\nVerdict: DIFFERENT from run {original} in {len(differences)} results:")
            print_differences(differences, "  ")


def print_differences(differences, indent, shown=20):
    for difference in differences[:shown]:
        print(f"{indent}{difference['what']}: {difference['original']} -> {difference['now']}")
    if len(differences) > shown:
        print(f"{indent}... and {len(differences) - shown} more in reproduction.json")


def progress(message):
    print(message, file=sys.stderr, flush=True)  # stderr: stdout is the report


if __name__ == "__main__":
    exit_code = main()
    # The run has ended and said so: a stop now (a second Ctrl-C as threads wind down at exit)
    # exits at once with that code, not with a traceback from the interpreter's shutdown.
    for stop in STOPS:
        signal.signal(stop, lambda signum, frame: os._exit(exit_code))
    # The shutdown waits for every non-daemon thread, and a thread pool's worker that a stop cut
    # off as it was being started is never told to stop (MLflow 3.17.2's autologging client
    # pool, seen once in 30 stops as the search began): it would wait forever. Not past this.
    deadline = threading.Timer(SHUTDOWN_TIMEOUT, os._exit, [exit_code])
    deadline.daemon = True
    deadline.start()
    gc.freeze()  # skip the final garbage collection over MLflow's many objects (it is slow)
    sys.exit(exit_code)
