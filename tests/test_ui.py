"""The MLflow UI really shows our run: a real `mlflow ui` server and a real headless browser."""

import pytest
from conftest import ROOT, SMALL_TABLE, finished_run
from mlflow_ui import (
    CONTENT_TIMEOUT,
    browser_page,
    mlflow_server,
    open_artifacts_tab,
    open_compare_page,
    open_run_page,
)

import autolog_mlflow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ui_server(quick_run):
    """`mlflow ui` serving the quick run's store."""
    with mlflow_server(quick_run.tracking_uri, quick_run.workdir) as server:
        yield server


@pytest.fixture(scope="module")
def page_on_ui(ui_server):
    """A browser page and the base URL of `mlflow ui`."""
    with browser_page() as page:
        yield page, ui_server.url


def menu_shown(url, expected_text):
    """The side menu of the page at `url`, opened in a browser that has never seen MLflow."""
    with browser_page(settings={}) as page:
        page.goto(url)
        page.get_by_text(expected_text).first.wait_for(timeout=CONTENT_TIMEOUT)
        page.get_by_text("Docs", exact=True).first.wait_for(timeout=CONTENT_TIMEOUT)
        return " ".join(page.locator("nav, aside").all_inner_texts() or [page.inner_text("body")])


def test_printed_urls_open_the_model_training_view_in_a_fresh_browser(quick_run, ui_server):
    report = quick_run.report
    run_url, experiment_url = (
        report["browse"][key].replace(autolog_mlflow.UI_URL, ui_server.url)
        for key in ("run_url", "experiment_url")
    )
    for url, shows in [(run_url, report["run_id"]), (experiment_url, report["run_name"])]:
        menu = menu_shown(url, shows)
        assert "Model registry" in menu and "Judges" not in menu, url
    # Without the query, a newcomer lands in the GenAI view: the query is what makes the difference.
    genai_menu = menu_shown(run_url.split("?")[0], report["run_id"])
    assert "Judges" in genai_menu and "Model registry" not in genai_menu


def test_run_page_shows_run_id_status_best_params_and_named_child_runs(quick_run, page_on_ui):
    page, url = page_on_ui
    run, report = quick_run.run, quick_run.report
    child_names = [child["name"] for child in report["child_runs"]]
    open_run_page(page, url, run.info.experiment_id, run.info.run_id, child_names)
    text = page.inner_text("body")
    assert run.info.run_id in text
    assert "Finished" in text
    for name in ["best_max_depth", "best_n_estimators", "accuracy_score_X_test"]:
        assert name in text
    assert all(name in text for name in child_names)


def test_run_page_shows_the_runs_summary_as_its_description(quick_run, page_on_ui):
    page, url = page_on_ui
    run, best = quick_run.run, autolog_mlflow.best_child(quick_run.report)
    first_line = f"Best: {best['name']}, mean CV accuracy"  # the Markdown, as the page renders it
    open_run_page(page, url, run.info.experiment_id, run.info.run_id, [first_line])
    assert "No description" not in page.inner_text("body")


def test_artifacts_tab_lists_cv_results(quick_run, page_on_ui):
    page, url = page_on_ui
    run = quick_run.run
    open_artifacts_tab(page, url, run.info.experiment_id, run.info.run_id, "cv_results.csv")
    assert "estimator.html" in page.inner_text("body")


def test_compare_page_plots_child_runs_against_the_cv_score(quick_run, page_on_ui):
    page, url = page_on_ui
    run, report = quick_run.run, quick_run.report
    children = [child["run_id"] for child in report["child_runs"]]
    open_compare_page(page, url, run.info.experiment_id, children, "mean_test_score")
    text = " ".join(page.inner_text("body").split())  # names wrap inside table cells
    assert f"Comparing {len(children)} Runs" in text
    plot = page.locator(".js-plotly-plot").first.inner_text()
    assert "mean_test_score" in plot and "max_depth" in plot and "n_estimators" in plot
    assert all(child["name"] in text for child in report["child_runs"])


def test_runs_on_two_tables_are_told_apart_in_the_run_list_by_name_and_dataset(
    tmp_path, page_on_ui
):
    """The experiment's run list, as a browser shows it: each run named after its data and
    target, each with its training set named after its file."""
    (tmp_path / "penguins.csv").write_bytes((ROOT / "tests" / "penguins.csv").read_bytes())
    tiny = ["--param-grid", '{"n_estimators": [5]}', "--cv", "2", "--n-jobs", "1"]
    first = finished_run(tmp_path, *SMALL_TABLE, *tiny)
    finished_run(tmp_path, "--data", "penguins.csv", "--target", "species", *tiny)
    runs = first.report["browse"]["experiment_url"]
    page, _ = page_on_ui  # one browser a process: Playwright's sync API runs an event loop
    with mlflow_server(first.tracking_uri, tmp_path) as server:
        page.goto(runs.replace(autolog_mlflow.UI_URL, server.url))
        for shown in ["small_table.csv -> target", "penguins.csv -> species"]:
            page.get_by_text(shown, exact=True).first.wait_for(timeout=CONTENT_TIMEOUT)
        text = page.inner_text("body")
    assert "small_table.csv train" in text and "penguins.csv train" in text
    assert "dataset (" not in text  # autologging's name for every data set
