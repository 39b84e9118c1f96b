"""Run real MLflow servers on 127.0.0.1 and drive the real UI in headless Chromium.

Shared by tools/screenshots.py (which makes the README's pictures) and the tests.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote

CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright cannot download its own browsers here
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 1000}
# First visits open an assistant panel and a GenAI sidebar; these settings skip both.
FIRST_VISIT_SETTINGS = {
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.workflowType_v1": '"machine_learning"',
}
SERVER_START_TIMEOUT = 60  # seconds
SERVER_SETTINGS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
SQLITE_SERVER_SETTINGS = {"MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool"}


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen

    def stop(self, sig=signal.SIGTERM):
        """Stop the server and its workers: the whole process group it leads."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri, workdir, command="ui", extra_args=(), env=None, host="127.0.0.1", port=None
):
    """Run `mlflow ui` (or `mlflow server`) on `host` (a free port unless given); yield a Server.

    One worker and no job execution: ready in seconds, in 2 processes instead of 15. No
    connection pool for a SQLite store: under 8 concurrent clients the default pool (5 + 10
    connections, 30 s wait) runs dry and requests fail. Other databases keep MLflow's defaults.
    """
    port = port or free_port()
    sqlite = SQLITE_SERVER_SETTINGS if backend_store_uri.startswith("sqlite:") else {}
    env = os.environ | SERVER_SETTINGS | sqlite | (env or {})
    with open(os.path.join(workdir, f"mlflow-{command}-{port}.log"), "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", command, "--backend-store-uri", backend_store_uri,
             "--host", host, "--port", str(port), "--workers", "1", *extra_args],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so its workers stop with it
        )  # fmt: skip
        local = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # where this machine reaches it
        server = Server(f"http://{local}:{port}", process)
        try:
            wait_until_healthy(server.url, process)
            yield server
        finally:
            server.stop()


def wait_until_healthy(url, server):
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow ui exited with code {server.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"mlflow ui did not answer on {url} within {SERVER_START_TIMEOUT} s")


@contextlib.contextmanager
def browser_page(settings=FIRST_VISIT_SETTINGS):
    """A headless Chromium page with a fixed viewport, in a fresh profile with `settings` in its
    local storage (by default, first-visit panels skipped; {} for a newcomer's browser)."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as home, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=CHROMIUM_FLAGS,  # Playwright gives it a fresh profile of its own
            env=os.environ | {"HOME": home},  # Chromium writes under $HOME
        )
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.add_init_script(
                f"for (const [k, v] of Object.entries({json.dumps(settings)})) "
                "localStorage.setItem(k, v);"
            )
            yield context.new_page()
        finally:
            browser.close()


def run_page_url(base_url, experiment_id, run_id, tab=""):
    return f"{base_url}/#/experiments/{experiment_id}/runs/{run_id}{tab}"


def compare_page_url(base_url, experiment_id, run_ids):
    runs = quote(json.dumps(run_ids))
    experiments = quote(json.dumps([experiment_id]))
    return f"{base_url}/#/compare-runs?runs={runs}&experiments={experiments}"


CONTENT_TIMEOUT = 30_000  # ms; at `load` the UI shows grey placeholders until data arrives


def open_run_page(page, base_url, experiment_id, run_id, expected_texts=()):
    """Open a run's overview and wait until its ID and `expected_texts` are on screen."""
    page.goto(run_page_url(base_url, experiment_id, run_id))
    for text in [run_id, *expected_texts]:
        page.get_by_text(text).first.wait_for(timeout=CONTENT_TIMEOUT)


def open_artifacts_tab(page, base_url, experiment_id, run_id, expected_file):
    page.goto(run_page_url(base_url, experiment_id, run_id, "/artifacts"))
    page.get_by_text(expected_file).first.wait_for(timeout=CONTENT_TIMEOUT)


def open_compare_page(page, base_url, experiment_id, run_ids, metric):
    """Compare runs, with `metric` as the parallel-coordinates plot's only metric axis."""
    page.goto(compare_page_url(base_url, experiment_id, run_ids))
    page.get_by_text(f"Comparing {len(run_ids)} Runs").first.wait_for(timeout=CONTENT_TIMEOUT)
    plot = page.locator(".js-plotly-plot").first
    plot.wait_for(timeout=CONTENT_TIMEOUT)
    # The UI plots the first metric it finds (mean_fit_time); swap in the one we care about.
    metrics_select = (
        page.get_by_text("Metrics:", exact=True)
        .locator("..")
        .locator(".du-bois-light-select")
        .nth(1)
    )
    for chosen in metrics_select.locator(".du-bois-light-select-selection-item-remove").all():
        chosen.click()
    metrics_select.click()
    page.locator(".du-bois-light-select-item-option").filter(has_text=metric).first.click()
    page.keyboard.press("Escape")
    plot.get_by_text(metric).first.wait_for(timeout=CONTENT_TIMEOUT)
