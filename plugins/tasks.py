"""The built-in tasks: sequence classification, token classification and causal language modelling.

They register through the same ``register_tasks`` hook as a third-party task plugin, and import
only what a third-party task may: ``autopeft`` and ``autopeft.tasks``. Classification scoring
(scikit-learn's metrics) lives here, with the tasks that use it.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, cast

import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from torch import nn

from autopeft import hookimpl
from autopeft.tasks import (
    IGNORE_INDEX,
    DataError,
    DataSection,
    EvalSettings,
    Split,
    Task,
    eval_logits,
    eval_scored_logits,
    logits_at,
    scored_frame,
)

__all__ = [
    "SequenceClassification",
    "TokenClassification",
    "CausalLanguageModelling",
    "score",
    "predict",
    "entity_f1",
    "entity_spans",
    "share_standard_error",
]

# f1: the F1 of the second class (in label order) when there are two, macro-averaged when there are more;
# macro_f1: always macro-averaged.
_CLASS_METRICS: dict[str, Any] = {"accuracy": "maximize", "f1": "maximize", "macro_f1": "maximize", "mcc": "maximize"}
_LOWEST = {"accuracy": 0.0, "f1": 0.0, "macro_f1": 0.0, "mcc": -1.0, "entity_f1": 0.0}  # an over-budget trial's


def score(metric: str, labels: list[int], predictions: list[int]) -> float:
    """The study metric from scikit-learn. ``f1`` is the F1 of class 1 (the second in label order) when
    labels and predictions hold at most two classes, macro F1 otherwise; ``macro_f1`` is always macro."""
    if metric == "accuracy":
        return float(accuracy_score(labels, predictions))
    if metric in ("f1", "macro_f1"):
        binary = metric == "f1" and len(set(labels) | set(predictions)) <= 2
        return float(f1_score(labels, predictions, average="binary" if binary else "macro", zero_division=0))
    if metric == "mcc":
        return float(matthews_corrcoef(labels, predictions))
    raise ValueError(f"unknown metric {metric!r}")


def predict(model: nn.Module, split: Split, settings: EvalSettings) -> list[int]:
    """Predicted class of every example of ``split``, in the split's order; dropout off."""
    predictions = [0] * len(split)
    for indices, logits, _ in eval_logits(model, split, settings):
        for i, label in zip(indices, logits.argmax(-1).tolist()):
            predictions[i] = label
    return predictions


def entity_spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """The entities of one sentence's word tags, as (start, end, type) with ``end`` exclusive.

    IOB2 and IOB1 tags (``B-PER``, ``I-PER``, ``O``): an entity starts at ``B-`` or at an ``I-`` that does
    not continue one of its type, as CoNLL's evaluation reads them. Tags without a prefix (``PER``) are
    read as ``I-`` tags: a run of one type is one entity.
    """
    spans: set[tuple[int, int, str]] = set()
    start, kind = 0, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, typ = (tag[:2], tag[2:]) if tag[:2] in ("B-", "I-") else ("O" if tag == "O" else "I-", tag)
        if kind is not None and (prefix != "I-" or typ != kind):
            spans.add((start, i, kind))
            kind = None
        if prefix == "B-" or prefix == "I-" and kind is None:
            start, kind = i, typ
    return spans


def entity_f1(truth: list[list[str]], predicted: list[list[str]]) -> float:
    """Micro-averaged F1 of exactly matching entities (start, end and type) over sentences: what NER is
    scored by (CoNLL, seqeval), where a word-level score rewards predicting "O" everywhere."""
    hits = found = wanted = 0
    for gold, guess in zip(truth, predicted):
        expected, got = entity_spans(gold), entity_spans(guess)
        hits, found, wanted = hits + len(expected & got), found + len(got), wanted + len(expected)
    return 0.0 if hits == 0 else 2 * hits / (found + wanted)


