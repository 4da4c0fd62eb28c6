"""Exporting trials as folders people can use, and loading them back.

An export folder holds what the trial's method ``save`` writes — for peft-backed methods a standard
peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``) that
``PeftModel.from_pretrained(base, folder)`` loads, for native methods ``trained.safetensors`` — and
``provenance.json``: study, trial, metrics, configuration, budget, base model and library versions.
:func:`load_model` rebuilds any export, peft-backed or native, from that record.

The weights come from the trial's Optuna artifacts (see :mod:`autopeft.storage.artifacts`). A trial whose
weights were not kept is retrained with its own seed, which reproduces it on the same machine and
library versions; the export says so and records both metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from autopeft.blocks import build_context
from autopeft.config import ModelSection, reserved_override
from autopeft.errors import AutopeftError, PluginError, first_line
from autopeft.progress import Progress
from autopeft.registry import ResolvedStudy, get_plugin_manager, registered_methods, registered_tasks
from autopeft.storage.artifacts import artifact_store, fetch_refit_weights, fetch_weights, plain_name
from autopeft.storage.results import (
    confirm_record,
    is_feasible,
    pareto_front,
    recorded_test_metric,
    refit_record,
    winner,
)
from autopeft.tasks import Task

if TYPE_CHECKING:
    from autopeft.training.workbench import Workbench

__all__ = ["export", "export_trial", "load_model", "PROVENANCE_FILE"]

PROVENANCE_FILE = "provenance.json"
_FORMAT = "autopeft-export/1"


MODEL_CARD = "README.md"
_PARETO_INDEX = "pareto.json"


def _read_json(path: Path) -> Any:
    """A JSON file's content, or None when it cannot be read or parsed (tampered, truncated, nested
    past the parser's depth): an earlier export's records are only a hint of what it wrote."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _written_before(out: Path) -> set[str]:
    """Names in ``out`` that an earlier autopeft export there says it wrote (plain names only).

    Only these are ever removed or replaced: a user's own files beside an export stay.
    """
    names: set[str] = set()
    record = _read_json(out / PROVENANCE_FILE)
    if record is not None:
        weights = record.get("weights") if isinstance(record, dict) else None
        files = weights.get("files") if isinstance(weights, dict) else None
        names |= {PROVENANCE_FILE, *(f for f in files or [] if plain_name(f))}
    index = _read_json(out / _PARETO_INDEX)
    if index is not None:
        rows = index if isinstance(index, list) else []
        names |= {_PARETO_INDEX, *(r["folder"] for r in rows if isinstance(r, dict) and plain_name(r.get("folder")))}
    return names


def _check_folder(out: Path) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder no autopeft export wrote."""
    if out.exists() and not out.is_dir():
        raise AutopeftError(f"export: {out} is a file, not a folder; choose a new or empty folder")
    if out.is_dir() and any(out.iterdir()) and not _written_before(out):
        raise AutopeftError(f"export: {out} exists and is not an autopeft export; choose a new or empty folder")


def _remove_earlier(out: Path, keep: Collection[str] = ()) -> None:
    """Remove what an earlier export wrote into ``out`` (its recorded files, and its recorded trial
    folders once emptied the same way), except the names in ``keep``. Nothing else is touched: no
    link is followed, no folder is removed with what it holds."""
    for name in _written_before(out) - set(keep):
        path = out / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            _remove_earlier(path)
            with contextlib.suppress(OSError):  # the user's own files are still in it: it stays
                path.rmdir()


def _publish(staging: Path, out: Path) -> None:
    """Move a finished export from ``staging`` into ``out``, replacing the earlier export there.

    Raises:
        AutopeftError: a file of the new export would replace one the earlier export did not write.
    """
    earlier = _written_before(out)
    for path in sorted(staging.iterdir()):
        target = out / path.name
        if (target.exists() or target.is_symlink()) and path.name not in earlier:
            raise AutopeftError(
                f"export: {target} exists and is not from an earlier export; move it or choose another folder"
            )
    _remove_earlier(out)
    for path in staging.iterdir():
        try:
            os.replace(path, out / path.name)
        except OSError as exc:  # e.g. a folder of the user's where the records said a file of ours was
            raise AutopeftError(
                f"export: cannot write {out / path.name} ({exc.strerror}); move what is there or choose another folder"
            ) from None


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary folder inside ``out`` (never elsewhere) that the export is written to first, so
    that a failed export leaves the earlier one and the user's files as they were."""
    _check_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".autopeft-export-", dir=out))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # our own temporary folder, inside out


