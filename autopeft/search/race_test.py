"""The race's test score: its recommendation's alone, once decided, from the weights its final
trainings kept.

Scoring every final training on the test split cost a fifth of the instruction study's race (400
generated answers a training, ``benchmarks/README.md``, "Instruction tuning on SmolLM2"), and it
showed test figures for the configurations the race did not choose, which invites choosing by them.
A decision race instead keeps the weights of its final trainings (what ``autopeft export`` ships, so
the recommendation is never retrained) and, once decided, scores the chosen entrant's on the test
split: one value a paired seed, whose mean the decision reports. A raced front, whose every survivor
is an answer, and a study that keeps no weights (``keep_weights = "none"``) test each final training
as it finishes, as before.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import optuna

from autopeft.config import StudyConfig
from autopeft.errors import first_line
from autopeft.progress import Progress
from autopeft.search.racing import RacePlan
from autopeft.storage.artifacts import artifact_store, fetch_weights, scratch_folder
from autopeft.training.workbench import Workbench

__all__ = ["tests_after_decision", "score_chosen_on_test"]


def tests_after_decision(plan: RacePlan, config: StudyConfig) -> bool:
    """Whether the race scores the test split for its recommendation only, once decided."""
    return plan.kind != "front" and config.study.keep_weights != "none"


def score_chosen_on_test(
    study: optuna.Study, bench: Workbench, record: dict[str, Any], progress: Progress
) -> dict[str, float]:
    """``{trial number: test metric}`` of the chosen entrant's final trainings (``record``: the
    decision), from their kept weights; ``{}`` where the study has no test split, and without the
    trainings whose weights are gone or do not load (each said: the decision stands without them)."""
    if bench.data.test is None:
        return {}
    config = bench.config
    entrant = record["entrants"][record["chosen"]]
    method_config = json.loads(entrant["config_json"])
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    store = artifact_store(config)
    found: dict[str, float] = {}
    for number in record["trials"]:
        with tempfile.TemporaryDirectory(prefix=".autopeft-test-", dir=scratch_folder(config)) as tmp:
            if number not in trials or not fetch_weights(store, study, trials[number], Path(tmp)):
                progress.line(f"race: trial {number}'s weights were not kept; it is not scored on the test split")
                continue
            try:
                found[str(number)] = bench.score_saved_on_test(entrant["method"], method_config, Path(tmp))
            except Exception as exc:  # a plugin's load, a cut file: the decision is recorded all the same
                why = f"{type(exc).__name__}: {first_line(exc)}"
                progress.line(f"race: trial {number}'s kept weights could not be scored on the test split ({why})")
    return found
