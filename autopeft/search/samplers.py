"""The sampler a study file names (``[study] sampler``): TPE by default, random, GP, NSGA-II or OptunaHub's
AutoSampler, each seeded so that a lone run is reproducible and workers sharing a study draw apart."""

from __future__ import annotations

import warnings

import optuna

from autopeft.config import StudyConfig
from autopeft.errors import ConfigError, first_line

__all__ = ["make_sampler"]


def make_sampler(config: StudyConfig, worker_seed: int = 0) -> optuna.samplers.BaseSampler:
    """Seeded sampler. TPE is multivariate and grouped, so each method's conditional parameters are
    modelled jointly with the method choice instead of falling back to independent sampling.

    ``worker_seed`` is added to the study's seed: workers sharing a study with one seed would draw
    the same configurations at the same time (found with three workers: the same random start four
    times over). Workers (a seed other than 0) also get TPE's constant liar, which counts other
    workers' running trials as poor results so that they are not drawn again; a lone run has no
    such trials, and without the liar TPE reads the study once a trial instead of once per
    parameter group (``benchmarks/bench_driver.py``). Either way a lone run samples the same.

    The draws for trial ``n`` are seeded with the seed plus ``n``: two ``autopeft run`` processes
    on one study (which share the seed) get different trial numbers, so they do not train the same
    configurations in lockstep, and a lone run stays reproducible.
    """
    from autopeft.storage.optuna_adapter import TrialSeededRandomSampler, TrialSeededTPESampler

    seed = (config.study.seed + worker_seed) % 2**32  # numpy's seed range
    startup = min(10, max(3, config.study.n_trials // 3))
    if config.study.sampler == "random":
        return TrialSeededRandomSampler(seed=seed)
    if config.study.sampler == "gp":  # a method's own parameters exist in its trials only: sampled at random
        # Optuna's 10 random trials first, not TPE's shorter start: GP counts only complete trials (the
        # queued defaults among them) and never sees pruned ones, so after three defaults it proposed
        # one method, pruned each time, for the rest of the study (tests/test_search.py).
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10, warn_independent_sampling=False)
    if config.study.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, config.study.n_trials // 4)))
    if config.study.sampler == "auto":
        return _auto_sampler(seed)
    with warnings.catch_warnings():  # multivariate and group are marked experimental, and are what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return TrialSeededTPESampler(
            seed=seed,
            multivariate=True,
            group=True,
            n_startup_trials=startup,
            constant_liar=worker_seed != 0,
        )


def _auto_sampler(seed: int) -> optuna.samplers.BaseSampler:
    """OptunaHub's AutoSampler, which OptunaHub downloads from GitHub when it is loaded.

    Raises:
        ConfigError: optunahub is not installed, or the module cannot be fetched (offline).
    """
    try:
        import optunahub
    except ImportError:
        raise ConfigError(
            "study.sampler", '"auto" needs OptunaHub', "pip install 'autopeft[auto]', or use sampler = \"tpe\""
        ) from None
    try:
        return optunahub.load_module("samplers/auto_sampler").AutoSampler(seed=seed)  # type: ignore[no-any-return]
    except Exception as exc:  # offline, a moved module, a missing dependency of it
        raise ConfigError(
            "study.sampler",
            f'"auto" could not load OptunaHub\'s AutoSampler ({type(exc).__name__}: {first_line(exc)})',
            'it is downloaded from GitHub on use: run with network access, or use sampler = "tpe"',
        ) from None
