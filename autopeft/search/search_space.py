"""The search space: Optuna parameters to (method, configuration, learning rate), and back.

A trial's parameters are ``method``, ``<method>.learning_rate`` (when the study file gives a range)
and what the method's ``suggest`` samples. This module is the one place that maps between those
and what :meth:`autopeft.training.workbench.Workbench.fit` trains, for sampled trials, the known-good
configurations tried first, and another study's front (``--from``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from autopeft.methods import checked_count
from autopeft.search.warm_start import map_to_blocks
from autopeft.training.workbench import UNBOUNDED, Workbench

__all__ = ["SearchSpace", "Sample", "RATE_LADDER"]

#: The first warm-started method's default is also tried at these multiples of its rate. A search
#: trains for few steps, where the rate decides more than the structure does: over 3 new seeds,
#: LoRA r=8 with only its rate tuned beat every searched structure at the default rate, with rates
#: above the default (1.5-1.8x on the classification tasks; 3x won the LM task by 4 points of
#: perplexity). benchmarks/README.md, "Search quality against what a user would do instead".
RATE_LADDER = (1.0, 3.0)

#: (method name, learning rate, configuration) of one trial.
Sample = tuple[str, float, dict[str, Any]]


class SearchSpace:
    """The parameters of a study on ``bench``; ``choices`` are the ``method`` parameter's choices
    (the study's recorded ones when it has trials, else the methods that fit the budget)."""

    def __init__(self, bench: Workbench, choices: list[str] | None = None) -> None:
        self.bench = bench
        self.choices = list(bench.methods) if choices is None else choices

    def suggest(self, trial: optuna.trial.BaseTrial) -> Sample:
        """Sample a trial's method, learning rate and configuration. A recorded method choice may no
        longer fit the budget: its configuration is counted, found over, and never trained."""
        name = trial.suggest_categorical("method", self.choices)
        method = self.bench.enabled[name]
        # Per method: the right rate for LoRA is orders of magnitude above full fine-tuning's.
        lr = self.rates(name)
        rate = lr if isinstance(lr, float) else trial.suggest_float(f"{name}.learning_rate", *lr, log=True)
        config = method.suggest(trial, self.bench.ctx, self.bench.options[name], self.bench.budget)
        return name, rate * method.learning_rate_scale(config), config

    def rates(self, name: str) -> float | tuple[float, float]:
        """The rate or range method ``name`` is searched with (:meth:`StudyConfig.learning_rate_for`)."""
        return self.bench.config.learning_rate_for(name, self.bench.enabled[name].learning_rates)

    def config_of(self, params: dict[str, Any], budget: int | None = None) -> tuple[str, dict[str, Any]]:
        """(method, configuration) that ``params`` (a trial's parameters) stand for.

        Raises:
            ValueError: a parameter is missing or not among this study's choices.
        """
        name = params["method"]
        method = self.bench.enabled[name]
        trial = optuna.trial.FixedTrial(params)
        bench = self.bench
        return name, method.suggest(trial, bench.ctx, bench.options[name], bench.budget if budget is None else budget)

    def _with_learning_rate(self, params: dict[str, Any], method: str) -> dict[str, Any]:
        lr = self.rates(method)
        key = f"{method}.learning_rate"
        if isinstance(lr, tuple):
            default = self.bench.methods[method].default_learning_rate
            params[key] = min(max(float(params.get(key, default)), lr[0]), lr[1])
        else:
            params.pop(key, None)
        return params

    def warm_start_params(self, say: Callable[[str], None] = lambda line: None) -> list[dict[str, Any]]:
        """Optuna parameters of the known-good configuration of each method whose warm start is on
        (:meth:`StudyConfig.warm_starts`) and that fits the budget as is; the first of them (the
        study's lead method) also at each higher rate of :data:`RATE_LADDER`, within its range."""
        found: list[dict[str, Any]] = []
        bench = self.bench
        for name, method in bench.methods.items():
            if not bench.config.warm_starts(name):
                continue
            params = method.warm_start(bench.ctx, bench.options[name])
            if params is None:
                continue
            params = self._with_learning_rate({"method": name, **params}, name)
            _, config = self.config_of(params, UNBOUNDED)
            if checked_count(method, bench.ctx, config) <= bench.budget:
                found += [params] if found else self._ladder(params, name)
            else:
                say(f"autopeft: {name}'s default configuration exceeds the budget; not tried first")
        return found

    def _ladder(self, params: dict[str, Any], method: str) -> list[dict[str, Any]]:
        """``params`` at each rate of :data:`RATE_LADDER` times its own, clipped to the method's range;
        one entry when the rate is fixed or clipping makes the rates equal."""
        key = f"{method}.learning_rate"
        if key not in params:
            return [params]
        rungs = [self._with_learning_rate({**params, key: params[key] * m}, method) for m in RATE_LADDER]
        return [p for i, p in enumerate(rungs) if p not in rungs[:i]]

    def proxy_params(self, scores: list[float]) -> list[dict[str, Any]]:
        """The default configuration of each method with per-block ranks (``<name>.r[i]``, as LoRA and
        EVA have), its ranks reallocated by the proxy's block ``scores`` at the default's total rank
        (:func:`autopeft.search.proxy.proxy_ranks`); only those that fit the budget and differ from the default."""
        from autopeft.search.proxy import proxy_ranks

        bench, found = self.bench, []
        for name, method in bench.methods.items():
            options = bench.options[name]
            default = method.warm_start(bench.ctx, options) if bench.config.warm_starts(name) else None
            keys = [f"{name}.r[{i}]" for i in range(len(bench.ctx.blocks))]
            if default is None or "r" not in options or not all(k in default for k in keys):
                continue
            ranks = proxy_ranks(scores, options["r"], max(default[k] for k in keys))
            params = self._with_learning_rate({"method": name, **default, **dict(zip(keys, ranks))}, name)
            _, config = self.config_of(params, UNBOUNDED)
            if ranks != [default[k] for k in keys] and checked_count(method, bench.ctx, config) <= bench.budget:
                found.append(params)
        return found

    def adopt(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """Another study's trial parameters made valid here (blocks mapped, rate clipped), or None.

        None when its method is not enabled here or a value is not among this study's choices.
        """
        name = params.get("method")
        if name not in self.bench.methods:
            return None
        params = self._with_learning_rate(map_to_blocks(params, len(self.bench.ctx.blocks)), name)
        try:
            self.config_of(params)
        except (ValueError, KeyError):
            return None
        return params
