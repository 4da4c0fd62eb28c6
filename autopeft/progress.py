"""Progress lines for long work: trial k of N, steps, and the best value so far.

Per-trial lines always go to stderr (logs of remote workers need them); the per-step bar is drawn
only on a terminal.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["Progress", "NotebookProgress", "quiet_libraries"]


class Progress:
    """Writes one study's progress to ``stream`` (stderr by default); ``quiet`` silences it.

    ``label`` prefixes every line (``[w2] ...``) and turns the step bar off: the lines of several
    local workers share one terminal, and their bars would overwrite each other.
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None, label: str = "") -> None:
        self.quiet, self.stream = quiet, stream or sys.stderr
        self.prefix = f"[{label}] " if label else ""
        self._bar: tqdm | None = None

    def line(self, text: str) -> None:
        """Print a line, ending a progress bar that is still drawn: the two would garble each other."""
        self.close_bar()
        if not self.quiet:
            print(self.prefix + text, file=self.stream, flush=True)

    def step(self, trial: int | str, step: int, total: int, loss: float) -> None:
        """Advance the per-trial step bar (terminal only)."""
        if self.quiet or self.prefix or not self.stream.isatty():
            return
        if self._bar is None:
            self._bar = tqdm(total=total, desc=f"trial {trial}", leave=False, file=self.stream, unit="step")
        self._bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        self._bar.update(1)
        if step >= total:
            self.close_bar()

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class NotebookProgress(Progress):
    """Progress as one ``tqdm.auto`` line (a widget in Jupyter) that each new line replaces: a long
    search never floods the cell. Every line is kept in :attr:`lines` (``TuneResult.log``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self._status: Any = None

    def _widget(self) -> Any:
        if self._status is None:
            from tqdm.auto import tqdm as auto_tqdm

            self._status = auto_tqdm(total=0, bar_format="{desc}", leave=True)
        return self._status

    def line(self, text: str) -> None:
        self.lines.append(self.prefix + text)
        self._widget().set_description_str(text[:160], refresh=True)

    def step(self, trial: int | str, step: int, total: int, loss: float) -> None:
        self._widget().set_description_str(
            f"trial {trial}: step {step}/{total}, loss {loss:.3f}", refresh=step >= total
        )

    def close_bar(self) -> None:
        """The line stays: it is the run's status, not a per-trial bar."""

    def close(self) -> None:
        if self._status is not None:
            self._status.close()
            self._status = None


def quiet_libraries() -> None:
    """Silence the libraries' load reports, bars and deprecation chatter, which bury our progress.

    Called by the CLI and the benchmarks; library users keep their own logging settings.
    """
    import warnings

    import datasets
    import optuna
    import transformers

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trial failures reach the user as exceptions
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
