"""Creating, loading and resuming studies on an Optuna storage URL, and running them."""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from autopeft.budget import parse_budget
from autopeft.config import StudyConfig, load_config
from autopeft.errors import AutopeftError, ConfigError, Interrupted, first_line
from autopeft.progress import Progress
from autopeft.search.coordination import found_dead_at_once, wait_for_slot
from autopeft.search.samplers import make_sampler
from autopeft.search.trackers import Tracker, make_trackers
from autopeft.search.warm_start import queue_known_good, queue_proxy_choice
from autopeft.storage.artifacts import check_writable
from autopeft.storage.backends import (
    check_sqlite_folder,
    mask_url,
    open_failure,
    open_storage,
    retry_trial,
    sqlite_path,
    storage_failure,
)
from autopeft.storage.optuna_adapter import remember_storage, storage_url
from autopeft.storage.results import (
    FINISHED,
    FRONT_ATTR,
    best_trial,
    describe_baselines,
    finished_trials,
    pareto_front,
)

if TYPE_CHECKING:
    from autopeft.registry import ResolvedStudy
    from autopeft.search.objective import Objective
    from autopeft.training.workbench import Workbench

__all__ = [
    "run_study",
    "prepare_study",
    "open_study",
    "finished_trials",
    "best_trial",
    "pareto_front",
    "mask_url",
    "file_budget",
    "front_params",
    "StudyNotFound",
]


class StudyNotFound(AutopeftError):
    """The study is not in its storage (yet)."""


#: Consecutive failed trials after which a study stops: a fault that fails every trial is not retried forever.
MAX_FAILURES_IN_A_ROW = 5


def open_study(
    config: StudyConfig,
    storage: str | None = None,
    create: bool = True,
    worker_seed: int = 0,
    read_only: bool = False,
    directions: Sequence[str] | None = None,
) -> optuna.Study:
    """Create the study on its storage, or load it to resume; ``worker_seed``: see :func:`make_sampler`.

    Args:
        directions: the objectives' directions (:attr:`ResolvedStudy.directions`), which the task
            plugin decides: required to create a study; when given, a stored study must match them.
            Without them a stored study is read with its own (reading needs no plugin).
        read_only: (with ``create=False``) the caller only reads, so an SQLite study is opened
            read-only and a missing one is not created.

    Raises:
        AutopeftError: the database cannot be reached, or (``create=False``) the study is not there.
    """
    url = storage or config.storage
    if create and directions is None:
        raise ValueError("open_study: creating a study needs its directions (ResolvedStudy.directions)")
    wanted = [StudyDirection.MINIMIZE if d == "minimize" else StudyDirection.MAXIMIZE for d in directions or ()]
    try:
        rdb = open_storage(url, config.study.heartbeat_seconds, read_only=read_only and not create)
        if not create:
            study = optuna.load_study(
                study_name=config.study.name,
                storage=rdb,
                sampler=make_sampler(config, worker_seed),
                pruner=optuna.pruners.NopPruner(),  # prepare_study sets the study's own
            )
        else:
            study = optuna.create_study(
                study_name=config.study.name,
                storage=rdb,
                directions=wanted,
                sampler=make_sampler(config, worker_seed),
                pruner=optuna.pruners.NopPruner(),  # prepare_study sets the study's own
                load_if_exists=True,
            )
    except AutopeftError:
        raise
    except KeyError:
        raise StudyNotFound(
            f"study {config.study.name!r} not found in {mask_url(url)}; run `autopeft run` first"
        ) from None
    except Exception as exc:  # sqlalchemy raises many types for bad URLs, missing drivers and unreachable servers
        raise open_failure(url, exc) from None
    remember_storage(study, rdb)
    if create and study.metric_names is None:
        name_objectives(study, config)
    # Reading a study needs no task plugin: its directions are stored; the file decides their number.
    same = study.directions == wanted if directions is not None else len(study.directions) == len(config.objectives)
    if not same:
        raise AutopeftError(
            f"study.objectives: study {config.study.name!r} in {mask_url(url)} was created with "
            f"{len(study.directions)} objective(s), the study file asks for {len(config.objectives)}; "
            "give the study a new name or restore its objectives"
        )
    return study


def name_objectives(study: optuna.Study, config: StudyConfig) -> None:
    """Name the objective values (``accuracy``, ``trainable_params``) for optuna-dashboard and Optuna's plots."""
    with warnings.catch_warnings():  # set_metric_names is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(config.objectives)


