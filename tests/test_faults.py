"""Fail fast, fail clearly, lose nothing: every fault here is provoked for real."""

import http.server
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import weakref

import mlflow
import pytest
import sqlalchemy
from conftest import (
    QUICK,
    SCRIPT,
    TINY,
    parent_runs,
    run_at_once,
    run_eight_at_once,
    run_script,
    script_env,
    start_script,
)
from mlflow import MlflowClient
from mlflow_ui import free_port

import autolog_mlflow

# A loaded machine can take over 10 s just to start the script: a time bound holds for the time
# beyond that of a reference run, measured side by side, that stops at the same point.
MARGIN = 5  # seconds


def start_run(workdir, *args):
    """Start the script as a terminal does, and wait until it has created its run; return
    (process, run_id)."""
    process = start_script(workdir, *args)  # Ctrl-C gets Python's own handler, in any case
    line = process.stderr.readline()  # "run <id>: searching ..."
    assert line.startswith("run "), line + process.stderr.read()
    return process, line.split()[1].rstrip(":")


def one_line_error(result):
    """The error line, the last of stderr: before it, only the run's progress lines and the
    warnings MLflow prints itself (`2026/12/06 10:45:50 WARNING mlflow...`)."""
    *before, last = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    progress = re.compile(r"(run |search: |logging the best model|closed run |"
                          r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (WARNING|ERROR) mlflow)")  # fmt: skip
    assert all(progress.match(line) for line in before), result.stderr
    return last


def run_status(workdir, run_id):
    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").get_run(run_id).info.status


def timed(function, *args):
    start = time.monotonic()
    result = function(*args)
    return result, time.monotonic() - start


def seconds_beyond_a_reference(run, workdir, *args):
    """`run(workdir, *args)` and the seconds it took beyond a run rejected at the tracking URI's
    first check, in a sibling folder (the check of a server's answer comes right after it)."""
    reference_dir = workdir.parent / f"{workdir.name}-reference"
    reference_dir.mkdir()
    reference, baseline = timed(run, reference_dir, "--tracking-uri", "sqlite://mlflow.db")
    assert reference.returncode == 2, reference.stderr
    result, seconds = timed(run, workdir, *args)
    return result, seconds - baseline


# --- An unreachable tracking server ---------------------------------------------------------


@pytest.mark.slow
def test_closed_port_fails_within_seconds_naming_uri_and_cause(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    result, seconds = seconds_beyond_a_reference(run_script, tmp_path, "--tracking-uri", uri)
    assert result.returncode == 1
    error = one_line_error(result)
    assert uri in error and "Connection refused" in error
    assert seconds < MARGIN  # refused at once: no retries, no timeout


@pytest.mark.slow
def test_server_that_never_answers_fails_within_its_timeout(tmp_path):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result, seconds = seconds_beyond_a_reference(run_script, tmp_path, "--tracking-uri", uri)
    assert result.returncode == 1
    assert "no answer within" in one_line_error(result)
    assert seconds < autolog_mlflow.SERVER_CHECK_TIMEOUT + MARGIN


def test_a_proxy_answering_for_a_server_that_is_down_fails_before_any_run(tmp_path):
    """A gateway answers 502 for a tracking server that is down: it is no server that answers."""

    class BadGateway(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(502, "Bad Gateway")

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), BadGateway) as proxy:
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{proxy.server_address[1]}"
        result = run_script(tmp_path, "--tracking-uri", uri)
        proxy.shutdown()
    assert result.returncode == 1
    assert one_line_error(result) == (
        f"autolog_mlflow.py: error: the tracking server {uri} does not work: {uri}/health "
        "answers 502 Bad Gateway"
    )
    assert list(tmp_path.iterdir()) == []


def test_password_in_tracking_uri_is_never_printed(tmp_path):
    uri = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"
    result = run_script(tmp_path, "--tracking-uri", uri)
    assert result.returncode == 1
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert "http://alice:***@127.0.0.1" in result.stderr


# --- Bad input about the store: rejected before any run, exit 2 ------------------------------


@pytest.mark.parametrize(
    "uri, message",
    [
        ("htp://127.0.0.1:5000", "unknown scheme"),
        ("localhost:5000", "did you mean http://localhost:5000?"),
        ("sqlite://mlflow.db", "three slashes"),
        ("http://:5000", "names no host"),
    ],
)
def test_malformed_tracking_uri_is_rejected_with_a_hint(tmp_path, script_main, uri, message):
    result = script_main("--tracking-uri", uri)
    assert result.returncode == 2
    assert message in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


def test_deleted_experiment_is_rejected_with_how_to_restore_it(tmp_path, script_main):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("old")
    client.delete_experiment(experiment_id)
    result = script_main("--experiment-name", "old")
    assert result.returncode == 2
    assert f"mlflow experiments restore --experiment-id {experiment_id}" in one_line_error(result)
    assert client.search_runs([experiment_id]) == []