def _check_exportable(trial: FrozenTrial) -> None:
    if not is_feasible(trial):
        why = "over budget, never trained" if trial.user_attrs.get("infeasible") else trial.state.name.lower()
        raise AutopeftError(f"export: trial {trial.number} is {why}; export a complete trial (see `autopeft trials`)")


def _labels(resolved: ResolvedStudy, study: optuna.Study) -> list[Any]:
    """The class names in order: recorded by ``autopeft run``, else read from the data again."""
    if "labels" in study.user_attrs:
        return list(study.user_attrs["labels"])
    from autopeft.training.models import load_tokenizer, resolve_model_name
    from autopeft.training.token_cache import load_task_data

    config = resolved.config
    source, offline = resolve_model_name(resolved.pm, config.model.name)
    return load_task_data(config, load_tokenizer(config.model, source, offline), resolved.task).label_names


def _without_weights(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A refit record as an export states it: the figures and fidelity, not the store's artifact ids."""
    return None if record is None else {k: v for k, v in record.items() if k != "weights"}


def _provenance(
    resolved: ResolvedStudy,
    study: optuna.Study,
    trial: FrozenTrial,
    weights: dict[str, Any],
    storage: str,
    refit: dict[str, Any] | None,
) -> dict[str, Any]:
    from autopeft.storage.backends import mask_url
    from autopeft.training.workbench import library_versions

    config = resolved.config
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
            "test_metric": recorded_test_metric(trial, study.user_attrs),
            "confirmed": confirm_record(study, trial),
            "refit": _without_weights(refit),
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
        "labels": _labels(resolved, study),
        "data": {k: getattr(config.data, k) for k in ("train", "validation", "test", "text", "label")},
        "weights": weights,
        "versions": {"trained_with": a.get("versions"), "exported_with": library_versions()},
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def export_trial(
    resolved: ResolvedStudy,
    study: optuna.Study,
    trial: FrozenTrial,
    out: Path,
    progress: Progress | None = None,
    storage: str | None = None,
    workbench: Callable[[], Workbench] | None = None,
) -> dict[str, Any]:
    """Write ``trial``'s weights, provenance and model card to ``out``; returns the provenance record.

    ``storage`` is the URL the study was opened with (default: the study file's), recorded masked.
    An earlier export in ``out`` is replaced; files it did not write are left alone. ``workbench``
    gives the workbench to retrain on when the trial's weights were not kept (one is loaded by
    default; exporting a whole front shares one).
    """
    config = resolved.config
    progress = progress or Progress(quiet=True)
    _check_exportable(trial)
    refit = refit_record(study, trial)
    store = artifact_store(config, create=False)
    with _staging(out) as staging:
        seed = fetch_refit_weights(store, refit, staging) if refit is not None else None
        if seed is not None:
            weights: dict[str, Any] = {"source": "refit", "seed": int(seed)}
        elif fetch_weights(store, study, trial, staging):
            weights = {"source": "artifact"}
        else:
            bench = workbench() if workbench is not None else _workbench(resolved, progress)()
            weights = _retrain(bench, trial, staging, progress)
        _check_saved(resolved, trial, staging)
        _portable_adapter_config(staging, resolved)
        prompt_format = _save_tokenizer(resolved, staging)
        weights["files"] = sorted({*(p.name for p in staging.iterdir()), MODEL_CARD})
        record = _provenance(resolved, study, trial, weights, storage or config.storage, refit)
        if prompt_format is not None:
            record["prompt_format"] = prompt_format
        (staging / MODEL_CARD).write_text(model_card(record), encoding="utf-8")
        (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        _publish(staging, out)
    return record


def _check_saved(resolved: ResolvedStudy, trial: FrozenTrial, staging: Path) -> None:
    """An export holds weights: refuse one whose method's ``save`` wrote no file, naming its plugin.

    Raises:
        PluginError: ``staging`` holds no file.
    """
    if any(p.is_file() and p.stat().st_size > 0 for p in staging.iterdir()):
        return
    name = str(trial.user_attrs.get("method"))
    info = registered_methods(resolved.pm).get(name)
    where = f"plugin {info.plugin} from {info.distribution} {info.version}" if info else "its plugin"
    raise PluginError(
        f"export: method {name!r} ({where}) saved no weights for trial {trial.number}: its save() wrote nothing "
        "into the folder it was given; fix the plugin's save() (see docs/plugins.md), nothing was exported"
    )


#: The conversation the model card formats to show an export's prompt format.
_EXAMPLE_TURNS = [{"role": "user", "content": "{prompt}"}]


def _save_tokenizer(resolved: ResolvedStudy, folder: Path) -> str | None:
    """Save the tokenizer the task serves with (:meth:`~autopeft.tasks.Task.serving_tokenizer`: an
    instruction task's, with its chat template) into ``folder``; returns the prompt format the
    model card shows (a user turn as the template renders it), or None where the task ships none."""
    from autopeft.training.models import load_tokenizer, resolve_model_name

    if type(resolved.task).serving_tokenizer is Task.serving_tokenizer:  # ships none: load nothing
        return None
    config = resolved.config
    source, offline = resolve_model_name(resolved.pm, config.model.name)
    tokenizer = resolved.task.serving_tokenizer(load_tokenizer(config.model, source, offline), config.data)
    if tokenizer is None:
        return None
    tokenizer.save_pretrained(folder)
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(_EXAMPLE_TURNS, tokenize=False, add_generation_prompt=True))
    return "{prompt}{completion}"


def _portable_adapter_config(folder: Path, resolved: ResolvedStudy) -> None:
    """Make a peft ``adapter_config.json`` name the base model as the study does (the hub id, not this
    machine's path of an offline copy) and the task type, so it loads anywhere."""
    path = folder / "adapter_config.json"
    if not path.is_file():
        return
    adapter = json.loads(path.read_text(encoding="utf-8"))
    adapter["base_model_name_or_path"] = resolved.config.model.name
    adapter["revision"] = resolved.config.model.revision
    task = resolved.task
    if adapter.get("task_type") is None and task.peft_task_type is not None:
        adapter["task_type"] = task.peft_task_type
    path.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n", encoding="utf-8")


_WEIGHT_SOURCES = {
    "artifact": "kept from the search",
    "refit": "from `autopeft refit` (the seed with the median validation metric)",
    "retrained": "retrained with its seed",
}


def model_card(record: dict[str, Any]) -> str:
    """The export's ``README.md``: what was trained, how well, under which budget, and how to load it."""
    study, trial, model = record["study"], record["trial"], record["model"]
    metric = study["metric"]
    peft_format = "adapter_config.json" in record["weights"]["files"]
    head = ["---", f"base_model: {json.dumps(model['name'])}", "tags:", "- autopeft", f"- {record['method']}"]
    if peft_format:
        head.insert(1, "library_name: peft")
    share = trial.get("trainable_share")
    rows = [
        ("method", f"`{record['method']}`"),
        ("configuration", f"`{json.dumps(record['config'], sort_keys=True)}`"),
        (f"validation {metric}", f"{trial['validation_metric']:.4f}"),
        (f"test {metric}", "-" if trial.get("test_metric") is None else f"{trial['test_metric']:.4f}"),
        ("trainable parameters", f"{trial['trainable_params']:,}" + (f" ({100 * share:.3f}%)" if share else "")),
        ("budget", "-" if study.get("budget") is None else f"{study['budget']:,} parameters"),
        ("learning rate", "-" if trial.get("learning_rate") is None else f"{trial['learning_rate']:.3g}"),
        ("seed", str(trial.get("seed"))),
        ("task", f"`{study['task']}`"),
        ("data", ", ".join(f"{k} `{v}`" for k, v in record.get("data", {}).items() if v)),
        ("classes", ", ".join(map(str, record["labels"])) or "-"),
        ("weights", _WEIGHT_SOURCES[record["weights"]["source"]]),
    ]
    refit = trial.get("refit")
    if refit:
        test = f"; test {refit['test_mean']:.4f} ± {refit['test_std']:.4f}" if "test_mean" in refit else ""
        fidelity = refit["fidelity"]
        rows.insert(
            4,
            (
                f"refit {metric}",
                f"{refit['mean']:.4f} ± {refit['std']:.4f} on validation{test} "
                f"({len(refit['seeds'])} seeds, {fidelity['epochs']} epochs)",
            ),
        )
    overrides = f", {', '.join(f'{k}={v!r}' for k, v in model['overrides'].items())}" if model["overrides"] else ""
    if peft_format:
        load = (
            "```python\nfrom peft import PeftModel\nfrom transformers import "
            f"{_AUTO_CLASS.get(study['task'], 'AutoModel')}\n\n"
            f"base = {_AUTO_CLASS.get(study['task'], 'AutoModel')}.from_pretrained({model['name']!r}"
            + (f", num_labels={len(record['labels'])}" if record["labels"] else "")
            + f"{overrides})\nmodel = PeftModel.from_pretrained(base, 'path/to/this/folder')\n```\n\n"
            "or, with autopeft installed:\n\n"
        )
    else:
        load = f"Method `{record['method']}` is native to autopeft (or a plugin); load it with autopeft:\n\n"
    load += "```python\nimport autopeft\n\nmodel = autopeft.load_model('path/to/this/folder')\n```\n"
    if record.get("prompt_format") is not None:
        load += _generation_section(record, peft_format)
    return (
        "\n".join([*head, "---", ""])
        + f"\n# {record['method']} on {model['name']}, found by autopeft\n\n"
        + f"Trial {trial['number']} of autopeft study `{study['name']}`, which searched PEFT configurations of "
        + f"`{model['name']}` under a budget of trainable parameters"
        + (" (two objectives: the metric and the size)." if len(study.get("objectives") or []) > 1 else ".")
        + "\n\n| | |\n| --- | --- |\n"
        + "".join(f"| {k} | {v} |\n" for k, v in rows)
        + "\n## Loading\n\n"
        + load
        + f"\n`{PROVENANCE_FILE}` has the full record: study, trial, configuration and library versions.\n"
    )


def _generation_section(record: dict[str, Any], peft_format: bool) -> str:
    """The model card's prompt format and ``generate`` example, for an export that ships its tokenizer."""
    name = record["model"]["name"]
    chat = record["prompt_format"] != "{prompt}{completion}"
    shown = record["prompt_format"] if chat else "the prompt, then the answer, with no template between them"
    prompt = (
        "ids = tokenizer.apply_chat_template(\n    [{'role': 'user', 'content': 'Your question'}], "
        "add_generation_prompt=True, return_tensors='pt', return_dict=True\n)\n"
        if chat
        else "ids = tokenizer('Your prompt', return_tensors='pt')\n"
    )
    load = (
        f"from peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"tokenizer = AutoTokenizer.from_pretrained('path/to/this/folder')\n"
        f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({name!r}), 'path/to/this/folder')\n"
        if peft_format
        else "import autopeft\n\nmodel, tokenizer = autopeft.load_model('path/to/this/folder', tokenizer=True)\n"
    )
    return (
        "\n## Prompt format and generation\n\n"
        + ("A user turn, as the chat template saved here renders it:\n\n" if chat else "")
        + f"```text\n{shown}\n```\n\n"
        + "Generate greedily, as autopeft scored it:\n\n```python\n"
        + load
        + prompt
        + "out = model.generate(**ids, max_new_tokens=32, do_sample=False)\n"
        + "print(tokenizer.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True))\n```\n"
    )


