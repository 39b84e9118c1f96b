"""What does the script cost? autolog_mlflow.py against the plain search a user would write
instead, and against the same pipeline without MLflow.

    python benchmarks/overhead.py                 # the full benchmark (about 40 minutes)
    python benchmarks/overhead.py --rounds 2 --skip-scaling   # a quick look
    python benchmarks/overhead.py --data-sizes none --skip-variants   # only the scaling
    python benchmarks/overhead.py --data-sizes none --skip-variants --scaling-sizes 9,80  # faster
    python benchmarks/overhead.py --only-progress   # only the live progress's cost
    python benchmarks/overhead.py --only-login      # only the cost of a server's login
    python benchmarks/overhead.py --only-heartbeat  # only the heartbeat's cost
    python benchmarks/overhead.py --only-explanation  # only the run's explanation's cost

Whole processes, interleaved (A B C, A B C, ...) so that a noisy machine hurts every variant
alike, and compared by their medians:
  plain   what a user writes instead: GridSearchCV(RandomForestClassifier()) on the same data,
          split, grid, CV, seed and n_jobs, scored on the held-out split, no pipeline, no
          MLflow (on a table with text: a hand-written OrdinalEncoder pipeline)
  bare    the script's own search (skrub's TableVectorizer, then the forest, the preprocessing
          fitted once per fold), no MLflow
  fresh   autolog_mlflow.py on a store that does not exist yet
  warm    autolog_mlflow.py on a store that already exists
for the default grid at --n-jobs 1 and -1 and 80 candidates at -1 (time / plain is what a user
sees; bare / plain is the pipeline's own cost, warm / bare tracking's), and for tables of 20,000
and 200,000 rows, numeric and with text (plain, bare, warm). Then scaling: grids of 9, 80 and
320 candidates with every candidate logged as a child run, on SQLite and on a real `mlflow
server` on 127.0.0.1, backed by SQLite and by PostgreSQL (tools/postgres.py; Debian's, as
tests/setup.sh installs it); the cost per child run is the slope of the logging overhead (script
minus bare: the child runs are tracking's cost) between the smallest and the largest grid. And the search's live progress (autolog_mlflow.SearchProgress, a scikit-learn
callback): the default search fitted with and without it, interleaved in one process, with
stderr on a pseudo-terminal (the bar) and on a pipe (plain lines). And a team server's login
(--only-login): the same one-candidate run by a team member through three team servers on
PostgreSQL (tools/team_server.py), without a login, with MLflow's basic-auth app, and with its
login cache on; beside it the cost of one request on each, and of one password check. And the
heartbeat that lets a dead run be found (--only-heartbeat): the default run on a warm store,
with copies of the script that beat every second, or once a day (no beat after the first),
beside the default period. And the run's explanation (--only-explanation): the script beside a
copy that explains nothing, on the default search and on a 200,000-row table with text. Not a test: it prints figures and ratios, and asserts nothing.
"""

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import platform
import pty
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import requests
from mlflow_ui import mlflow_server
from team_server import ADMIN, team_server

