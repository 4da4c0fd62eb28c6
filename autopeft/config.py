"""The study file (TOML): its schema, defaults and the error message for every wrong field.

A study file is the whole description of a search. Each section is a frozen dataclass; loading
checks every key and value and raises :class:`~autopeft.errors.ConfigError` naming the field
(``train.batch_size``), what is wrong, and the fix.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from autopeft.bucket_url import is_bucket_url, parse_bucket_url
from autopeft.budget import parse_budget
from autopeft.errors import ConfigError

__all__ = [
    "StudyConfig",
    "Rule",
    "load_config",
    "with_task",
    "SAMPLERS",
    "TRACKERS",
    "PRUNERS",
    "DATA_SUFFIXES",
    "KEEP_WEIGHTS",
    "folder_kind",
    "SECTIONS",
    "config_from_dict",
    "study_toml",
]

SAMPLERS = ("tpe", "random", "gp", "nsga2", "auto")
TRACKERS = ("mlflow", "wandb", "tensorboard")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEVICES = ("auto", "cuda", "mps", "cpu")
DTYPES = ("fp32", "bf16", "fp16", "auto")
QUANTIZATIONS = ("nf4", "int8")
PRUNERS = ("median", "sha", "hyperband", "none")
DATA_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")
KEEP_WEIGHTS = ("front", "all", "none")
#: A study name becomes file names beside the study file (<name>.db, <name>.cache/, <name>.artifacts/):
#: letters, digits, "_", "." and "-", starting with a letter, digit or "_"; never a path.
_STUDY_NAME = re.compile(r"\w[\w.-]{0,127}")
#: The longest heartbeat interval: longer ones overflow the timers behind it, and a dead worker's
#: trial would wait days to be retried.
MAX_HEARTBEAT_SECONDS = 86_400


@dataclass(frozen=True)
class Rule:
    """One check of a study-file field, declared beside the field (see :func:`checked`).

    ``check(value)`` (or ``check(value, config)`` with ``needs_config``) returns True when the value
    is right, False when not, a string saying what is wrong, or a (problem, fix) pair when the fix
    depends on the value. In ``problem`` and ``fix``,
    ``{value}`` becomes the value's repr, ``{key}`` the field's name, ``{default}`` its default and
    ``{file}`` the path a data file resolves to.
    """

    check: Callable[..., bool | str | tuple[str, str]]
    problem: str
    fix: str
    needs_config: bool = False


def checked(*rules: Rule, **field_args: Any) -> Any:
    """A dataclass field (``default=...`` as for :func:`dataclasses.field`) with its rules."""
    return field(metadata={"rules": rules}, **field_args)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float (``inf`` and ``nan`` are TOML floats too, and never a sensible setting)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_path(v: Any) -> bool:
    """A non-empty string that can name a file: no NUL or other control character."""
    return isinstance(v, str) and v.strip() != "" and not any(ord(ch) < 32 for ch in v)


def _positive_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _one_of(choices: tuple[str, ...], what: str = "") -> Rule:
    if what:
        return Rule(lambda v: v in choices, f"unknown {what} {{value}}", f"use one of {list(choices)}")
    return Rule(lambda v: v in choices, f"must be one of {list(choices)}, got {{value}}", 'e.g. {key} = "{default}"')


def _flag(fix: str = "e.g. {key} = {default}", problem: str = "must be true or false") -> Rule:
    return Rule(lambda v: isinstance(v, bool), problem, fix)


def _data_file(v: Any, config: StudyConfig) -> bool | str:
    """A local data file (by its suffix) must exist, and be a file; a hub dataset name is checked when it loads."""
    if not (isinstance(v, str) and v.endswith(DATA_SUFFIXES)):
        return True
    path = Path(config.data_path(v))
    if (kind := folder_kind(path)) is not None:
        return f"{path} is {kind}, not a data file"
    return path.is_file()


def folder_kind(path: Path) -> str | None:
    """ "an empty folder" or "a folder" where ``path`` is one (a data file's path that names a folder
    is reported as such, not as a missing file or a hub name), else None."""
    try:
        if not path.is_dir():
            return None
        return "a folder" if any(path.iterdir()) else "an empty folder"
    except OSError:  # an unreadable folder
        return "a folder"


#: Loading arguments autopeft passes itself, by the setting that decides each: as a config override
#: they would be passed twice (a TypeError deep in transformers) or fight the setting.
RESERVED_OVERRIDES = {
    "trust_remote_code": ("[model] trust_remote_code", "set trust_remote_code = {value} under [model] instead"),
    "revision": ("[model] revision", 'set revision = "..." under [model] instead'),
    "dtype": ("[model] dtype", 'set dtype = "bf16" (or "fp32", "fp16", "auto") under [model] instead'),
    "torch_dtype": ("[model] dtype", 'set dtype = "bf16" (or "fp32", "fp16", "auto") under [model] instead'),
    "quantization_config": ("[model] quantization", 'set quantization = "nf4" or "int8" under [model] instead'),
    "device_map": ("[model] device_map", 'set device_map = "auto" under [model] instead'),
    "local_files_only": ("HF_HUB_OFFLINE", "set HF_HUB_OFFLINE=1 in the environment instead"),
    "num_labels": ("[data] labels", "set labels = [...] under [data] instead, or let the train split decide them"),
    "id2label": ("[data] labels", "set labels = [...] under [data] instead, or let the train split decide them"),
    "label2id": ("[data] labels", "set labels = [...] under [data] instead, or let the train split decide them"),
}


def reserved_override(overrides: Mapping[str, Any]) -> tuple[str, str] | None:
    """(problem, fix) for the first key of ``overrides`` that autopeft passes to ``from_pretrained``
    itself, or None: as an override it would be passed twice, or fight the setting that decides it."""
    key = next((k for k in overrides if k in RESERVED_OVERRIDES), None)
    if key is None:
        return None
    where, instead = RESERVED_OVERRIDES[key]
    value = overrides[key]
    instead = instead.replace("{value}", _toml(value) if isinstance(value, bool) else "true")
    return f"{key!r} is not a config override: autopeft sets it from {where}", f"remove it from overrides and {instead}"


def _not_reserved(v: Any) -> bool | tuple[str, str]:
    found = reserved_override(v) if isinstance(v, dict) else None
    return True if found is None else found


def _budget_form(v: Any) -> bool | str:
    try:
        parse_budget(v, None)  # the form and the share's range; the count is checked once the model loads
    except ValueError as exc:
        return str(exc)
    return True


_POSITIVE = Rule(_positive_int, "must be a positive integer, got {value}", "e.g. {key} = {default}")
_EXISTS = Rule(_data_file, "file not found: {file}", "fix the path (relative to the study file)", needs_config=True)


def _learning_rate(lr: Any) -> bool:
    if isinstance(lr, list):
        return len(lr) == 2 and all(_is_number(x) and x > 0 for x in lr) and lr[0] < lr[1]
    return _is_number(lr) and lr > 0


def _text_columns(v: Any) -> bool:
    return isinstance(v, str) or isinstance(v, list) and 1 <= len(v) <= 2 and all(isinstance(x, str) for x in v)


def _method_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v) and len(set(v)) == len(v)


@dataclass(frozen=True)
class StudySection:
    name: str = checked(
        Rule(
            lambda v: isinstance(v, str) and _STUDY_NAME.fullmatch(v) is not None,
            "must be a plain name of letters, digits, '_', '.' and '-' (it names files beside the study file), "
            "got {value}",
            'e.g. name = "my-study"',
        )
    )
    storage: str | None = checked(
        Rule(
            lambda v: v is None or _is_path(v) and "://" in v,
            "is not a database URL: {value}",
            'use e.g. "sqlite:///study.db" or "postgresql://user@host/db"',
        ),
        default=None,
    )
    n_trials: int = checked(
        Rule(_positive_int, "must be a positive integer, got {value}", "e.g. n_trials = 20"), default=10
    )
    sampler: str = checked(_one_of(SAMPLERS, "sampler"), default="tpe")
    # "median": stop a trial below the median of earlier ones at the same report; "sha": successive
    # halving at rungs of pruner_min_steps · pruner_eta^k steps (asynchronous: a worker never waits);
    # "hyperband": several such brackets; "none". Two-objective studies apply them within size buckets.
    pruner: str = checked(_one_of(PRUNERS, "pruner"), default="median")
    # Trials that finish before the median rule judges any.
    pruner_startup_trials: int = checked(
        Rule(lambda v: _is_int(v) and v >= 0, "must be an integer >= 0, got {value}", "e.g. {key} = 3"), default=3
    )
    # The first step a pruner may judge (sha, hyperband: the first rung); 0: the full run's steps / eta².
    pruner_min_steps: int = checked(
        Rule(lambda v: _is_int(v) and v >= 0, "must be an integer >= 0, got {value}", "e.g. {key} = 10, or 0"),
        default=0,
    )
    # Successive halving keeps the best 1/eta at each rung, and rungs are eta times apart.
    pruner_eta: int = checked(
        Rule(lambda v: _is_int(v) and v >= 2, "must be an integer >= 2, got {value}", "e.g. {key} = 3"), default=3
    )
    seed: int = checked(Rule(_is_int, "must be an integer, got {value}", "e.g. seed = 0"), default=0)
    # Each finished trial logged as one run of these experiment trackers (autopeft.search.trackers).
    trackers: list[str] = checked(
        Rule(
            lambda v: isinstance(v, list) and len(set(v)) == len(v) and all(x in TRACKERS for x in v),
            f"must be a list of distinct names from {list(TRACKERS)}, got {{value}}",
            'e.g. trackers = ["mlflow"]',
        ),
        default_factory=list,
    )
    # ["accuracy"]: the best metric under the budget; ["accuracy", "trainable_params"]: the Pareto front.
    objectives: list[str] | None = checked(
        Rule(
            lambda v: v is None or isinstance(v, list) and all(isinstance(x, str) for x in v),
            "must be a list of objective names, got {value}",
            'e.g. objectives = ["accuracy", "trainable_params"]',
        ),
        default=None,
    )
    # Trained weights kept as Optuna artifacts, so `autopeft export` does not retrain:
    # "front" keeps every trial on the metric-vs-size front when it finished, "all" or "none".
    keep_weights: str = checked(_one_of(KEEP_WEIGHTS), default="front")
    # Where kept weights go: a directory (default: <name>.artifacts beside this file), or a bucket that
    # workers on machines without a shared file system all reach: "s3://bucket/prefix" (the s3 extra)
    # or "gs://bucket/prefix" (the gcs extra); credentials come from the environment, never this file.
    artifacts: str | None = checked(
        Rule(
            lambda v: (
                v is None
                or isinstance(v, str)
                and (parse_bucket_url(v) is not None if is_bucket_url(v) else _is_path(v))
            ),
            "must be a directory path or a bucket URL (s3://bucket/prefix, gs://bucket/prefix)",
            'e.g. artifacts = "/shared/my-study.artifacts" or artifacts = "s3://my-bucket/studies/sst2"',
        ),
        default=None,
    )
    # Workers mark their running trial alive this often; a trial silent for twice as long is failed and retried.
    heartbeat_seconds: int = checked(
        Rule(
            lambda v: _is_int(v) and 0 < v <= MAX_HEARTBEAT_SECONDS,
            f"must be a whole number of seconds from 1 to {MAX_HEARTBEAT_SECONDS}, got {{value}}",
            "e.g. heartbeat_seconds = 30",
        ),
        default=30,
    )


@dataclass(frozen=True)
class ModelSection:
    name: str = checked(
        Rule(_is_path, "must be a hub id or a path", 'e.g. name = "sentence-transformers/all-MiniLM-L6-v2"')
    )
    revision: str | None = checked(
        Rule(
            lambda v: v is None or _is_path(v),
            "must be a branch, tag or commit of the model's repository, got {value}",
            'e.g. revision = "main", or remove it',
        ),
        default=None,
    )
    trust_remote_code: bool = checked(_flag("trust_remote_code = false"), default=False)
    # config kwargs, e.g. num_hidden_layers
    overrides: dict[str, Any] = checked(
        Rule(lambda v: isinstance(v, dict), "must be a table", "e.g. overrides = { num_hidden_layers = 2 }"),
        Rule(lambda v: _not_reserved(v), "", ""),
        default_factory=dict,
    )
    # The frozen base weights' dtype: "fp32", "bf16" (half the memory; the model then computes in bf16),
    # "fp16" (a CUDA GPU only) or "auto" (what the checkpoint stores). Trained parameters and their
    # optimizer state stay fp32 whatever this says; the budget counts parameters, not bytes.
    dtype: str = checked(_one_of(DTYPES), default="fp32")
    # A quantized base through bitsandbytes (pip install 'autopeft[qlora]', a CUDA GPU): "nf4" (QLoRA's
    # 4-bit NormalFloat, bf16 compute) or "int8". Methods that cannot train on it are left out, saying why.
    quantization: str | None = checked(
        Rule(
            lambda v: v is None or v in QUANTIZATIONS,
            f"must be one of {list(QUANTIZATIONS)}, got {{value}}",
            'e.g. quantization = "nf4", or remove it',
        ),
        default=None,
    )
    # "auto" spreads a base too large for one GPU over the visible GPUs (and the CPU) through accelerate's
    # device map; default: the whole base on [train] device.
    device_map: str | None = checked(
        Rule(lambda v: v is None or v == "auto", 'must be "auto", got {value}', 'e.g. device_map = "auto"'),
        default=None,
    )


@dataclass(frozen=True)
class TaskSection:
    # A registered task: `autopeft plugins` lists them.
    type: str = checked(
        Rule(lambda v: isinstance(v, str), "must be a task name, got {value}", 'e.g. type = "causal-lm"'),
        default="sequence-classification",
    )
    # Default: the task's first metric (accuracy; perplexity for causal-lm).
    metric: str = checked(
        Rule(lambda v: isinstance(v, str), "must be a metric name, got {value}", 'e.g. metric = "f1"'), default=""
    )
    # instruction: the most tokens an answer may have when a generation metric scores it.
    max_new_tokens: int = checked(
        Rule(lambda v: _positive_int(v), _POSITIVE.problem, "e.g. max_new_tokens = 32"), default=32
    )
    # Set from the task by with_task, not by the file: "maximize" or "minimize" ("" until then).
    direction: str = field(default="", metadata={"derived": True})


_SPLIT = Rule(_is_path, "must be a file path or a hub dataset name", 'e.g. {key} = "data/{key}.parquet"')


def _needs_dataset(v: Any, config: StudyConfig) -> bool:
    return v is None or config.data.dataset is not None


_HUB_NAME = Rule(lambda v: v is None or _is_path(v), "must be a non-empty string, got {value}", 'e.g. {key} = "..."')
_WITH_DATASET = Rule(
    _needs_dataset, "is only read with data.dataset", 'add dataset = "owner/name", or remove {key}', True
)


@dataclass(frozen=True)
class DataSection:
    train: str = checked(_SPLIT, _EXISTS)
    validation: str = checked(_SPLIT, _EXISTS)
    test: str | None = checked(
        Rule(lambda v: v is None or _is_path(v), _SPLIT.problem, _SPLIT.fix), _EXISTS, default=None
    )
    # With `dataset` (a hub dataset, or a local `datasets` folder beside the study file), train,
    # validation and test name its splits, slices included: train = "train[:90%]". Without it, they
    # are local files or "hub/name:split".
    dataset: str | None = checked(_HUB_NAME, default=None)
    subset: str | None = checked(_HUB_NAME, _WITH_DATASET, default=None)  # the configuration: "sst2"
    revision: str | None = checked(_HUB_NAME, _WITH_DATASET, default=None)  # a branch, tag or commit
    text: str | list[str] = checked(
        Rule(
            _text_columns,
            "must be a column name or a list of two, got {value}",
            'e.g. text = "text" or text = ["premise", "hypothesis"]',
        ),
        default="text",
    )
    label: str = checked(
        Rule(lambda v: isinstance(v, str), "must be a column name", 'e.g. label = "label"'), default="label"
    )
    # Label order; default: sorted labels of the train split.
    labels: list[Any] | None = checked(
        Rule(
            lambda v: v is None or isinstance(v, list) and len(v) >= 2,
            "must list at least two labels",
            'e.g. labels = ["negative", "positive"]',
        ),
        default=None,
    )
    max_length: int = checked(
        Rule(lambda v: _is_int(v) and v >= 8, "must be an integer >= 8, got {value}", "e.g. max_length = 128"),
        default=128,
    )
    max_train_examples: int | None = checked(
        Rule(lambda v: v is None or _positive_int(v), _POSITIVE.problem, "remove it or set e.g. {key} = 1000"),
        default=None,
    )
    max_eval_examples: int | None = checked(
        Rule(lambda v: v is None or _positive_int(v), _POSITIVE.problem, "remove it or set e.g. {key} = 1000"),
        default=None,
    )
    # Rows with an empty or missing text or label: "drop" them, saying how many from which split, or
    # "error": refuse the split, naming the first such row.
    on_missing: str = checked(_one_of(("drop", "error")), default="drop")
    # Tokenized splits kept in <name>.cache/ beside the study file, shared by workers.
    cache_tokens: bool = checked(_flag("e.g. cache_tokens = true"), default=True)
    # causal-lm: texts concatenated and cut into max_length sequences (no padding).
    packing: bool = checked(_flag("e.g. packing = true"), default=True)
    # instruction: also train on the prompt's tokens (the train split's; validation and test score the answers).
    prompt_loss: bool = checked(_flag("e.g. prompt_loss = false"), default=False)
    # instruction: "plain", "none" (prompt + completion concatenated) or a Jinja chat template;
    # default: the tokenizer's own chat template.
    chat_template: str | None = checked(
        Rule(
            lambda v: v is None or isinstance(v, str) and bool(v.strip()),
            'must be "plain", "none" or a Jinja chat template, got {value}',
            'e.g. chat_template = "plain", or remove it to use the tokenizer\'s',
        ),
        default=None,
    )
    # instruction: an example longer than max_length with its answer is dropped (said), has its
    # prompt cut from the left ("truncate"), or refuses the split ("error").
    long_prompts: str = checked(_one_of(("drop", "truncate", "error")), default="drop")

    @property
    def text_columns(self) -> list[str]:
        """The text column, or the two of a pair: what every task reads."""
        return [self.text] if isinstance(self.text, str) else list(self.text)


@dataclass(frozen=True)
class BudgetSection:
    max_trainable: int | str = checked(
        Rule(
            lambda v: isinstance(v, str) or _is_int(v) and int(v) > 0,
            "must be a count or a percentage, got {value}",
            'e.g. max_trainable = "0.5%" or "150k"',
        ),
        Rule(_budget_form, "", 'use e.g. "0.5%" or "150k"'),
    )


@dataclass(frozen=True)
class TrainSection:
    epochs: int = checked(_POSITIVE, default=1)
    batch_size: int = checked(_POSITIVE, default=16)
    eval_batch_size: int = checked(_POSITIVE, default=64)
    # Unset: each method searches its own range (PeftMethod.learning_rates): LoRA, BitFit and
    # unfreezing want rates orders of magnitude apart. Set: one rate or range for every method;
    # [search.<method>] learning_rate overrides either for one method.
    learning_rate: float | list[float] | None = checked(
        Rule(
            lambda v: v is None or _learning_rate(v),
            "must be a positive number or a range [low, high], got {value}",
            "e.g. learning_rate = [1e-5, 1e-2], or leave it out for each method's own range",
        ),
        default=None,
    )
    warmup_ratio: float = checked(
        Rule(lambda v: _is_number(v) and 0 <= v < 1, "must be in [0, 1)", "e.g. warmup_ratio = 0.1"), default=0.1
    )
    weight_decay: float = checked(
        Rule(lambda v: _is_number(v) and v >= 0, "must be >= 0", "e.g. weight_decay = 0.0"), default=0.0
    )
    max_grad_norm: float = checked(
        Rule(lambda v: _is_number(v) and v > 0, "must be > 0", "e.g. max_grad_norm = 1.0"), default=1.0
    )
    evals_per_epoch: int = checked(_POSITIVE, default=1)
    # "auto": bf16 autocast on GPUs that support it and on CPUs with bf16 matrix units, fp32 elsewhere;
    # "bf16" asks for it anywhere; "fp16" is fp16 autocast with loss scaling (GPUs without bf16);
    # "fp32" never autocasts.
    precision: str = checked(_one_of(PRECISIONS), default="auto")
    # "auto": a CUDA GPU when there is one, else Apple's MPS, else the CPU; "cuda" and "mps" fall back to
    # the CPU, saying so, when there is none.
    device: str = checked(_one_of(DEVICES), default="auto")
    # Batches whose gradients add up before each optimizer step: an effective batch of batch_size x this
    # when batch_size alone does not fit in memory. Steps, warmup and fidelities count optimizer steps.
    gradient_accumulation_steps: int = checked(_POSITIVE, default=1)
    # Recompute each block's activations in the backward pass instead of keeping them: less memory
    # for bigger models and batches, about a third more compute.
    gradient_checkpointing: bool = checked(_flag("e.g. gradient_checkpointing = false"), default=False)
    # Batches of similar lengths (shuffled within windows of 50 batches): less padding, a different order.
    length_buckets: bool = checked(
        _flag("e.g. length_buckets = true", "must be true or false, got {value}"), default=False
    )
    # Frozen-prefix caching: when no trainable parameter sits below block k, the hidden states entering
    # block k are computed once per worker (frozen blocks in eval mode) and reused by every epoch and trial.
    prefix_cache: bool = checked(_flag("e.g. prefix_cache = false"), default=False)
    # Your own training function in place of autopeft's loop, as "module:function" (importable where
    # the study runs); see docs: Your own training loop. autopeft.tune(fit=...) writes it here.
    fit: str | None = checked(
        Rule(
            lambda v: v is None or isinstance(v, str) and re.fullmatch(r"[\w.]+:[\w.]+", v) is not None,
            'must be "module:function", got {value}',
            'e.g. fit = "my_training:fit", or remove it for autopeft\'s own loop',
        ),
        default=None,
    )


@dataclass(frozen=True)
class SearchSection:
    # Every built-in but prompt tuning, which needs long training on large models to compete.
    methods: list[str] = checked(
        Rule(
            _method_list,
            "must be a non-empty list of distinct method names, got {value}",
            'e.g. methods = ["lora", "bitfit"]; see `autopeft plugins`',
        ),
        default_factory=lambda: ["lora", "ia3", "adapter", "bitfit", "unfreeze"],
    )
    # Try each method's known-good configuration first; default: yes, unless sampler = "random" (a
    # random search is a baseline, and queued defaults would make it less random). A method's own
    # table may say otherwise: [search.lora] warm_start = false.
    warm_start: bool | None = checked(
        Rule(lambda v: v is None or isinstance(v, bool), "must be true or false", "warm_start = true"), default=None
    )
    # A new study scores the blocks by the task loss's gradient on a few batches (autopeft.search.proxy) and
    # tries a LoRA configuration with ranks where those scores are high, next to the default.
    proxy: bool = checked(_flag("e.g. proxy = false"), default=True)
    # A one-objective study races the incumbent (LoRA r=8 on query and value) and a portfolio of
    # candidates, each at a few rates, on paired seeds up rungs of fidelity (autopeft.search.racing),
    # instead of sampling n_trials; false: the sampler's n_trials, as before (tests, small studies).
    race: bool = checked(_flag("e.g. race = false"), default=True)
    # The race's budget in full trainings of the incumbent, its final rung included.
    trainings: float = checked(
        Rule(lambda v: _is_number(v) and v > 0, "must be a positive number, got {value}", "e.g. trainings = 12"),
        default=12.0,
    )
    # The [search.<method>] tables; each method checks its own (PeftMethod.check_options).
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


_OPTIONAL_POSITIVE = Rule(
    lambda v: v is None or _positive_int(v),
    "must be a positive integer, got {value}",
    "e.g. {key} = 3, or leave it out",
)


@dataclass(frozen=True)
class FinalSection:
    """How ``autopeft refit`` trains the winners: at full fidelity, with several seeds. A search trains
    each configuration once, on the study's ``[train]``/``[data]`` settings; the final training may
    be longer (``epochs``) and on more data (``max_train_examples``), and its mean over ``seeds`` is
    what chooses the winner."""

    epochs: int | None = checked(_OPTIONAL_POSITIVE, default=None)  # default: [train] epochs
    max_train_examples: int | None = checked(_OPTIONAL_POSITIVE, default=None)  # default: [data]'s
    seeds: int = checked(_POSITIVE, default=3)
    # Single-objective studies: how many of the best search trials are refit (the winner is the best
    # refit mean among them); two-objective studies refit their front.
    top: int = checked(_POSITIVE, default=3)


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
    final: FinalSection = field(default_factory=FinalSection)

    @property
    def objectives(self) -> list[str]:
        """What the study optimizes: the task metric, and the trainable parameters when multi-objective."""
        return self.study.objectives or [self.task.metric]

    def learning_rate_for(self, method: str, own: tuple[float, float]) -> float | tuple[float, float]:
        """The rate (a number) or log-uniform range a method trains with: its ``[search.<method>]
        learning_rate``, else ``[train] learning_rate``, else ``own`` (the method's declared range)."""
        chosen = self.search.options.get(method, {}).get("learning_rate", self.train.learning_rate)
        if chosen is None:
            return own
        return (float(chosen[0]), float(chosen[1])) if isinstance(chosen, list) else float(chosen)

    def at_final_fidelity(self) -> StudyConfig:
        """This study with ``[final]``'s epochs and examples in place of the search's."""
        epochs = self.final.epochs or self.train.epochs
        examples = self.final.max_train_examples or self.data.max_train_examples
        if (epochs, examples) == (self.train.epochs, self.data.max_train_examples):
            return self
        return replace(
            self, train=replace(self.train, epochs=epochs), data=replace(self.data, max_train_examples=examples)
        )

    def warm_starts(self, method: str) -> bool:
        """Whether ``method``'s known-good configuration is tried first: its own ``[search.<method>]
        warm_start``, else ``[search] warm_start``, else yes unless the sampler is random."""
        default = self.search.warm_start if self.search.warm_start is not None else self.study.sampler != "random"
        return bool(self.search.options.get(method, {}).get("warm_start", default))

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
    def artifacts_bucket(self) -> str | None:
        """``[study] artifacts`` when it names a bucket (``s3://``, ``gs://``), else None."""
        artifacts = self.study.artifacts
        return artifacts if artifacts is not None and is_bucket_url(artifacts) else None

    @property
    def artifacts_dir(self) -> Path:
        """Where trained weights are kept on disk: ``[study] artifacts`` (relative to the study file) or
        ``<name>.artifacts`` beside it. Workers on several machines need it on a shared file system
        (or a bucket: :attr:`artifacts_bucket`, and then this folder is not used)."""
        folder = None if self.artifacts_bucket else self.study.artifacts
        return (self.path.parent / (folder or f"{self.study.name}.artifacts")).resolve()

    def dataset_source(self) -> str | None:
        """``[data] dataset``: a folder beside the study file when there is one (a local ``datasets``
        repository), else the hub name as given."""
        name = self.data.dataset
        if name is None:
            return None
        local = self.path.parent / name
        return str(local.resolve()) if local.is_dir() else name

    def data_path(self, value: str) -> str:
        """A local data file relative to the study file, or a hub dataset name left as is."""
        if value.endswith(DATA_SUFFIXES):
            return str((self.path.parent / value).resolve())
        return value


#: The study file's sections, in its order, and the dataclass each is read into.
SECTIONS: dict[str, type] = {
    "study": StudySection,
    "model": ModelSection,
    "task": TaskSection,
    "data": DataSection,
    "budget": BudgetSection,
    "train": TrainSection,
    "search": SearchSection,
    "final": FinalSection,
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
        known = [f.name for f in fields(cls) if f.name != "options"]
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


def _toml(value: Any) -> str:
    """A default as a study file spells it: ``true``, not ``True``."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _validate(config: StudyConfig) -> None:
    """Check every field against the rules declared beside it, section by section, field by field."""
    for section_name in SECTIONS:
        section = getattr(config, section_name)
        for f in fields(section):
            value = getattr(section, f.name)
            for rule in f.metadata.get("rules", ()):
                verdict = rule.check(value, config) if rule.needs_config else rule.check(value)
                if verdict is True:
                    continue
                default = f.default if f.default is not MISSING else ""
                words = {"{value}": repr(value), "{key}": f.name, "{default}": _toml(default)}
                if rule.needs_config:
                    words["{file}"] = config.data_path(value)
                if isinstance(verdict, tuple):
                    problem, fix = verdict
                else:
                    problem, fix = verdict if isinstance(verdict, str) else rule.problem, rule.fix
                for token, text in words.items():
                    problem, fix = problem.replace(token, text), fix.replace(token, text)
                raise ConfigError(f"{section_name}.{f.name}", problem, fix)
    for name, table in config.search.options.items():  # a table's name must be a method the study searches
        _check(
            name in config.search.methods,
            f"search.{name}",
            f"options for method {name!r}, which is not in search.methods",
            f"add {name!r} to methods or remove [search.{name}]",
        )
        _check(
            isinstance(table.get("warm_start", True), bool),
            f"search.{name}.warm_start",
            "must be true or false",
            "warm_start = false",
        )
        _check(
            _learning_rate(table.get("learning_rate", 1.0)),
            f"search.{name}.learning_rate",
            f"must be a positive number or a range [low, high], got {table.get('learning_rate')!r}",
            f"e.g. learning_rate = [1e-4, 1e-2] under [search.{name}]",
        )


#: Byte-order marks of the encodings a study file must not be in: TOML is UTF-8.
_WIDE_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def _study_text(path: Path, data: bytes) -> str:
    """A study file's bytes as text: UTF-8 (a UTF-8 byte-order mark, which Windows editors write,
    is dropped).

    Raises:
        ConfigError: the file is UTF-16 or UTF-32, binary, or not UTF-8, saying where and what to do.
    """
    wide = next((name for bom, name in _WIDE_BOMS if data.startswith(bom)), None)
    halves = sorted((data[0::2].count(0) / max(1, len(data[0::2])), data[1::2].count(0) / max(1, len(data[1::2]))))
    if wide is None and len(data) >= 4 and halves[0] < 0.1 and halves[1] > 0.9:
        wide = "UTF-16"  # ASCII text in UTF-16 without a byte-order mark: every other byte NUL
    if wide is not None:
        raise ConfigError(
            str(path),
            f"is {wide} text, and a study file is UTF-8 TOML",
            f"save it as UTF-8 (e.g. iconv -f {wide} -t UTF-8 {path.name} > {path.stem}-utf8.toml)",
        )
    if b"\x00" in data:
        raise ConfigError(
            str(path),
            f"is a binary file, not a TOML study file (a NUL byte at offset {data.index(0)})",
            "give the path of the study's .toml file",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)  # the codec counts after the mark
        line = data[:start].count(b"\n") + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise ConfigError(
            str(path),
            f"is not UTF-8 text: byte 0x{data[start]:02x} at line {line}, column {column} (offset {start})",
            "save it as UTF-8, or give the path of the study's .toml file",
        ) from None


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study file.

    Raises:
        ConfigError: the file is missing, is not TOML, or a field is wrong.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(_study_text(path, path.read_bytes()))
    except FileNotFoundError:
        raise ConfigError(str(path), "study file not found", "check the path") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "is a folder, not a study file", "give the path of a .toml file") from None
    except tomllib.TOMLDecodeError as exc:  # its message gives the line and column
        raise ConfigError(str(path), f"not valid TOML ({exc})", "fix the syntax at the position shown") from None
    except RecursionError:
        raise ConfigError(str(path), "nests tables or arrays too deeply to read", "flatten it") from None
    except (OSError, ValueError) as exc:  # a NUL in the path, a device, no permission
        raise ConfigError(repr(str(path)), f"cannot read the study file ({exc})", "check the path") from None
    return config_from_dict(raw, path)


def config_from_dict(raw: Mapping[str, Any], path: str | Path) -> StudyConfig:
    """Validate a study given as a dict of sections (as a study file reads), e.g. ``{"study": {"name":
    "s"}, "model": {...}, ...}``: the same checks and one-line errors as :func:`load_config`.
    ``path`` is where the study file is, or would be: relative paths and the SQLite file resolve
    against its folder.

    Raises:
        ConfigError: a section or field is unknown, missing or wrong.
    """
    path = Path(path)
    for key in raw:
        if key not in SECTIONS:
            raise ConfigError(key, "unknown section", _suggest(key, list(SECTIONS)))
    for required in ("study", "model", "data", "budget"):
        if required not in raw:
            raise ConfigError(required, "section is missing", f"add a [{required}] table")
    sections = {name: _section(name, cls, raw.get(name, {})) for name, cls in SECTIONS.items()}
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


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v, where)}" for k, v in value.items()) + "}"
    raise ConfigError(where, f"{type(value).__name__} cannot be written to a study file", "use numbers, strings, lists")


def study_toml(raw: Mapping[str, Any]) -> str:
    """``raw`` (sections as :func:`config_from_dict` takes them) as study-file text, which
    :func:`load_config` reads back into the same config; ``None`` values are left out (defaults).
    A table inside a section (``[search.lora]``) is written as its own table."""
    out: list[str] = []
    for section, table in raw.items():
        scalars = {
            k: v for k, v in table.items() if v is not None and not (section == "search" and isinstance(v, Mapping))
        }
        out += [f"[{section}]", *(f"{k} = {_toml_value(v, f'{section}.{k}')}" for k, v in scalars.items()), ""]
        for name, sub in table.items():
            if section == "search" and isinstance(sub, Mapping):
                out += [
                    f"[{section}.{name}]",
                    *(f"{k} = {_toml_value(v, f'{section}.{name}.{k}')}" for k, v in sub.items()),
                    "",
                ]
    return "\n".join(out)
