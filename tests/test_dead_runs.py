"""No run stays RUNNING forever: a run whose process died without a word (kill -9 here, as the
out-of-memory killer or a power cut would) is found by the next run, or by --close-dead-runs,
and ended FAILED with the evidence; live runs, and runs other tools started, are never touched.
Every kill is a real SIGKILL of the script's whole process group, mid-search."""

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    QUICK,
    SCRIPT,
    child_runs_once_made,
    edited_script,
    parent_runs,
    run_at_once,
    run_script,
    start_script,
)
from mlflow import MlflowClient
from mlflow_ui import mlflow_server
from postgres import postgres_server

import autolog_mlflow
from autolog_mlflow import CRASHED_TAG, FOLDS_TAG, HEARTBEAT_TAG, HOST_TAG, PID_TAG

FAST_BEAT = 1  # seconds: the heartbeat of the script's copies in these tests
# The copies' sweeps judge a run dead after this many of its periods: far from one beat, so that
# a loaded machine that delays a beat by a few seconds never gets a live run closed.
PATIENT = 12


def start_run(workdir, *args, script=SCRIPT):
    """Start the script in its own process group; once its run exists: (process, run ID)."""
    # In a session of its own, so that SIGKILL reaches it and any worker it started.
    process = start_script(workdir, *args, script=script, new_session=True)
    for line in process.stderr:  # lines about runs it closed first, then "run <id>: searching"
        if line.startswith("run "):
            return process, line.split()[1].rstrip(":")
    raise AssertionError(f"the script created no run: {process.wait()}")


def kill_hard(process):
    """SIGKILL, as the out-of-memory killer sends it: no handler, no cleanup."""
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def killed_run(workdir, *args, script=SCRIPT, with_children=False):
    """A run of the script (on QUICK) killed mid-search, as soon as it exists or (`with_children`)
    held once its first candidate's child run is made (held_mid_run, a copy of the script, so
    that a quick search cannot end first); (its run ID, the PID that ran it)."""
    if with_children:
        with held_mid_run(workdir, *args, script=copy_of_the_script(workdir)) as (process, run_id):
            kill_hard(process)
    else:
        process, run_id = start_run(workdir, *QUICK, *args, script=script)
        kill_hard(process)
    return run_id, process.pid


# A forest that, while its working folder holds a file named `held`, fits QUICK's first candidate
# (10 trees) and waits before the next, saying so with a file named `waiting` (held_mid_run).
HELD_FOREST = """class HeldForest(ensemble.RandomForestClassifier):
    def fit(self, X, y, sample_weight=None):
        if self.n_estimators != 10 and os.path.exists("held"):
            Path("waiting").touch()
            while os.path.exists("held"):
                time.sleep(0.05)
        return super().fit(X, y, sample_weight=sample_weight)


ESTIMATOR = HeldForest()"""


def copy_of_the_script(folder, beat=autolog_mlflow.HEARTBEAT_SECONDS,
                       stale=autolog_mlflow.STALE_HEARTBEATS):  # fmt: skip
    """A copy of the script with HEARTBEAT_SECONDS and STALE_HEARTBEATS edited, as a user edits
    the configuration, and a forest that waits while a test holds the run (held_mid_run)."""
    edits = [(f"{name} = {getattr(autolog_mlflow, name)}  #", f"{name} = {value}  #")
             for name, value in [("HEARTBEAT_SECONDS", beat), ("STALE_HEARTBEATS", stale)]]  # fmt: skip
    held = ("ESTIMATOR = ensemble.RandomForestClassifier()", HELD_FOREST)
    return edited_script(folder, [*edits, held])


@contextlib.contextmanager
def held_mid_run(workdir, *args, script):
    """The copy of the script started in `workdir` on QUICK, held mid-search while the block runs
    (its first candidate's child run made and scored, the next waiting to fit, its process alive
    and beating), then let go: yields (process, run ID)."""
    held, waiting = workdir / "held", workdir / "waiting"
    held.touch()
    try:
        process, run_id = start_run(workdir, *args, *QUICK, script=script)
        client = sqlite_client(workdir)
        child_runs_once_made(client, run_id, until=lambda children: waiting.exists() and any(
            FOLDS_TAG in child.data.tags and child.data.metrics for child in children))  # fmt: skip
        while "cv" not in client.get_run(run_id).data.params:  # autologging's, sent in a thread
            time.sleep(0.02)
        yield process, run_id
    finally:
        held.unlink()


