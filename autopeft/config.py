"""The study file (TOML): its schema, defaults and the error message for every wrong field.

A study file is the whole description of a search. Each section is a frozen dataclass; loading
checks every key and value and raises :class:`~autopeft.errors.ConfigError` naming the field
(``train.batch_size``), what is wrong, and the fix.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from autopeft.budget import parse_budget
from autopeft.errors import ConfigError

__all__ = ["StudyConfig", "load_config", "with_task", "SAMPLERS", "PRUNERS", "DATA_SUFFIXES", "KEEP_WEIGHTS"]

SAMPLERS = ("tpe", "random")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cuda", "cpu")
PRUNERS = ("median", "none")
DATA_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")
KEEP_WEIGHTS = ("front", "all", "none")
#: A study name becomes file names beside the study file (<name>.db, <name>.cache/, <name>.artifacts/):
#: letters, digits, "_", "." and "-", starting with a letter, digit or "_"; never a path.
_STUDY_NAME = re.compile(r"\w[\w.-]{0,127}")
#: The longest heartbeat interval: longer ones overflow the timers behind it, and a dead worker's
#: trial would wait days to be retried.
MAX_HEARTBEAT_SECONDS = 86_400


@dataclass(frozen=True)
class StudySection:
    name: str
    storage: str | None = None
    n_trials: int = 10
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    # ["accuracy"]: the best metric under the budget; ["accuracy", "trainable_params"]: the Pareto front.
    objectives: list[str] | None = None
    # Trained weights kept as Optuna artifacts, so `autopeft export` does not retrain:
    # "front" keeps every trial on the metric-vs-size front when it finished, "all" or "none".
    keep_weights: str = "front"
    artifacts: str | None = None  # directory of the artifact store; default: <name>.artifacts beside this file
    # Workers mark their running trial alive this often; a trial silent for twice as long is failed and retried.
    heartbeat_seconds: int = 30


@dataclass(frozen=True)
class ModelSection:
    name: str
    revision: str | None = None
    trust_remote_code: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)  # config kwargs, e.g. num_hidden_layers


@dataclass(frozen=True)
class TaskSection:
    type: str = "sequence-classification"  # a registered task: `autopeft plugins` lists them
    metric: str = ""  # default: the task's first metric (accuracy; perplexity for causal-lm)
    # Set from the task by with_task, not by the file: "maximize" or "minimize" ("" until then).
    direction: str = field(default="", metadata={"derived": True})


@dataclass(frozen=True)
class DataSection:
    train: str
    validation: str
    test: str | None = None
    text: str | list[str] = "text"
    label: str = "label"
    labels: list[Any] | None = None  # label order; default: sorted labels of the train split
    max_length: int = 128
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    cache_tokens: bool = True  # tokenized splits kept in <name>.cache/ beside the study file, shared by workers
    packing: bool = True  # causal-lm: texts concatenated and cut into max_length sequences (no padding)

    @property
    def text_columns(self) -> list[str]:
        """The text column, or the two of a pair: what every task reads."""
        return [self.text] if isinstance(self.text, str) else list(self.text)


@dataclass(frozen=True)
class BudgetSection:
    max_trainable: int | str


@dataclass(frozen=True)
class TrainSection:
    epochs: int = 1
    batch_size: int = 16
    eval_batch_size: int = 64
    learning_rate: float | list[float] = field(default_factory=lambda: [1e-5, 1e-2])
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    evals_per_epoch: int = 1
    # "auto": bf16 autocast on GPUs that support it and on CPUs with bf16 matrix units, fp32 elsewhere;
    # "bf16" asks for it anywhere; "fp16" is fp16 autocast with loss scaling (GPUs without bf16);
    # "fp32" never autocasts.
    precision: str = "auto"
    # "auto": the GPU when there is one, else the CPU; "cuda" falls back to the CPU, saying so, when
    # there is no GPU.
    device: str = "auto"
    # Recompute each block's activations in the backward pass instead of keeping them: less memory
    # for bigger models and batches, about a third more compute.
    gradient_checkpointing: bool = False
    # Batches of similar lengths (shuffled within windows of 50 batches): less padding, a different order.
    length_buckets: bool = False
    # Frozen-prefix caching: when no trainable parameter sits below block k, the hidden states entering
    # block k are computed once per worker (frozen blocks in eval mode) and reused by every epoch and trial.
    prefix_cache: bool = False


@dataclass(frozen=True)
class SearchSection:
    # Every built-in but prompt tuning, which needs long training on large models to compete.
    methods: list[str] = field(default_factory=lambda: ["lora", "ia3", "adapter", "bitfit", "unfreeze"])
    warm_start: bool = True  # try each method's known-good configuration first
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # [search.<method>] tables


@dataclass(frozen=True)
class StudyConfig:
    """A validated study file. ``path`` is where it was read from; relative paths resolve against it."""

    path: Path
    study: StudySection
    model: ModelSection
    task: TaskSection
    data: DataSection
    budget: BudgetSection
    train: TrainSection
    search: SearchSection

    @property
    def objectives(self) -> list[str]:
        """What the study optimizes: the task metric, and the trainable parameters when multi-objective."""
        return self.study.objectives or [self.task.metric]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def storage(self) -> str:
        """The storage URL: the study's own, or an SQLite file beside the study file."""
        if self.study.storage:
            return self.study.storage
        return f"sqlite:///{(self.path.parent / self.study.name).resolve()}.db"

    @property
    def artifacts_dir(self) -> Path:
        """Where trained weights are kept: ``[study] artifacts`` (relative to the study file) or
        ``<name>.artifacts`` beside it. Workers on several machines need it on a shared file system."""
        return (self.path.parent / (self.study.artifacts or f"{self.study.name}.artifacts")).resolve()

    def data_path(self, value: str) -> str:
        """A local data file relative to the study file, or a hub dataset name left as is."""
        if value.endswith(DATA_SUFFIXES):
            return str((self.path.parent / value).resolve())
        return value