SCRIPT = ROOT / "autolog_mlflow.py"
SEARCH = {"cv": 5, "seed": 42, "test_size": 0.25}
DEFAULT_GRID = {"n_estimators": [50, 100, 200], "max_depth": [None, 5, 10]}
# Small forests, so that the grid size and not the fitting dominates the scaling runs.
SCALING_GRIDS = {
    9: {"n_estimators": [5, 10, 20], "max_depth": [None, 5, 10]},
    80: {"n_estimators": [5, 10, 20, 40], "max_depth": [None, 3, 5, 10, 20],
         "min_samples_leaf": [1, 2, 4, 8]},
    320: {
        "n_estimators": [5, 10, 20, 40],
        "max_depth": [None, 3, 5, 10, 20],
        "min_samples_leaf": [1, 2, 4, 8],
        "max_features": ["sqrt", "log2", 0.5, None],
    },
}  # fmt: skip
# The data-size sweep: synthetic tables (seeded make_classification, 20 features, a binary
# target) passed with --data/--target, and a small grid, so that the rows and not the grid
# drive the cost.
DATA_SIZES = [20_000, 200_000]
DATA_GRID = {"n_estimators": [10], "max_depth": [5, 10]}
DATA_SEARCH = {"cv": 3, "seed": 42, "test_size": 0.25, "n_jobs": -1}
# The searches without MLflow, as programs: the data and its split, a search, the held-out
# scores. Each is HEAD, its own SEARCHES entry, then TAIL.
HEAD = """
import json, sys
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, train_test_split
c = json.loads(sys.argv[1])
if c.get("data"):
    frame = pd.read_csv(c["data"])
    X, y = frame.drop(columns=[c["target"]]), frame[c["target"]]
else:
    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=c["test_size"], stratify=y, random_state=c["seed"])
"""
TAIL = """
y_pred = search.predict(X_test)
accuracy_score(y_test, y_pred), f1_score(y_test, y_pred)
roc_auc_score(y_test, search.predict_proba(X_test)[:, 1])
"""
SEARCHES = {
    # What a user writes instead of the script: the forest searched on the table as it is (the
    # bundled data, a numeric table), or with its text columns as ordinal codes.
    "plain": """
from sklearn.compose import make_column_transformer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OrdinalEncoder
estimator, grid = RandomForestClassifier(random_state=c["seed"]), c["grid"]
text = X.select_dtypes(exclude="number").columns
if len(text):
    codes = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                           encoded_missing_value=-1)
    estimator = make_pipeline(make_column_transformer((codes, text), remainder="passthrough"),
                              estimator)
    grid = {f"randomforestclassifier__{name}": values for name, values in grid.items()}
search = GridSearchCV(estimator, grid, cv=c["cv"], n_jobs=c["n_jobs"]).fit(X_train, y_train)
""",
    # The script's own search, less the tracking: its pipeline and fold cache, their code taken
    # from the script itself (run as __main__, as the script's are, so pickled by value).
    "bare": """
import ast, contextlib, hashlib, os, pickle, tempfile
from pathlib import Path
import skrub
from sklearn.base import clone
from sklearn.pipeline import Pipeline, make_pipeline
PIPELINE = {"TablePipeline", "FoldCache", "fold_cache", "CachedTransform", "transformed",
            "table_pipeline"}
PREPROCESSING = None  # the script's default: skrub's tabular pipeline
script = ast.parse(open(c["script"]).read())
pipeline_code = [node for node in script.body if getattr(node, "name", None) in PIPELINE]
exec(compile(ast.Module(pipeline_code, []), c["script"], "exec"))
ESTIMATOR = RandomForestClassifier()
with fold_cache() as folds:
    search = GridSearchCV(table_pipeline(c["seed"], folds), c["grid"], cv=c["cv"],
                          n_jobs=c["n_jobs"]).fit(X_train, y_train)
""",
}


# The default search fitted with and without the progress callback, in one process (imports
# and loky's start-up paid once, before the first timed fit); prints the seconds as JSON. The
# callback comes from the script run as a file, not imported as a module, so that it reaches
# the workers pickled by value, as from the script's __main__ (imported, it would make every
# worker import MLflow).
PROGRESS = """
import json, runpy, sys, time
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV
SearchProgress = runpy.run_path(sys.argv[2])["SearchProgress"]
c = json.loads(sys.argv[1])
X, y = load_breast_cancer(return_X_y=True, as_frame=True)
def fit(with_progress):
    search = GridSearchCV(RandomForestClassifier(random_state=c["seed"]), c["grid"], cv=c["cv"],
                          n_jobs=c["n_jobs"])
    if with_progress:
        search.set_callbacks(SearchProgress())
    start, cpu = time.perf_counter(), time.process_time()  # CPU: this process and its threads
    search.fit(X, y)
    return time.perf_counter() - start, time.process_time() - cpu
fit(False), fit(True)  # warm up: loky's workers, and their imports for the callback
seconds = {"without": [], "with": []}
for round_ in range(c["rounds"]):
    for variant in (["without", "with"] if round_ % 2 else ["with", "without"]):
        seconds[variant].append(fit(variant == "with"))
print(json.dumps(seconds))
"""


# Linux starts a child's peak memory (ru_maxrss) at its parent's at the fork and keeps it across
# exec: measured from this process (MLflow imported, tables read), every command seemed to take
# at least this process's memory. So a small Python forks the command and reports its peak.
PEAK_OF_CHILD = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as file:
    file.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(command, cwd, env=None):
    """Wall seconds and peak RSS (MiB, the largest process of the tree) of one command; `env`
    adds to its environment."""
    with tempfile.NamedTemporaryFile("r") as peak:
        start = time.perf_counter()
        process = subprocess.run(
            [sys.executable, "-c", PEAK_OF_CHILD, peak.name, *map(str, command)], cwd=cwd,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ | (env or {}),
            check=False,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        if process.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, command))} failed:\n{process.stderr.decode()}")
        return seconds, int(peak.read()) / 1024


def bare_command(grid, n_jobs, search=SEARCH, data=None, kind="bare"):
    config = search | {"grid": grid, "n_jobs": n_jobs, "data": data, "target": "label",
                       "script": str(SCRIPT)}  # fmt: skip
    return [sys.executable, "-c", HEAD + SEARCHES[kind] + TAIL, json.dumps(config)]


def plain_command(grid, n_jobs, search=SEARCH, data=None):
    return bare_command(grid, n_jobs, search, data, kind="plain")


def script_command(grid, n_jobs, *extra, search=SEARCH):
    return [
        sys.executable, str(SCRIPT), "--param-grid", json.dumps(grid), "--n-jobs", str(n_jobs),
        "--cv", str(search["cv"]), "--seed", str(search["seed"]),
        "--test-size", str(search["test_size"]), "--max-tuning-runs", "all", *extra,
    ]  # fmt: skip