def share_standard_error(share: float, n: int) -> float | None:
    """The binomial standard error of a share of ``n`` examples, Agresti-Coull adjusted (two hits and
    two misses added) so that a perfect score on a handful of examples is not shown as certain; None
    for no examples or a share that is not finite."""
    if n == 0 or not math.isfinite(share):
        return None
    adjusted = (min(max(share, 0.0), 1.0) * n + 2) / (n + 4)
    return math.sqrt(adjusted * (1 - adjusted) / (n + 4))


def _class_names(values: list[Any], data: DataSection, what: str) -> list[Any]:
    if data.labels is not None:
        seen: list[Any] = []  # a list, not a set: a label from the study file may be unhashable
        for label in data.labels:
            if label in seen:
                times = data.labels.count(label)
                raise DataError(
                    f"data.labels: {data.labels!r} lists the label {label!r} "
                    f"{'twice' if times == 2 else f'{times} times'}; list each label once, one per class"
                )
            seen.append(label)
    names = list(data.labels) if data.labels is not None else sorted(set(values), key=str)
    if len(names) < 2:
        raise DataError(f"data.label: the train split has only the {what} {names!r}; a classifier needs at least two")
    return names


def _index(names: list[Any]) -> dict[Any, int]:
    return {name: i for i, name in enumerate(names)}


def _unknown(values: list[Any], index: dict[Any, int], names: list[Any], split: str) -> None:
    unknown = sorted({str(x) for x in values if x not in index})
    if unknown:
        raise DataError(
            f"data.{split}: label {unknown[0]!r} is not among the train labels {names}; "
            "fix the data or list every label in data.labels"
        )


def _per_token(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The logits of the input's own tokens: prompt tuning prepends virtual tokens, whose positions
    come first in the logits and have no label."""
    return logits[:, logits.shape[1] - labels.shape[1] :]


def _flat_labels(split: Split) -> list[int]:
    """Every scored label of a split: one per example, or each word's label of per-token splits."""
    labels = split.labels
    if labels and isinstance(labels[0], list):
        return [x for row in cast(list[list[int]], labels) for x in row if x != IGNORE_INDEX]
    return cast(list[int], labels)


class _Classification(Task):
    metrics = _CLASS_METRICS

    def worst(self, metric: str) -> float:
        return _LOWEST[metric]

    def standard_error(self, split: Split, metric: str, value: float) -> float | None:
        """A share's binomial standard error over the split's scored labels (examples, or words),
        Agresti-Coull adjusted (two hits and two misses added) so that a perfect score on a handful
        of examples is not shown as certain: exact in form for accuracy, a rough guide for F1 and
        MCC (MCC read on its [-1, 1] scale)."""
        if metric == "mcc":
            error = share_standard_error((value + 1) / 2, len(_flat_labels(split)))
            return None if error is None else 2.0 * error
        return share_standard_error(value, len(_flat_labels(split)))

    def baseline(self, train: Split, validation: Split, metric: str) -> tuple[str, float] | None:
        """Always predicting the train split's most common class."""
        majority = Counter(_flat_labels(train)).most_common(1)[0][0]
        truth = _flat_labels(validation)
        return "majority class", score(metric, truth, [majority] * len(truth))

    def baseline_loss(self, train: Split, validation: Split) -> float | None:
        """The cross-entropy of the train split's class shares (add-one smoothed), whatever the input."""
        counts, truth = Counter(_flat_labels(train)), _flat_labels(validation)
        if not truth:
            return None
        total, classes = sum(counts.values()), len(set(counts) | set(truth))
        return -sum(math.log((counts.get(y, 0) + 1) / (total + classes)) for y in truth) / len(truth)


class SequenceClassification(_Classification):
    """One label per text or text pair, scored by accuracy, F1 or MCC.

    Decoder models pool their last non-padding token, so models without a padding token use their
    end-of-sequence token to pad (see ``load_tokenizer``)."""

    name = "sequence-classification"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"

    def columns(self, data: DataSection) -> list[str]:
        return [*data.text_columns, data.label]

    def label_names(self, train_rows: dict[str, list[Any]], data: DataSection) -> list[Any]:
        return _class_names(train_rows[data.label], data, "label")

    def encode(
        self, rows: dict[str, list[Any]], tokenizer: Any, data: DataSection, label_names: list[Any], split: str
    ) -> Split:
        index = _index(label_names)
        _unknown(rows[data.label], index, label_names, split)
        encoded = tokenizer(*(rows[c] for c in data.text_columns), truncation=True, max_length=data.max_length)
        keys = [k for k in encoded.keys() if k != "attention_mask"]
        features = [{k: encoded[k][i] for k in keys} for i in range(len(rows[data.label]))]
        return Split(features, [index[x] for x in rows[data.label]])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)

    def evaluate(self, model: nn.Module, split: Split, metric: str, settings: EvalSettings) -> float:
        return score(metric, cast(list[int], split.labels), predict(model, split, settings))


