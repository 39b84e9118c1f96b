"""One source of truth for versions: requirements.txt, which conda.yml installs."""

import re
import sys
from importlib.metadata import version

import yaml
from conftest import ROOT


def pins(path):
    """Package -> version of a requirements file, following `-r` includes."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found |= pins(path.parent / line[3:].strip())
        elif line:
            name, _, pinned = line.partition("==")
            assert pinned, f"{path.name}: {line!r} is not pinned exactly"
            found[name.strip().lower()] = pinned.strip()
    return found


def conda_env():
    return yaml.safe_load((ROOT / "conda.yml").read_text())


def test_requirements_pin_mlflow_3_and_the_stack_exactly():
    pinned = pins(ROOT / "requirements.txt")
    assert set(pinned) == {"mlflow", "scikit-learn", "pandas", "numpy"}
    assert pinned["mlflow"].startswith("3.")


def test_installed_packages_match_the_pins():
    for name, pinned in pins(ROOT / "requirements-test.txt").items():
        assert version(name) == pinned, name


def test_conda_env_is_named_and_pins_the_python_the_tests_run_on():
    env = conda_env()
    assert env["name"] == "autolog_mlflow"
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(pythons) == 1
    assert re.fullmatch(r"python=(\d+\.\d+)", pythons[0])
    assert pythons[0] == "python={}.{}".format(*sys.version_info[:2])


def test_conda_env_pip_section_resolves_to_the_same_pins():
    env = conda_env()
    assert "pip" in env["dependencies"]
    (pip_section,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert pip_section == ["-r requirements.txt"]
    resolved = pins(ROOT / "requirements.txt")
    assert resolved == {name: version(name) for name in resolved}