def summary(samples):
    seconds = [s for s, _ in samples]
    return {
        "median": statistics.median(seconds),
        "min": min(seconds),
        "max": max(seconds),
        "rss": max(m for _, m in samples),
    }


# The searches compared with the plain one: (title, grid, search settings, n_jobs, fresh store)
VARIANTS = [
    ("Default search (9 candidates x 5 folds), n_jobs=1", DEFAULT_GRID, SEARCH, 1, True),
    ("Default search (9 candidates x 5 folds), n_jobs=-1", DEFAULT_GRID, SEARCH, -1, True),
    ("80 candidates x 3 folds, small forests, n_jobs=-1", SCALING_GRIDS[80], SEARCH | {"cv": 3},
     -1, False),
]  # fmt: skip


def compare_variants(grid, search, n_jobs, fresh, rounds, workdir):
    """Interleaved rounds of plain / bare / fresh store / warm store; returns their summaries."""
    commands = {
        "plain": plain_command(grid, n_jobs, search),
        "bare": bare_command(grid, n_jobs, search),
        "fresh": script_command(grid, n_jobs, search=search),
        "warm": script_command(grid, n_jobs, search=search),
    }
    if not fresh:
        del commands["fresh"]
    warm_dir = Path(tempfile.mkdtemp(dir=workdir))
    measure(commands["warm"], warm_dir)  # create the warm store
    samples = {name: [] for name in commands}
    for round_ in range(rounds):
        for name, command in commands.items():
            folder = tempfile.mkdtemp(dir=workdir) if name == "fresh" else warm_dir
            samples[name].append(measure(command, folder))
        print(f"  {json.dumps(grid)[:40]}... n_jobs={n_jobs} round {round_ + 1}/{rounds}",
              file=sys.stderr, flush=True)  # fmt: skip
    return {name: summary(values) for name, values in samples.items()}


def print_variants(title, results):
    plain, bare = results["plain"], results["bare"]
    print(f"\n### {title}\n")
    print("| variant | median s | min-max s | peak RSS MiB | time / plain | time / bare "
          "| RSS / plain |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['median']:.2f} | {r['min']:.2f}-{r['max']:.2f} | {r['rss']:.0f} "
            f"| {r['median'] / plain['median']:.2f} | {r['median'] / bare['median']:.2f} "
            f"| {r['rss'] / plain['rss']:.2f} |"
        )


def scaling(rounds, workdir, sizes, cv, tracking_uri=None):
    """Per grid size: the logging overhead (script - bare, medians) and the ratio script / bare;
    the cost per child run; and where one run of the largest grid spends its time."""
    extra = ["--tracking-uri", tracking_uri] if tracking_uri else []
    search = SEARCH | {"cv": cv}
    overhead, ratio = {}, {}
    warm_dir = Path(tempfile.mkdtemp(dir=workdir))
    measure(script_command(SCALING_GRIDS[9], 1, *extra, search=search), warm_dir)  # warm it
    for size in sizes:
        bare, script = [], []
        for _ in range(rounds):
            bare.append(measure(bare_command(SCALING_GRIDS[size], 1, search), workdir)[0])
            script.append(
                measure(script_command(SCALING_GRIDS[size], 1, *extra, search=search), warm_dir)[0]
            )
        overhead[size] = statistics.median(script) - statistics.median(bare)
        ratio[size] = statistics.median(script) / statistics.median(bare)
        print(f"  scaling {tracking_uri or 'sqlite'}: {size} done", file=sys.stderr, flush=True)
    smallest, largest = min(overhead), max(overhead)
    per_child_ms = 1000 * (overhead[largest] - overhead[smallest]) / (largest - smallest)
    profile = profile_script(
        script_command(SCALING_GRIDS[largest], 1, *extra, search=search), warm_dir
    )
    return overhead, ratio, per_child_ms, profile