def file_budget(config: StudyConfig, study: optuna.Study) -> int | None:
    """The study file's budget in parameters, from the model size the study recorded; None before
    the study's first run. Lets commands that only read a study judge it by the file's budget now."""
    total = study.user_attrs.get("total_params")
    if not isinstance(total, int):
        return None
    try:
        return parse_budget(config.budget.max_trainable, total)
    except ValueError as exc:
        raise ConfigError("budget.max_trainable", str(exc), 'use e.g. "0.5%" or "150k"') from None


def _existing(resolved: ResolvedStudy, storage: str | None, worker_seed: int) -> optuna.Study | None:
    """The study if its storage already holds it, else None, creating nothing: a study file that
    fails validation must not leave an empty database behind."""
    config = resolved.config
    path = sqlite_path(storage or config.storage)
    if path is not None and not Path(path).exists():
        check_sqlite_folder(storage or config.storage)  # before the model loads, not after
        return None
    try:
        return open_study(config, storage, create=False, worker_seed=worker_seed, directions=resolved.directions)
    except StudyNotFound:
        return None


def _method_choices(study: optuna.Study, bench: Workbench, progress: Progress) -> list[str]:
    """The choices of the study's ``method`` parameter: the ones its trials recorded, else the
    methods that fit the budget now.

    Optuna cannot change a parameter's choices within a study, so a study resumed under a lower
    budget keeps sampling a method that no longer fits (such a trial is infeasible, in milliseconds)
    instead of failing every trial.

    Raises:
        ConfigError: a recorded method is no longer enabled by the study file.
    """
    recorded = next(
        (t.distributions["method"] for t in study.get_trials(deepcopy=False) if "method" in t.distributions), None
    )
    if recorded is None:
        return list(bench.methods)
    choices = [str(c) for c in recorded.choices]  # type: ignore[attr-defined]
    gone = [c for c in choices if c not in bench.enabled]
    if gone:
        raise ConfigError(
            "search.methods",
            f"study {study.study_name!r} searches {choices}, and the file no longer enables {gone[0]!r}",
            f"add {gone[0]!r} back, or give the study a new name (Optuna cannot change a study's choices)",
        )
    for name in bench.enabled:
        if name not in choices:
            progress.line(
                f"autopeft: method {name!r} is not searched: study {study.study_name!r} was created without it "
                "(Optuna cannot add a choice to a study); give the study a new name to search it"
            )
    return choices


def prepare_study(
    resolved: ResolvedStudy,
    target: int,
    storage: str | None,
    progress: Progress,
    start_from: str | Path | None = None,
    worker_seed: int = 0,
) -> tuple[optuna.Study, Objective | None]:
    """Open or create the study, record its budget and classes, and queue the known-good configurations.

    Everything the study file names (model, data, methods, budget, artifact folder) is checked
    before the study is created. Every worker calls this; the queueing skips configurations
    already queued, so workers that start together do not try the defaults twice. Returns the
    objective, or None when the study already has ``target`` finished trials.
    """
    from autopeft.training.data_files import check_columns

    config = resolved.config
    check_columns(config, resolved.task.columns(config.data))  # the task's columns, before the model loads
    existing = _existing(resolved, storage, worker_seed)
    done = len(finished_trials(existing)) if existing is not None else 0
    racing = races(config)
    if racing and config.at_final_fidelity() is not config:  # the race's full training is the final one
        resolved = resolved.with_config(config.at_final_fidelity())
    front_pending = races_front(config) and existing is not None and FRONT_ATTR not in existing.user_attrs
    if existing is not None and not racing and not front_pending and done >= target:
        progress.line(f"study {config.study.name!r} already has {done} finished trials (n_trials = {target})")
        return existing, None
    from autopeft.search.objective import Objective
    from autopeft.search.pruning import make_pruner
    from autopeft.search.search_space import SearchSpace
    from autopeft.training.train import planned_steps
    from autopeft.training.workbench import Workbench

    bench = Workbench(resolved, progress)
    bench.require_a_fit()
    if progress.quiet:  # a method left out is a warning about the study file, not progress: said even so
        for name, why in bench.skipped.items():
            print(f"{progress.prefix}autopeft: method {name!r} skipped: {why}", file=progress.stream, flush=True)
    check_writable(config)
    study = existing or open_study(config, storage, worker_seed=worker_seed, directions=resolved.directions)
    # The pruner needs the full run's length, which the data decides: known once the workbench is loaded.
    study.pruner = make_pruner(config, planned_steps(bench.data.train, config.train))
    space = SearchSpace(bench, _method_choices(study, bench, progress))
    recorded: dict[str, Any] = {
        "budget": bench.budget,
        "total_params": bench.ctx.total_params,
        "metric": config.task.metric,
        "labels": bench.data.label_names,
        "baseline": bench.baseline,
    }
    for key, value in recorded.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    # A new study (or one whose only trials failed, e.g. interrupted) starts from the known-good
    # configurations: another study's front first when asked for, then each method's default.
    baseline = f"; {describe_baselines(bench.baseline)}" if bench.baseline else ""
    where = f"study {config.study.name!r} on {mask_url(storage or config.storage)}: "
    about = f"budget {bench.budget} parameters; methods {', '.join(bench.methods)}; device {bench.device}" + baseline
    if racing:
        from autopeft.search.race_loop import race_plan

        progress.line(where + f"{done} trainings done; " + about)
        objective = Objective(space, progress)
        other = front_params(start_from) if start_from is not None else None
        steps = planned_steps(bench.data.train, bench.config.train)
        objective.race = race_plan(study, space, steps, progress, other)
        return study, objective
    front = front_params(start_from) if start_from is not None else None
    new = queue_known_good(study, space, target, progress, front)
    progress.line(where + f"{done} of {target} trials done; " + about)
    if new:
        queue_proxy_choice(study, bench, space, target, progress)
    return study, Objective(space, progress, target)


