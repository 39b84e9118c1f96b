"""The leaderboard says which candidate won and whether it won at all: the chosen best first
(on tied ranks, the one the search refitted), then by rank; the best against the runner-up on
the CV folds, with the corrected repeated k-fold t-test (Nadeau and Bengio), in the report, the
run's description and a metric."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from conftest import finished_run

pytestmark = pytest.mark.slow  # each needs a search of its own

# Listed so that the grid's first candidate, the one a search keeps among ties, is not the
# first of the candidates' names in alphabetical order.
TIED_GRID = '{"max_depth": [2, 1], "n_estimators": [20, 10]}'


def table(tmp_path, frame, target):
    """The frame and a target made of it, as a CSV; the script's options to read it."""
    frame.assign(label=target(frame)).to_csv(tmp_path / "table.csv", index=False)
    return ["--data", "table.csv", "--target", "label", "--n-jobs", "1"]


RNG = np.random.default_rng(0)
NUMBERS = pd.DataFrame({"a": RNG.random(400), "b": RNG.random(400)})  # in [0, 1)


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """Every candidate scores 1.0 on every fold: a single column, its classes far apart."""
    workdir = tmp_path_factory.mktemp("tied")
    apart = NUMBERS[["a"]].assign(a=lambda t: t["a"] + (t["a"] > 0.5))  # [0, .5) and [1.5, 2)
    data = table(workdir, apart, lambda frame: np.where(frame["a"] > 1, "high", "low"))
    return finished_run(workdir, *data, "--param-grid", TIED_GRID, "--cv", "3")


def test_on_tied_ranks_the_first_row_is_the_candidate_the_search_kept(tied):
    children = tied.report["child_runs"]
    assert {child["rank"] for child in children} == {1}
    assert children[0]["name"] == "max_depth=2 n_estimators=20"  # the grid's first
    assert [child["candidate"] for child in children] == [0, 1, 2, 3]  # then the grid's order
    assert children[1]["name"] == tied.report["best_vs_runner_up"]["runner_up"]
    assert tied.report["params"]["best_max_depth"] == "2"
    assert tied.report["params"]["best_n_estimators"] == "20"
    assert tied.report["summary"].startswith("**Best: `max_depth=2 n_estimators=20`**")


def test_a_tie_is_said_not_distinguishable_in_the_report_description_and_metrics(tied):
    assert tied.report["best_vs_runner_up"] == {
        "runner_up": "max_depth=2 n_estimators=10",  # the next in the grid, tied too
        "mean_difference": 0.0,
        "p_value": 1.0,
        "verdict": "not distinguishable",
    }
    line = ("best vs runner-up max_depth=2 n_estimators=10: not distinguishable (mean CV "
            "difference +0.000 over 3 folds; corrected t-test, p = 1.000)")  # fmt: skip
    assert f"\n- B{line[1:]}\n" in tied.run.data.tags["mlflow.note.content"]
    assert tied.run.data.metrics["best_vs_runner_up_p_value"] == 1.0


def test_a_clear_winner_is_said_better_with_the_corrected_t_tests_p_value(tmp_path):
    # XOR: trees of depth 1 cannot learn it (about half right); deeper ones can.
    xor = lambda frame: np.where((frame["a"] > 0.5) ^ (frame["b"] > 0.5), 1, 0)
    data = table(tmp_path, NUMBERS, xor)
    grid = '{"max_depth": [1, null], "n_estimators": [10]}'
    made = finished_run(tmp_path, *data, "--param-grid", grid, "--cv", "5")

    comparison = made.report["best_vs_runner_up"]
    assert comparison["runner_up"] == "max_depth=1 n_estimators=10"
    assert comparison["verdict"] == "better"
    # The test as scikit-learn's example writes it, on the folds' scores the run recorded.
    artifact = made.client.download_artifacts(made.run.info.run_id, "cv_results.csv", tmp_path)
    results = pd.read_csv(artifact)
    folds = [f"split{k}_test_score" for k in range(5)]
    best, runner_up = (results.loc[results["param_max_depth"].isna(), folds].iloc[0],
                       results.loc[results["param_max_depth"] == 1, folds].iloc[0])  # fmt: skip
    differences = best.to_numpy() - runner_up.to_numpy()
    n_test, n_train = 60, 240  # the 300 training rows in 5 folds
    variance = (1 / 5 + n_test / n_train) * differences.var(ddof=1)
    t = differences.mean() / np.sqrt(variance)
    assert comparison["p_value"] == pytest.approx(scipy.stats.t.sf(t, df=4))
    assert comparison["p_value"] < 0.05
    assert comparison["mean_difference"] == pytest.approx(differences.mean())
    assert made.run.data.metrics["best_vs_runner_up_p_value"] == pytest.approx(
        comparison["p_value"]
    )
