"""The start-up every benchmark shares: offline hub, quiet libraries, the shipped studies, a workbench.

Each script is run as ``python benchmarks/<script>.py``, so this folder is on ``sys.path`` and a
script does ``from common import ...``. Importing this module sets ``HF_HUB_OFFLINE=1`` (unless
set): benchmarks never download.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from autopeft import load_config  # noqa: E402
from autopeft.config import StudyConfig  # noqa: E402
from autopeft.progress import quiet_libraries  # noqa: E402
from autopeft.registry import ResolvedStudy, resolve_study  # noqa: E402
from autopeft.training.train import TrainResult, planned_steps  # noqa: E402
from autopeft.training.workbench import Workbench  # noqa: E402

__all__ = ["ROOT", "STUDIES", "QUICKSTART", "DEFAULT_LORA", "study", "workbench", "tokenized", "instant_fit"]

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "studies"
QUICKSTART = STUDIES / "quickstart.toml"
#: The LoRA a user types (r=8 on query and value, alpha 2r), without its per-block ranks.
DEFAULT_LORA = {"alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.0}


def study(path: Path | str = QUICKSTART, **train: Any) -> ResolvedStudy:
    """A study file loaded and resolved, with ``[train]`` settings replaced by ``train``; libraries quiet."""
    quiet_libraries()
    config: StudyConfig = load_config(path)
    if train:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, **train))
    return resolve_study(config)


def workbench(path: Path | str = QUICKSTART, **train: Any) -> Workbench:
    """The workbench of a study file (model, data and methods loaded), ``[train]`` overridden by ``train``."""
    return Workbench(study(path, **train))


def tokenized(resolved: ResolvedStudy) -> tuple[Any, Any, str, bool]:
    """(tokenizer, tokenized data, model source, offline) of a study, without loading the model."""
    from autopeft.training.models import load_tokenizer, resolve_model_name
    from autopeft.training.token_cache import load_task_data

    config = resolved.config
    source, offline = resolve_model_name(resolved.pm, config.model.name)
    tokenizer = load_tokenizer(config.model, source, offline)
    return tokenizer, load_task_data(config, tokenizer, resolved.task), source, offline


def instant_fit(on_fit: Any = None) -> Any:
    """A stand-in for :meth:`Workbench.fit` that trains nothing: a smooth score of size and learning
    rate, for benchmarks of the driver and the sampler. ``on_fit(bench, method, n)`` sees every call."""

    def fit(
        self: Workbench, method: Any, config: dict[str, Any], *, learning_rate: float, **unused: Any
    ) -> TrainResult:
        method = self.enabled[method] if isinstance(method, str) else method
        n = method.count_trainable(self.ctx, config)
        if on_fit is not None:
            on_fit(self, method, n)
        value = 0.6 + 0.1 * math.log(n) / math.log(self.budget) + 0.05 * math.sin(learning_rate * 1e3)
        total = planned_steps(self.data.train, self.config.train)
        return TrainResult(value, 0.0, 0.0, 0, total, total)

    return fit