def races(config: StudyConfig) -> bool:
    """Whether ``autopeft run`` races this study (one objective, ``[search] race`` on) rather than sampling it."""
    return config.search.race and not config.multi_objective


def races_front(config: StudyConfig) -> bool:
    """Whether ``autopeft run`` samples this study and then races its Pareto front on paired seeds
    (two objectives, ``[search] race`` on)."""
    return config.search.race and config.multi_objective


def run_study(
    study_file: str | Path | StudyConfig | ResolvedStudy,
    n_trials: int | None = None,
    storage: str | None = None,
    quiet: bool = False,
    start_from: str | Path | None = None,
    label: str = "",
    worker_seed: int | None = None,
    progress: Progress | None = None,
) -> optuna.Study:
    """Run (or resume, or join) the search a study file describes, until ``n_trials`` trials have finished.

    Any number of processes may run this on one study at once (``autopeft worker``): together
    they finish exactly ``n_trials`` trials.

    Args:
        study_file: path of the TOML study file, or an already loaded (or resolved) config.
        n_trials: override ``[study] n_trials``.
        storage: override ``[study] storage``.
        quiet: no progress output.
        start_from: another study file whose Pareto-front configurations, mapped onto this model's
            blocks, are tried first (once per study).
        label: prefix of this worker's progress lines (``w1``).
        worker_seed: added to the sampler's seed, so that workers of one study draw different
            configurations; by default derived from ``label`` (0 without one: a lone run stays
            reproducible).
        progress: where progress goes (default: stderr lines, ``quiet`` and ``label`` as given);
            ``autopeft.tune`` passes one widget line in Jupyter.

    Returns:
        The Optuna study; every trial's details are in its user attributes.

    Raises:
        Interrupted: Ctrl-C or SIGTERM; the trial it stopped is marked failed and queued again.
    """
    resolved = resolve(study_file, check_data=True)
    target = n_trials or resolved.config.study.n_trials
    progress = progress or Progress(quiet=quiet, label=label)
    if worker_seed is None:
        worker_seed = zlib.crc32(label.encode()) if label else 0
    study, objective = prepare_study(resolved, target, storage, progress, start_from, worker_seed)
    if objective is not None and objective.race is not None:
        from autopeft.search.race_loop import run_race

        failed = run_race(study, objective, progress, _tracked(objective, progress), _guarded_optimize)
        raise_if_stuck(objective, failed)
    elif objective is not None:
        _optimize(study, objective, target, progress)
        if races_front(objective.config) and objective.fatal is None:
            _race_front(study, resolved, objective, progress)
    return study


def _race_front(study: optuna.Study, resolved: ResolvedStudy, searched: Objective, progress: Progress) -> None:
    """Race the finished search's Pareto front on paired seeds at the final fidelity
    (:func:`autopeft.search.racing.make_front_plan`), resuming a front race the study began."""
    from autopeft.search.objective import Objective
    from autopeft.search.race_loop import front_plan, run_race
    from autopeft.search.search_space import SearchSpace
    from autopeft.training.train import planned_steps
    from autopeft.training.workbench import Workbench

    bench, config = searched.bench, searched.config
    if config.at_final_fidelity() is not config:  # the front races at [final]: its own data and steps
        bench = Workbench(resolved.with_config(config.at_final_fidelity()), progress)
    objective = Objective(SearchSpace(bench), progress)  # no target: race trials are not search trials
    objective.race = front_plan(study, objective.config, planned_steps(bench.data.train, bench.config.train), progress)
    if objective.race is not None:
        failed = run_race(study, objective, progress, _tracked(objective, progress), _guarded_optimize)
        raise_if_stuck(objective, failed)


