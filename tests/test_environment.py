"""Versions: chosen once in short .in files, locked completely in the .txt files tools/lock.sh
writes, installed exactly; conda.yml installs the same lock."""

import re
import sys
from importlib.metadata import distributions

import pytest
import yaml
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCKS = [
    "requirements.txt",
    "requirements-dask.txt",
    "requirements-server.txt",
    "requirements-test.txt",
]
# They come with the venv itself (python -m venv), not from a lock.
INSTALLER = {"pip", "setuptools"}


def top_level_pins(path):
    """Package -> version of a .in file, following `-r` includes (`-c` lines constrain only)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found |= top_level_pins(path.parent / line[3:].strip())
        elif line and not line.startswith("-c "):
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{path.name}: {line!r} is not pinned exactly"
            found[canonicalize_name(requirement.name)] = specifier.version
    return found


def lock_entries(path):
    """Every requirement of a lock file, with the hashes that follow it."""
    entries, text = [], path.read_text()
    for block in re.split(r"\n(?=\S)", text):
        lines = [line.strip().rstrip("\\").strip() for line in block.splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        if lines:
            hashes = [line for line in lines[1:] if line.startswith("--hash=sha256:")]
            entries.append((Requirement(lines[0]), hashes))
    return entries


def locked(path):
    """Package -> version of a lock file, for this Python and platform."""
    found = {}
    for requirement, _ in lock_entries(path):
        if requirement.marker is None or requirement.marker.evaluate():
            (specifier,) = requirement.specifier
            found[canonicalize_name(requirement.name)] = specifier.version
    return found


def installed():
    return {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}


def test_top_level_choices_are_the_stack_pinned_exactly():
    pinned = top_level_pins(ROOT / "requirements.in")
    assert set(pinned) == {"mlflow", "scikit-learn", "pandas", "numpy", "filelock", "rich", "skrub"}
    assert pinned["mlflow"].startswith("3.")


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_package_is_pinned_exactly_with_hashes(lock):
    entries = lock_entries(ROOT / lock)
    assert len(entries) > 50  # the transitive packages too, not just the top-level ones
    for requirement, hashes in entries:
        assert [spec.operator for spec in requirement.specifier] == ["=="], requirement
        assert hashes, f"{requirement} has no hash"


@pytest.mark.parametrize("lock", LOCKS)
def test_each_lock_keeps_its_top_level_choices(lock):
    chosen = top_level_pins(ROOT / lock.replace(".txt", ".in"))
    versions = locked(ROOT / lock)
    assert {name: versions.get(name) for name in chosen} == chosen


def test_locks_agree_on_every_package_they_share():
    experiment, dask, server, test = (locked(ROOT / lock) for lock in LOCKS)
    assert experiment.items() <= dask.items() <= test.items()
    assert experiment.items() <= server.items() <= test.items()


def test_locks_are_resolved_for_windows_and_macos_too():
    markers = [str(r.marker) for r, _ in lock_entries(ROOT / "requirements.txt") if r.marker]
    assert any("win32" in marker for marker in markers)  # e.g. pywin32, colorama: not Linux's


def test_every_installed_distribution_is_pinned_in_the_test_lock():
    versions = locked(ROOT / "requirements-test.txt")
    unpinned = {
        name: v for name, v in installed().items() if name not in versions.keys() | INSTALLER
    }
    assert unpinned == {}


def test_every_locked_package_is_installed_at_its_locked_version():
    assert locked(ROOT / "requirements-test.txt").items() <= installed().items()


def conda_env():
    return yaml.safe_load((ROOT / "conda.yml").read_text())


def test_conda_env_is_named_and_pins_the_python_the_tests_run_on():
    env = conda_env()
    assert env["name"] == "autolog_mlflow"
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert len(pythons) == 1
    assert re.fullmatch(r"python=(\d+\.\d+)", pythons[0])
    assert pythons[0] == "python={}.{}".format(*sys.version_info[:2])


def test_conda_env_installs_the_experiments_lock():
    env = conda_env()
    assert "pip" in env["dependencies"]
    (pip_section,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert pip_section == ["-r requirements.txt"]
