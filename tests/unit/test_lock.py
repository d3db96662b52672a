"""The lock file is the environment: complete, hashed, consistent with pyproject.toml, and what
is installed (drift cannot hide)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from sweeper.lockfile import (
    LOCK_FILE,
    canonical,
    drift,
    installed_versions,
    locked_versions,
    torch_pin,
)

PROJECT_DIR = Path(__file__).resolve().parents[2]
LOCK = PROJECT_DIR / LOCK_FILE


def _pyproject() -> dict:
    with (PROJECT_DIR / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def test_the_installed_environment_is_the_locked_one():
    """Every locked package at its exact version, torch at its pin, nothing else installed.
    A failure lists each difference; `rm -rf .venv && make setup` rebuilds the locked one."""
    assert drift(PROJECT_DIR) == []


def test_drift_names_every_kind_of_difference():
    locked = locked_versions(LOCK)
    installed = dict(locked) | {"torch": "2.13.0+cpu", "lorasweep": "0.1.0"}
    assert drift(PROJECT_DIR, installed) == []
    changed = dict(installed) | {"transformers": "5.24.0", "torch": "2.14.1", "left-pad": "1.0"}
    del changed["peft"]
    assert drift(PROJECT_DIR, changed) == [
        f"peft: locked {locked['peft']}, not installed",
        f"transformers: locked {locked['transformers']}, installed 5.24.0",
        "torch: pinned 2.13.0 in pyproject.toml, installed 2.14.1",
        "left-pad: installed 1.0, not in the lock",
    ]


def test_every_locked_package_is_pinned_with_hashes():
    text = LOCK.read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text[text.index("\n", text.index("Do not edit")) :])
    entries = [e for e in entries if "==" in e.split("\n", 1)[0]]
    assert len(entries) == len(locked_versions(LOCK)) > 100
    for entry in entries:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), entry.split("\n", 1)[0]


def test_the_lock_satisfies_pyproject_and_leaves_torch_to_its_pin():
    project = _pyproject()["project"]
    locked = locked_versions(LOCK)
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += [Requirement(r) for r in extra]
    for requirement in requirements:
        name = canonical(requirement.name)
        if name == "torch":
            assert name not in locked  # its build differs by machine: pinned, not locked
            assert str(requirement.specifier) == f"=={torch_pin(PROJECT_DIR)}"
            continue
        assert name in locked, f"{requirement} is not in {LOCK_FILE}: run make lock"
        assert requirement.specifier.contains(locked[name]), (str(requirement), locked[name])
    # The build backend is locked too (make setup builds the project without isolation).
    assert "setuptools" in locked and "pip" in locked
    assert locked["lycoris-lora"] == "4.1.3"  # trainer/networks/lycoris_fixes.py's release


def test_every_dependency_has_an_upper_bound_at_or_above_the_locked_version():
    project = _pyproject()["project"]
    locked = locked_versions(LOCK)
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    for text in requirements:
        requirement = Requirement(text)
        spec = requirement.specifier
        assert any(s.operator in ("<", "<=", "==") for s in spec), f"{text}: no upper bound"
        if canonical(requirement.name) != "torch":
            assert spec.contains(locked[canonical(requirement.name)])


def test_the_makefile_installs_the_lock_and_the_torch_pin():
    makefile = (PROJECT_DIR / "Makefile").read_text()
    assert f"TORCH := torch=={torch_pin(PROJECT_DIR)}" in makefile
    assert "--no-deps --require-hashes -r $(LOCK)" in makefile
    assert f"LOCK  := {LOCK_FILE}" in makefile


def test_installed_versions_sees_this_environment():
    installed = installed_versions()
    assert installed["torch"].split("+")[0] == torch_pin(PROJECT_DIR)
    assert installed["lorasweep"] == _pyproject()["project"]["version"]
