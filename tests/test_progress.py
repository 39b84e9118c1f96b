"""Live progress of the search on stderr: a bar on a terminal, plain lines elsewhere."""

import json
import os
import pty
import re
import subprocess
import sys

import pytest
from conftest import QUICK, SCRIPT, script_env
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV
from sklearn.tree import DecisionTreeClassifier

import autolog_mlflow

FITS = 4 * 3 + 1  # QUICK: 4 candidates x 3 folds, and the refit of the best
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves


def run_in_a_terminal(workdir, *args):
    """Run the script with stderr on a real pseudo-terminal; return (stdout, what it showed)."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args], cwd=workdir, env=script_env() | {"TERM": "xterm"},
        stdout=subprocess.PIPE, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    shown = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the script has exited and the terminal is closed
            break
        if not chunk:
            break
        shown.append(chunk)
    stdout = process.stdout.read()
    assert process.wait(timeout=600) == 0, b"".join(shown).decode()
    os.close(controller)
    return stdout.decode(), b"".join(shown).decode()


@pytest.mark.slow
def test_on_a_terminal_a_live_bar_counts_the_fits_up_to_the_total(tmp_path):
    stdout, shown = run_in_a_terminal(tmp_path, "--json", *QUICK)

    assert "\x1b[" in shown  # drawn, not printed
    text = ESCAPES.sub("", shown)
    counts = [(int(done), int(total)) for done, total in re.findall(r"(\d+)/(\d+) fits", text)]
    assert {total for _, total in counts} == {FITS}
    done = [done for done, _ in counts]
    assert done == sorted(done) and done[0] < FITS and done[-1] == FITS
    assert len(counts) > 2  # redrawn as the fits finish, not only at the end
    assert "elapsed" in text and "left" in text
    json.loads(stdout)  # stdout holds the report alone


# The quick runs: stderr to a pipe, fits in this process (--n-jobs 1), then in worker processes.
@pytest.mark.parametrize("run", ["quick_run", "second_quick_run"], ids=["n_jobs=1", "n_jobs=-1"])
def test_elsewhere_a_plain_line_at_each_further_tenth_of_the_fits(request, run):
    result = request.getfixturevalue(run).result

    lines = [line for line in result.stderr.splitlines() if line.startswith("search: ")]
    assert "\x1b" not in result.stderr
    counts = [int(re.match(rf"search: (\d+)/{FITS} fits", line).group(1)) for line in lines]
    tenths = [count * 10 // FITS for count in counts]
    assert tenths == list(range(1, 11))  # a line at each new tenth, every one of them
    assert re.fullmatch(rf"search: {FITS}/{FITS} fits \(100%\), \d+:\d\d:\d\d elapsed", lines[-1])
    assert all(line.endswith(" left") for line in lines[:-1])
    json.loads(result.stdout)


@pytest.mark.parametrize("cut_short_by", [OSError("no room for the progress socket"),
                                          KeyboardInterrupt()])  # fmt: skip
def test_a_setup_cut_short_is_reported_as_itself_not_as_the_teardowns_error(cut_short_by):
    """scikit-learn tears the callback down in a `finally`, also after a setup that did not
    finish (an error, a Ctrl-C): the search then fails with what stopped the setup."""

    class CutShort(autolog_mlflow.SearchProgress):
        def setup(self, estimator, context):
            raise cut_short_by

    X, y = make_classification(n_samples=40, random_state=0)
    search = GridSearchCV(DecisionTreeClassifier(), {"max_depth": [1, 2]}, cv=2)
    with pytest.raises(type(cut_short_by)) as raised:
        search.set_callbacks(CutShort()).fit(X, y)
    assert raised.value is cut_short_by
