"""The base class every task plugin implements: what a study trains the model *for*.

A task owns the part of a trial that depends on what is learned: which columns of the data it
reads and how it turns them into token ids and labels, which ``transformers`` auto class loads the
model, the loss, and the metrics with their directions. Methods, the search and the training loop
know none of this; they see token ids, a loss and a number to maximize or minimize.

Lifecycle, as the driver calls it::

    columns  = task.columns(data_section)              # what each split must have
    names    = task.label_names(train_rows, data_section)  # class names, [] when there are none
    split    = task.encode(rows, tokenizer, data_section, names, "train")  # token ids + labels
    model    = task.load_model(source, names, **from_pretrained_kwargs)
    loss     = task.training_loss(model, batch, labels)  # in every training step: forward pass and loss
    value    = task.evaluate(model, split, metric, settings)  # the study metric on a split
    baseline = task.baseline(train, validation, metric)  # what a model that learned nothing scores
    zero_shot = task.model_baseline(base, validation, metric, settings)  # the untuned base model's score
    error    = task.standard_error(validation, metric, value)  # shown beside a small split's metric
    shipped  = task.serving_tokenizer(tokenizer, data_section)  # saved into an export, or None

This module is the whole surface a task plugin needs: it re-exports :class:`Split`,
:class:`DataSection` and :class:`DataError`, so a plugin imports from ``autopeft.tasks`` (and
``hookimpl`` from ``autopeft``) only. :class:`autopeft.testing.TaskConformance` checks a task's
promises.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from autopeft.config import DataSection
from autopeft.data import IGNORE_INDEX, Split, batches
from autopeft.errors import DataError
from autopeft.inference_cache import dora_cached
from autopeft.kept_logits import logits_at, scored_frame
from autopeft.precision import autocast_for

__all__ = [
    "Task",
    "Direction",
    "EvalSettings",
    "GenerationSettings",
    "IGNORE_INDEX",
    "Split",
    "DataSection",
    "DataError",
    "eval_logits",
    "eval_scored_logits",
    "scored_frame",
    "validation_loss",
    "LossTally",
    "logits_at",
    "generate_answers",
    "teacher_forced_answers",
]

Direction = Literal["maximize", "minimize"]


class LossTally:
    """The mean loss (over examples) of the last pass :func:`eval_logits` made with the settings that
    hold it, from the logits that pass computed anyway: a race's short rungs rank by the validation
    loss without a second forward pass over the split."""

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self.loss, self.total, self.count = loss, 0.0, 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.total += float(self.loss(logits, labels)) * len(labels)
        self.count += len(labels)

    @property
    def mean(self) -> float | None:
        """The last pass's mean loss; None before a pass (or for a task that evaluates without
        :func:`eval_logits`)."""
        return self.total / self.count if self.count else None


@dataclass(frozen=True)
class GenerationSettings:
    """How a task that scores generated text decodes: greedily, in left-padded batches of the
    evaluation batch size, with the KV cache, at most ``max_new_tokens`` a prompt (``[task]
    max_new_tokens``), stopping at any of ``stop_token_ids`` (the tokenizer's end-of-sequence token
    and the base model's ``generation_config.eos_token_id``: a chat model ends a turn with its own)."""

    max_new_tokens: int = 32
    stop_token_ids: tuple[int, ...] = ()
    #: Read the answers from one teacher-forced pass instead of generating
    #: (:func:`teacher_forced_answers`): what a race's short rungs do, which rank by the loss that
    #: same pass computes and only record the metric.
    teacher_forced: bool = False


@dataclass(frozen=True)
class EvalSettings:
    """How to run a model over a split: the same for every evaluation of a study, so it travels as one value."""

    pad_token_id: int
    batch_size: int
    device: torch.device
    precision: str = "auto"
    #: The class names in id order (``TaskData.label_names``), for metrics that read them (entity F1).
    label_names: tuple[str, ...] = ()
    #: Where each pass also tallies the task's loss (:class:`LossTally`), or None.
    tally: LossTally | None = field(default=None, compare=False)
    #: The study's tokenizer, for tasks that decode what a model generates; None where none is needed.
    tokenizer: Any = field(default=None, compare=False)
    generation: GenerationSettings = GenerationSettings()


class Task(ABC):
    """A learning task the study file names in ``[task] type``.

    Subclasses set :attr:`name`, :attr:`metrics` and :attr:`auto_model` and implement the abstract
    methods. Labels of a :class:`~autopeft.data.Split` are one int per example, or one int per token
    (``IGNORE_INDEX`` where none applies); batches pad per-token labels with ``IGNORE_INDEX``.
    """

    #: The ``[task] type`` of study files.
    name: ClassVar[str]
    #: Metric name -> whether higher or lower is better; the first is the default ``[task] metric``.
    metrics: ClassVar[dict[str, Direction]]
    #: The ``transformers`` auto class that loads the model, e.g. ``"AutoModelForCausalLM"``.
    auto_model: ClassVar[str]
    #: Whether the model gets a new, randomly initialised head that every method must train. A
    #: language model's head is pretrained (and tied to the embeddings): it stays frozen.
    new_head: ClassVar[bool] = True
    #: peft's ``TaskType`` name for this task (``"SEQ_CLS"``), written into exported adapter configs so
    #: that ``PeftModel.from_pretrained`` picks the matching model class; None where peft has none.
    peft_task_type: ClassVar[str | None] = None
    #: Whether :meth:`evaluate` generates text (``model.generate``): the prefix cache, which hands a
    #: block cached states by example, then stays off, as a generated token is no cached example.
    generates: ClassVar[bool] = False

    @property
    def default_metric(self) -> str:
        return next(iter(self.metrics))

    def worst(self, metric: str) -> float:
        """The value an over-budget trial reports, so it never looks good."""
        return float("-inf") if self.metrics[metric] == "maximize" else float("inf")

    def baseline(self, train: Split, validation: Split, metric: str) -> tuple[str, float] | None:
        """(what it is, its ``metric`` on ``validation``) of a predictor that learned nothing from the
        inputs (the train split's majority class, a unigram model), or None where there is none.

        A trial that scores no better learned nothing: the summaries, ``trials``, ``pareto`` and the
        report mark it, so that a constant predictor is never read as a result.
        """
        return None

    def model_baseline(
        self, model: nn.Module, validation: Split, metric: str, settings: EvalSettings
    ) -> tuple[str, float] | None:
        """(what it is, its ``metric`` on ``validation``) of the untuned base ``model`` itself, or None
        where that means nothing (a classifier's new head is random). An instruction-tuned model may
        already answer well zero-shot: a trial that does worse made it worse. It is scored once per
        worker, before any trial; a trial that beats neither this nor :meth:`baseline` is marked."""
        return None

    def serving_tokenizer(self, tokenizer: Any, data: DataSection) -> Any | None:
        """The tokenizer an export ships beside its weights, set up to format inputs as this task
        did (an instruction task's chat template), or None where an export ships none: a classifier
        is served with its base model's own tokenizer."""
        return None

    def baseline_loss(self, train: Split, validation: Split) -> float | None:
        """The task's loss on ``validation`` (averaged over its scored labels) of the best predictor
        that learned nothing from the inputs (the train split's class shares, a unigram model), or
        None where there is none. (:class:`LossTally` averages each batch's mean loss by the batch's
        rows: for per-token labels the two averages differ by how unevenly the tokens fill the rows.)

        A trial ranked by its validation loss (a race's short rungs) learned nothing when its loss is
        no lower than this, whatever its metric says: a classifier a third of the way through its
        training may still predict the majority class while its loss has left the baseline's.
        """
        return None

    def standard_error(self, split: Split, metric: str, value: float) -> float | None:
        """The standard error of ``value``, ``metric`` measured on ``split``, or None where the task
        has no estimate. Each trial's line shows it when the validation split is small
        (:data:`autopeft.data.SMALL_VALIDATION_EXAMPLES`): two trials closer than it are a tie."""
        return None

    @abstractmethod
    def columns(self, data: DataSection) -> list[str]:
        """The columns every split must have (from ``[data]``); rows missing one are dropped
        (``data.on_missing = "drop"``, saying how many) or refused (``"error"``)."""

    def label_names(self, train_rows: dict[str, list[Any]], data: DataSection) -> list[Any]:
        """Class names in id order (``data.labels`` or the train split's), or [] for a task without classes."""
        return []

    @abstractmethod
    def encode(
        self, rows: dict[str, list[Any]], tokenizer: Any, data: DataSection, label_names: list[Any], split: str
    ) -> Split:
        """Tokenize the rows (column -> values) of the split named ``split`` (``train``...) into a
        :class:`~autopeft.data.Split`; errors name the split (``data.validation: ...``).

        Raises:
            DataError: a row cannot be encoded (a label not in ``label_names``...).
        """

    def load_model(self, source: str, label_names: list[Any], **kwargs: Any) -> nn.Module:
        """The pretrained model for this task; ``kwargs`` go to ``from_pretrained``."""
        import transformers

        auto = getattr(transformers, self.auto_model)
        return auto.from_pretrained(source, **self.model_kwargs(label_names), **kwargs)  # type: ignore[no-any-return]

    def model_kwargs(self, label_names: list[Any]) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments: the classes of a classifier."""
        if not label_names:
            return {}
        names = {i: str(label) for i, label in enumerate(label_names)}
        return {"num_labels": len(names), "id2label": names, "label2id": {v: k for k, v in names.items()}}

    @abstractmethod
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (a scalar) from the model's logits and the batch's labels."""

    def training_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """The loss of one training batch, its forward pass included: :meth:`loss` of the model's
        logits on ``batch`` (the model's inputs, labels removed). The training loop calls it inside its
        autocast.

        A task whose loss reads the logits of only some positions may compute only those (a causal
        LM's answer tokens: :func:`logits_at`), as long as it returns what :meth:`loss` of all the
        logits would: :class:`autopeft.testing.TaskConformance` checks that it does.
        """
        return self.loss(model(**batch).logits.float(), labels)

    @abstractmethod
    def evaluate(self, model: nn.Module, split: Split, metric: str, settings: EvalSettings) -> float:
        """``metric`` of ``model`` on ``split``; :func:`eval_logits` does the forward passes."""


def validation_loss(task: Task, model: nn.Module, split: Split, settings: EvalSettings) -> float:
    """The task's loss over ``split``, averaged over examples: a score that moves before the metric
    does (a classifier's accuracy stays at the majority class until its logits cross; their loss falls
    from the first steps), so a race's short rungs rank by it (:mod:`autopeft.search.racing`). A fit
    tallies it during its last validation pass instead (:class:`LossTally`) where the task evaluates
    through :func:`eval_logits`."""
    tally = LossTally(task.loss)
    for _ in eval_logits(model, split, replace(settings, tally=tally)):
        pass
    return tally.mean or 0.0


def eval_logits(
    model: nn.Module, split: Split, settings: EvalSettings
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """(example indices, logits, labels) per batch, dropout off, under ``inference_mode`` (and DoRA's
    weight norms computed once a pass: :func:`~autopeft.inference_cache.dora_cached`).

    Batches hold examples of similar lengths, so little compute goes to padding; the indices say
    which examples each batch holds.
    """
    with contextlib.closing(_passes(model, split, settings, framed=False)) as passes:
        for indices, logits, labels, _ in passes:
            yield indices, logits, labels


def eval_scored_logits(
    model: nn.Module, split: Split, settings: EvalSettings
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """As :func:`eval_logits`, for a causal LM whose labels score a few positions (answers): the
    logits only where a next-token loss reads them (:func:`scored_frame`) and, where the split has
    ``prompt_lengths``, at each answer's first ``settings.generation.max_new_tokens`` positions (what
    :func:`teacher_forced_answers` reads); the labels at the same positions. Yields (example indices,
    logits, labels, positions): ``positions`` says which of the sequence's positions the logits and
    labels are, None where they are all of them (the frame would be half the sequence or more).

    A loss that pairs each position's logits with the next position's label reads the same pairs on
    these logits and labels as on the whole sequence (:func:`scored_frame`), so ``settings.tally``
    tallies the same loss. The vocabulary's logits at every position of 200 chats were about half
    of such an evaluation's time on SmolLM2 (benchmarks/README.md, "Shorter training steps on a CPU").
    """
    return _passes(model, split, settings, framed=True)


def _frame(split: Split, indices: list[int], labels: torch.Tensor, cap: int) -> torch.Tensor | None:
    """The positions :func:`eval_scored_logits` keeps for a batch, None for all of them."""
    wanted = set(scored_frame(labels).tolist())
    for i in indices if split.prompt_lengths is not None else []:  # what teacher-forced answers read
        start, end = split.prompt_lengths[i], len(split.features[i]["input_ids"])
        wanted.update(range(max(start - 1, 0), min(end - 1, start - 1 + cap)))
    if not 0 < 2 * len(wanted) < labels.shape[1]:
        return None
    return torch.tensor(sorted(wanted), device=labels.device)


def _passes(
    model: nn.Module, split: Split, settings: EvalSettings, framed: bool
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    device = settings.device
    was_training = model.training
    model.eval()
    order = sorted(range(len(split)), key=lambda i: len(split.features[i]["input_ids"]))
    done = 0
    if settings.tally is not None:  # a new pass: the tally is this one's
        settings.tally.total, settings.tally.count = 0.0, 0
    try:
        with torch.inference_mode(), dora_cached(model, device):
            for batch in batches(split, settings.batch_size, settings.pad_token_id, order=order):
                labels = batch.pop("labels").to(device)
                indices = order[done : done + len(labels)]
                done += len(labels)
                frame = _frame(split, indices, labels, settings.generation.max_new_tokens) if framed else None
                inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                with autocast_for(device, settings.precision):
                    if frame is None:
                        logits = model(**inputs).logits.float()
                    else:
                        with logits_at(model, frame, labels.shape[1]) as kept:
                            logits = kept(model(**inputs).logits).float()
                        labels = labels[:, frame]
                if settings.tally is not None:
                    settings.tally.add(logits, labels)
                yield indices, logits, labels, frame
    finally:
        model.train(was_training)


def generate_answers(model: nn.Module, split: Split, settings: EvalSettings) -> list[str]:
    """What ``model`` answers to each prompt of ``split`` (its ``prompt_lengths`` leading tokens), in
    the split's order: greedy decoding with the KV cache, in batches of prompts of similar lengths,
    left-padded so that every prompt ends where generation starts (DoRA's weight norms computed once:
    :func:`~autopeft.inference_cache.dora_cached`). The answers are decoded without
    special tokens (a chat model's end-of-turn token) and stripped of surrounding whitespace.

    Raises:
        ValueError: the split has no prompts (``prompt_lengths``), or ``settings`` no tokenizer.
    """
    if split.prompt_lengths is None or settings.tokenizer is None:
        raise ValueError("generating needs the split's prompt_lengths and the settings' tokenizer")
    prompts = [f["input_ids"][:n] for f, n in zip(split.features, split.prompt_lengths)]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    stop = list(settings.generation.stop_token_ids) or None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), dora_cached(model, settings.device):
            for start in range(0, len(order), settings.batch_size):
                chosen = order[start : start + settings.batch_size]
                longest = max(len(prompts[i]) for i in chosen)
                pads = [longest - len(prompts[i]) for i in chosen]
                ids = torch.tensor([[settings.pad_token_id] * p + prompts[i] for p, i in zip(pads, chosen)])
                mask = torch.tensor([[0] * p + [1] * (longest - p) for p in pads])
                with autocast_for(settings.device, settings.precision):
                    out = model.generate(
                        input_ids=ids.to(settings.device),
                        attention_mask=mask.to(settings.device),
                        max_new_tokens=settings.generation.max_new_tokens,
                        do_sample=False,
                        num_beams=1,
                        use_cache=True,
                        pad_token_id=settings.pad_token_id,
                        eos_token_id=stop,
                        temperature=None,
                        top_p=None,
                        top_k=None,
                    )
                texts = settings.tokenizer.batch_decode(out[:, longest:], skip_special_tokens=True)
                for i, text in zip(chosen, texts):
                    answers[i] = text.strip()
    finally:
        model.train(was_training)
    return answers


def teacher_forced_answers(model: nn.Module, split: Split, settings: EvalSettings) -> list[str]:
    """What ``model`` answers to each prompt of ``split`` when every answer token is chosen after the
    reference's own earlier ones: the most likely token at each position of the last answer, up to a
    stop token or ``max_new_tokens``, decoded as :func:`generate_answers` decodes. One forward pass
    over prompt and answer, with the vocabulary's logits at the answers' positions only
    (:func:`eval_scored_logits`, so ``settings.tally`` gets the loss too), instead of a pass a token.

    Up to its first wrong token it is the greedy answer, token for token, so a metric read from it
    estimates the generated one: an answer whose right text comes in other tokens (a leading space),
    or that runs on where the reference stops, reads otherwise (exact match within 5 of 200 answers
    on the instruction study's first rung: benchmarks/README.md). A race's short rungs, which rank by
    the loss and only record the metric, read it this way (``GenerationSettings.teacher_forced``).

    Raises:
        ValueError: the split has no prompts (``prompt_lengths``), or ``settings`` no tokenizer.
    """
    if split.prompt_lengths is None or settings.tokenizer is None:
        raise ValueError("teacher-forced answers need the split's prompt_lengths and the settings' tokenizer")
    stop, cap = set(settings.generation.stop_token_ids), settings.generation.max_new_tokens
    answers = [""] * len(split)
    for indices, logits, labels, positions in eval_scored_logits(model, split, settings):
        guesses = logits[:, logits.shape[1] - labels.shape[1] :].argmax(-1)  # after virtual tokens, if any
        column = {p: k for k, p in enumerate(positions.tolist())} if positions is not None else None
        for row, i in enumerate(indices):
            start, end = split.prompt_lengths[i], len(split.features[i]["input_ids"])
            read = range(start - 1, end - 1)[:cap]  # position t guesses token t + 1
            tokens = guesses[row, [t if column is None else column[t] for t in read]].tolist()
            cut = next((k for k, token in enumerate(tokens) if token in stop), len(tokens))
            answers[i] = settings.tokenizer.decode(tokens[:cut], skip_special_tokens=True).strip()
    return answers
