"""Reading results out of a study: finished trials, the best trial, and the Pareto front.

Every trial records its metric as its first objective value and its exact size in the
``trainable_params`` user attribute, so single- and multi-objective studies are read the same way:
the front of metric against trainable parameters exists for both.

Trials are judged against the study's budget *now* (a :class:`Standard`), not the one they ran
under: a study resumed with a lower budget never presents a trial over it as its best. The
standard also holds the baseline (the majority class, say) that marks trials which learned nothing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = [
    "FINISHED",
    "FRONT_ATTR",
    "PENDING",
    "SCORED_BY_ATTR",
    "Standard",
    "describe_baselines",
    "finished_trials",
    "feasible_trials",
    "is_feasible",
    "best_trial",
    "best_trials",
    "winner",
    "recorded_test_metric",
    "refit_record",
    "confirm_record",
    "record_problem",
    "CONFIRM_PREFIX",
    "REFIT_PREFIX",
    "beats_best",
    "pareto_front",
    "metric_sign",
    "outcome",
    "reason",
    "retry_of",
    "trial_row",
    "format_rows",
]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: Study user-attribute prefixes of the records ``autopeft confirm`` and ``autopeft refit`` write per trial.
CONFIRM_PREFIX = "confirm:"
REFIT_PREFIX = "refit:"
PENDING = (TrialState.RUNNING, TrialState.WAITING)
#: The study's user attribute holding a raced front's survivors (``autopeft run`` on a two-objective
#: study with ``[search] race``): from then on they are its Pareto front.
FRONT_ATTR = "front_decision"


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that count towards ``n_trials``: complete (infeasible included) or pruned."""
    return study.get_trials(deepcopy=False, states=FINISHED)


def is_feasible(trial: FrozenTrial, budget: int | None = None) -> bool:
    """Whether a trial completed, was trained within the budget of its time, and fits ``budget``.

    A trial whose recorded size is not a count (an old or tampered record) is not: it cannot be
    placed against the budget or on the front."""
    n = trial.user_attrs.get("trainable_params")
    if trial.state != TrialState.COMPLETE or not isinstance(n, int) or isinstance(n, bool):
        return False
    return all(v <= 0 for v in trial.constraints.values()) and (budget is None or n <= budget)


def study_budget(study: optuna.Study) -> int | None:
    """The budget the study last ran with (``autopeft run`` records it), or None before its first run."""
    budget = study.user_attrs.get("budget")
    return budget if isinstance(budget, int) else None


def feasible_trials(study: optuna.Study, budget: int | None = None) -> list[FrozenTrial]:
    """Complete trials trained within the budget, and within ``budget`` (default: the study's now)."""
    budget = study_budget(study) if budget is None else budget
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if is_feasible(t, budget)]


#: A trial's user attribute naming what ranked it when that is not its metric: "validation_loss" on a
#: race's short rungs. Such a trial learned nothing when that score is no better than the baseline's.
SCORED_BY_ATTR = "scored_by"


