"""Experiment trackers: every finished trial as one run in MLflow, Weights & Biases or TensorBoard.

``[study] trackers = ["mlflow", "wandb", "tensorboard"]`` adds an Optuna callback that, after each
trial, logs what the trial recorded: its method, configuration and learning rate as parameters, the
trainable count, the metric (and the test metric when scored), the state, and the training loss per
step (``loss_curve``, kept by the trial). Runs are grouped under the study: MLflow runs are nested
under one run per study (``autopeft study <name>``), W&B runs share the study's group, TensorBoard
writes one folder per trial.

Where they write, unless their own environment variables say otherwise: MLflow into
``<name>.mlflow.db`` (SQLite) beside the study file (``MLFLOW_TRACKING_URI`` wins), W&B into
``<name>.wandb/`` beside it (online or offline as ``WANDB_MODE`` says), TensorBoard into
``<name>.tensorboard/``. Each needs its package: ``pip install 'autopeft[mlflow]'`` (or ``wandb``,
``tensorboard``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial

from autopeft.config import TRACKERS, StudyConfig
from autopeft.errors import ConfigError

__all__ = ["Tracker", "make_trackers", "TRACKERS", "trial_record"]


class Tracker(Protocol):
    """Logs one finished trial (``log``); ``close`` ends what the study opened."""

    def log(self, study: optuna.Study, trial: FrozenTrial) -> None: ...

    def close(self) -> None: ...


def trial_record(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """What every tracker logs of ``trial``: ``params`` (strings), ``metrics`` and ``curve`` (step, loss)."""
    a = trial.user_attrs
    metric = study.user_attrs.get("metric", "value")
    params = {
        "method": a.get("method", trial.params.get("method", "")),
        "config": a.get("config", ""),
        "learning_rate": a.get("learning_rate", ""),
        "seed": a.get("seed", ""),
        "state": trial.state.name.lower(),
    }
    metrics: dict[str, float] = {}
    if trial.values:
        metrics[metric] = float(trial.values[0])
    for key in ("trainable_params", "trainable_share", "test_metric", "train_seconds", "tokens_per_second"):
        if isinstance(a.get(key), (int, float)):
            metrics["test_" + metric if key == "test_metric" else key] = float(a[key])
    curve = [(int(s), float(v)) for s, v in a.get("loss_curve", [])]
    return {"params": {k: str(v) for k, v in params.items()}, "metrics": metrics, "curve": curve}


class _MLflow:
    def __init__(self, config: StudyConfig) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{config.path.parent / config.study.name}.mlflow.db"
        self.client = MlflowClient(tracking_uri=uri)
        name = config.study.name
        found = self.client.get_experiment_by_name(name)
        self.experiment = found.experiment_id if found else self.client.create_experiment(name)
        parents = self.client.search_runs(
            [self.experiment], filter_string=f"tags.`autopeft.study` = '{name}'", max_results=1
        )
        self.parent = (
            parents[0].info.run_id
            if parents
            else self.client.create_run(
                self.experiment, run_name=f"autopeft study {name}", tags={"autopeft.study": name}
            ).info.run_id
        )

    def log(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from mlflow.entities import Metric, Param

        record = trial_record(study, trial)
        tags = {"mlflow.parentRunId": self.parent, "autopeft.trial": str(trial.number)}
        run = self.client.create_run(self.experiment, run_name=f"trial-{trial.number}", tags=tags).info.run_id
        stamp = int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else 0
        metrics = [Metric(k, v, stamp, 0) for k, v in record["metrics"].items()]
        metrics += [Metric("loss", v, stamp, s) for s, v in record["curve"]]
        params = [Param(k, v) for k, v in record["params"].items()]
        for start in range(0, max(len(metrics), 1), 900):  # MLflow takes at most 1000 metrics a batch
            self.client.log_batch(run, metrics=metrics[start : start + 900], params=params if start == 0 else [])
        self.client.set_terminated(run, "FINISHED" if trial.state.name == "COMPLETE" else "KILLED")

    def close(self) -> None:
        return None


class _WandB:
    def __init__(self, config: StudyConfig) -> None:
        import wandb

        self.wandb = wandb
        self.project = os.environ.get("WANDB_PROJECT", config.study.name)
        self.group = config.study.name
        self.folder = config.path.parent / f"{config.study.name}.wandb"
        self.folder.mkdir(exist_ok=True)

    def log(self, study: optuna.Study, trial: FrozenTrial) -> None:
        record = trial_record(study, trial)
        run = self.wandb.init(
            project=self.project,
            group=self.group,
            name=f"trial-{trial.number}",
            config=record["params"],
            dir=str(self.folder),
            reinit="finish_previous",
        )
        for step, loss in record["curve"]:
            run.log({"loss": loss}, step=step)
        for key, value in record["metrics"].items():
            run.summary[key] = value
        run.finish()

    def close(self) -> None:
        return None


class _TensorBoard:
    def __init__(self, config: StudyConfig) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer_class = SummaryWriter
        self.folder = config.path.parent / f"{config.study.name}.tensorboard"

    def log(self, study: optuna.Study, trial: FrozenTrial) -> None:
        record = trial_record(study, trial)
        writer = self.writer_class(log_dir=str(self.folder / f"trial-{trial.number}"))
        try:
            for step, loss in record["curve"]:
                writer.add_scalar("loss", loss, step)
            last = record["curve"][-1][0] if record["curve"] else 0
            for key, value in record["metrics"].items():
                writer.add_scalar(key, value, last)
            writer.add_text("params", json.dumps(record["params"], indent=2))
        finally:
            writer.close()

    def close(self) -> None:
        return None


_MAKERS: dict[str, Callable[[StudyConfig], Tracker]] = {"mlflow": _MLflow, "wandb": _WandB, "tensorboard": _TensorBoard}


def make_trackers(config: StudyConfig) -> list[Tracker]:
    """The study's trackers, their packages imported now: a missing one fails before any trial.

    Raises:
        ConfigError: a tracker's package is not installed.
    """
    found: list[Tracker] = []
    for name in config.study.trackers:
        try:
            found.append(_MAKERS[name](config))
        except ImportError as exc:
            raise ConfigError(
                "study.trackers", f"{name!r} needs its package ({exc.name or exc})", f"pip install 'autopeft[{name}]'"
            ) from None
    return found
