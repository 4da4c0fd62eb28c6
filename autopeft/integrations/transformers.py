"""A transformers ``Trainer`` as autopeft's training loop: ``tune(..., fit=trainer_fit(args))``.

Each trial builds a ``Trainer`` on the adapted model with your ``TrainingArguments``, in which
autopeft sets what the search decides (``learning_rate``, ``max_steps``, ``seed``) and what keeps the
study's folders its own (no checkpoints, no trackers). A callback hands every evaluation's metric to
autopeft, and stops training when the pruner or the race says so. The trial's value is the last
evaluation's ``metric`` (``"eval_loss"``, or ``"eval_accuracy"`` from your ``compute_metrics``):
name the one your study's ``metric`` means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from autopeft.data import padded

__all__ = ["trainer_fit", "PaddingCollator", "fit_with"]


class PaddingCollator:
    """Pads autopeft's tokenized examples as autopeft's own loop does: ``input_ids`` with the
    tokenizer's padding token, an attention mask, per-token labels with -100."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        features = [{k: v for k, v in row.items() if k not in ("labels", "completion_mask")} for row in rows]
        return padded(features, [row["labels"] for row in rows], self.pad_token_id)


def _reporter(report: Callable[[int, float], bool], metric: str) -> Any:
    """A ``TrainerCallback`` that reports each evaluation's ``metric`` and stops when told to."""
    from transformers import TrainerCallback

    class Reporter(TrainerCallback):  # type: ignore[misc]
        def on_evaluate(
            self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **_: Any
        ) -> None:
            if metrics and metric in metrics and report(state.global_step, float(metrics[metric])):
                control.should_training_stop = True

    return Reporter()


def fit_with(trainer_class: type, args: Any, metric: str, **trainer_kwargs: Any) -> Callable[..., float]:
    """A ``fit`` that trains each trial with ``trainer_class(model=..., args=..., ...)`` (``Trainer``,
    ``SFTTrainer``) on the search's rate, steps and seed, and returns the validation ``metric``.
    A ``data_collator=None`` among ``trainer_kwargs`` becomes a :class:`PaddingCollator`."""

    def fit(
        model: Any,
        tokenizer: Any,
        train: Any,
        validation: Any,
        learning_rate: float,
        max_steps: int,
        seed: int,
        report: Callable[[int, float], bool],
    ) -> float:
        kwargs = dict(trainer_kwargs)
        if "data_collator" in kwargs and kwargs["data_collator"] is None:
            kwargs["data_collator"] = PaddingCollator(tokenizer.pad_token_id)
        run_args = searched_arguments(args, learning_rate, max_steps, seed)
        trainer = trainer_class(
            model=model,
            args=run_args,
            train_dataset=train,
            eval_dataset=validation,
            processing_class=tokenizer,
            callbacks=[_reporter(report, metric), *kwargs.pop("callbacks", [])],
            **kwargs,
        )
        trainer.train()
        if trainer.control.should_training_stop and trainer.state.global_step < run_args.max_steps:
            return float("nan")  # stopped by autopeft: the trial is pruned, its value unused
        found = trainer.evaluate()
        if metric not in found:
            raise KeyError(f"the evaluation gave no {metric!r} (it gave {', '.join(sorted(found))}); pass metric=")
        return float(found[metric])

    return fit


def searched_arguments(args: Any, learning_rate: float, max_steps: int, seed: int) -> Any:
    """``args`` with what the search decides, and nothing written or sent outside autopeft's folders."""
    return dataclasses.replace(
        args,
        learning_rate=learning_rate,
        max_steps=max_steps,
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        report_to="none",
        load_best_model_at_end=False,
        push_to_hub=False,
    )


def trainer_fit(
    args: Any,
    data_collator: Any = None,
    compute_metrics: Callable[[Any], dict[str, float]] | None = None,
    metric: str = "eval_loss",
    **trainer_kwargs: Any,
) -> Callable[..., float]:
    """A ``fit`` for ``autopeft.tune`` that trains each trial with a transformers ``Trainer``.

    Args:
        args: your ``TrainingArguments`` (batch size, evaluation steps, precision...); autopeft sets
            ``learning_rate``, ``max_steps`` and ``seed`` per trial, and turns saving and trackers off.
            Set ``eval_strategy="steps"`` with ``eval_steps`` for the pruner to see the run.
        data_collator: default :class:`PaddingCollator` (autopeft's padding).
        compute_metrics: as ``Trainer`` takes it; its keys come back prefixed ``eval_``.
        metric: the evaluation key that is the trial's value, e.g. ``"eval_accuracy"``.
        trainer_kwargs: anything else ``Trainer`` takes (``callbacks`` included).
    """
    from transformers import Trainer

    return fit_with(
        Trainer, args, metric, data_collator=data_collator, compute_metrics=compute_metrics, **trainer_kwargs
    )
