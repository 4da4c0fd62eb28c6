"""What ``autopeft.tune`` returns: the study, its recommendation, and what to do with it next."""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import optuna

from autopeft.config import study_toml
from autopeft.errors import AutopeftError, ConfigError, Interrupted
from autopeft.progress import NotebookProgress, Progress
from autopeft.registry import ResolvedStudy

__all__ = ["TuneResult"]

#: User attributes left out of :attr:`TuneResult.trials`: long, or the same for every trial.
_NOT_SHOWN = ("traceback", "versions", "curve", "loss_curve", "block_params", "worker", "device")


class TuneResult:
    """The search's outcome: :attr:`recommended`, :attr:`trials`, :attr:`front`, :attr:`study`,
    :meth:`export`, :meth:`peft_config`, :meth:`plot` and :meth:`to_toml`.

    ``interrupted`` says which trial an interrupt stopped (None when the run ended by itself);
    ``log`` holds the progress lines a notebook run showed one at a time.
    """

    def __init__(self, resolved: ResolvedStudy, raw: dict[str, dict[str, Any]], fit_callable: Any = None) -> None:
        self.resolved, self._raw, self._fit = resolved, raw, fit_callable
        self.config = resolved.config
        self.interrupted: str | None = None
        self.log: list[str] = []
        self._study: optuna.Study | None = None

    def run(self, progress: Progress) -> TuneResult:
        """Run (or resume) the study here; an interrupt ends it with the result so far."""
        from autopeft.search.study import run_study

        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial is autopeft's to print
        try:
            self._study = run_study(self.resolved, progress=progress)
        except Interrupted as exc:
            self.interrupted = str(exc)
            progress.line(str(exc))
        finally:
            optuna.logging.set_verbosity(verbosity)
            if isinstance(progress, NotebookProgress):
                self.log = progress.lines
                progress.close()
        return self

    def run_workers(self, workers: int, quiet: bool) -> TuneResult:
        """Run ``workers`` processes on the study written as a file (:meth:`to_toml`) in its folder."""
        from autopeft.search.workers import run_workers

        path = self.to_toml(self.config.path.parent)
        if not quiet:
            print(f"autopeft: {workers} workers read the study from {path} (its data as parquet beside it)", flush=True)
        try:
            self._study = run_workers(path, workers, quiet=quiet)
        except Interrupted as exc:
            self.interrupted = str(exc)
        return self

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (every trial's details are in its user attributes)."""
        if self._study is None:
            from autopeft.search.study import open_study

            self._study = open_study(self.config, None, create=False, directions=self.resolved.directions)
        return self._study

    @property
    def recommended(self) -> dict[str, Any] | None:
        """The search's answer (:func:`autopeft.winner`): its trial, method, configuration, learning
        rate, size, validation and test metric, and, from a race, the paired margin over the
        incumbent (``margin``: mean and 95% interval) and whether it displaced it; None before any
        trial finished."""
        from autopeft.storage.results import recorded_test_metric, study_budget, winner

        trial = winner(self.study, budget=study_budget(self.study))
        if trial is None:
            return None
        a, metric = trial.user_attrs, self.config.task.metric
        found: dict[str, Any] = {
            "trial": trial.number,
            "method": a["method"],
            "config": json.loads(a["config"]),
            "learning_rate": a["learning_rate"],
            "trainable_params": a["trainable_params"],
            metric: trial.values[0] if trial.values else None,
            "test_" + metric: recorded_test_metric(trial, self.study.user_attrs),
        }
        decision = self.study.user_attrs.get("race_decision")
        if isinstance(decision, dict):
            found["displaced"] = bool(decision.get("displaced"))
            found["margin"] = decision.get("difference")
        return found

    @property
    def trials(self) -> Any:
        """Every trial as a pandas DataFrame: number, state, value, and the recorded attributes (method,
        config, learning rate, trainable parameters, seed, rung, timings...)."""
        frame = self.study.trials_dataframe(attrs=("number", "state", "value", "user_attrs"))
        frame.columns = [c.removeprefix("user_attrs_") for c in frame.columns]
        return frame.drop(columns=[c for c in _NOT_SHOWN if c in frame.columns])

    @property
    def front(self) -> list[dict[str, Any]]:
        """The Pareto front (metric against trainable parameters), smallest first."""
        from autopeft.storage.results import pareto_front, study_budget

        metric = self.config.task.metric
        return [
            {
                "trial": t.number,
                "method": t.user_attrs["method"],
                "trainable_params": t.user_attrs["trainable_params"],
                metric: t.values[0] if t.values else None,
            }
            for t in pareto_front(self.study, budget=study_budget(self.study))
        ]

    def export(self, path: str | Path, which: str | int = "best") -> list[dict[str, Any]]:
        """Export the recommendation (or ``"pareto"``, or a trial number) as a peft adapter folder
        that plain peft loads (:func:`autopeft.export`); returns the provenance records."""
        from autopeft.outputs.export import export

        return export(self.resolved, path, which)

    def peft_config(self) -> Any:
        """The recommendation as a ``peft`` config object (``LoraConfig`` with ``target_modules`` and
        ``rank_pattern``...), to apply with ``peft.get_peft_model`` in your own code.

        Raises:
            AutopeftError: no trial finished yet, or the method is not one of peft's (BitFit,
                unfreezing: :meth:`export` them instead).
        """
        from autopeft.blocks import build_context
        from autopeft.peft_backed import PeftBackedMethod
        from autopeft.registry import registered_methods

        chosen = self.recommended
        if chosen is None:
            raise AutopeftError(f"study {self.config.study.name!r} has no finished trial yet; run it first")
        method = registered_methods(self.resolved.pm)[chosen["method"]].method
        if not isinstance(method, PeftBackedMethod):
            raise AutopeftError(
                f"peft_config: method {chosen['method']!r} is not one of peft's; use .export(path) for its weights"
            )
        config = method.peft_config(
            build_context(self._skeleton(), new_head=self.resolved.task.new_head), chosen["config"]
        )
        config.task_type = self.resolved.task.peft_task_type  # get_peft_model then picks the task's wrapper
        return config

    def _skeleton(self) -> Any:
        """The model's module tree, for naming targets: the loaded model, else one without weights."""
        if self.resolved.loaded is not None:
            return self.resolved.loaded[0]
        import torch
        import transformers

        from autopeft.training.models import resolve_model_name

        model = self.config.model
        source, offline = resolve_model_name(self.resolved.pm, model.name)
        auto = getattr(transformers, self.resolved.task.auto_model)
        kwargs = self.resolved.task.model_kwargs(self.study.user_attrs.get("labels") or [])
        settings = transformers.AutoConfig.from_pretrained(
            source,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
            local_files_only=offline,
            **model.overrides,
            **kwargs,
        )
        with torch.device("meta"):
            return auto.from_config(settings, trust_remote_code=model.trust_remote_code)

    def plot(self) -> dict[str, Any]:
        """The report's plotly figures by name (the front, the history, the race...), each shown
        inline when called in Jupyter."""
        from autopeft.outputs.report import build_figures

        figures = build_figures(self.study)
        with contextlib.suppress(ImportError):
            from IPython import get_ipython
            from IPython.display import display

            if get_ipython() is not None:
                for figure in figures.values():
                    display(figure)
        return figures

    def to_toml(self, folder: str | Path) -> Path:
        """Write the study file of this study into ``folder`` (``<name>.toml``), so that ``autopeft
        run``, ``report`` or ``export`` carry on with the same study: its in-memory data is copied
        beside it as parquet; its storage stays the same.

        Raises:
            ConfigError: a loaded model without a ``name_or_path`` to load it by, or a ``fit``
                function that cannot be imported back (defined in a notebook or ``__main__``).
        """
        if self.resolved.loaded is not None and self.config.model.name == "loaded-model":
            raise ConfigError(
                "model", "the loaded model has no name_or_path to write", "pass the model by its hub id or folder"
            )
        if self._fit is not None and self.config.train.fit is None:
            raise ConfigError(
                "fit",
                f"{getattr(self._fit, '__qualname__', self._fit)!r} cannot be imported back (defined in a notebook "
                "or __main__)",
                "move it into a module and pass it, or fit='module:function'",
            )
        folder = Path(folder).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        raw = {section: dict(table) for section, table in self._raw.items()}
        here = self.config.path.parent
        for split in ("train", "validation", "test"):
            value = raw["data"].get(split)
            if value is None or not Path(value).is_file():
                continue
            source = Path(value)
            if source.is_relative_to(here / "data"):  # written by tune: it travels with the study file
                target = folder / "data" / source.name
                if target != source:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source, target)
                raw["data"][split] = str(target.relative_to(folder))
        raw["study"].setdefault("storage", self.config.storage)
        path = folder / f"{self.config.study.name}.toml"
        path.write_text(
            f"# Written by autopeft.tune: `autopeft run {path.name}` carries on with the same study.\n\n"
            + study_toml(raw),
            encoding="utf-8",
        )
        return path
