"""The MLflow UI really shows our run: a real `mlflow ui` server and a real headless browser."""

import pytest
from mlflow_ui import (
    browser_page,
    mlflow_server,
    open_artifacts_tab,
    open_compare_page,
    open_run_page,
)


@pytest.fixture(scope="module")
def page_on_ui(default_run):
    """A browser page and the base URL of `mlflow ui` serving the default run's store."""
    with (
        mlflow_server(default_run.tracking_uri, default_run.workdir) as server,
        browser_page() as page,
    ):
        yield page, server.url


def test_run_page_shows_run_id_status_best_params_and_named_child_runs(default_run, page_on_ui):
    page, url = page_on_ui
    run, report = default_run.run, default_run.report
    child_names = [child["name"] for child in report["child_runs"]]
    open_run_page(page, url, run.info.experiment_id, run.info.run_id, child_names)
    text = page.inner_text("body")
    assert run.info.run_id in text
    assert "Finished" in text
    for name in ["best_max_depth", "best_n_estimators", "accuracy_score_X_test"]:
        assert name in text
    assert all(name in text for name in child_names)


def test_artifacts_tab_lists_cv_results(default_run, page_on_ui):
    page, url = page_on_ui
    run = default_run.run
    open_artifacts_tab(page, url, run.info.experiment_id, run.info.run_id, "cv_results.csv")
    assert "estimator.html" in page.inner_text("body")


def test_compare_page_plots_child_runs_against_the_cv_score(default_run, page_on_ui):
    page, url = page_on_ui
    run, report = default_run.run, default_run.report
    children = [child["run_id"] for child in report["child_runs"]]
    open_compare_page(page, url, run.info.experiment_id, children, "mean_test_score")
    text = " ".join(page.inner_text("body").split())  # names wrap inside table cells
    assert f"Comparing {len(children)} Runs" in text
    plot = page.locator(".js-plotly-plot").first.inner_text()
    assert "mean_test_score" in plot and "max_depth" in plot and "n_estimators" in plot
    assert all(child["name"] in text for child in report["child_runs"])