def write_table(rows, folder, kind="numeric"):
    """A seeded synthetic CSV of `rows` rows, 20 numeric features and a binary `label`; the
    "text" kind adds what real tables have: gaps in two numeric columns, three text columns
    (one with gaps, one derived from a feature so that it informs) and a date column."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=rows, n_features=20, n_informative=10, random_state=0)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(20)])
    if kind == "text":
        rng = np.random.default_rng(0)
        for column in ("x0", "x1"):
            frame[column] = frame[column].mask(rng.random(rows) < 0.05)
        frame["colour"] = pd.Series(rng.choice(["red", "green", "blue", "amber"], rows)).mask(
            rng.random(rows) < 0.05
        )
        frame["size"] = pd.cut(frame.x2, 4, labels=["S", "M", "L", "XL"]).astype(str)
        frame["city"] = rng.choice([f"city {i}" for i in range(30)], rows)
        days = pd.to_timedelta(rng.integers(0, 900, rows), unit="D")
        frame["day"] = (pd.Timestamp("2024-01-01") + days).strftime("%Y-%m-%d")
    path = Path(folder, f"table_{kind}_{rows}.csv")
    frame.assign(label=y).to_csv(path, index=False)
    return path


def data_sizes(sizes, rounds, workdir, kind="numeric"):
    """Plain, bare and script (warm store), interleaved, per table size; returns their summaries
    (with the table's size in memory, as pandas reads it) and a profile of the largest."""
    warm_dir = Path(tempfile.mkdtemp(dir=workdir))
    measure(script_command(SCALING_GRIDS[9], 1), warm_dir)  # create the warm store
    results = {}
    for rows in sizes:
        table = write_table(rows, workdir, kind)
        script = script_command(
            DATA_GRID, DATA_SEARCH["n_jobs"], "--data", str(table), "--target", "label",
            search=DATA_SEARCH,
        )  # fmt: skip
        commands = {
            "plain": plain_command(DATA_GRID, DATA_SEARCH["n_jobs"], DATA_SEARCH, str(table)),
            "bare": bare_command(DATA_GRID, DATA_SEARCH["n_jobs"], DATA_SEARCH, str(table)),
            "script": script,
        }
        samples = {name: [] for name in commands}
        for round_ in range(rounds):
            for name, command in commands.items():
                samples[name].append(measure(command, warm_dir if name == "script" else workdir))
            print(f"  {rows} rows: round {round_ + 1}/{rounds}", file=sys.stderr, flush=True)
        results[rows] = {name: summary(values) for name, values in samples.items()}
        results[rows]["table MiB"] = table_mib(table)
    return results, profile_script(script, warm_dir)


def table_mib(path):
    """The table's size in memory as pandas reads it (in a process of its own: see measure)."""
    program = (
        "import sys, pandas; print(pandas.read_csv(sys.argv[1]).memory_usage(deep=True).sum())"
    )
    size = subprocess.run([sys.executable, "-c", program, path], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return int(size.stdout) / 2**20


# Where the script's time goes: the cumulative time of these steps in one profiled run.
PROFILED_STEPS = {
    "opening the store": "autolog_mlflow.py:prepare_tracking",
    "building datasets (digest, schema)": "mlflow/data/pandas_dataset.py:from_pandas",
    "autologging: training metrics and plots": "mlflow/sklearn/utils.py:_log_estimator_content",
    "autologging: child runs": "mlflow/sklearn/utils.py:_create_child_runs_for_parameter_search",
    "autologging: writing what it queued (the child runs' params, metrics, ends)": "mlflow/utils/autologging_utils/client.py:flush",
    "recording the datasets": "autolog_mlflow.py:register_datasets",
    "held-out metrics (bare work too)": "autolog_mlflow.py:score_on_test_split",
    "describing the data, its profile": "autolog_mlflow.py:describe_data|"
    "autolog_mlflow.py:log_data_description",
    "explaining the run (grid picture, importance, confusion matrix)": "autolog_mlflow.py:explain_run",
    "logging the best model": "autolog_mlflow.py:log_best_model",
    "reading back, verifying": "autolog_mlflow.py:read_run_back|autolog_mlflow.py:require_complete",
}


def profile_script(command, cwd):
    """Seconds per step of PROFILED_STEPS in one cProfiled run of the script (main process)."""
    import pstats

    profile = Path(tempfile.mkdtemp(dir=cwd), "script.prof")
    python, *script = command
    measure([python, "-m", "cProfile", "-o", str(profile), *script], cwd)
    stats = pstats.Stats(str(profile)).stats
    seconds = {}
    for step, functions in PROFILED_STEPS.items():
        seconds[step] = sum(
            cumulative
            for (path, _, name), (_, _, _, cumulative, _) in stats.items()
            for function in functions.split("|")
            if f"{path}:{name}".endswith(function)
        )
    return seconds


def print_data_sizes(results, profile, kind):
    print(f"\n### Data size, {kind} table: {json.dumps(DATA_GRID)}, cv {DATA_SEARCH['cv']}, "
          "n_jobs -1, warm store\n")  # fmt: skip
    print("| rows | table MiB | plain s | bare s | script s | script / plain | bare / plain "
          "| plain MiB | bare MiB | script MiB | script MiB - plain MiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for rows, r in results.items():
        plain, bare, script = r["plain"], r["bare"], r["script"]
        print(
            f"| {rows:,} | {r['table MiB']:.0f} | {plain['median']:.2f} | {bare['median']:.2f} "
            f"| {script['median']:.2f} | {script['median'] / plain['median']:.2f} "
            f"| {bare['median'] / plain['median']:.2f} | {plain['rss']:.0f} | {bare['rss']:.0f} "
            f"| {script['rss']:.0f} | {script['rss'] - plain['rss']:.0f} |"
        )
    (small, *_, large) = results.values()
    extra = (large["script"]["rss"] - large["plain"]["rss"]) - (
        small["script"]["rss"] - small["plain"]["rss"]
    )
    grown = large["table MiB"] - small["table MiB"]
    print(f"\nExtra memory (script - plain) grown from {min(results):,} to {max(results):,} rows: "
          f"{extra:.0f} MiB, for {grown:.0f} MiB more table ({extra / grown:.2f} of it)")  # fmt: skip
    print(f"\nWhere the script's time goes at {max(results):,} rows (one cProfiled run, main")
    print("process; profiling inflates Python-heavy steps):\n")
    print("| step | s |")
    print("|---|---|")
    for step, seconds in profile.items():
        print(f"| {step} | {seconds:.2f} |")


def progress_overhead(n_jobs, rounds, on_terminal):
    """(wall, CPU) seconds of the default search's fit without and with SearchProgress."""
    config = SEARCH | {"grid": DEFAULT_GRID, "n_jobs": n_jobs, "rounds": rounds}
    command = [sys.executable, "-c", PROGRESS, json.dumps(config), str(SCRIPT)]
    if not on_terminal:
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(result.stdout)
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)

    def drain():  # read what the bar draws, as a terminal would, so that it never blocks
        with contextlib.suppress(OSError):
            while os.read(controller, 65536):
                pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout = process.stdout.read()
    process.wait()
    os.close(controller)
    return json.loads(stdout)


def print_progress_overhead(results):
    """Wall time: medians and the median of the paired ratios; CPU time of the main process
    (with n_jobs=1 it does every fit; with -1, what the callback adds there is the difference)."""
    print("\n### Live progress: the default search's fit without and with SearchProgress\n")
    print("| stderr | n_jobs | without s | with s | with / without | median paired ratio "
          "| main CPU without s | main CPU with s | CPU with / without |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for (display, n_jobs), seconds in results.items():
        wall, cpu = (
            {key: [sample[i] for sample in seconds[key]] for key in seconds} for i in (0, 1)
        )
        without, with_ = (statistics.median(wall[key]) for key in ("without", "with"))
        paired = statistics.median(w / wo for w, wo in zip(wall["with"], wall["without"]))
        cpu_without, cpu_with = (statistics.median(cpu[key]) for key in ("without", "with"))
        print(
            f"| {display} | {n_jobs} | {without:.2f} | {with_:.2f} | {with_ / without:.3f} "
            f"| {paired:.3f} | {cpu_without:.2f} | {cpu_with:.2f} | {cpu_with / cpu_without:.3f} |"
        )


# A team server's login: the same small run through a server without a login and through two
# with MLflow's basic-auth app, its login cache off (MLflow's default) and on (team_server.py's).
LOGIN_SERVERS = {"no login": None, "login, no cache": 0, "login, cache 60 s": 60}
LOGIN_GRID = {"n_estimators": [5], "max_depth": [2]}
MEMBER = "member"  # an ordinary user: admins skip the permission checks that members pay for
REQUESTS = 20  # timed requests per server and user


def login_overhead(rounds, workdir):
    """Per server: the run's seconds by round, and one request's seconds as each user."""
    users = {name: (name, f"{name}-{os.urandom(8).hex()}") for name in (ADMIN, MEMBER)}
    member = dict(zip(["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"], users[MEMBER]))
    command = script_command(LOGIN_GRID, 1, search=SEARCH | {"cv": 2})
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, cache in LOGIN_SERVERS.items():
            folder = tempfile.mkdtemp(dir=workdir)
            password = None if cache is None else users[ADMIN][1]
            servers[name] = stack.enter_context(team_server(folder, password,
                                                            login_cache_seconds=cache))  # fmt: skip
            if password:
                create = {"username": MEMBER, "password": users[MEMBER][1]}
                requests.post(f"{servers[name].url}/api/2.0/mlflow/users/create",
                              auth=users[ADMIN], json=create).raise_for_status()  # fmt: skip
            # The member's first run creates the experiment (and owns it), and warms the store.
            measure([*command, "--tracking-uri", servers[name].url], workdir, member)
        seconds = {name: [] for name in servers}
        for round_ in range(rounds):
            names = list(servers)
            for name in names[round_ % 3 :] + names[: round_ % 3]:  # each goes first in turn
                run = [*command, "--tracking-uri", servers[name].url]
                seconds[name].append(measure(run, workdir, member)[0])
            print(f"  login round {round_ + 1}/{rounds}", file=sys.stderr, flush=True)
        per_request = {
            (name, user): request_seconds(server.url, users[user])
            for (name, server), user in itertools.product(servers.items(), users)
        }
    return seconds, per_request


def request_seconds(url, credentials):
    """The median seconds of a cheap authenticated read (an experiment by name), after one
    untimed request that fills a login cache."""
    session = requests.Session()
    session.auth = credentials
    read = f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"
    session.get(read).raise_for_status()
    timed = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        session.get(read).raise_for_status()
        timed.append(time.perf_counter() - start)
    return statistics.median(timed)


def password_check_seconds():
    """One check of a password against the hash MLflow's auth app stores (werkzeug's default)."""
    from werkzeug.security import check_password_hash, generate_password_hash

    stored = generate_password_hash("a-password-of-some-length")
    start = time.perf_counter()
    for _ in range(5):
        check_password_hash(stored, "a-password-of-some-length")
    return (time.perf_counter() - start) / 5, stored.split("$")[0]


def print_login_overhead(seconds, per_request):
    plain = statistics.median(seconds["no login"])
    check, method = password_check_seconds()
    print("\n### A team server's login: one candidate, cv 2, run by a team member\n")
    print(
        "| server | run median s | min-max s | run / no login | request as admin ms "
        "| request as member ms |"
    )
    print("|---|---|---|---|---|---|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.2f} | {min(values):.2f}-{max(values):.2f} "
            f"| {median / plain:.2f} | {1000 * per_request[name, ADMIN]:.0f} "
            f"| {1000 * per_request[name, MEMBER]:.0f} |"
        )
    print(f"\nOne password check ({method}) in this process: {1000 * check:.0f} ms.")


# The heartbeat's period in each variant (seconds; None: the script's own HEARTBEAT_SECONDS).
HEARTBEATS = {"once a day (none after the first)": 86_400, "default": None, "every second": 1}


def heartbeat_cost(rounds, workdir):
    """Whole-process seconds of the default run, warm store, per heartbeat period, interleaved;
    the other periods run a copy of the script with only HEARTBEAT_SECONDS edited."""
    commands = {}
    for label, seconds in HEARTBEATS.items():
        command = script_command(DEFAULT_GRID, -1)
        if seconds is not None:
            copy = Path(tempfile.mkdtemp(dir=workdir), SCRIPT.name)
            edited = f"HEARTBEAT_SECONDS = {seconds}  # instead of "
            copy.write_text(SCRIPT.read_text().replace("HEARTBEAT_SECONDS = ", edited, 1))
            command[1] = str(copy)
        commands[label] = command
    warm_dir = Path(tempfile.mkdtemp(dir=workdir))
    measure(commands["default"], warm_dir)  # create the warm store
    samples = {label: [] for label in commands}
    for round_ in range(rounds):
        for label, command in commands.items():
            samples[label].append(measure(command, warm_dir))
        print(f"  heartbeat round {round_ + 1}/{rounds}", file=sys.stderr, flush=True)
    return {label: summary(values) for label, values in samples.items()}


def print_against(title, what, results, reference, reference_name):
    """A table of `results`' medians and spreads, each against the `reference` one's median."""
    base = results[reference]["median"]
    print(f"\n### {title}\n")
    print(f"| {what} | median s | min-max s | time / {reference_name} |")
    print("|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['median']:.2f} | {r['min']:.2f}-{r['max']:.2f} "
              f"| {r['median'] / base:.3f} |")  # fmt: skip


def print_heartbeat_cost(results):
    print_against("Heartbeat: the default run (9 candidates x 5 folds, n_jobs -1), warm store",
                  "heartbeat", results, "once a day (none after the first)", "once a day")  # fmt: skip


# The explanation's cost (--only-explanation): the script beside a copy of it that explains
# nothing. The copy's edits: explain_run() logs nothing and returns no importance, and the run's
# completeness check stops expecting the explanation's artifacts.
WITHOUT_EXPLANATION = {
    "def explain_run(search, data, y_pred, seed):\n": "def explain_run(search, data, y_pred, seed):"
    "\n    return pd.DataFrame(columns=['column', 'importance', 'std']), 0\n\n\n"
    "def explained_before_the_benchmark(search, data, y_pred, seed):\n",
    "EXPLANATION = [": "EXPLANATION = [] and [",
    '"held_out_confusion_matrix.png"]': "]",
}


def without_explanation(workdir):
    """A copy of the script with the WITHOUT_EXPLANATION edits, each made exactly once."""
    text = SCRIPT.read_text()
    for old, new in WITHOUT_EXPLANATION.items():
        if text.count(old) != 1:
            raise SystemExit(f"the script changed: update WITHOUT_EXPLANATION ({old.strip()!r})")
        text = text.replace(old, new)
    copy = Path(tempfile.mkdtemp(dir=workdir), SCRIPT.name)
    copy.write_text(text)
    return copy


def explanation_cost(rounds, workdir):
    """Whole-process seconds with and without the explanation, interleaved, warm store: on the
    default search (bundled data, n_jobs -1) and on the 200,000-row table with text columns."""
    table = write_table(200_000, workdir, "text")
    searches = {
        "default search (9 candidates x 5 folds, bundled data)": script_command(DEFAULT_GRID, -1),
        "200,000-row table with text, gaps and dates": script_command(
            DATA_GRID, DATA_SEARCH["n_jobs"], "--data", str(table), "--target", "label",
            search=DATA_SEARCH,
        ),
    }  # fmt: skip
    copy, results = without_explanation(workdir), {}
    for name, command in searches.items():
        variants = {"with": command, "without": [command[0], str(copy), *command[2:]]}
        warm_dir = Path(tempfile.mkdtemp(dir=workdir))
        measure(command, warm_dir)  # create the warm store
        samples = {variant: [] for variant in variants}
        for round_ in range(rounds):
            for variant in variants if round_ % 2 else reversed(variants):
                samples[variant].append(measure(variants[variant], warm_dir))
            print(f"  explanation, {name}: round {round_ + 1}/{rounds}", file=sys.stderr,
                  flush=True)  # fmt: skip
        results[name] = {variant: summary(values) for variant, values in samples.items()}
    return results


def print_explanation_cost(results):
    print("\n### The explanation (grid picture, raw-column importance, held-out confusion matrix)")
    print("\n| search | without s | with s | time / without | share of the run |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        without, with_ = r["without"]["median"], r["with"]["median"]
        print(f"| {name} | {without:.2f} | {with_:.2f} | {with_ / without:.3f} "
              f"| {100 * (with_ - without) / with_:.1f} % |")  # fmt: skip


# --resume (--only-resume): a search stopped once half its candidates are scored, then resumed,
# against the same search run in full; 20 candidates x 5 folds on the bundled data, n_jobs -1.
RESUME_GRID = {"n_estimators": [50, 100, 150, 200, 250], "max_depth": [None, 4, 6, 8]}


def stopped_at_half(command, cwd):
    """Start `command` in `cwd` and stop it (Ctrl-C) once half its candidates' child runs hold
    their fold results; the stopped run's ID."""
    from mlflow import MlflowClient

    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    run_id = process.stderr.readline().split()[1].rstrip(":")
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    half = math.prod(len(values) for values in RESUME_GRID.values()) // 2
    experiment = client.get_run(run_id).info.experiment_id
    while process.poll() is None:
        children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'")
        if sum("autolog_mlflow.folds" in child.data.tags for child in children) >= half:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    process.communicate()
    if process.returncode != 130:
        raise SystemExit(f"the search to stop ended with {process.returncode}, not stopped")
    return run_id


def resume_cost(rounds, workdir):
    """Whole-process seconds of the plain search a user would write instead, the script's full
    search and --resume of it stopped at half, in turn, warm store (the stopped run's own
    seconds are not counted)."""
    full, plain = script_command(RESUME_GRID, -1), plain_command(RESUME_GRID, -1)
    warm_dir = Path(tempfile.mkdtemp(dir=workdir))
    measure(full, warm_dir)  # create the warm store
    samples = {"plain GridSearchCV": [], "full search": [], "resumed, stopped at half": []}
    for round_ in range(rounds):
        samples["plain GridSearchCV"].append(measure(plain, warm_dir))
        samples["full search"].append(measure(full, warm_dir))
        stopped = stopped_at_half(full, warm_dir)
        resume = [sys.executable, str(SCRIPT), "--resume", stopped]
        samples["resumed, stopped at half"].append(measure(resume, warm_dir))
        print(f"  resume round {round_ + 1}/{rounds}", file=sys.stderr, flush=True)
    return {label: summary(values) for label, values in samples.items()}


def print_resume_cost(results):
    print_against("--resume: 20 candidates x 5 folds, bundled data, n_jobs -1, warm store",
                  "run", results, "plain GridSearchCV", "plain search")  # fmt: skip
    resumed, full = results["resumed, stopped at half"], results["full search"]
    print(f"\nresumed / full search: {resumed['median'] / full['median']:.3f}")


def machine():
    import mlflow
    import sklearn

    return (
        f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, MLflow {mlflow.__version__}, scikit-learn "
        f"{sklearn.__version__}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--scaling-rounds", type=int, default=3, help="rounds per grid size")
    parser.add_argument("--scaling-cv", type=int, default=SEARCH["cv"], help="folds of the scaling")
    parser.add_argument("--skip-scaling", action="store_true", help="no grid-size scaling")
    parser.add_argument(
        "--scaling-stores",
        default="sqlite,server,postgres",
        help="stores of the grid-size scaling: sqlite, server (on SQLite), postgres (a server on it)",
    )
    parser.add_argument(
        "--scaling-sizes",
        default=",".join(map(str, SCALING_GRIDS)),
        help="grid sizes of the scaling, comma-separated, of " + ", ".join(map(str, SCALING_GRIDS)),
    )
    parser.add_argument("--data-rounds", type=int, default=3, help="rounds per table size")
    parser.add_argument(
        "--data-sizes",
        default=",".join(map(str, DATA_SIZES)),
        help="table sizes in rows, comma-separated; 'none' to skip the data-size sweep",
    )
    parser.add_argument(
        "--data-kinds",
        default="numeric,text",
        help="tables of the data-size sweep: numeric, and text (text columns, gaps and dates)",
    )
    parser.add_argument("--only-data-sizes", action="store_true", help="only the data sweep")
    parser.add_argument("--skip-variants", action="store_true", help="no plain/bare/warm rounds")
    parser.add_argument("--progress-rounds", type=int, default=6, help="0: no progress rounds")
    parser.add_argument("--only-progress", action="store_true", help="only the progress rounds")
    parser.add_argument("--login-rounds", type=int, default=3, help="rounds of --only-login")
    parser.add_argument("--only-login", action="store_true", help="only a server's login cost")
    parser.add_argument("--heartbeat-rounds", type=int, default=5, help="0: no heartbeat rounds")
    parser.add_argument("--only-heartbeat", action="store_true", help="only the heartbeat rounds")
    parser.add_argument("--explanation-rounds", type=int, default=3, help="rounds per search")
    parser.add_argument("--only-explanation", action="store_true", help="only the explanation")
    parser.add_argument("--resume-rounds", type=int, default=3, help="rounds of --only-resume")
    parser.add_argument("--only-resume", action="store_true", help="only --resume's time")
    args = parser.parse_args()

    print(f"Machine: {machine()}")
    if args.only_login:
        with tempfile.TemporaryDirectory() as workdir:
            print_login_overhead(*login_overhead(args.login_rounds, workdir))
        return
    if args.only_resume:
        with tempfile.TemporaryDirectory() as workdir:
            print_resume_cost(resume_cost(args.resume_rounds, workdir))
        return
    if args.only_explanation:
        with tempfile.TemporaryDirectory() as workdir:
            print_explanation_cost(explanation_cost(args.explanation_rounds, workdir))
        return
    if args.heartbeat_rounds:
        with tempfile.TemporaryDirectory() as workdir:
            print_heartbeat_cost(heartbeat_cost(args.heartbeat_rounds, workdir))
    if args.only_heartbeat:
        return
    if args.progress_rounds:
        rounds = args.progress_rounds
        print_progress_overhead({
            (display, n_jobs): progress_overhead(n_jobs, rounds, display == "terminal")
            for display in ("terminal", "pipe")
            for n_jobs in (1, -1)
        })  # fmt: skip
    if args.only_progress:
        return
    with tempfile.TemporaryDirectory() as workdir:
        if args.data_sizes != "none":
            sizes = [int(size) for size in args.data_sizes.split(",")]
            for kind in args.data_kinds.split(","):
                print_data_sizes(*data_sizes(sizes, args.data_rounds, workdir, kind), kind)
        if args.only_data_sizes:
            return
        for title, grid, search, n_jobs, fresh in [] if args.skip_variants else VARIANTS:
            results = compare_variants(grid, search, n_jobs, fresh, args.rounds, workdir)
            print_variants(title, results)
        if args.skip_scaling:
            return
        stores, results = args.scaling_stores.split(","), {}
        sizes = [int(size) for size in args.scaling_sizes.split(",")]
        scale = functools.partial(scaling, args.scaling_rounds, workdir, sizes, args.scaling_cv)
        if "sqlite" in stores:
            results["SQLite"] = scale()
        if "server" in stores:
            server_dir = tempfile.mkdtemp(dir=workdir)
            with mlflow_server(f"sqlite:///{server_dir}/mlflow.db", server_dir, "server") as server:
                results["mlflow server on SQLite"] = scale(server.url)
        if "postgres" in stores:
            with team_server(tempfile.mkdtemp(dir=workdir)) as server:
                results["mlflow server on PostgreSQL"] = scale(server.url)
    print_scaling(results, sizes, args.scaling_cv)


def print_scaling(results, sizes, cv):
    print(f"\n### Scaling: every candidate a child run, cv {cv}, n_jobs=1\n")
    header = " | ".join(f"{size}: overhead s (script / bare)" for size in sizes)
    print(f"| store | {header} | per child run ms |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for store, (overhead, ratio, per_child_ms, _) in results.items():
        cells = " | ".join(f"{overhead[size]:.2f} ({ratio[size]:.2f}x)" for size in sizes)
        print(f"| {store} | {cells} | {per_child_ms:.1f} |")
    print(f"\nWhere one run of the {max(sizes)}-candidate grid spends its time, s (one cProfiled")
    print("run per store, main thread; profiling inflates Python-heavy steps):\n")
    print(f"| step | {' | '.join(results)} |")
    print("|---|" + "---|" * len(results))
    for step in PROFILED_STEPS:
        print(f"| {step} | {' | '.join(f'{r[3][step]:.2f}' for r in results.values())} |")


if __name__ == "__main__":
    main()