def run_in_mount_namespace(workdir, shell_setup, *args):
    """Run the script in a private mount namespace, after `shell_setup` (e.g. a read-only
    bind mount), so that the fault is real for root too and nothing outside changes."""
    command = f'{shell_setup} && cd "$PWD" && exec {sys.executable} {SCRIPT} ' + " ".join(
        map(repr, args)
    )
    return subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", command],
        cwd=workdir, env=script_env(), capture_output=True, check=False, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow  # a time bound: never in the quick tier, where the machine may be loaded
def test_read_only_working_folder_is_rejected_at_once(tmp_path):
    def in_read_only_folder(workdir, *args):
        setup = "mount --bind . . && mount -o remount,ro,bind . ."
        return run_in_mount_namespace(workdir, setup, *args)

    result, seconds = seconds_beyond_a_reference(in_read_only_folder, tmp_path)
    assert result.returncode == 2
    assert "cannot write the tracking store" in one_line_error(result)
    assert "Read-only file system" in result.stderr
    assert seconds < MARGIN  # MLflow alone would retry for ~105 s


def test_read_only_artifact_folder_is_rejected_before_any_run(tmp_path):
    (tmp_path / "mlruns").mkdir()
    result = run_in_mount_namespace(
        tmp_path, "mount --bind mlruns mlruns && mount -o remount,ro,bind mlruns mlruns"
    )
    assert result.returncode == 2
    assert "cannot write the run artifacts" in one_line_error(result)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


# --- No run is ever left RUNNING --------------------------------------------------------------


STOPS = {
    signal.SIGINT: (130, "interrupted"),
    signal.SIGTERM: (143, "stopped by SIGTERM"),
    signal.SIGHUP: (129, "stopped by SIGHUP"),  # the terminal or SSH session closed
}
# Instants across a whole run, each as (signal, the stderr line it waits for, then seconds): from
# launch (the imports, where Ctrl-C comes as one notices a typo), the run just made, the search,
# the held-out scores, the logging and the checks before the report. Dense in the first seconds.
SWEEP = [
    (signal.SIGINT, None, 0.3),
    (signal.SIGINT, None, 1.0),
    (signal.SIGTERM, None, 1.8),
    (signal.SIGINT, None, 2.5),
    (signal.SIGINT, "run ", 0),
    (signal.SIGHUP, "run ", 0.3),
    (signal.SIGINT, "search: 4/", 0),  # the search under way, a child run made
    (signal.SIGTERM, "search: 13/13", 0),  # the search done, the held-out scores
    (signal.SIGINT, "search: 13/13", 0.3),
    (signal.SIGINT, "logging the best model", 0),
    (signal.SIGHUP, "logging the best model", 0.2),
    (signal.SIGINT, "logging the best model", 0.5),
]
DURING_SEARCH = ("run ", "search: 4/")


def stopped_at(workdir, sig, line, seconds, again=None):
    """Launch the script on QUICK's search, send `sig` `seconds` after it prints a line
    starting with `line` (after launch, if None), and `again` 0.2 s later (a second Ctrl-C
    during the cleanup); return (exit code, stderr)."""
    # From launch: a new Python, its imports included; once a line is printed, the prestarted
    # one's fork (the same process from then on, less the imports' CPU).
    process = start_script(workdir, *QUICK, new_python=line is None, fresh_store=True)
    lines, seen = [], threading.Event()

    def read():
        for text in process.stderr:
            lines.append(text)
            if line and text.startswith(line):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert line is None or seen.wait(120), "".join(lines)
    time.sleep(seconds)
    assert process.poll() is None, f"ended before the stop: {''.join(lines)}"
    process.send_signal(sig)
    if again:
        time.sleep(0.2)
        process.send_signal(again)
    process.wait(timeout=120)
    reader.join(10)
    return process.returncode, "".join(lines)


