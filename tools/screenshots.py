"""Regenerate the README's pictures from a real run and the real MLflow UI.

    python tools/screenshots.py

Runs autolog_mlflow.py with its defaults into a temporary store, serves it with `mlflow ui` on
a free port of 127.0.0.1, and has headless Chromium (Debian's, driven by Playwright) write:
  pic1.png  the parent run's page: status, run ID, child runs, metrics, parameters
  pic2.png  its child runs compared: the grid's hyperparameters against mean_test_score
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow_ui import browser_page, mlflow_server, open_compare_page, open_run_page

ROOT = Path(__file__).resolve().parent.parent
SCORE = "mean_test_score"
SETTLE_SECONDS = 1.5  # let charts finish their entry animation before the shot


def run_experiment(workdir):
    result = subprocess.run(
        [sys.executable, str(ROOT / "autolog_mlflow.py"), "--json"],
        cwd=workdir, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


def main():
    with tempfile.TemporaryDirectory() as workdir:
        print("running the experiment ...", flush=True)
        report = run_experiment(workdir)
        tracking_uri = f"sqlite:///{workdir}/mlflow.db"
        experiment_id, run_id = report["experiment_id"], report["run_id"]
        children = [child["run_id"] for child in report["child_runs"]]
        child_names = [child["name"] for child in report["child_runs"]]
        assert MlflowClient(tracking_uri).get_run(run_id).info.status == "FINISHED"

        print("starting mlflow ui and headless Chromium ...", flush=True)
        with mlflow_server(tracking_uri, workdir) as server, browser_page() as page:
            open_run_page(page, server.url, experiment_id, run_id, child_names)
            time.sleep(SETTLE_SECONDS)
            page.screenshot(path=ROOT / "pic1.png")
            open_compare_page(page, server.url, experiment_id, children, SCORE)
            time.sleep(SETTLE_SECONDS)
            page.screenshot(path=ROOT / "pic2.png")
    print(f"wrote {ROOT / 'pic1.png'} and {ROOT / 'pic2.png'}")


if __name__ == "__main__":
    main()