_AUTO_CLASS = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "causal-lm": "AutoModelForCausalLM",
    "instruction": "AutoModelForCausalLM",
}


def _workbench(resolved: ResolvedStudy, progress: Progress) -> Callable[[], Workbench]:
    """A workbench loaded on first use and then kept: exporting a front retrains on one."""

    @functools.cache
    def get() -> Workbench:
        from autopeft.training.workbench import Workbench

        return Workbench(resolved, progress)

    return get


def _retrain(bench: Workbench, trial: FrozenTrial, out: Path, progress: Progress) -> dict[str, Any]:
    """Train the trial again with its own seed and save the result into ``out``."""
    a = trial.user_attrs
    assert trial.values is not None
    progress.line(f"export: trial {trial.number}'s weights were not kept; retraining it with its seed {a['seed']}")
    method, method_config = bench.method_of(trial, to="retrain it")
    result = bench.fit(
        method,
        method_config,
        learning_rate=a["learning_rate"],
        seed=a["seed"],
        label=trial.number,
        on_trained=lambda model, _: method.save(model, out),
    )
    recorded = trial.values[0]
    same = abs(result.metric - recorded) < 1e-9
    progress.line(
        f"export: retrained trial {trial.number}: {bench.config.task.metric} {result.metric:.4f} "
        f"(recorded {recorded:.4f}{'' if same else '; differs: another machine or library version?'})"
    )
    return {"source": "retrained", "retrained_metric": result.metric, "reproduced": same}


