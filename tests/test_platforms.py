"""Windows and macOS: nothing POSIX-only on the script's path, and Windows-style store URIs.

Windows cannot be run here, so the script runs in Pythons where the POSIX-only modules cannot
be imported and the signal module has no SIGHUP, as on Windows (its worker processes too: a
sitecustomize on PYTHONPATH makes them so at start-up).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCRIPT, TINY, parent_runs, script_env

import autolog_mlflow

POSIX_ONLY = ["fcntl", "termios", "resource", "pwd", "grp"]
BLOCKER = f"""
import sys

class NoPosixOnlyModules:  # as on Windows
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {POSIX_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, NoPosixOnlyModules())
for name in {POSIX_ONLY!r}:
    sys.modules.pop(name, None)

import signal

del signal.SIGHUP  # Windows' signal module has none
"""


@pytest.fixture
def windows_like_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    return script_env() | {"PYTHONPATH": str(site)}


def start(workdir, env, *args):
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--json", *args],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize(
    "code, error",
    [*((f"import {module}", f"No module named '{module}'") for module in POSIX_ONLY),
     ("import signal; signal.SIGHUP", "has no attribute 'SIGHUP'")],
)  # fmt: skip
def test_what_windows_lacks_is_missing_there(tmp_path, windows_like_env, code, error):
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=windows_like_env,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 1 and error in result.stderr


@pytest.mark.slow
def test_four_first_runs_at_once_one_with_worker_processes_without_posix_only_modules(
    tmp_path, windows_like_env
):
    in_workers = start(tmp_path, windows_like_env, *TINY, "--n-jobs", "-1")
    processes = [in_workers, *(start(tmp_path, windows_like_env, *TINY) for _ in range(3))]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, outputs
    runs = parent_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * 4
    assert json.loads(outputs[0][0])["params"]["n_jobs"] == "-1"


@pytest.mark.parametrize(
    "uri, path",
    [
        ("sqlite:///C:/work/mlflow.db", "C:/work/mlflow.db"),
        ("sqlite:///C:\\work\\mlflow.db", "C:\\work\\mlflow.db"),
        ("sqlite:///mlflow.db", "mlflow.db"),
    ],
)
def test_sqlite_uris_with_drive_letters_are_accepted(uri, path):
    autolog_mlflow.check_uri_form(uri)  # raises BadInput if it were rejected
    assert autolog_mlflow.sqlite_path(uri) == Path(path)