@dataclass(frozen=True)
class Standard:
    """What a study's trials are judged against now: its budget and its no-learning baseline."""

    budget: int | None = None
    baseline: float | None = None
    baseline_name: str = ""
    sign: int = 1  # see metric_sign
    baseline_loss: float | None = None  # the baseline's validation loss, where the task gives one
    #: The study's other baselines, (name, value), each no weaker than ``baseline`` (the untuned
    #: base model's score where the majority answer is the weaker): a trial must beat one of them.
    others: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, study: optuna.Study, budget: int | None = None) -> Standard:
        """The study's standard; ``budget`` (e.g. the study file's) instead of the recorded one."""
        attrs = study.user_attrs
        found = attrs.get("baseline")
        baseline: dict[str, Any] = found if isinstance(found, dict) else {}
        named, loss = _named_baselines(baseline), baseline.get("loss")
        return cls(
            budget=study_budget(study) if budget is None else budget,
            baseline=named[0][1] if named else None,
            baseline_name=named[0][0] if named else "",
            sign=metric_sign(study),
            baseline_loss=float(loss) if _is_number(loss) else None,
            others=tuple(named[1:]),
        )

    def over_budget(self, trial: FrozenTrial) -> bool:
        """A trial trained within an earlier, larger budget that the current one no longer allows."""
        return is_feasible(trial) and not is_feasible(trial, self.budget)

    def at_baseline(self, trial: FrozenTrial) -> bool:
        """A trained trial no better than the baseline, by what ranked it (its metric, or its
        validation loss on a race's short rung): it learned nothing."""
        if self.baseline is None or not is_feasible(trial) or trial.values is None:
            return False
        loss = self._judged_loss(trial)
        if loss is not None and self.baseline_loss is not None:
            return not math.isfinite(loss) or loss >= self.baseline_loss - 1e-9
        return self.sign * (trial.values[0] - self.baseline) <= 1e-9

    def by_metric(self) -> Standard:
        """This standard judging every trial by its metric, also those a race ranked by their loss
        (a front is drawn in the metric)."""
        return Standard(self.budget, self.baseline, self.baseline_name, self.sign, others=self.others)

    @staticmethod
    def _judged_loss(trial: FrozenTrial) -> float | None:
        """The validation loss that ranked ``trial``, or None where its metric did."""
        loss = trial.user_attrs.get("validation_loss")
        ranked_by_loss = trial.user_attrs.get(SCORED_BY_ATTR) == "validation_loss"
        return float(loss) if ranked_by_loss and _is_number(loss) else None

    def why_at_baseline(self, trial: FrozenTrial) -> str:
        """What :meth:`at_baseline` found, in words."""
        loss = self._judged_loss(trial)
        if loss is not None and self.baseline_loss is not None:
            return f"validation loss {loss:.4f} no lower than the {self.baseline_name}'s ({self.baseline_loss:.4f})"
        also = "".join(f" or the {name} ({value:.4f})" for name, value in self.others)
        return f"no better than the {self.baseline_name} baseline ({self.baseline:.4f}){also}"

    def describe_baseline(self) -> str:
        """``'majority class 0.5819'`` (with the other baselines after it), or ``''`` when the study
        has no baseline."""
        if self.baseline is None:
            return ""
        return ", ".join(f"{name} {value:.4f}" for name, value in [(self.baseline_name, self.baseline), *self.others])


def _named_baselines(record: Any) -> list[tuple[str, float]]:
    """(name, value) of a recorded baseline (``Workbench.baseline``), then of each under ``also``;
    [] where the record holds no value."""
    if not isinstance(record, dict) or not _is_number(record.get("value")):
        return []
    also = record.get("also") if isinstance(record.get("also"), list) else []
    found = [record, *(b for b in also if isinstance(b, dict) and _is_number(b.get("value")))]
    return [(str(b.get("name", "")), float(b["value"])) for b in found]


def describe_baselines(record: Any) -> str:
    """A study's recorded baselines (``Workbench.baseline``) as ``'majority class baseline 0.5819'``,
    each after the first joined with ``', '``; ``''`` where there is none."""
    return ", ".join(f"{name} baseline {value:.4f}" for name, value in _named_baselines(record))


def metric_sign(study: optuna.Study) -> int:
    """1 when the study's metric goes up (accuracy), -1 when it goes down (perplexity): multiply a
    metric by it and larger is better, for every comparison here."""
    return -1 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else 1


def _goodness(trial: FrozenTrial, sign: int) -> float:
    assert trial.values is not None
    return sign * float(trial.values[0])


def _feasible(study: optuna.Study, trials: list[FrozenTrial] | None, budget: int | None) -> list[FrozenTrial]:
    budget = study_budget(study) if budget is None else budget
    return [t for t in trials if is_feasible(t, budget)] if trials is not None else feasible_trials(study, budget)


def best_trial(
    study: optuna.Study, trials: list[FrozenTrial] | None = None, budget: int | None = None
) -> FrozenTrial | None:
    """The feasible trial with the best metric (fewer trainable parameters break ties), or None.

    ``trials``: the study's trials when the caller has just read them (each read is a query).
    ``budget``: judge against this budget instead of the one the study last ran with.
    """
    found = best_trials(study, 1, budget, trials)
    return found[0] if found else None


