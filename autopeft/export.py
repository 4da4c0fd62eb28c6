"""Exporting trials as folders people can use, and loading them back.

An export folder holds what the trial's method ``save`` writes — for peft-backed methods a standard
peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``) that
``PeftModel.from_pretrained(base, folder)`` loads, for native methods ``trained.safetensors`` — and
``provenance.json``: study, trial, metrics, configuration, budget, base model and library versions.
:func:`load_model` rebuilds any export, peft-backed or native, from that record.

The weights come from the trial's Optuna artifacts (see :mod:`autopeft.artifacts`). A trial whose
weights were not kept is retrained with its own seed, which reproduces it on the same machine and
library versions; the export says so and records both metrics.
"""

from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from autopeft.artifacts import artifact_store, fetch_weights
from autopeft.blocks import build_context
from autopeft.config import ModelSection, StudyConfig, load_config
from autopeft.errors import AutopeftError, PluginError
from autopeft.plugins import get_plugin_manager, registered_methods, registered_tasks, resolve_task
from autopeft.progress import Progress
from autopeft.results import best_trial, is_feasible, pareto_front

__all__ = ["export", "export_trial", "load_model", "PROVENANCE_FILE"]

PROVENANCE_FILE = "provenance.json"
_FORMAT = "autopeft-export/1"


