"""Creating, loading and resuming studies on an Optuna storage URL, and running them."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from autopeft.config import StudyConfig, load_config
from autopeft.errors import AutopeftError
from autopeft.plugins import get_plugin_manager
from autopeft.progress import Progress

__all__ = ["run_study", "open_study", "finished_trials", "best_trial", "mask_url", "make_sampler"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
PENDING = (TrialState.RUNNING, TrialState.WAITING)


def mask_url(url: str) -> str:
    """The storage URL with any password replaced by ``***``, for logs and errors."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def make_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """Seeded sampler. TPE is multivariate and grouped, so each method's conditional parameters are
    modelled jointly with the method choice instead of falling back to independent sampling."""
    seed = config.study.seed
    if config.study.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = min(10, max(3, config.study.n_trials // 3))
    with warnings.catch_warnings():  # multivariate and group are marked experimental, and are what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, n_startup_trials=startup, constant_liar=True
        )


def _pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    if config.study.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)


def open_study(config: StudyConfig, storage: str | None = None, create: bool = True) -> optuna.Study:
    """Create the study on its storage, or load it to resume.

    Raises:
        AutopeftError: the database cannot be reached, or (``create=False``) the study is not there.
    """
    url = storage or config.storage
    try:
        if not create:
            return optuna.load_study(
                study_name=config.study.name, storage=url, sampler=make_sampler(config), pruner=_pruner(config)
            )
        return optuna.create_study(
            study_name=config.study.name,
            storage=url,
            direction="maximize",
            sampler=make_sampler(config),
            pruner=_pruner(config),
            load_if_exists=True,
        )
    except KeyError:
        raise AutopeftError(
            f"study {config.study.name!r} not found in {mask_url(url)}; run `autopeft run` first"
        ) from None
    except ImportError:
        raise AutopeftError(
            f"study.storage: no database driver for {mask_url(url)} is installed; "
            "pip install one (e.g. psycopg2-binary for postgresql://)"
        ) from None
    except Exception as exc:  # sqlalchemy raises many types for bad URLs and unreachable servers
        message = mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        raise AutopeftError(
            f"study.storage: cannot open {mask_url(url)} ({message}); check the URL, server and credentials"
        ) from None


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that count towards ``n_trials``: complete (infeasible included) or pruned."""
    return study.get_trials(deepcopy=False, states=FINISHED)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best feasible complete trial, or None when there is none yet."""
    try:
        return study.best_trial
    except ValueError:
        return None


def run_study(
    study_file: str | Path | StudyConfig, n_trials: int | None = None, storage: str | None = None, quiet: bool = False
) -> optuna.Study:
    """Run (or resume) the search a study file describes, until ``n_trials`` trials have finished.

    Args:
        study_file: path of the TOML study file, or an already loaded config.
        n_trials: override ``[study] n_trials``.
        storage: override ``[study] storage``.
        quiet: no progress output.

    Returns:
        The Optuna study; every trial's details are in its user attributes.
    """
    from autopeft.objective import Objective

    config = study_file if isinstance(study_file, StudyConfig) else load_config(study_file)
    target = n_trials or config.study.n_trials
    pm = get_plugin_manager()
    study = open_study(config, storage)
    done = len(finished_trials(study))
    progress = Progress(quiet=quiet)
    if done >= target:
        progress.line(f"study {config.study.name!r} already has {done} finished trials (n_trials = {target})")
        return study
    objective = Objective(config, pm, progress)
    study.set_user_attr("budget", objective.budget)
    study.set_user_attr("total_params", objective.ctx.total_params)
    study.set_user_attr("metric", config.task.metric)
    # A new study (or one whose only trials failed, e.g. interrupted) starts from the known-good configurations.
    if config.search.warm_start and not study.get_trials(deepcopy=False, states=(*FINISHED, *PENDING)):
        for params in objective.warm_start_params():
            study.enqueue_trial(params, user_attrs={"warm_start": True})
    progress.line(
        f"study {config.study.name!r} on {mask_url(storage or config.storage)}: {done} of {target} trials done; "
        f"budget {objective.budget} parameters; methods {', '.join(objective.methods)}; device {objective.device}"
    )

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        best = best_trial(study)
        shown = f"best {best.value:.4f} (trial {best.number})" if best else "no feasible trial yet"
        progress.line(f"[{len(finished_trials(study))}/{target}] {shown}")

    stop = optuna.study.MaxTrialsCallback(target, states=FINISHED)
    study.optimize(objective, n_trials=target - done, callbacks=[stop, after_trial])
    return study