def export(
    study_file: str | Path | ResolvedStudy,
    out: str | Path,
    which: str | int = "best",
    storage: str | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Export the ``"best"`` trial, every ``"pareto"`` trial (one ``trial-<n>`` folder each, and
    ``pareto.json`` listing them), or the trial numbered ``which``. Returns the provenance records."""
    from autopeft.search.study import file_budget, open_study, resolve

    resolved = resolve(study_file)  # the task's metric names the records
    config = resolved.config
    study = open_study(config, storage, create=False, read_only=True, directions=resolved.directions)
    budget = file_budget(config, study)  # judged by the study file's budget now
    out = Path(out)
    if which == "pareto":
        front = pareto_front(study, budget=budget)
        if not front:
            raise AutopeftError(f"study {study.study_name!r} has no feasible complete trial yet; run it first")
        _check_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        folders = {f"trial-{t.number}" for t in front}
        linked = sorted(f for f in folders if (out / f).is_symlink())
        if linked:  # it would lead the export, and the clean-up of an earlier one, out of this folder
            raise AutopeftError(f"export: {out / linked[0]} is a link; remove it or choose another folder")
        bench = _workbench(resolved, progress or Progress(quiet=True))
        records = [export_trial(resolved, study, t, out / f"trial-{t.number}", progress, storage, bench) for t in front]
        _remove_earlier(out, keep=folders | {_PARETO_INDEX})  # an earlier front's other points
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
        (out / _PARETO_INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return records
    if which == "best":
        trial = winner(study, budget=budget)
        if trial is None:
            raise AutopeftError(f"study {study.study_name!r} has no feasible complete trial yet; run it first")
    else:
        trials = study.get_trials(deepcopy=False)
        if not isinstance(which, int) or not 0 <= which < len(trials):
            raise AutopeftError(f"export: study {study.study_name!r} has no trial {which}; see `autopeft trials`")
        trial = trials[which]
    return [export_trial(resolved, study, trial, out, progress, storage)]


#: Weight files that unpickle (run code) when loaded: an export never holds one, and load_model refuses them.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _read_provenance(directory: Path) -> tuple[dict[str, Any], ModelSection]:
    """The export's provenance record and model section, checked for what rebuilding needs.

    Raises:
        AutopeftError: the file is missing, unreadable, or a field has the wrong type.
    """
    fix = "export a trial with `autopeft export`"
    record = _read_json(directory / PROVENANCE_FILE)
    if not isinstance(record, dict):
        raise AutopeftError(f"{directory} has no readable {PROVENANCE_FILE}; {fix}")
    expected = {"method": str, "config": dict, "labels": list, "model": dict}
    for key, kind in expected.items():
        if not isinstance(record.get(key), kind):
            raise AutopeftError(f"{directory}/{PROVENANCE_FILE}: {key!r} is missing or not a {kind.__name__}; {fix}")
    model = record["model"]
    known = [f.name for f in dataclasses.fields(ModelSection)]
    unknown = sorted(str(k) for k in model if k not in known)
    if unknown:
        raise AutopeftError(
            f"{directory}/{PROVENANCE_FILE}: 'model' has unknown field{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} (known: {', '.join(known)}); remove "
            f"{'them' if len(unknown) > 1 else 'it'}, or {fix}"
        )
    if "name" not in model:
        raise AutopeftError(f"{directory}/{PROVENANCE_FILE}: 'model' has no 'name'; {fix}")
    section = ModelSection(**model)
    if not (
        isinstance(section.name, str)
        and section.name
        and isinstance(section.revision, (str, type(None)))
        and isinstance(section.trust_remote_code, bool)
        and isinstance(section.overrides, dict)
    ):
        raise AutopeftError(f"{directory}/{PROVENANCE_FILE}: 'model' has a field of the wrong type; {fix}")
    if (reserved := reserved_override(section.overrides)) is not None:
        raise AutopeftError(f"{directory}/{PROVENANCE_FILE}: 'model' overrides {reserved[0]}; {fix}")
    return record, section


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' load report ("MISSING classifier...") and the libraries' deprecation
    warnings while the model is rebuilt: the export's own weights replace the head right after, so the
    report would tell a user something false, and the warnings are about calls autopeft makes."""
    import transformers

    level, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.logging.enable_progress_bar()


@overload
def load_model(
    directory: str | Path,
    device: str | torch.device | None = ...,
    trust_remote_code: bool = ...,
    tokenizer: Literal[False] = ...,
) -> nn.Module: ...


@overload
def load_model(
    directory: str | Path,
    device: str | torch.device | None = ...,
    trust_remote_code: bool = ...,
    *,
    tokenizer: Literal[True],
) -> tuple[nn.Module, Any]: ...


def load_model(
    directory: str | Path,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    tokenizer: bool = False,
) -> nn.Module | tuple[nn.Module, Any]:
    """The trained model of an export folder, in eval mode: base model + method + trained weights;
    with ``tokenizer``, ``(model, tokenizer)``, the tokenizer ready to generate in batches.

    Works for every method, peft-backed or native (whose plugin must be installed). The base model
    is resolved as ``autopeft run`` resolves it (hub, local path or an offline package). Weights are
    read from safetensors files only.

    Args:
        trust_remote_code: must be True to load an export whose study ran the model's own code;
            an export folder from elsewhere never turns it on by itself.
        tokenizer: also return the tokenizer: the export's own where it ships one (an instruction
            study's, with the chat template it trained with), else the base model's; padded on the
            left, as batched generation needs.

    Raises:
        AutopeftError: the folder is not an export, holds pickle files, its method is not
            installed, it needs ``trust_remote_code``, or its weights do not fit what it records.
    """
    from autopeft.training.models import load_base_model, load_tokenizer, resolve_model_name

    directory = Path(directory)
    record, model_section = _read_provenance(directory)
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise AutopeftError(
            f"{directory} holds {pickles[0]}, a pickle file that could run code when loaded; autopeft loads "
            "safetensors only: re-export the trial with `autopeft export`"
        )
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
    study = record.get("study")
    task_name = study.get("task") if isinstance(study, dict) else None
    task_name = task_name or "sequence-classification"  # exports before tasks were plugins
    if task_name not in tasks:
        raise PluginError(
            f"{directory} needs task {task_name!r}, which is not installed; installed: {', '.join(tasks)}"
        )
    task = tasks[task_name].task
    source, offline = resolve_model_name(pm, model_section.name)
    try:
        with _quiet_loading():
            tok = load_tokenizer(model_section, source, offline)
            base = load_base_model(model_section, source, offline, task, record["labels"], tok.pad_token_id)
            model = method.apply(base, build_context(base, new_head=task.new_head), record["config"])
            method.load(model, directory)
    except AutopeftError:
        raise
    except Exception as exc:  # a configuration or weights that do not fit this model: blocks, shapes, a cut file
        raise AutopeftError(
            f"{directory}: its {record['method']} weights do not fit the configuration and model it records "
            f"({type(exc).__name__}: {first_line(exc)}); re-export the trial with `autopeft export`"
        ) from None
    model = model.to(device or "cpu").eval()
    if not tokenizer:
        return model
    if (directory / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        served = AutoTokenizer.from_pretrained(directory)
        if served.pad_token is None:
            served.pad_token = served.eos_token
    else:
        served = tok
    served.padding_side = "left"
    return model, served