class TokenClassification(_Classification):
    """One label per word (named entities, parts of speech), scored over words.

    ``data.text`` names a column of word lists and ``data.label`` a column of label lists. A word's
    first sub-token carries its label; the metric counts words, not sub-tokens. ``entity_f1`` scores
    whole entities instead (IOB tags such as ``B-PER``/``I-PER``), as named-entity recognition is scored."""

    name = "token-classification"
    metrics = {**_CLASS_METRICS, "entity_f1": "maximize"}
    auto_model = "AutoModelForTokenClassification"
    peft_task_type = "TOKEN_CLS"

    def columns(self, data: DataSection) -> list[str]:
        if not isinstance(data.text, str):
            raise DataError("data.text: token classification reads one column of word lists; name one column")
        return [data.text, data.label]

    def label_names(self, train_rows: dict[str, list[Any]], data: DataSection) -> list[Any]:
        return _class_names([x for tags in train_rows[data.label] for x in tags], data, "tag")

    def encode(
        self, rows: dict[str, list[Any]], tokenizer: Any, data: DataSection, label_names: list[Any], split: str
    ) -> Split:
        words, tags = rows[data.text_columns[0]], rows[data.label]
        index = _index(label_names)
        _unknown([x for row in tags for x in row], index, label_names, split)
        for i, (w, t) in enumerate(zip(words, tags)):
            if len(w) != len(t):
                raise DataError(
                    f"data.{split}: example {i} has {len(w)} words but {len(t)} labels; give one label per word"
                )
        if not getattr(tokenizer, "is_fast", False):
            raise DataError("model.name: token classification needs a fast tokenizer (word alignment); use one")
        encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=data.max_length)
        keys = [k for k in encoded.keys() if k != "attention_mask"]
        features, labels = [], []
        for i in range(len(words)):
            previous, row = None, []
            for word in encoded.word_ids(i):
                row.append(IGNORE_INDEX if word is None or word == previous else index[tags[i][word]])
                previous = word
            features.append({k: encoded[k][i] for k in keys})
            labels.append(row)
        return Split(features, labels)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = _per_token(logits, labels)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)

    def evaluate(self, model: nn.Module, split: Split, metric: str, settings: EvalSettings) -> float:
        truth: list[list[int]] = []
        predicted: list[list[int]] = []
        for _, logits, labels in eval_logits(model, split, settings):
            guesses = _per_token(logits, labels).argmax(-1)
            for row, guess in zip(labels, guesses):  # one sentence a row: entities do not cross sentences
                keep = row != IGNORE_INDEX
                truth.append(row[keep].tolist())
                predicted.append(guess[keep].tolist())
        if metric == "entity_f1":
            names = settings.label_names
            if not names:
                raise ValueError("entity_f1 needs the label names (EvalSettings.label_names)")
            return entity_f1([[names[i] for i in s] for s in truth], [[names[i] for i in s] for s in predicted])
        return score(metric, [x for s in truth for x in s], [x for s in predicted for x in s])

    def baseline(self, train: Split, validation: Split, metric: str) -> tuple[str, float] | None:
        """The majority class; for ``entity_f1`` none (the label names are needed to read entities)."""
        return None if metric == "entity_f1" else super().baseline(train, validation, metric)