_SECTIONS = {
    "study": StudySection,
    "model": ModelSection,
    "task": TaskSection,
    "data": DataSection,
    "budget": BudgetSection,
    "train": TrainSection,
    "search": SearchSection,
}


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(choices)}"


def _section(name: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(name, f"must be a table, got {type(table).__name__}", f"write it as [{name}]")
    known = [f.name for f in fields(cls) if not f.metadata.get("derived")]
    values = dict(table)
    if cls is SearchSection:  # [search.lora] etc. are method option tables
        known = ["methods", "warm_start"]
        values = {k: v for k, v in table.items() if not isinstance(v, dict)}
    for key in values:
        if key not in known:
            raise ConfigError(f"{name}.{key}", "unknown key", _suggest(key, known))
    if cls is SearchSection:
        values["options"] = {k: v for k, v in table.items() if isinstance(v, dict)}
    missing = [f.name for f in fields(cls) if f.name not in values and _required(f)]
    if missing:
        raise ConfigError(f"{name}.{missing[0]}", "is required", f"add {missing[0]} = ... under [{name}]")
    return cls(**values)


def _required(f: Any) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _check(cond: bool, fld: str, problem: str, fix: str) -> None:
    if not cond:
        raise ConfigError(fld, problem, fix)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float (``inf`` and ``nan`` are TOML floats too, and never a sensible setting)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_path(v: Any) -> bool:
    """A non-empty string that can name a file: no NUL or other control character."""
    return isinstance(v, str) and v.strip() != "" and not any(ord(ch) < 32 for ch in v)


def _validate(c: StudyConfig) -> None:
    s, m, t, d, tr = c.study, c.model, c.task, c.data, c.train
    _check(
        isinstance(s.name, str) and _STUDY_NAME.fullmatch(s.name) is not None,
        "study.name",
        f"must be a plain name of letters, digits, '_', '.' and '-' (it names files beside the study file), "
        f"got {s.name!r}",
        'e.g. name = "my-study"',
    )
    _check(
        s.storage is None or _is_path(s.storage) and "://" in s.storage,
        "study.storage",
        f"is not a database URL: {s.storage!r}",
        'use e.g. "sqlite:///study.db" or "postgresql://user@host/db"',
    )
    _check(
        _is_int(s.n_trials) and s.n_trials > 0,
        "study.n_trials",
        f"must be a positive integer, got {s.n_trials!r}",
        "e.g. n_trials = 20",
    )
    _check(s.sampler in SAMPLERS, "study.sampler", f"unknown sampler {s.sampler!r}", f"use one of {list(SAMPLERS)}")
    _check(s.pruner in PRUNERS, "study.pruner", f"unknown pruner {s.pruner!r}", f"use one of {list(PRUNERS)}")
    _check(_is_int(s.seed), "study.seed", f"must be an integer, got {s.seed!r}", "e.g. seed = 0")
    _check(
        s.objectives is None or isinstance(s.objectives, list) and all(isinstance(x, str) for x in s.objectives),
        "study.objectives",
        f"must be a list of objective names, got {s.objectives!r}",
        'e.g. objectives = ["accuracy", "trainable_params"]',
    )
    _check(
        s.keep_weights in KEEP_WEIGHTS,
        "study.keep_weights",
        f"must be one of {list(KEEP_WEIGHTS)}, got {s.keep_weights!r}",
        'e.g. keep_weights = "front"',
    )
    _check(
        _is_int(s.heartbeat_seconds) and 0 < s.heartbeat_seconds <= MAX_HEARTBEAT_SECONDS,
        "study.heartbeat_seconds",
        f"must be a whole number of seconds from 1 to {MAX_HEARTBEAT_SECONDS}, got {s.heartbeat_seconds!r}",
        "e.g. heartbeat_seconds = 30",
    )
    _check(
        s.artifacts is None or _is_path(s.artifacts),
        "study.artifacts",
        "must be a directory path",
        'e.g. artifacts = "/shared/my-study.artifacts"',
    )
    _check(
        _is_path(m.name),
        "model.name",
        "must be a hub id or a path",
        'e.g. name = "sentence-transformers/all-MiniLM-L6-v2"',
    )
    _check(
        m.revision is None or _is_path(m.revision),
        "model.revision",
        f"must be a branch, tag or commit of the model's repository, got {m.revision!r}",
        'e.g. revision = "main", or remove it',
    )
    _check(
        isinstance(m.trust_remote_code, bool),
        "model.trust_remote_code",
        "must be true or false",
        "trust_remote_code = false",
    )
    _check(
        isinstance(m.overrides, dict),
        "model.overrides",
        "must be a table",
        "e.g. overrides = { num_hidden_layers = 2 }",
    )
    _check(isinstance(t.metric, str), "task.metric", f"must be a metric name, got {t.metric!r}", 'e.g. metric = "f1"')
    _check(isinstance(t.type, str), "task.type", f"must be a task name, got {t.type!r}", 'e.g. type = "causal-lm"')
    for key in ("train", "validation", "test"):
        v = getattr(d, key)
        _check(
            v is None and key == "test" or _is_path(v),
            f"data.{key}",
            "must be a file path or a hub dataset name",
            f'e.g. {key} = "data/{key}.parquet"',
        )
        if isinstance(v, str) and v.endswith(DATA_SUFFIXES):
            _check(
                Path(c.data_path(v)).is_file(),
                f"data.{key}",
                f"file not found: {c.data_path(v)}",
                "fix the path (relative to the study file)",
            )
    text_ok = (
        isinstance(d.text, str)
        or isinstance(d.text, list)
        and 1 <= len(d.text) <= 2
        and all(isinstance(x, str) for x in d.text)
    )
    _check(
        text_ok,
        "data.text",
        f"must be a column name or a list of two, got {d.text!r}",
        'e.g. text = "text" or text = ["premise", "hypothesis"]',
    )
    _check(isinstance(d.label, str), "data.label", "must be a column name", 'e.g. label = "label"')
    _check(
        d.labels is None or isinstance(d.labels, list) and len(d.labels) >= 2,
        "data.labels",
        "must list at least two labels",
        'e.g. labels = ["negative", "positive"]',
    )
    _check(
        _is_int(d.max_length) and d.max_length >= 8,
        "data.max_length",
        f"must be an integer >= 8, got {d.max_length!r}",
        "e.g. max_length = 128",
    )
    for key in ("max_train_examples", "max_eval_examples"):
        v = getattr(d, key)
        _check(
            v is None or _is_int(v) and v > 0,
            f"data.{key}",
            f"must be a positive integer, got {v!r}",
            f"remove it or set e.g. {key} = 1000",
        )
    budget = c.budget.max_trainable
    _check(
        isinstance(budget, str) or _is_int(budget) and int(budget) > 0,
        "budget.max_trainable",
        f"must be a count or a percentage, got {budget!r}",
        'e.g. max_trainable = "0.5%" or "150k"',
    )
    try:
        parse_budget(budget, 10**15)  # the form and the share's range; the count needs the model
    except ValueError as exc:
        raise ConfigError("budget.max_trainable", str(exc), 'use e.g. "0.5%" or "150k"') from None
    for key in ("epochs", "batch_size", "eval_batch_size", "evals_per_epoch"):
        v = getattr(tr, key)
        _check(
            _is_int(v) and v > 0,
            f"train.{key}",
            f"must be a positive integer, got {v!r}",
            f"e.g. {key} = {getattr(TrainSection, key, 1)}",
        )
    _check(
        isinstance(tr.length_buckets, bool),
        "train.length_buckets",
        f"must be true or false, got {tr.length_buckets!r}",
        "e.g. length_buckets = true",
    )
    for key in ("gradient_checkpointing", "prefix_cache"):
        _check(isinstance(getattr(tr, key), bool), f"train.{key}", "must be true or false", f"e.g. {key} = false")
    _check(isinstance(d.packing, bool), "data.packing", "must be true or false", "e.g. packing = true")
    _check(
        tr.device in DEVICES,
        "train.device",
        f"must be one of {list(DEVICES)}, got {tr.device!r}",
        'e.g. device = "auto"',
    )
    _check(
        tr.precision in PRECISIONS,
        "train.precision",
        f"must be one of {list(PRECISIONS)}, got {tr.precision!r}",
        'e.g. precision = "auto"',
    )
    lr = tr.learning_rate
    lr_ok = (
        not isinstance(lr, list)
        and _is_number(lr)
        and lr > 0
        or isinstance(lr, list)
        and len(lr) == 2
        and all(_is_number(x) and x > 0 for x in lr)
        and lr[0] < lr[1]
    )
    _check(
        lr_ok,
        "train.learning_rate",
        f"must be a positive number or a range [low, high], got {lr!r}",
        "e.g. learning_rate = [1e-5, 1e-2]",
    )
    _check(
        _is_number(tr.warmup_ratio) and 0 <= tr.warmup_ratio < 1,
        "train.warmup_ratio",
        "must be in [0, 1)",
        "e.g. warmup_ratio = 0.1",
    )
    _check(
        _is_number(tr.weight_decay) and tr.weight_decay >= 0,
        "train.weight_decay",
        "must be >= 0",
        "e.g. weight_decay = 0.0",
    )
    _check(
        _is_number(tr.max_grad_norm) and tr.max_grad_norm > 0,
        "train.max_grad_norm",
        "must be > 0",
        "e.g. max_grad_norm = 1.0",
    )
    methods = c.search.methods
    _check(
        isinstance(methods, list)
        and bool(methods)
        and all(isinstance(x, str) for x in methods)
        and len(set(methods)) == len(methods),
        "search.methods",
        f"must be a non-empty list of distinct method names, got {methods!r}",
        'e.g. methods = ["lora", "bitfit"]; see `autopeft plugins`',
    )
    _check(isinstance(c.search.warm_start, bool), "search.warm_start", "must be true or false", "warm_start = true")
    for name in c.search.options:
        _check(
            name in methods,
            f"search.{name}",
            f"options for method {name!r}, which is not in search.methods",
            f"add {name!r} to methods or remove [search.{name}]",
        )


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study file.

    Raises:
        ConfigError: the file is missing, is not TOML, or a field is wrong.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "study file not found", "check the path") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "is a folder, not a study file", "give the path of a .toml file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"not valid TOML ({exc})", "fix the syntax at the position shown") from None
    except RecursionError:
        raise ConfigError(str(path), "nests tables or arrays too deeply to read", "flatten it") from None
    except (OSError, ValueError) as exc:  # a NUL in the path, a device, no permission
        raise ConfigError(repr(str(path)), f"cannot read the study file ({exc})", "check the path") from None
    for key in raw:
        if key not in _SECTIONS:
            raise ConfigError(key, "unknown section", _suggest(key, list(_SECTIONS)))
    for required in ("study", "model", "data", "budget"):
        if required not in raw:
            raise ConfigError(required, "section is missing", f"add a [{required}] table")
    sections = {name: _section(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    config = StudyConfig(path=path.resolve(), **sections)
    _validate(config)
    return config


def with_task(config: StudyConfig, tasks: Mapping[str, Any]) -> StudyConfig:
    """``config`` with the task's default metric and its direction filled in, both checked against
    ``tasks`` (name -> :class:`~autopeft.Task`, as the plugins registered them).

    Not part of :func:`load_config`: loading the plugins imports torch and peft, which commands
    that only read a study (``trials``, ``pareto``, ``report``) do not need.
    """
    t, objectives = config.task, config.study.objectives
    _check(t.type in tasks, "task.type", f"unknown task {t.type!r}", f"use one of {sorted(tasks)}")
    task = tasks[t.type]
    metric = t.metric or task.default_metric
    _check(
        metric in task.metrics,
        "task.metric",
        f"unknown metric {metric!r} for task {t.type!r}",
        f"use one of {list(task.metrics)}",
    )
    _check(
        objectives is None or objectives in ([metric], [metric, "trainable_params"]),
        "study.objectives",
        f"must be the task metric, optionally followed by trainable_params; got {objectives!r}",
        f'use objectives = ["{metric}", "trainable_params"] for a Pareto front, or remove it',
    )
    return replace(config, task=replace(t, metric=metric, direction=task.metrics[metric]))
