"""Faults inside a trial end that trial, recorded with the reason, and never the study."""

from __future__ import annotations

import pytest
import torch
from conftest import write_study
from optuna.trial import TrialState

from autopeft import run_study
from autopeft.cli.command import main
from autopeft.storage.results import finished_trials
from autopeft_plugins.bitfit import BitFit


def _bitfit_study(tmp_path, n_trials: int = 2):
    return write_study(
        tmp_path, study={"name": "faults", "n_trials": n_trials, "seed": 0}, search={"methods": ["bitfit"]}
    )


def test_nan_loss_prunes_the_trial_with_its_reason(tmp_path, monkeypatch, minilm_available) -> None:
    import torch.nn.functional as F

    real = F.cross_entropy  # what the classification task's loss calls
    calls = []

    def first_loss_is_nan(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 1 else loss

    monkeypatch.setattr(F, "cross_entropy", first_loss_is_nan)
    study = run_study(_bitfit_study(tmp_path), quiet=True)
    first = study.trials[0]
    assert first.state == TrialState.PRUNED and first.user_attrs["pruned_reason"] == "loss was nan at step 0"
    assert [t.state for t in study.trials[1:]] == [TrialState.COMPLETE]
    assert len(finished_trials(study)) == 2


@pytest.mark.parametrize(
    "fault,expected",
    [
        (RuntimeError("boom in apply"), "RuntimeError: boom in apply"),
        (
            torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
            "out of memory: CUDA out of memory",
        ),
        (MemoryError("cannot allocate"), "out of memory: cannot allocate"),
    ],
)
def test_an_exception_in_a_plugin_fails_that_trial_and_the_study_goes_on(
    tmp_path, monkeypatch, capsys, fault, expected, minilm_available
) -> None:
    real, calls = BitFit.apply, []

    def apply_fails_once(self, model, ctx, config):
        calls.append(1)
        if len(calls) == 1:
            raise fault
        return real(self, model, ctx, config)

    monkeypatch.setattr(BitFit, "apply", apply_fails_once)
    path = _bitfit_study(tmp_path)
    study = run_study(path, quiet=True)
    failed = study.trials[0]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["error"].startswith(expected)
    assert "bitfit" in failed.user_attrs["error_plugin"] and "apply_fails_once" in failed.user_attrs["traceback"]
    assert [t.state for t in study.trials[1:]] == [TrialState.COMPLETE, TrialState.COMPLETE]  # n_trials finished

    assert main(["trials", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 trials: 2 complete, 1 fail" in out and f"1 × {expected}" in out


def test_a_fault_in_every_trial_stops_the_study_with_one_line(tmp_path, monkeypatch, capsys, minilm_available) -> None:
    def always_fails(self, model, ctx, config):
        raise ValueError("broken plugin")

    monkeypatch.setattr(BitFit, "apply", always_fails)
    path = _bitfit_study(tmp_path)
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "5 trials in a row failed" in err and "ValueError: broken plugin" in err
    monkeypatch.undo()
    assert main(["run", str(path), "--quiet"]) == 0  # fixed: the same command finishes the study
    capsys.readouterr()
    assert main(["trials", str(path)]) == 0
    out = capsys.readouterr().out
    assert "7 trials: 5 fail, 2 complete" in out and "5 × ValueError: broken plugin (in bitfit from autopeft" in out