def _prepare(out: Path) -> None:
    """Make ``out`` an empty folder; a previous export there is replaced, anything else refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / PROVENANCE_FILE).is_file() and not (out / "pareto.json").is_file():
            raise AutopeftError(f"export: {out} exists and is not an autopeft export; choose a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _check_exportable(trial: FrozenTrial) -> None:
    if not is_feasible(trial):
        why = "over budget, never trained" if trial.user_attrs.get("infeasible") else trial.state.name.lower()
        raise AutopeftError(f"export: trial {trial.number} is {why}; export a complete trial (see `autopeft trials`)")


def _labels(config: StudyConfig, study: optuna.Study) -> list[Any]:
    """The class names in order: recorded by ``autopeft run``, else read from the data again."""
    if "labels" in study.user_attrs:
        return list(study.user_attrs["labels"])
    from autopeft.data import load_task_data
    from autopeft.models import load_tokenizer, resolve_model_name

    pm = get_plugin_manager()
    source, offline = resolve_model_name(pm, config.model.name)
    return load_task_data(
        config, load_tokenizer(config.model, source, offline), resolve_task(config, pm)[1]
    ).label_names


def _provenance(
    config: StudyConfig, study: optuna.Study, trial: FrozenTrial, weights: dict[str, Any], storage: str
) -> dict[str, Any]:
    from autopeft.confirm import CONFIRM_PREFIX
    from autopeft.objective import library_versions
    from autopeft.storage import mask_url

    a = trial.user_attrs
    assert trial.values is not None
    return {
        "format": _FORMAT,
        "study": {
            "name": study.study_name,
            "file": str(config.path),
            "storage": mask_url(storage),
            "task": config.task.type,
            "metric": config.task.metric,
            "objectives": config.objectives,
            "budget": a.get("budget"),
            "total_params": study.user_attrs.get("total_params"),
        },
        "trial": {
            "number": trial.number,
            "values": trial.values,
            "validation_metric": trial.values[0],
            "test_metric": a.get("test_metric"),
            "confirmed": study.user_attrs.get(f"{CONFIRM_PREFIX}{trial.number}"),
            "params": trial.params,
            "seed": a.get("seed"),
            "learning_rate": a.get("learning_rate"),
            "trainable_params": a["trainable_params"],
            "trainable_share": a.get("trainable_share"),
            "block_params": a.get("block_params"),
            "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        },
        "method": a["method"],
        "config": json.loads(a["config"]),
        "model": {
            "name": config.model.name,
            "revision": config.model.revision,
            "trust_remote_code": config.model.trust_remote_code,
            "overrides": config.model.overrides,
        },
        "labels": _labels(config, study),
        "weights": weights,
        "versions": {"trained_with": a.get("versions"), "exported_with": library_versions()},
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def export_trial(
    config: StudyConfig,
    study: optuna.Study,
    trial: FrozenTrial,
    out: Path,
    progress: Progress | None = None,
    storage: str | None = None,
) -> dict[str, Any]:
    """Write ``trial``'s weights and provenance to ``out``; returns the provenance record.

    ``storage`` is the URL the study was opened with (default: the study file's), recorded masked.
    """
    progress = progress or Progress(quiet=True)
    _check_exportable(trial)
    _prepare(out)
    if fetch_weights(artifact_store(config), study, trial, out):
        weights: dict[str, Any] = {"source": "artifact"}
    else:
        weights = _retrain(config, trial, out, progress)
    weights["files"] = sorted(p.name for p in out.iterdir())
    record = _provenance(config, study, trial, weights, storage or config.storage)
    (out / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    return record


def _retrain(config: StudyConfig, trial: FrozenTrial, out: Path, progress: Progress) -> dict[str, Any]:
    """Train the trial again with its own seed and save the result into ``out``."""
    from autopeft.objective import Objective

    a = trial.user_attrs
    assert trial.values is not None
    progress.line(f"export: trial {trial.number}'s weights were not kept; retraining it with its seed {a['seed']}")
    objective = Objective(config, get_plugin_manager(), progress, strict=False)
    method, method_config = objective.method_of(trial, to="retrain it")
    result, _ = objective.fit(
        method,
        method_config,
        a["learning_rate"],
        a["seed"],
        label=trial.number,
        on_trained=lambda model, _: method.save(model, out),
    )
    recorded = trial.values[0]
    same = abs(result.metric - recorded) < 1e-9
    progress.line(
        f"export: retrained trial {trial.number}: {config.task.metric} {result.metric:.4f} "
        f"(recorded {recorded:.4f}{'' if same else '; differs: another machine or library version?'})"
    )
    return {"source": "retrained", "retrained_metric": result.metric, "reproduced": same}


def export(
    study_file: str | Path,
    out: str | Path,
    which: str | int = "best",
    storage: str | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Export the ``"best"`` trial, every ``"pareto"`` trial (one ``trial-<n>`` folder each, and
    ``pareto.json`` listing them), or the trial numbered ``which``. Returns the provenance records."""
    from autopeft.study import open_study

    config, _ = resolve_task(load_config(study_file), get_plugin_manager())  # the metric names the records
    study = open_study(config, storage, create=False)
    out = Path(out)
    if which == "pareto":
        front = pareto_front(study)
        if not front:
            raise AutopeftError(f"study {study.study_name!r} has no feasible complete trial yet; run it first")
        _prepare(out)
        records = [export_trial(config, study, t, out / f"trial-{t.number}", progress, storage) for t in front]
        index = [
            {
                "trial": r["trial"]["number"],
                "folder": f"trial-{r['trial']['number']}",
                "method": r["method"],
                "trainable_params": r["trial"]["trainable_params"],
                config.task.metric: r["trial"]["validation_metric"],
            }
            for r in records
        ]
        (out / "pareto.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return records
    if which == "best":
        trial = best_trial(study)
        if trial is None:
            raise AutopeftError(f"study {study.study_name!r} has no feasible complete trial yet; run it first")
    else:
        trials = study.get_trials(deepcopy=False)
        if not isinstance(which, int) or not 0 <= which < len(trials):
            raise AutopeftError(f"export: study {study.study_name!r} has no trial {which}; see `autopeft trials`")
        trial = trials[which]
    return [export_trial(config, study, trial, out, progress, storage)]


def load_model(
    directory: str | Path, device: str | torch.device | None = None, trust_remote_code: bool = False
) -> nn.Module:
    """The trained model of an export folder, in eval mode: base model + method + trained weights.

    Works for every method, peft-backed or native (whose plugin must be installed). The base model
    is resolved as ``autopeft run`` resolves it (hub, local path or an offline package).

    Args:
        trust_remote_code: must be True to load an export whose study ran the model's own code;
            an export folder from elsewhere never turns it on by itself.

    Raises:
        AutopeftError: the folder is not an export, its method is not installed, or it needs
            ``trust_remote_code``.
    """
    from autopeft.models import load_base_model, load_tokenizer, resolve_model_name

    directory = Path(directory)
    try:
        record = json.loads((directory / PROVENANCE_FILE).read_text(encoding="utf-8"))
        model_section = ModelSection(**record["model"])
        record["method"], record["config"], record["labels"]  # noqa: B018 - what rebuilding needs
    except (OSError, ValueError, TypeError, KeyError):
        raise AutopeftError(
            f"{directory} has no readable {PROVENANCE_FILE}; export a trial with `autopeft export`"
        ) from None
    if model_section.trust_remote_code and not trust_remote_code:
        raise AutopeftError(
            f"{directory} was trained with trust_remote_code = true; pass trust_remote_code=True if you trust "
            f"the code of {model_section.name!r}"
        )
    pm = get_plugin_manager()
    methods = registered_methods(pm)
    if record["method"] not in methods:
        raise PluginError(
            f"{directory} needs method {record['method']!r}, which is not installed; installed: "
            f"{', '.join(sorted(methods))}"
        )
    method = methods[record["method"]].method
    tasks = registered_tasks(pm)
    task_name = record.get("study", {}).get("task", "sequence-classification")  # exports before tasks were plugins
    if task_name not in tasks:
        raise PluginError(
            f"{directory} needs task {task_name!r}, which is not installed; installed: {', '.join(tasks)}"
        )
    task = tasks[task_name].task
    source, offline = resolve_model_name(pm, model_section.name)
    tokenizer = load_tokenizer(model_section, source, offline)
    base = load_base_model(model_section, source, offline, task, record["labels"], tokenizer.pad_token_id)
    model = method.apply(base, build_context(base, new_head=task.new_head), record["config"])
    method.load(model, directory)
    return model.to(device or "cpu").eval()
