"""What does tracking cost? autolog_mlflow.py against the same search without MLflow.

    python benchmarks/overhead.py                 # the full benchmark (about 15 minutes)
    python benchmarks/overhead.py --rounds 2 --skip-scaling   # a quick look

Whole processes, interleaved (A B C, A B C, ...) so that a noisy machine hurts every variant
alike, and compared by their medians:
  bare    the same data, split, grid, CV, seed and n_jobs, without MLflow
  fresh   autolog_mlflow.py on a store that does not exist yet
  warm    autolog_mlflow.py on a store that already exists
at --n-jobs 1 and -1. Then scaling: grids of 9, 36 and 144 candidates with every candidate
logged as a child run, on SQLite and on a real `mlflow server` on 127.0.0.1; the cost per child
run is the slope of the logging overhead (script minus bare) between the smallest and the
largest grid. Not a test: it prints figures and ratios, and asserts nothing.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from mlflow_ui import mlflow_server  # noqa: E402

SCRIPT = ROOT / "autolog_mlflow.py"
SEARCH = {"cv": 5, "seed": 42, "test_size": 0.25}
DEFAULT_GRID = {"n_estimators": [50, 100, 200], "max_depth": [None, 5, 10]}
# Small forests, so that the grid size and not the fitting dominates the scaling runs.
SCALING_GRIDS = {
    9: {"n_estimators": [5, 10, 20], "max_depth": [None, 5, 10]},
    36: {"n_estimators": [5, 10, 20], "max_depth": [None, 5, 10], "min_samples_leaf": [1, 2, 4, 8]},
    144: {
        "n_estimators": [5, 10, 20],
        "max_depth": [None, 5, 10],
        "min_samples_leaf": [1, 2, 4, 8],
        "max_features": ["sqrt", "log2", 0.5, None],
    },
}
# The search without MLflow: what autolog_mlflow.py does, less the tracking.
BARE = """
import json, sys
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, train_test_split
c = json.loads(sys.argv[1])
X, y = load_breast_cancer(return_X_y=True, as_frame=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=c["test_size"], stratify=y, random_state=c["seed"])
search = GridSearchCV(RandomForestClassifier(random_state=c["seed"]), c["grid"], cv=c["cv"],
                      n_jobs=c["n_jobs"]).fit(X_train, y_train)
y_pred = search.predict(X_test)
accuracy_score(y_test, y_pred), f1_score(y_test, y_pred)
roc_auc_score(y_test, search.predict_proba(X_test)[:, 1])
"""


def measure(command, cwd):
    """Wall seconds and peak RSS (MiB, the largest process of the tree) of one command."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read().decode()
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{stderr}")
    return seconds, usage.ru_maxrss / 1024


def bare_command(grid, n_jobs):
    config = SEARCH | {"grid": grid, "n_jobs": n_jobs}
    return [sys.executable, "-c", BARE, json.dumps(config)]


def script_command(grid, n_jobs, *extra):
    return [
        sys.executable, str(SCRIPT), "--param-grid", json.dumps(grid), "--n-jobs", str(n_jobs),
        "--cv", str(SEARCH["cv"]), "--seed", str(SEARCH["seed"]),
        "--test-size", str(SEARCH["test_size"]), "--max-tuning-runs", "all", *extra,
    ]  # fmt: skip


def summary(samples):
    seconds = [s for s, _ in samples]
    return {
        "median": statistics.median(seconds),
        "min": min(seconds),
        "max": max(seconds),
        "rss": max(m for _, m in samples),
    }


def compare_variants(n_jobs, rounds, workdir):
    """Interleaved rounds of bare / fresh store / warm store; returns their summaries."""
    warm_dir = Path(tempfile.mkdtemp(dir=workdir))
    measure(script_command(DEFAULT_GRID, n_jobs), warm_dir)  # create the warm store
    samples = {"bare": [], "fresh": [], "warm": []}
    for round_ in range(rounds):
        samples["bare"].append(measure(bare_command(DEFAULT_GRID, n_jobs), workdir))
        fresh_dir = tempfile.mkdtemp(dir=workdir)
        samples["fresh"].append(measure(script_command(DEFAULT_GRID, n_jobs), fresh_dir))
        samples["warm"].append(measure(script_command(DEFAULT_GRID, n_jobs), warm_dir))
        print(f"  n_jobs={n_jobs} round {round_ + 1}/{rounds}", file=sys.stderr, flush=True)
    return {name: summary(values) for name, values in samples.items()}


def print_variants(n_jobs, results):
    bare = results["bare"]
    print(f"\n### Default search (9 candidates x 5 folds), n_jobs={n_jobs}\n")
    print("| variant | median s | min-max s | peak RSS MiB | time / bare | RSS / bare |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['median']:.2f} | {r['min']:.2f}-{r['max']:.2f} | {r['rss']:.0f} "
            f"| {r['median'] / bare['median']:.2f} | {r['rss'] / bare['rss']:.2f} |"
        )


def scaling(rounds, workdir, tracking_uri=None):
    """Logging overhead (script - bare, medians) per grid size, and the cost per child run."""
    extra = ["--tracking-uri", tracking_uri] if tracking_uri else []
    overhead = {}
    warm_dir = Path(tempfile.mkdtemp(dir=workdir))
    measure(script_command(SCALING_GRIDS[9], 1, *extra), warm_dir)  # warm the store
    for size, grid in SCALING_GRIDS.items():
        bare, script = [], []
        for _ in range(rounds):
            bare.append(measure(bare_command(grid, 1), workdir)[0])
            script.append(measure(script_command(grid, 1, *extra), warm_dir)[0])
        overhead[size] = statistics.median(script) - statistics.median(bare)
        print(f"  scaling {tracking_uri or 'sqlite'}: {size} done", file=sys.stderr, flush=True)
    smallest, largest = min(overhead), max(overhead)
    per_child_ms = 1000 * (overhead[largest] - overhead[smallest]) / (largest - smallest)
    return overhead, per_child_ms


def machine():
    import sklearn

    import mlflow

    return (
        f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}, MLflow {mlflow.__version__}, scikit-learn "
        f"{sklearn.__version__}"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--scaling-rounds", type=int, default=3, help="rounds per grid size")
    parser.add_argument("--skip-scaling", action="store_true", help="only the default search")
    args = parser.parse_args()

    print(f"Machine: {machine()}")
    with tempfile.TemporaryDirectory() as workdir:
        for n_jobs in (1, -1):
            print_variants(n_jobs, compare_variants(n_jobs, args.rounds, workdir))
        if args.skip_scaling:
            return
        results = {"SQLite": scaling(args.scaling_rounds, workdir)}
        server_dir = tempfile.mkdtemp(dir=workdir)
        with mlflow_server(f"sqlite:///{server_dir}/mlflow.db", server_dir, "server") as server:
            results["mlflow server (HTTP)"] = scaling(args.scaling_rounds, workdir, server.url)
    print("\n### Scaling: every candidate a child run, n_jobs=1\n")
    sizes = " | ".join(f"overhead at {size} s" for size in SCALING_GRIDS)
    print(f"| store | {sizes} | per child run ms |")
    print("|---|" + "---|" * (len(SCALING_GRIDS) + 1))
    for store, (overhead, per_child_ms) in results.items():
        cells = " | ".join(f"{overhead[size]:.2f}" for size in SCALING_GRIDS)
        print(f"| {store} | {cells} | {per_child_ms:.1f} |")


if __name__ == "__main__":
    main()
