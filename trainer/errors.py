"""Exceptions that carry a message fit for the user: what was wrong, where, what is allowed."""

from __future__ import annotations


class LorasweepError(Exception):
    """Base class of every error that is the user's input, not a bug."""


class ConfigError(LorasweepError):
    """A config key has a value that is not allowed. Lists every problem found at once."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{lines}")


class DataError(LorasweepError):
    """The training data (folders, images, captions) cannot be used as given."""


class ModelLoadError(LorasweepError):
    """A base model, VAE or adapter file cannot be loaded."""


class BackendMissingError(LorasweepError):
    """An optional package needed for the requested feature is not installed."""

    def __init__(self, feature: str, package: str):
        super().__init__(f"{feature} needs the package `{package}`: pip install {package}")
        self.package = package
