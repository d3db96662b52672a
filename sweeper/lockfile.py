"""The lock file (``requirements.lock``): what the tested environment is, and how far the running
one is from it.

``make setup`` installs every package of the lock at its exact version (and torch at the pin of
``pyproject.toml``, which the lock leaves out: its build differs by machine). Runs record the
lock's sha256 next to the git commit; a test and every tracked run compare the installed
versions with it, so drift cannot hide. Standard library only: it is read before any ML import.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from importlib import metadata
from pathlib import Path

LOCK_FILE = "requirements.lock"
# The command that rebuilds the environment of a commit: the Makefile installs its lock.
REBUILD = "git checkout {commit} && make setup"
# Installed beside the lock by `make setup`: the project itself, and torch (pinned in
# pyproject.toml, left out of the lock).
NOT_LOCKED = ("lorasweep", "torch")

_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def canonical(name: str) -> str:
    """PEP 503 normalised name: ``Foo_Bar.baz`` -> ``foo-bar-baz``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(path: str | Path) -> dict[str, str]:
    """``{canonical name: version}`` of every ``name==version`` line of the lock file."""
    versions = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        match = _REQUIREMENT.match(line)
        if match:
            versions[canonical(match.group(1))] = match.group(2)
    return versions


def torch_pin(project_dir: str | Path) -> str | None:
    """The torch version ``pyproject.toml`` pins (``torch==X``), or None."""
    path = Path(project_dir) / "pyproject.toml"
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        dependencies = tomllib.load(handle).get("project", {}).get("dependencies", [])
    for requirement in dependencies:
        match = _REQUIREMENT.match(requirement.replace(" ", ""))
        if match and canonical(match.group(1)) == "torch":
            return match.group(2)
    return None


def installed_versions() -> dict[str, str]:
    """``{canonical name: version}`` of every distribution this interpreter sees."""
    versions = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(canonical(name), dist.version)
    return versions


def drift(project_dir: str | Path, installed: dict[str, str] | None = None) -> list[str]:
    """How the installed packages differ from the lock (and torch from its pin): one line per
    package, empty when they match. ``["no lock file ..."]`` when there is none."""
    path = Path(project_dir) / LOCK_FILE
    if not path.is_file():
        return [f"no lock file at {path}"]
    locked = locked_versions(path)
    installed = installed_versions() if installed is None else installed
    problems = []
    for name, version in sorted(locked.items()):
        have = installed.get(name)
        if have is None:
            problems.append(f"{name}: locked {version}, not installed")
        elif have != version:
            problems.append(f"{name}: locked {version}, installed {have}")
    pin = torch_pin(project_dir)
    torch = installed.get("torch")
    if pin and torch is not None and torch.split("+")[0] != pin:
        problems.append(f"torch: pinned {pin} in pyproject.toml, installed {torch}")
    for name in sorted(set(installed) - set(locked) - set(NOT_LOCKED)):
        problems.append(f"{name}: installed {installed[name]}, not in the lock")
    return problems


def lock_sha256(project_dir: str | Path) -> str | None:
    path = Path(project_dir) / LOCK_FILE
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def environment(project_dir: str | Path, commit: str | None) -> dict[str, str]:
    """What rebuilds a run's environment: the lock's digest, whether the running environment
    matches it, and the command (``git checkout <commit> && make setup``)."""
    digest = lock_sha256(project_dir)
    if digest is None:
        return {}
    differences = drift(project_dir)
    return {
        "lock_file": LOCK_FILE,
        "lock_sha256": digest,
        "lock_drift": "; ".join(differences) if differences else "none",
        "rebuild": REBUILD.format(commit=commit or "<commit>"),
    }
