"""The README says what the script does: its options and defaults are the script's, its links
lead somewhere, the progress line it quotes is the script's own, and it stays short."""

import json
import re

import mlflow
import pandas as pd
import pytest
from conftest import ROOT, run_script

import autolog_mlflow

README = ROOT / "README.md"
PAGES = [README, ROOT / "benchmarks" / "README.md", ROOT / "tools" / "TEAM-SERVER.md"]
MAX_LINES = 220  # issue #23: about 200; the quick start must stay one read


def section(title):
    """The README's text under `## title`, up to the next section."""
    match = re.search(
        rf"^## {title}\n(.*?)(?=^## |\Z)", README.read_text(), re.MULTILINE | re.DOTALL
    )
    assert match, f"the README has no section {title!r}"
    return match.group(1)


def options_table():
    """{option: its default cell} from the table of the Options section."""
    rows = [line.split("|")[1:3] for line in section("Options").splitlines()
            if line.startswith("| `--")]  # fmt: skip
    return {option: default.strip() for first, default in rows
            for option in re.findall(r"--[a-z-]+", first)}  # fmt: skip


def test_options_section_lists_exactly_the_options_of_help(script_help):
    in_help = set(re.findall(r"--[a-z][a-z-]+", script_help)) - {"--help"}
    assert set(options_table()) == in_help


def test_options_section_gives_the_scripts_defaults(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    defaults = vars(autolog_mlflow.parse_args([]))
    table = options_table()
    for option, cell in table.items():
        default = defaults[option[2:].replace("-", "_")]
        if default is False:  # a flag
            assert cell == "off", (option, cell)
            continue
        if default is None:  # said in words: what happens without it
            assert cell.startswith(("none", "`", "scikit-learn's")), (option, cell)
            continue
        shown = json.dumps(default) if isinstance(default, dict) else str(default)
        assert f"`{shown}`" in cell, (option, cell)


def links(page):
    return [(page, target) for target in re.findall(r"\]\(([^)\s#]+)", page.read_text())
            if not re.match(r"[a-z]+:", target)]  # fmt: skip


@pytest.mark.parametrize(
    "page, target",
    [link for page in PAGES for link in links(page)],
    ids=lambda value: value.name if hasattr(value, "name") else value,
)
def test_relative_link_leads_to_a_file_of_the_repository(page, target):
    assert (page.parent / target).resolve().is_file(), f"{page.name} links to {target}"


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines; at most {MAX_LINES}"


def test_exit_codes_are_given_once():
    assert README.read_text().count("Exit codes:") == 1


def test_quoted_progress_line_is_the_one_the_script_prints():
    (quoted,) = re.findall(r"`(search: [^`]*)`", README.read_text())
    done, total, minutes, seconds = map(int, re.match(
        r"search: (\d+)/(\d+) fits .*?0:(\d\d):(\d\d) elapsed", quoted).groups())  # fmt: skip
    assert autolog_mlflow.progress_line(done, total, 60 * minutes + seconds) == quoted


@pytest.mark.slow  # a search of its own, on the real table
def test_the_own_data_example_is_what_the_script_prints_for_the_real_table(tmp_path):
    """The README's "Your own data" block, on the Palmer penguins table it names, is what the
    script printed on stdout (the section does not depend on the grid: a small one here)."""
    (block,) = re.findall(r"```text\n(Data: penguins.csv.*?)```", README.read_text(), re.DOTALL)
    (tmp_path / "penguins.csv").write_bytes((ROOT / "tests" / "penguins.csv").read_bytes())
    result = run_script(tmp_path, "--data", "penguins.csv", "--target", "species", "--cv", "3",
                        "--param-grid", '{"n_estimators": [10, 20]}', "--n-jobs", "1")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Run ID: ")  # no blank line before the report
    assert "\nRun name: penguins.csv -> species\n" in out
    assert f"\n{block}" in out
    assert "  (F1 is macro-averaged over the 3 classes)\n" in out
    assert "\n  best vs runner-up n_estimators=" in out
    # Its model takes the table's own rows as pandas reads them: whole numbers (`year`, int64),
    # gaps, text.
    (model_uri,) = re.findall(r'mlflow.sklearn.load_model\("(models:/m-\w+)"\)', out)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    rows = pd.read_csv(tmp_path / "penguins.csv").drop(columns="species")
    assert rows["year"].dtype == "int64" and rows.isna().any().any()
    predicted = mlflow.pyfunc.load_model(model_uri).predict(rows)
    assert set(predicted) == {"Adelie", "Gentoo", "Chinstrap"} and len(predicted) == 344
