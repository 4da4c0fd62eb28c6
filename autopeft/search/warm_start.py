"""A new study's first trials: the known-good configurations, queued before the sampler draws any.

Three sources, in this order: another study's Pareto front (``autopeft run --from``), each method's
default (the lead method's at each rate of the ladder), and the gradient proxy's choice of ranks.

A study of the same task on a smaller (or larger) model has already found what works; its front,
mapped onto this model's blocks, is a better start than random samples. Per-block parameters
(``lora.r[3]``) are mapped by relative depth, so block 3 of 6 becomes block 1 of 2 or block 6 of 12.

Every worker queues them; ``skip_if_exists`` keeps workers that start together from trying the
defaults twice, and a short study queues no more than it has trials.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import optuna

from autopeft.errors import AutopeftError
from autopeft.progress import Progress
from autopeft.storage.results import FINISHED, PENDING

if TYPE_CHECKING:
    from autopeft.search.search_space import SearchSpace
    from autopeft.training.workbench import Workbench

__all__ = ["map_to_blocks", "queue_known_good", "queue_proxy_choice"]

_PER_BLOCK = re.compile(r"^(.+)\[(\d+)\]$")


def map_to_blocks(params: dict[str, Any], n_blocks: int) -> dict[str, Any]:
    """``params`` with every per-block parameter re-indexed for a model with ``n_blocks`` blocks.

    The source depth is read from the parameters themselves (the highest index + 1), so the other
    model need not be loaded. Block ``j`` takes the value of the source block at the same relative
    depth; a 1-block target takes the top block's value.
    """
    mapped: dict[str, Any] = {}
    per_block: dict[str, dict[int, Any]] = {}
    for name, value in params.items():
        if match := _PER_BLOCK.match(name):
            per_block.setdefault(match.group(1), {})[int(match.group(2))] = value
        else:
            mapped[name] = value
    for prefix, values in per_block.items():
        top = max(values)
        for j in range(n_blocks):
            source = top if n_blocks == 1 else round(j * top / (n_blocks - 1))
            mapped[f"{prefix}[{j}]"] = values.get(source, 0)
    return mapped


def queue_known_good(
    study: optuna.Study,
    space: SearchSpace,
    target: int,
    progress: Progress,
    front: tuple[str, list[dict[str, Any]]] | None = None,
) -> bool:
    """Queue another study's ``front`` (once per study), and each method's default where the study is
    new (or its only trials failed, e.g. interrupted); whether it was new, so the caller queues the
    proxy's choice after them."""
    new = not study.get_trials(deepcopy=False, states=(*FINISHED, *PENDING))
    if front is not None:
        _enqueue_front(study, space, front, progress)
    if new:
        for params in space.warm_start_params(progress.line)[: _room(study, target)]:
            study.enqueue_trial(params, user_attrs={"warm_start": True}, skip_if_exists=True)
    return new


def _room(study: optuna.Study, target: int) -> int:
    """How many more trials a study of ``target`` trials may queue: a short study (``n_trials = 2``)
    runs the first of the known-good configurations and leaves none waiting after it."""
    return target - len(study.get_trials(deepcopy=False, states=(*FINISHED, *PENDING)))


def queue_proxy_choice(
    study: optuna.Study, bench: Workbench, space: SearchSpace, target: int, progress: Progress
) -> None:
    """Score the blocks (:mod:`autopeft.search.proxy`), record the scores, and queue as many of the
    proxy's configurations as the study has room for; once per study, where ``[search] proxy`` is on."""
    from autopeft.search.proxy import PROXY_ATTR, proxy_scores

    room = _room(study, target)
    if not bench.config.search.proxy or PROXY_ATTR in study.user_attrs or room <= 0:
        return
    if not any("r" in bench.options[name] for name in bench.methods):  # no method takes per-block ranks
        return
    started = time.perf_counter()
    scores = proxy_scores(bench)
    study.set_user_attr(PROXY_ATTR, scores.as_record())
    queued = space.proxy_params(scores.blocks)[:room]
    for params in queued:
        study.enqueue_trial(params, user_attrs={"warm_start": True, "proxy": True}, skip_if_exists=True)
    shares = " ".join(f"{s:.2f}" for s in scores.blocks)
    progress.line(
        f"proxy: block scores {shares} ({time.perf_counter() - started:.1f}s); "
        f"{len(queued)} configuration(s) with ranks where they are high queued after the defaults"
    )


def _enqueue_front(
    study: optuna.Study, space: SearchSpace, other: tuple[str, list[dict[str, Any]]], progress: Progress
) -> None:
    """Enqueue another study's Pareto configurations (its name and their parameters), mapped onto this
    model, unless already done."""
    name, front = other
    if any(t.user_attrs.get("started_from") == name for t in study.get_trials(deepcopy=False)):
        return
    adopted = [p for p in (space.adopt(params) for params in front) if p is not None]
    if not adopted:
        raise AutopeftError(
            f"--from: none of the {len(front)} Pareto configurations of study {name!r} uses a method and choices "
            "this study enables; enable its methods under [search] or start without --from"
        )
    for params in adopted:
        study.enqueue_trial(params, user_attrs={"started_from": name}, skip_if_exists=True)
    progress.line(f"trying first {len(adopted)} of the {len(front)} Pareto configurations of study {name!r}")