class CausalLanguageModelling(Task):
    """Next-token prediction on text, scored by validation perplexity or mean loss per token.

    With ``data.packing`` (the default) the texts, each ended by the end-of-sequence token, are
    concatenated and cut into sequences of ``data.max_length`` tokens: short texts waste no compute
    on padding and nothing is truncated away. Without it each text is one sequence, truncated.
    """

    name = "causal-lm"
    metrics = {"perplexity": "minimize", "loss": "minimize"}
    auto_model = "AutoModelForCausalLM"
    new_head = False
    peft_task_type = "CAUSAL_LM"

    def columns(self, data: DataSection) -> list[str]:
        return data.text_columns

    def encode(
        self, rows: dict[str, list[Any]], tokenizer: Any, data: DataSection, label_names: list[Any], split: str
    ) -> Split:
        texts = ["\n".join(parts) for parts in zip(*(rows[c] for c in data.text_columns))]
        if not data.packing:
            ids = tokenizer(texts, truncation=True, max_length=data.max_length)["input_ids"]
            return Split([{"input_ids": x} for x in ids], [list(x) for x in ids])
        end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        stream = [t for x in tokenizer(texts)["input_ids"] for t in [*x, *end]]
        size = data.max_length
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        if len(chunks) > 1 and len(chunks[-1]) < size:
            chunks.pop()  # a short remainder would be the only padded sequence
        return Split([{"input_ids": c} for c in chunks], [list(c) for c in chunks])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = _per_token(logits, labels)
        return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)

    def training_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """:meth:`loss`, with the vocabulary's logits computed only where it reads them (the
        :func:`~autopeft.tasks.scored_frame`, by :func:`~autopeft.tasks.logits_at`) when that is under
        half the positions: an answer-only loss (the instruction task) reads a few positions of each
        example, a packed text all of them."""
        positions = scored_frame(labels)
        if not 0 < 2 * len(positions) < labels.shape[1]:
            return super().training_loss(model, batch, labels)
        with logits_at(model, positions, labels.shape[1]) as kept:
            logits = kept(model(**batch).logits)
        return self.loss(logits.float(), labels[:, positions])

    def evaluate(self, model: nn.Module, split: Split, metric: str, settings: EvalSettings) -> float:
        total, count = 0.0, 0
        for _, logits, labels, _ in eval_scored_logits(model, split, settings):  # all logits of packed text
            logits, targets = _per_token(logits, labels), labels[:, 1:]
            total += float(
                F.cross_entropy(
                    logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
                )
            )
            count += int((targets != IGNORE_INDEX).sum())
        return _from_loss(total / max(count, 1), metric)

    def baseline(self, train: Split, validation: Split, metric: str) -> tuple[str, float] | None:
        """A unigram model of the train tokens (add-one smoothed), which ignores every context."""
        loss = self.baseline_loss(train, validation)
        return None if loss is None else ("unigram model", _from_loss(loss, metric))

    def baseline_loss(self, train: Split, validation: Split) -> float | None:
        """The unigram model's mean token cross-entropy (see :meth:`baseline`)."""
        counts = Counter(t for row in cast(list[list[int]], train.labels) for t in row[1:] if t != IGNORE_INDEX)
        total, vocabulary = sum(counts.values()), len(counts) + 1  # + 1: every unseen token together
        targets = [t for row in cast(list[list[int]], validation.labels) for t in row[1:] if t != IGNORE_INDEX]
        if not targets:
            return None
        return -sum(math.log((counts.get(t, 0) + 1) / (total + vocabulary)) for t in targets) / len(targets)


def _from_loss(mean_loss: float, metric: str) -> float:
    return math.exp(min(mean_loss, 50.0)) if metric == "perplexity" else mean_loss


@hookimpl
def register_tasks(register: Any) -> None:
    register(SequenceClassification())
    register(TokenClassification())
    register(CausalLanguageModelling())
