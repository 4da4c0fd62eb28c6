"""Errors that reach the user as one line and exit code 2.

Every message names the problem *and* the fix, because the person reading it is usually looking at a
study file or a plugin list, not at a traceback.
"""

from __future__ import annotations

__all__ = [
    "AutopeftError",
    "ConfigError",
    "BudgetError",
    "PluginError",
    "DataError",
    "ModelError",
    "FitError",
    "Interrupted",
    "first_line",
    "changed_choices",
    "fatal_in_trial",
]


def first_line(exc: BaseException, limit: int = 200, default: str | None = None) -> str:
    """The first line of an exception's message, for one-line errors; ``default`` (else the
    exception's type name) when it has none. Foreign libraries' messages can run to pages."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else (default or type(exc).__name__)


class AutopeftError(Exception):
    """Bad input the user can fix; the CLI prints it on one line and exits with code 2."""


class ConfigError(AutopeftError):
    """A study-file field is missing, mistyped or out of range."""

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}; {fix}")


class BudgetError(AutopeftError):
    """No configuration of any enabled method fits the trainable-parameter budget."""


class PluginError(AutopeftError):
    """A plugin failed to load, broke the hook contract, or a method name is unknown."""


class DataError(AutopeftError):
    """A data split is missing, empty, or lacks the configured columns or labels."""


class ModelError(AutopeftError):
    """The model cannot be found or loaded."""


class FitError(ConfigError):
    """The user's own training function (``autopeft.tune(..., fit=...)``) broke its contract in a way
    every later trial would repeat (it returned no number; it changed a loaded model's frozen
    weights): its trial is recorded failed, and the search stops with this one line."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a study; the message says which trial was marked failed and queued
    again. A ``KeyboardInterrupt``, so code that catches that still does; the CLI exits with 130."""


def changed_choices(exc: BaseException, study_name: str) -> ConfigError | None:
    """The one-line error for Optuna refusing a parameter whose choices the study file changed under
    a study (every later trial would fail the same way), or None for any other exception."""
    if not (isinstance(exc, ValueError) and "dynamic value space" in str(exc)):
        return None
    return ConfigError(
        "search",
        f"the study file changed the choices of a parameter of study {study_name!r} ({first_line(exc)})",
        "restore the choices, or give the study a new name (Optuna cannot change a study's choices)",
    )


def fatal_in_trial(exc: BaseException, study_name: str) -> AutopeftError | None:
    """What a trial raised that every later trial would raise too, as the study's one line (the
    search stops on it), or None: the user's fit broke its contract, or the study file changed a
    parameter's choices."""
    return exc if isinstance(exc, FitError) else changed_choices(exc, study_name)