@pytest.mark.slow
def test_a_stop_at_any_instant_ends_the_run_right_and_the_store_works(tmp_path):
    """One process per instant of SWEEP, one after another on one store, and one more with two
    Ctrl-C 0.2 s apart as the run logs its results: each exits as its signal says with one
    line, its run KILLED with its child runs if it had made one, no run if not, nothing left
    RUNNING; then a run succeeds on the same store."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    runs = set()
    twice = (signal.SIGINT, "logging the best model", 0.3, signal.SIGINT)
    for sig, line, seconds, *again in [*SWEEP, twice]:
        code, stderr = stopped_at(tmp_path, sig, line, seconds, *again)
        at = f"{sig.name} at {line or 'launch'!r} + {seconds} s"
        exit_code, message = STOPS[sig]
        assert code == exit_code, f"{at}: {stderr}"
        assert "Traceback" not in stderr, f"{at}: {stderr}"
        *_, last = stderr.strip().splitlines()
        made = [run for run in parent_runs(store) if run.info.run_id not in runs]
        assert len(made) <= 1, at
        if not made:  # stopped before it made its run
            assert last == f"autolog_mlflow.py: error: {message}", f"{at}: {stderr}"
        for run in made:  # KILLED, with its child runs, as its last line says
            ended = f"autolog_mlflow.py: error: {message}; run {run.info.run_id} ended KILLED"
            assert last.startswith(ended), f"{at}: {stderr}"
            assert run.info.status == "KILLED", at
            # Its child runs: KILLED, if the search was stopped; once it is over, a candidate's
            # child run is complete, and FINISHED.
            children = {child.info.status for child in autolog_mlflow.find_child_runs(client, run)}
            assert children <= ({"KILLED"} if line in DURING_SEARCH else {"KILLED", "FINISHED"}), at
            assert children or line != "search: 4/", f"{at}: a candidate was done, no child run"
            runs.add(run.info.run_id)
        if (tmp_path / "mlflow.db").exists():
            experiments = [e.experiment_id for e in client.search_experiments()]
            assert not client.search_runs(experiments, "attributes.status = 'RUNNING'"), at
    assert len(runs) >= 6  # most stops came once the run was made
    again = run_script(tmp_path, *QUICK)
    assert again.returncode == 0, again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("seconds", [0.1, 0.25, 0.4, 0.55])  # where MLflow 3.17.2 broke it
def test_ctrl_c_during_the_first_runs_store_creation_leaves_a_store_that_works(tmp_path, seconds):
    """MLflow creates a new store's tables in dozens of statements: a Ctrl-C among them broke
    the store for good ("table secrets already exists", "table _alembic_tmp_runs already
    exists"...). It now takes effect once they are done: no run, a store that works."""
    process = start_script(tmp_path, *TINY, fresh_store=True)
    store = tmp_path / "mlflow.db"
    deadline = time.monotonic() + 60
    while not store.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(seconds)
    process.send_signal(signal.SIGINT)  # as the tables are being made
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "autolog_mlflow.py: error: interrupted" in stderr
    again = run_script(tmp_path, *TINY)
    assert again.returncode == 0, again.stderr
    statuses = sorted(run.info.status for run in parent_runs(f"sqlite:///{store}"))
    assert statuses in (["FINISHED"], ["FINISHED", "KILLED"])  # none, or KILLED if it came late


@pytest.mark.slow
def test_ctrl_c_stops_a_run_started_with_sigint_ignored(tmp_path):
    """Job runners and a shell's background jobs start processes with SIGINT ignored, which
    Python leaves so: the script takes Ctrl-C back."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT)], cwd=tmp_path, env=script_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509
    )  # fmt: skip
    line = process.stderr.readline()
    assert line.startswith("run "), line + process.stderr.read()
    run_id = line.split()[1].rstrip(":")
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"interrupted; run {run_id} ended KILLED" in stderr
    assert run_status(tmp_path, run_id) == "KILLED"


def test_a_stop_dropped_in_a_garbage_collector_callback_is_raised_again(monkeypatch):
    monkeypatch.setattr(sys, "unraisablehook", autolog_mlflow.raise_dropped_stop_again)
    sigterm = signal.signal(signal.SIGTERM, autolog_mlflow.raise_stop)

    def callback(_):  # as SIGTERM would land in one: Python drops what it raises
        raise autolog_mlflow.Terminated()

    class Collected:
        pass

    try:
        with pytest.raises(autolog_mlflow.Terminated):
            collected = Collected()
            reference = weakref.ref(collected, callback)
            del collected  # the callback runs, its exception is dropped
            waiting_since = time.monotonic()
            while time.monotonic() - waiting_since < 5:  # the handler raises in here, or never
                pass
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    assert reference() is None


def test_a_stop_in_the_middle_of_a_store_read_waits_for_it_and_ends_the_run_killed(tmp_path):
    """A read cut short by a stop kept its cursor open, and SQLite's read lock with it: the run
    could not be ended KILLED ("database is locked"). The stop now waits for the store call."""

    stops = []

    def stop_after_a_read(conn, cursor, statement, *_):
        if statement.lstrip().startswith("SELECT") and stops:
            signal.raise_signal(stops.pop())  # Ctrl-C, the read's rows still to be fetched

    previous = signal.signal(signal.SIGINT, autolog_mlflow.raise_stop)
    tracking_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "after_cursor_execute", stop_after_a_read)
    try:
        with (
            pytest.raises(KeyboardInterrupt) as stopped,
            autolog_mlflow.run_ending_right(lambda: mlflow.start_run(run_name="stopped")) as run,
        ):
            stops.append(signal.SIGINT)  # at the next read: the run's
            read = MlflowClient().get_run(run.info.run_id)
            waiting_since = time.monotonic()
            while time.monotonic() - waiting_since < 5:  # the stop lands in here, or never
                pass
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "after_cursor_execute",
                                stop_after_a_read)  # fmt: skip
        mlflow.set_tracking_uri(tracking_uri)
        signal.signal(signal.SIGINT, previous)
    assert stopped.value.__notes__ == [f"run {run.info.run_id} ended KILLED"]
    assert run_status(tmp_path, run.info.run_id) == "KILLED"
    assert read.info.run_id == run.info.run_id  # the read was done


@pytest.mark.slow
def test_error_inside_the_run_ends_it_failed_with_a_one_line_cause(tmp_path):
    # Each value is valid alone; together every fit fails.
    grid = '{"bootstrap": [false], "max_samples": [0.5]}'
    result = run_script(tmp_path, "--param-grid", grid, "--cv", "2")
    assert result.returncode == 1
    error = one_line_error(result)
    assert "fits failed" in error and "ended FAILED" in error
    run_id = error.split("; run ")[1].split()[0]
    assert run_status(tmp_path, run_id) == "FAILED"


# --- Autologging never fails silently ---------------------------------------------------------


@pytest.mark.slow
def test_full_artifact_folder_fails_the_run_and_keeps_the_results(tmp_path):
    """Autologging would log a warning and end FINISHED with nothing; we end FAILED, exit 1."""
    (tmp_path / "mlruns").mkdir()
    # Room for the record logged first (the script and run_config.json), not for the results.
    room = SCRIPT.stat().st_size // 1024 + 16
    result = run_in_mount_namespace(
        tmp_path, f"mount -t tmpfs -o size={room}k tmpfs mlruns", *QUICK
    )
    assert result.returncode == 1
    error = one_line_error(result)
    assert "No space left on device" in error and "ended FAILED" in error
    (run,) = parent_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FAILED"
    rescued = tmp_path / "autolog_mlflow-rescue" / run.info.run_id
    assert (rescued / "cv_results.csv").is_file() and (rescued / "best_model" / "MLmodel").is_file()


# --- A tracking server lost mid-run -----------------------------------------------------------


def test_a_stop_while_the_run_is_being_started_ends_it_killed(tmp_path):
    """Ctrl-C landing inside mlflow.start_run, once the run exists in the store but before the
    script holds it, waits until it does: the run ends KILLED, not RUNNING for ever."""
    started = []

    def start_run_stopped_midway():
        started.append(mlflow.start_run(run_name="stopped while starting"))
        os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C would land, the run made
        time.sleep(0.2)  # where Python runs the handler
        return started[0]

    tracking_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with (
            pytest.raises(KeyboardInterrupt) as stopped,
            autolog_mlflow.run_ending_right(start_run_stopped_midway),
        ):
            pass  # never reached
    finally:
        mlflow.set_tracking_uri(tracking_uri)
    (run,) = started
    assert stopped.value.__notes__ == [f"run {run.info.run_id} ended KILLED"]
    assert run_status(tmp_path, run.info.run_id) == "KILLED"


# --- Concurrent runs --------------------------------------------------------------------------


@pytest.mark.slow
def test_eight_runs_at_once_on_a_fresh_sqlite_store_all_complete(tmp_path):
    reports = run_eight_at_once(tmp_path)
    assert len({report["run_id"] for report in reports}) == 8
    runs = parent_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * 8
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        leftovers = db.execute("SELECT name FROM sqlite_master WHERE name LIKE '_alembic_tmp%'")
        assert leftovers.fetchall() == []


@pytest.mark.slow
def test_password_is_redacted_in_the_report_and_the_run(tmp_path, tracking_server):
    uri = tracking_server.url.replace("http://", "http://alice:s3cret-pw@")
    result = run_script(tmp_path, "--json", "--tracking-uri", uri, *QUICK)
    assert result.returncode == 0, result.stderr
    assert "s3cret-pw" not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["browse"]["run_url"].startswith(tracking_server.url + "/#/experiments/")
    mlflow.set_tracking_uri(tracking_server.url)
    recorded = mlflow.artifacts.load_dict(f"runs:/{report['run_id']}/run_config.json")
    assert recorded["configuration"]["tracking_uri"] == uri.replace("s3cret-pw", "***")


@pytest.mark.slow
def test_four_runs_at_once_against_one_tracking_server(tmp_path, tracking_server):
    # Four, not eight as on a fresh SQLite file: the server, not the file, takes them in turn.
    reports = run_at_once(tmp_path, 4, "--tracking-uri", tracking_server.url)
    client = MlflowClient(tracking_server.url)
    runs = [client.get_run(report["run_id"]) for report in reports]
    assert len({run.info.run_id for run in runs}) == 4
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * 4
    assert not (tmp_path / "mlflow.db").exists()  # nothing fell back to a local store