def resolve(study: str | Path | StudyConfig | ResolvedStudy, check_data: bool = False) -> ResolvedStudy:
    """A command's study file, loaded and resolved against the plugins: once, where the command starts.

    ``check_data``: check the data files' text columns first (commands that train): every task reads
    them, and a typo there should not wait for the plugins (torch, peft) to import.
    """
    from autopeft.registry import ResolvedStudy, resolve_study
    from autopeft.training.data_files import check_columns

    if isinstance(study, ResolvedStudy):
        return study
    config = study if isinstance(study, StudyConfig) else load_config(study)
    if check_data:
        check_columns(config, config.data.text_columns)
    return resolve_study(config)


def _tracking(tracker: Tracker, progress: Progress) -> Callable[[optuna.Study, FrozenTrial], None]:
    """An Optuna callback logging each finished trial to ``tracker``; a tracker that fails (a server
    down, a full disk) costs its log line, never the trial or the study."""

    def log(study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            tracker.log(study, trial)
        except Exception as exc:
            progress.line(
                f"[trial {trial.number}] not logged to {type(tracker).__name__.strip('_')}: {first_line(exc)}"
            )

    return log


def _tracked(objective: Objective, progress: Progress) -> list[Callable[[optuna.Study, FrozenTrial], None]]:
    return [_tracking(tracker, progress) for tracker in make_trackers(objective.config)]


def _optimize(study: optuna.Study, objective: Objective, target: int, progress: Progress) -> None:
    config, budget = objective.config, objective.bench.budget
    poll = min(5.0, config.study.heartbeat_seconds / 2)
    failed_in_a_row: list[FrozenTrial] = []
    tracked = _tracked(objective, progress)
    written: dict[str, int] = {}  # study attributes as this worker last wrote them: a write is a commit

    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        # A failed trial does not count towards n_trials; a fault that fails every trial stops the study.
        if trial.state == TrialState.FAIL and not trial.user_attrs.get("surplus"):
            failed_in_a_row.append(trial)
        elif trial.state != TrialState.FAIL:
            failed_in_a_row.clear()
        trials = study.get_trials(deepcopy=False)  # read once: every read is a query, and this runs per trial
        for key, value in {
            "pruned_trials": sum(1 for t in trials if "steps_saved" in t.user_attrs),
            "pruning_steps_saved": sum(t.user_attrs.get("steps_saved", 0) for t in trials),
        }.items():
            if written.get(key) != value:
                study.set_user_attr(key, value)
                written[key] = value
        best = best_trial(study, trials, budget)
        shown = f"best {best.values[0]:.4f} (trial {best.number})" if best else "no feasible trial yet"
        if config.multi_objective:
            shown += f"; Pareto front of {len(pareto_front(study, trials, budget))}"
        progress.line(f"[{sum(1 for t in trials if t.state in FINISHED)}/{target}] {shown}")
        if (
            objective.fatal is not None
            or len(failed_in_a_row) >= MAX_FAILURES_IN_A_ROW
            or not wait_for_slot(study, target, progress, poll)
        ):
            study.stop()

    if not wait_for_slot(study, target, progress, poll):
        return
    # No n_trials: failed trials are retried, and other workers finish trials too; after_trial
    # decides when the study has its n_trials.
    while not _guarded_optimize(study, objective, [after_trial, *tracked], progress, None):
        if not wait_for_slot(study, target, progress, poll):
            break
    raise_if_stuck(objective, failed_in_a_row)


def raise_if_stuck(objective: Objective, failed_in_a_row: list[FrozenTrial]) -> None:
    """Raise the study file's problem a trial found, or the fault that failed the last trials in a row.

    Raises:
        AutopeftError: either.
    """
    if objective.fatal is not None:
        raise objective.fatal
    if len(failed_in_a_row) >= MAX_FAILURES_IN_A_ROW:
        last = failed_in_a_row[-1].user_attrs
        raise AutopeftError(
            f"{len(failed_in_a_row)} trials in a row failed, the last in {last.get('error_plugin', 'autopeft')}: "
            f"{last.get('error', 'no reason recorded')}; fix it and run again "
            f"(details: `autopeft trials {objective.config.path}`)"
        )


def _guarded_optimize(
    study: optuna.Study,
    objective: Objective,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]],
    progress: Progress,
    n_trials: int | None,
) -> bool:
    """``study.optimize``, with what stops it turned into one line; False when a trial was found
    failed by another worker (late heartbeats), which the caller goes on from.

    Raises:
        Interrupted: Ctrl-C or SIGTERM.
        AutopeftError: the storage failed, or a problem of the study file.
    """
    try:
        study.optimize(objective, n_trials=n_trials, callbacks=callbacks, catch=(Exception,))
        return True
    except KeyboardInterrupt:
        raise Interrupted(_interrupted(study, objective.current)) from None
    except AutopeftError:
        raise
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as exc:
        # Optuna cannot record a trial that another worker already marked failed: its heartbeats
        # came too late (an overloaded machine, a long database lock). Its retry is queued; go on.
        number = objective.current
        if storage_failure(exc) is not None or number is None or not _finished(study, number):
            _raise_storage_failure(exc, study, objective.current, objective.config)
            raise
        progress.line(f"[trial {number}] was marked failed by another worker (late heartbeats); retried there")
        return False
    except Exception as exc:
        _raise_storage_failure(exc, study, objective.current, objective.config)
        raise