def swept_by_another_run(workdir, *args, script):
    """The report of a run of the script, in a folder of its own (nothing holds it there), on
    the store of `workdir`."""
    folder = workdir / "sweeper"
    folder.mkdir(exist_ok=True)
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    return json_report(run_script(folder, "--json", "--tracking-uri", store, *args, script=script))


def sqlite_client(workdir):
    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def json_report(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def same_host_evidence(run):
    """The evidence of a dead run of this machine, in the script's words."""
    pid, beat = run.data.tags[PID_TAG], run.data.tags[HEARTBEAT_TAG]
    return f"process {pid} on host {platform.node()} is gone; last heartbeat {beat}"


@pytest.mark.slow
def test_run_killed_mid_search_is_ended_failed_by_the_next_run_with_the_evidence(tmp_path):
    dead_id, pid = killed_run(tmp_path, with_children=True)
    client = sqlite_client(tmp_path)
    assert client.get_run(dead_id).info.status == "RUNNING"  # what MLflow alone leaves
    children = autolog_mlflow.find_child_runs(client, client.get_run(dead_id))
    assert {child.info.status for child in children} == {"RUNNING"}

    result = run_script(tmp_path, *QUICK)
    assert result.returncode == 0, result.stderr
    dead = client.get_run(dead_id)
    assert dead.info.status == "FAILED"
    assert dead.data.tags[PID_TAG] == str(pid)
    evidence = same_host_evidence(dead)
    assert dead.data.tags[CRASHED_TAG] == evidence
    assert dead.data.tags["mlflow.note.content"] == f"**Died**: {evidence}."  # atop its UI page
    assert dead.info.start_time <= dead.info.end_time  # its last heartbeat, or its start
    assert (
        f"Closed 1 run left RUNNING:\n  {dead_id} ({dead.info.run_name}), now FAILED: {evidence}"
        in (result.stdout)
    )
    new_id = result.stdout.split("Run ID: ")[1].split()[0]
    assert client.get_run(new_id).info.status == "FINISHED"
    assert CRASHED_TAG not in client.get_run(new_id).data.tags
    for child in children:  # made during its search: ended with it
        ended = client.get_run(child.info.run_id).info
        assert ended.status == "FAILED" and ended.end_time >= ended.start_time


@pytest.mark.slow
def test_live_run_of_another_process_on_this_machine_is_left_running_and_finishes(tmp_path):
    script = copy_of_the_script(tmp_path)  # every run here is the copy
    with held_mid_run(tmp_path, script=script) as (live, live_id):
        report = swept_by_another_run(tmp_path, *QUICK, script=script)
    _, err = live.communicate(timeout=600)
    assert live.returncode == 0, err
    client = sqlite_client(tmp_path)
    live_run = client.get_run(live_id)
    assert live_run.info.end_time > client.get_run(report["run_id"]).info.start_time
    assert report["closed_dead_runs"] == []
    assert live_run.info.status == "FINISHED" and CRASHED_TAG not in live_run.data.tags
    assert "autolog_mlflow.revived" not in live_run.data.tags  # never closed, so never revived


@pytest.mark.slow
def test_run_of_another_machine_is_closed_once_its_heartbeat_is_stale_not_while_fresh(tmp_path):
    script = copy_of_the_script(tmp_path, FAST_BEAT, PATIENT)  # every run here is the copy
    client = sqlite_client(tmp_path)
    dead_id, pid = killed_run(tmp_path, script=script)
    client.set_tag(dead_id, HOST_TAG, "another-machine")  # its process: out of this machine's sight
    # Its last beat as it would read once stale: the test sets the time rather than waiting.
    stale = time.gmtime(time.time() - PATIENT * FAST_BEAT - 5)
    client.set_tag(dead_id, HEARTBEAT_TAG, time.strftime(autolog_mlflow.BEAT_FORMAT, stale))
    # A new run closes the stale one; then, as if on another machine, it lives on and beats
    # while a third run sweeps.
    with held_mid_run(tmp_path, "--json", script=script) as (live, live_id):
        client.set_tag(live_id, HOST_TAG, "another-machine")
        report = swept_by_another_run(tmp_path, *QUICK, script=script)
    out, err = live.communicate(timeout=600)
    assert live.returncode == 0, err

    dead = client.get_run(dead_id)
    evidence = (f"no heartbeat from process {pid} on host another-machine since "
                f"{dead.data.tags[HEARTBEAT_TAG]}, over {PATIENT} periods of {FAST_BEAT} s")  # fmt: skip
    assert json.loads(out)["closed_dead_runs"] == [
        {
            "run_id": dead_id,
            "run_name": dead.info.run_name,
            "status": "FAILED",
            "evidence": evidence,
        }
    ]
    assert dead.info.status == "FAILED" and dead.data.tags[CRASHED_TAG] == evidence
    live_run = client.get_run(live_id)
    assert live_run.info.end_time > client.get_run(report["run_id"]).info.start_time
    assert report["closed_dead_runs"] == []
    assert live_run.info.status == "FINISHED" and CRASHED_TAG not in live_run.data.tags
    assert "autolog_mlflow.revived" not in live_run.data.tags
    # It kept beating: its last heartbeat is later than its first, given at its start.
    assert autolog_mlflow.last_beat(live_run.data.tags) > live_run.info.start_time // 1000 + 1


@pytest.mark.slow
def test_two_new_runs_sweeping_at_once_close_the_dead_run_and_not_each_other(tmp_path):
    dead_id, _ = killed_run(tmp_path)
    reports = run_at_once(tmp_path, 2)
    client = sqlite_client(tmp_path)
    dead = client.get_run(dead_id)
    assert dead.info.status == "FAILED" and dead.data.tags[CRASHED_TAG] == same_host_evidence(dead)
    # Each closed the dead run or found it closed already; neither closed the other.
    closed = [run["run_id"] for report in reports for run in report["closed_dead_runs"]]
    assert set(closed) == {dead_id}
    for report in reports:
        run = client.get_run(report["run_id"])
        assert run.info.status == "FINISHED" and CRASHED_TAG not in run.data.tags


@pytest.mark.slow
def test_close_dead_runs_only_sweeps_and_says_what_it_closed(tmp_path):
    dead_id, _ = killed_run(tmp_path)
    client = sqlite_client(tmp_path)
    experiment_id = client.get_run(dead_id).info.experiment_id
    notebook = client.create_run(experiment_id).info.run_id  # another tool's run: RUNNING

    result = run_script(tmp_path, "--close-dead-runs")
    assert result.returncode == 0, result.stderr
    dead = client.get_run(dead_id)
    assert result.stdout.splitlines() == [
        "Closed 1 run left RUNNING:",
        f"  {dead_id} ({dead.info.run_name}), now FAILED: {same_host_evidence(dead)}",
    ]
    assert dead.info.status == "FAILED"
    assert client.get_run(notebook).info.status == "RUNNING"
    assert len(parent_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")) == 2  # no new run

    again = run_script(tmp_path, "--close-dead-runs")
    assert again.returncode == 0
    assert again.stdout == "No run had died in experiment 'autolog_mlflow'.\n"
    assert json_report(run_script(tmp_path, "--close-dead-runs", "--json")) == {
        "closed_dead_runs": []
    }


@pytest.mark.slow
@pytest.mark.parametrize("looks_dead", ["clock 3 minutes behind", "suspended"])
def test_a_live_run_closed_as_dead_by_a_sweep_runs_again_and_ends_truthfully(tmp_path, looks_dead):
    """Another machine's sweep judges a heartbeat's age by its own clock: a writer whose clock
    lags, or a process suspended (SIGSTOP, a laptop asleep) for over 4 periods, looks dead and is
    closed. Its next beat (or its end) makes it RUNNING again; it ends FINISHED, with neither the
    `crashed` tag nor the "Died" description, the sweep's evidence kept as `revived`."""
    script = copy_of_the_script(tmp_path, FAST_BEAT)
    if looks_dead == "clock 3 minutes behind":
        text = script.read_text()
        assert text.count("time.gmtime())") == 1
        script.write_text(text.replace("time.gmtime())", "time.gmtime(time.time() - 180))"))
    client = sqlite_client(tmp_path)
    with held_mid_run(tmp_path, "--json", script=script) as (live, live_id):
        client.set_tag(live_id, HOST_TAG, "another-machine")  # out of this machine's sight
        suspended = looks_dead == "suspended"
        if suspended:
            # Between two beats, its search held and all it logged in the store: stopped inside
            # a read or a write, it would lock the SQLite file for every other process.
            beat = client.get_run(live_id).data.tags[HEARTBEAT_TAG]
            while client.get_run(live_id).data.tags[HEARTBEAT_TAG] == beat:
                time.sleep(0.02)
            time.sleep(0.3 * FAST_BEAT)
            os.killpg(live.pid, signal.SIGSTOP)
        try:
            if suspended:
                time.sleep(autolog_mlflow.STALE_HEARTBEATS * FAST_BEAT + 2)
            swept = json_report(run_script(tmp_path, "--close-dead-runs", "--json"))
        finally:
            if suspended:
                os.killpg(live.pid, signal.SIGCONT)
    out, err = live.communicate(timeout=600)

    assert [closed["run_id"] for closed in swept["closed_dead_runs"]] == [live_id]
    assert live.returncode == 0, err
    run = client.get_run(live_id)
    assert run.info.status == "FINISHED"
    assert CRASHED_TAG not in run.data.tags
    assert run.data.tags["mlflow.note.content"] == json.loads(out)["summary"]  # not "Died"
    assert run.data.tags["autolog_mlflow.revived"].startswith(
        f"closed as dead while alive ({swept['closed_dead_runs'][0]['evidence']}); running again"
    )
    children = autolog_mlflow.find_child_runs(client, run)
    assert children and {child.info.status for child in children} == {"FINISHED"}


def test_child_runs_left_running_under_an_ended_run_are_closed_as_it_ended(tmp_path):
    """A run stopped while its children were being ended leaves them RUNNING (the parent KILLED):
    the next sweep ends them as their parent ended, at its end, and says so. Another tool's
    children, under a parent that is not this script's, are left alone."""
    client = sqlite_client(tmp_path)
    experiment_id = client.create_experiment(autolog_mlflow.EXPERIMENT_NAME)
    ours = client.create_run(experiment_id, tags={PID_TAG: "1", HOST_TAG: "gone"}).info.run_id
    theirs = client.create_run(experiment_id).info.run_id
    children = {
        parent: client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
        for parent in (ours, theirs)
    }
    for parent in (ours, theirs):
        client.set_terminated(parent, "KILLED")

    result = run_script(tmp_path, "--close-dead-runs", "--json")
    assert result.returncode == 0, result.stderr
    orphan, parent = client.get_run(children[ours]), client.get_run(ours)
    evidence = f"a child run left RUNNING under run {ours}, which ended KILLED"
    assert json_report(result)["closed_dead_runs"] == [
        {"run_id": orphan.info.run_id, "run_name": orphan.info.run_name, "status": "KILLED",
         "evidence": evidence}
    ]  # fmt: skip
    assert orphan.info.status == "KILLED" and orphan.info.end_time == parent.info.end_time
    assert client.get_run(children[theirs]).info.status == "RUNNING"


@pytest.mark.parametrize("option", [["--register-model", "m"], ["--resume", "0" * 32]])
def test_close_dead_runs_starts_no_run_so_it_refuses_run_options(tmp_path, option):
    result = run_script(tmp_path, "--close-dead-runs", *option, fresh_store=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (
            "autolog_mlflow.py: error: --close-dead-runs starts no run: give it without "
            "--reproduce, --resume and --register-model (see --help)"
        )
    ]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture(params=["SQLite", "PostgreSQL"], scope="module")
def server(request, tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1, on a SQLite file or a real PostgreSQL."""
    folder = tmp_path_factory.mktemp("server")
    with contextlib.ExitStack() as stack:
        store = (f"sqlite:///{folder / 'mlflow.db'}" if request.param == "SQLite"
                 else stack.enter_context(postgres_server()))  # fmt: skip
        yield stack.enter_context(
            mlflow_server(store, folder, "server", ["--artifacts-destination", str(folder)])
        )


@pytest.mark.slow
def test_run_killed_mid_search_is_closed_through_a_tracking_server(tmp_path, server):
    dead_id, _ = killed_run(tmp_path, "--tracking-uri", server.url)
    report = json_report(run_script(tmp_path, "--json", "--tracking-uri", server.url, *QUICK))
    client = MlflowClient(server.url)
    dead = client.get_run(dead_id)
    evidence = same_host_evidence(dead)
    assert report["closed_dead_runs"] == [
        {
            "run_id": dead_id,
            "run_name": dead.info.run_name,
            "status": "FAILED",
            "evidence": evidence,
        }
    ]
    assert dead.info.status == "FAILED" and dead.data.tags[CRASHED_TAG] == evidence
    assert client.get_run(report["run_id"]).info.status == "FINISHED"


def test_process_start_tells_a_live_process_from_a_dead_one_not_yet_reaped():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = autolog_mlflow.process_start(child.pid)
        assert started.endswith(" clock ticks after boot")
        assert started == autolog_mlflow.process_start(child.pid)  # the same process, read again
        assert started != autolog_mlflow.process_start(os.getpid())  # another one
        child.kill()
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            time.sleep(0.05)  # dead, a zombie until its parent (this test) waits for it
        assert autolog_mlflow.process_start(child.pid) is None
    finally:
        child.kill()
        child.wait()
    assert autolog_mlflow.process_start(child.pid) is None