def best_trials(
    study: optuna.Study, n: int, budget: int | None = None, trials: list[FrozenTrial] | None = None
) -> list[FrozenTrial]:
    """The ``n`` best feasible trials, best first: the best metric, then the fewest trainable
    parameters, then the earliest. ``trials``, ``budget``: as for :func:`best_trial`."""
    sign = metric_sign(study)
    key = lambda t: (-_goodness(t, sign), t.user_attrs["trainable_params"], t.number)  # noqa: E731
    return sorted(_feasible(study, trials, budget), key=key)[:n]


def refit_record(study: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What ``autopeft refit`` recorded for ``trial`` (seeds, validation values and their mean and
    spread, test values, fidelity, weights), or None. ``attrs``: the study's user attributes when the
    caller has just read them (each read is a query). A record that is not what refit writes (an
    old or tampered database) is skipped, with a warning said once (:func:`record_problem`)."""
    return _record(study, REFIT_PREFIX, trial.number, attrs)


def confirm_record(
    study: optuna.Study, trial: FrozenTrial | int, attrs: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """What ``autopeft confirm`` recorded for ``trial`` (seeds, values, mean and spread), or None;
    checked and skipped as :func:`refit_record` does."""
    return _record(study, CONFIRM_PREFIX, trial if isinstance(trial, int) else trial.number, attrs)


#: Where a skipped record is said: stderr, once per study, record and problem (tests replace it).
say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
_said: set[tuple[str, str, str]] = set()


def _record(study: optuna.Study, prefix: str, number: int, attrs: dict[str, Any] | None) -> dict[str, Any] | None:
    key = f"{prefix}{number}"
    found = (study.user_attrs if attrs is None else attrs).get(key)
    if found is None or isinstance(found, dict) and not found.get("values") and "mean" not in found:
        return None  # none, or one begun and never given a seed
    problem = record_problem(found, refit=prefix == REFIT_PREFIX)
    if problem is None:
        return found  # type: ignore[no-any-return]
    if (study.study_name, key, problem) not in _said:
        _said.add((study.study_name, key, problem))
        command = "refit" if prefix == REFIT_PREFIX else "confirm"
        say(
            f"autopeft: warning: study {study.study_name!r}: skipping the {command} record of trial {number} "
            f"({key}: {problem}); run `autopeft {command} --trial {number}` to record it again"
        )
    return None


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_plain_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def record_problem(record: Any, refit: bool = False) -> str | None:
    """What is wrong with a confirm (or, with ``refit``, a refit) record as a study holds it, in
    words; None when every reader can use it. The readers (``best``, ``pareto``, ``report``,
    ``export``, the winner) rely on what this checks."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a table"
    for key, check, kind in (("mean", _is_real, "a number"), ("std", _is_real, "a number")):
        if key not in record:
            return f"{key!r} is missing"
        if not check(record[key]):
            return f"{key!r} is {record[key]!r}, not {kind}"
    for key, check, kind in (("seeds", _is_plain_int, "whole numbers"), ("values", _is_real, "numbers")):
        if key not in record:
            return f"{key!r} is missing"
        found = record[key]
        if not isinstance(found, list) or not found or not all(check(x) for x in found):
            return f"{key!r} is not a list of {kind}"
    if len(record["seeds"]) != len(record["values"]):
        return f"{len(record['seeds'])} seeds for {len(record['values'])} values"
    if "test_values" in record and not (
        isinstance(record["test_values"], list) and all(_is_real(x) for x in record["test_values"])
    ):
        return "'test_values' is not a list of numbers"
    if ("test_mean" in record) != ("test_std" in record):
        return "'test_mean' and 'test_std' come as a pair"
    if "test_mean" in record and not (_is_real(record["test_mean"]) and _is_real(record["test_std"])):
        return "'test_mean' or 'test_std' is not a number"
    if refit:
        fidelity = record.get("fidelity", {})
        if not (
            isinstance(fidelity, dict)
            and _is_plain_int(fidelity.get("epochs", 1))
            and (fidelity.get("max_train_examples") is None or _is_plain_int(fidelity["max_train_examples"]))
        ):
            return "'fidelity' is not {epochs, max_train_examples}"
        weights = record.get("weights", {})
        if not (
            isinstance(weights, dict)
            and all(
                isinstance(files, list)
                and all(isinstance(f, list) and len(f) == 2 and all(isinstance(x, str) for x in f) for f in files)
                for files in weights.values()
            )
        ):
            return "'weights' is not a table of seed -> [[artifact id, file name], ...]"
    return None


def winner(study: optuna.Study, budget: int | None = None) -> FrozenTrial | None:
    """The study's answer. A raced study's is the race's decision (its chosen entrant's first final
    training); a raced front's, its surviving point of the best paired mean. Otherwise the best refit
    mean on validation among the refit trials (a figure that survives re-seeding), once the best
    search trial is among them; else the best search trial (a refit of some other trial alone,
    ``refit --trial N``, does not make it the winner). Test figures never choose."""
    trials = _feasible(study, None, budget)
    attrs = study.user_attrs
    front = attrs.get(FRONT_ATTR)
    if isinstance(front, dict) and front.get("kept"):  # a raced front: its survivor of the best paired mean
        sign = metric_sign(study)
        top = max(front["kept"], key=lambda p: sign * p["mean"])
        chosen = [t for t in trials if t.number == top.get("trial")]
        if chosen:
            return chosen[0]
    decided = attrs.get("race_decision")
    if isinstance(decided, dict):  # a raced study: the chosen entrant's first final training
        numbers = [n for n in decided.get("trials", []) if _is_plain_int(n)]
        chosen = [t for t in trials if numbers and t.number == numbers[0]]
        if chosen:
            return chosen[0]
    refit = [(t, r) for t in trials if (r := refit_record(study, t, attrs)) is not None]
    best = best_trial(study, trials, budget)
    if best is None or best.number not in {t.number for t, _ in refit}:
        return best
    sign = metric_sign(study)
    return max(refit, key=lambda tr: (sign * tr[1]["mean"], -tr[0].user_attrs["trainable_params"], -tr[0].number))[0]


def recorded_test_metric(trial: FrozenTrial, study_attrs: dict[str, Any] | None = None) -> float | None:
    """``trial``'s test metric: its own, or, for a race's recommendation, the one the race scored
    from its kept weights once decided (``study_attrs``: the study's user attributes), since a
    decision race tests no other training (:mod:`autopeft.search.race_test`); None when untested."""
    own = trial.user_attrs.get("test_metric")
    if _is_number(own):
        return float(own)
    decided = (study_attrs or {}).get("race_decision")
    values = decided.get("test_values") if isinstance(decided, dict) else None
    found = values.get(str(trial.number)) if isinstance(values, dict) else None
    return float(found) if _is_number(found) else None


def beats_best(study: optuna.Study, metric: float, n: int) -> bool:
    """Whether a trial with ``metric`` and ``n`` trainable parameters would be the new best, as
    :func:`best_trial` ranks (a tie on the metric goes to the smaller)."""
    best = best_trial(study)
    if best is None or best.values is None:
        return True
    sign = metric_sign(study)
    return (sign * metric, -n) > (sign * best.values[0], -best.user_attrs["trainable_params"])


def pareto_front(
    study: optuna.Study, trials: list[FrozenTrial] | None = None, budget: int | None = None
) -> list[FrozenTrial]:
    """Feasible trials no other feasible trial beats on both metric and size, smallest first; once a
    raced front is decided, those of its points that survived the paired seeds.

    Of trials with the same metric and size, the first is kept. Trials no better than the study's
    baseline (a constant predictor) are left out while any trial beats it. ``trials``, ``budget``: as
    for :func:`best_trial`.
    """
    feasible = _feasible(study, trials, budget)
    attrs = study.user_attrs
    if isinstance(attrs.get("race_plan"), dict) and attrs["race_plan"].get("kind") == "front":
        feasible = [t for t in feasible if "race" not in t.user_attrs]  # re-trainings of front points
        raced = attrs.get(FRONT_ATTR)
        if isinstance(raced, dict):  # the points that survived the paired seeds
            kept = {k.get("trial") for k in raced.get("kept", []) if isinstance(k, dict)}
            feasible = [t for t in feasible if t.number in kept]
    standard = Standard.of(study).by_metric()
    learned = [t for t in feasible if not standard.at_baseline(t)]
    feasible = learned or feasible  # a constant predictor is no point of a front, unless nothing learned
    front: list[FrozenTrial] = []
    sign = metric_sign(study)
    for t in sorted(feasible, key=lambda t: (t.user_attrs["trainable_params"], -_goodness(t, sign), t.number)):
        if not front or _goodness(t, sign) > _goodness(front[-1], sign):
            front.append(t)
    return front


def outcome(trial: FrozenTrial) -> str:
    """``complete``, ``pruned``, ``fail``, ``running``, ``waiting``, or ``infeasible`` (over budget, not trained)."""
    return "infeasible" if trial.user_attrs.get("infeasible") else trial.state.name.lower()


def reason(trial: FrozenTrial, standard: Standard | None = None) -> str | None:
    """Why a trial did not complete within the budget, or is no better than the baseline, in words;
    None when it is a result."""
    a, state = trial.user_attrs, outcome(trial)
    if state == "complete":
        if standard is not None and standard.over_budget(trial):
            return f"{a['trainable_params']:,} trainable parameters > the current budget {standard.budget:,}"
        if standard is not None and standard.at_baseline(trial):
            return standard.why_at_baseline(trial)
        return None
    if state == "pruned":
        if "pruned_reason" in a:
            return f"pruned: {a['pruned_reason']}"
        step = a.get("pruned_at_step")
        return f"pruned at step {step}, saving {a.get('steps_saved', '?')} steps" if step is not None else "pruned"
    if state == "infeasible":
        return f"{a.get('trainable_params', 0):,} trainable parameters > budget {a.get('budget', 0):,}; not trained"
    if state == "fail":
        if "error_plugin" in a:
            return f"{a['error']} (in {a['error_plugin']})"
        if "error" in a:  # interrupted, or surplus: not a plugin's fault
            return str(a["error"])
        return "no reason recorded: its worker was lost in mid-trial (killed, or its machine went away)"
    return "still running or waiting"


def trial_row(
    trial: FrozenTrial, metric: str, standard: Standard | None = None, study_attrs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One trial as a flat record for tables, JSON and CSV; ``reason`` judged by ``standard``; the
    test metric a race recorded in ``study_attrs`` (:func:`recorded_test_metric`).

    ``trainable_share`` is a fraction (0.0049); tables show it as a percentage (0.490%)."""
    a = trial.user_attrs
    return {
        "number": trial.number,
        "state": outcome(trial),
        metric: trial.values[0] if trial.values else None,
        "test": recorded_test_metric(trial, study_attrs),
        "method": a.get("method"),
        "trainable_params": a.get("trainable_params"),
        "trainable_share": a.get("trainable_share"),
        "learning_rate": a.get("learning_rate"),
        "train_seconds": a.get("train_seconds"),
        "config": a.get("config"),
        "reason": reason(trial, standard),
        "retry_of": retry_of(trial),
        **_race_columns(a),
    }


def _race_columns(attrs: dict[str, Any]) -> dict[str, Any]:
    """A race trial's rung and paired seed (both from 1) and entrant; nothing for other trials."""
    race = attrs.get("race")
    if not isinstance(race, dict):
        return {}
    rung, seed = _plus_one(race.get("rung")), _plus_one(race.get("seed"))
    return {"rung": rung, "seed_index": seed, "entrant": race.get("entrant")}


def _plus_one(value: Any) -> int | None:
    return value + 1 if _is_plain_int(value) else None


def retry_of(trial: FrozenTrial) -> int | None:
    """The failed trial (killed or interrupted) this one runs again, or None."""
    history = trial.system_attrs.get("retry_history") or [None]
    return history[-1]


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """Rows as ``json``, ``csv`` or an aligned text ``table``."""
    if fmt == "json":  # strict JSON: an over-budget trial's infinite perplexity becomes null
        finite = [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in rows]
        return json.dumps(finite, indent=2, allow_nan=False)
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))  # a race's trials add columns the others lack
    rows = [{k: r.get(k) for k in keys} for r in rows]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    cells = [[_percent(v) if k.endswith("_share") else _cell(v) for k, v in r.items()] for r in rows]
    header = [k.replace("_", " ") for k in rows[0]]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _percent(share: Any) -> str:
    return f"{100 * share:.3f}%" if isinstance(share, (int, float)) else _cell(share)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