def _finished(study: optuna.Study, number: int) -> bool:
    return bool(study.get_trials(deepcopy=False)[number].state.is_finished())


def _raise_storage_failure(exc: BaseException, study: optuna.Study, number: int | None, config: StudyConfig) -> None:
    """Turn a storage error that stopped the study (an outage that lasted, a full disk, a read-only
    database) into one line, after trying once more to record the running trial as failed."""
    cause = storage_failure(exc)
    if cause is None:
        return
    if isinstance(cause, AutopeftError):
        message = str(cause)
    else:
        message = (
            f"study.storage: cannot write to {mask_url(storage_url(study))} ({mask_url(first_line(cause))}); "
            "free space or fix the database, then run the same command again"
        )
    recorded = ""
    if number is not None:
        try:
            if not _finished(study, number):
                study.tell(number, state=TrialState.FAIL)
            before = len(study.get_trials(deepcopy=False))
            trial = study.get_trials(deepcopy=False)[number]
            retry_trial(study, trial)
            queued = len(study.get_trials(deepcopy=False)) > before
            if not queued:
                recorded = f"; trial {number} was marked failed (retried too often to be queued again)"
            elif _configuration_kept(trial):
                recorded = f"; trial {number} was marked failed and its configuration queued again"
            else:
                recorded = f"; trial {number} was marked failed and queued again ({_NEW_DRAW})"
        except Exception:  # the database is still out of reach: a later run fails and retries the trial
            recorded = "; " + _left_running(study, number, config)
    raise AutopeftError(message + recorded) from None


def _configuration_kept(trial: FrozenTrial) -> bool:
    """Whether the database holds ``trial``'s configuration for its retry to repeat: a trial stopped
    before its first parameter was written has none (a queued one keeps its queued parameters)."""
    return bool(trial.params or trial.system_attrs.get("fixed_params"))


_NEW_DRAW = "its configuration was never written, so the retry draws a new one"


def _left_running(study: optuna.Study, number: int, config: StudyConfig) -> str:
    """What happens to trial ``number`` that the full (or unreachable) database still shows running,
    as far as the database says: when the next run fails it, and what its retry runs."""
    aged = f"once its heartbeat is {2 * config.study.heartbeat_seconds} s old"
    try:
        trial = study.get_trials(deepcopy=False)[number]
    except Exception:  # not even readable
        return f"trial {number} could not be marked failed: the next run fails it {aged} and queues it again"
    when = "at once (its process is gone)" if found_dead_at_once(study, trial) else aged
    what = "queues its configuration again" if _configuration_kept(trial) else f"queues it again ({_NEW_DRAW})"
    return f"trial {number} could not be marked failed: the next run fails it {when} and {what}"


def _interrupted(study: optuna.Study, number: int | None) -> str:
    """Mark the trial Ctrl-C stopped as failed (Optuna usually has) and queue it again; say so."""
    if number is None:
        return "interrupted between trials"
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.RUNNING:  # stopped while Optuna was recording it
        study.tell(number, state=TrialState.FAIL)
        trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.FAIL:
        retry_trial(study, trial)
        return f"interrupted: trial {number} marked failed and queued again"
    return f"interrupted after trial {number} finished"


def front_params(study_file: str | Path, storage: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    """(study name, Optuna parameters of each Pareto-front trial) of another study.

    Raises:
        AutopeftError: the study file is wrong, its study cannot be opened, or it has no front yet.
    """
    config = load_config(study_file)
    study = open_study(config, storage, create=False)
    front = pareto_front(study)
    if not front:
        raise AutopeftError(f"--from: study {config.study.name!r} has no feasible complete trial to start from")
    return config.study.name, [dict(t.params) for t in front]
