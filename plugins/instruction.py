"""The ``instruction`` task: fine-tune a causal LM on chat or prompt/completion data, as TRL's
``SFTTrainer`` does, and score whether it answers better.

Two formats, TRL's (``[data] text`` names the columns):

* ``text = "messages"``: one column of conversations, lists of ``{role, content}``; every assistant
  turn is trained, the last one is the answer generation metrics compare with;
* ``text = ["prompt", "completion"]``: each a string, or each a conversation (the prompt's turns,
  then the assistant's).

Formatting: the tokenizer's chat template where it has one (strings become one user turn and one
assistant turn), else prompt and completion concatenated with the end-of-sequence token after it
(TRL's way for base models); ``[data] chat_template`` gives another Jinja template, ``"plain"`` the
one below, or ``"none"`` for the concatenation.

Which tokens count is found as TRL does, never from a per-family template: the prompt (for
``messages``, each prefix up to an assistant turn with its generation prompt) is tokenized, then the
prompt with its answer, and the first must be a prefix of the second; the rest is the answer's. A
template that renders earlier turns differently once an answer follows fails with one line. Each
example is one sequence (no packing), so no example's loss reads another's tokens.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn

from autopeft import hookimpl
from autopeft.tasks import (
    IGNORE_INDEX,
    DataError,
    DataSection,
    EvalSettings,
    Split,
    generate_answers,
    teacher_forced_answers,
)
from autopeft_plugins.answer_metrics import ANSWER_METRICS
from autopeft_plugins.tasks import CausalLanguageModelling, share_standard_error

__all__ = ["InstructionTuning", "PLAIN_CHAT_TEMPLATE", "ROLES"]

#: The roles a conversation's turns may have.
ROLES = ("system", "user", "assistant", "tool")
#: ``chat_template = "plain"``: one ``Role: content`` line a turn, the assistant's ended by the
#: end-of-sequence token; a generation prompt is ``Assistant:``, so the answer's first token (with its
#: leading space) belongs to the answer whatever the tokenizer. (The newline is a Jinja string:
#: transformers renders with ``trim_blocks``, which drops a newline that follows a tag.)
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
_RATE_METRICS = ("exact_match", "normalized_exact_match", "contains")  # a share of examples: binomial errors


class InstructionTuning(CausalLanguageModelling):
    """A causal LM trained on answers: the loss counts the completion (assistant) tokens only, unless
    ``[data] prompt_loss = true`` puts the prompt's back in (the train split's; validation and test
    always score the answers alone, so the metric means the same whatever the setting).

    Metrics: ``loss`` and ``perplexity`` of the answers' tokens (cheap: one forward pass), and, from
    greedy generation (``[task] max_new_tokens``), ``exact_match``, ``normalized_exact_match``,
    ``contains`` and ``rouge_l`` against the last assistant turn. Baselines: always giving the train
    split's most frequent answer (a unigram model of the answers' tokens for the loss metrics), and
    the untuned base model itself.
    """

    name = "instruction"
    metrics = {
        "loss": "minimize",
        "perplexity": "minimize",
        "exact_match": "maximize",
        "normalized_exact_match": "maximize",
        "contains": "maximize",
        "rouge_l": "maximize",
    }
    generates = True

    def worst(self, metric: str) -> float:
        return 0.0 if metric in ANSWER_METRICS else super().worst(metric)

    def encode(
        self, rows: dict[str, list[Any]], tokenizer: Any, data: DataSection, label_names: list[Any], split: str
    ) -> Split:
        template = _template(tokenizer, data)
        columns = data.text_columns
        with_prompt = data.prompt_loss and split == "train"
        features, labels, answers, prompt_lengths = [], [], [], []
        long_rows: list[int] = []
        cut_rows: list[int] = []
        for i in range(len(rows[columns[0]])):
            where = f"data.{split}: row {i + 1}"
            if len(columns) == 1:
                encoded = _conversation(rows[columns[0]][i], tokenizer, template, where, trained=None)
            else:
                encoded = _pair(rows[columns[0]][i], rows[columns[1]][i], tokenizer, template, where, columns)
            ids, spans, prompt_length, answer = encoded
            row_labels = list(ids) if with_prompt else _masked(ids, spans)
            if len(ids) > data.max_length:
                cut = len(ids) - data.max_length
                if data.long_prompts != "truncate" or cut >= prompt_length:
                    long_rows.append(i)
                    continue
                ids, row_labels, prompt_length = ids[cut:], row_labels[cut:], prompt_length - cut
                cut_rows.append(i)
            features.append({"input_ids": ids})
            labels.append(row_labels)
            answers.append(answer)
            prompt_lengths.append(prompt_length)
        found = Split(features, labels, answers, prompt_lengths)
        if long_rows:
            found.notes.append(_too_long(long_rows, len(rows[columns[0]]), split, data))
        if cut_rows:
            found.notes.append(
                f"autopeft: data.{split}: {len(cut_rows)} of {len(rows[columns[0]])} rows (rows {_rows(cut_rows)}) "
                f"had their prompt cut from the left to fit data.max_length ({data.max_length} tokens)"
            )
        return found

    def evaluate(self, model: nn.Module, split: Split, metric: str, settings: EvalSettings) -> float:
        if metric not in ANSWER_METRICS:
            return super().evaluate(model, split, metric, settings)
        score = ANSWER_METRICS[metric]
        answer = teacher_forced_answers if settings.generation.teacher_forced else generate_answers
        answers = answer(model, split, settings)
        return sum(score(a, r) for a, r in zip(answers, split.answers or [])) / max(len(split), 1)

    def baseline(self, train: Split, validation: Split, metric: str) -> tuple[str, float] | None:
        """The train split's most frequent answer, given to every prompt (for the loss metrics, the
        unigram model of the answers' tokens)."""
        if metric not in ANSWER_METRICS:
            return super().baseline(train, validation, metric)
        if not train.answers or not validation.answers:
            return None
        majority = Counter(train.answers).most_common(1)[0][0]
        score = ANSWER_METRICS[metric]
        value = sum(score(majority, r) for r in validation.answers) / len(validation.answers)
        shown = majority if len(majority) <= 24 else majority[:21] + "..."
        return f"majority answer {shown!r}", value

    def model_baseline(
        self, model: nn.Module, validation: Split, metric: str, settings: EvalSettings
    ) -> tuple[str, float] | None:
        """The untuned base model, answering zero-shot."""
        return "zero-shot base model", self.evaluate(model, validation, metric, settings)

    def serving_tokenizer(self, tokenizer: Any, data: DataSection) -> Any | None:
        """The tokenizer with the chat template the study formatted with (``data.chat_template``), so
        that ``apply_chat_template`` on the export's own tokenizer prompts the model as it was trained."""
        if data.chat_template == "none":
            tokenizer.chat_template = None
        elif data.chat_template is not None:
            tokenizer.chat_template = _template(tokenizer, data)
        return tokenizer

    def standard_error(self, split: Split, metric: str, value: float) -> float | None:
        """For the share metrics (exact match, contains), a share's binomial standard error over the
        examples, Agresti-Coull adjusted; none for ROUGE-L and the loss."""
        return share_standard_error(value, len(split)) if metric in _RATE_METRICS else None


def _template(tokenizer: Any, data: DataSection) -> str | None:
    """The chat template to format with: ``data.chat_template`` ("plain", "none" or a Jinja
    template), else the tokenizer's own; None: no template (strings are concatenated)."""
    wanted = data.chat_template
    if wanted == "none":
        return None
    if wanted == "plain":
        return PLAIN_CHAT_TEMPLATE
    return wanted if wanted is not None else getattr(tokenizer, "chat_template", None)


def _checked_turns(value: Any, where: str, column: str) -> list[dict[str, str]]:
    """A conversation cell as a list of ``{role, content}`` turns, or one line naming the problem."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: {column} must be a non-empty list of {{role, content}} turns; fix the row")
    for k, turn in enumerate(value):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise DataError(f"{where}: turn {k + 1} of {column} is not a {{role, content}} object; fix the row")
        if turn["role"] not in ROLES:
            raise DataError(
                f"{where}: turn {k + 1} of {column} has the unknown role {turn['role']!r}; "
                f"use one of {', '.join(ROLES)}"
            )
        if not isinstance(turn["content"], str):
            raise DataError(
                f"{where}: turn {k + 1} of {column} has {type(turn['content']).__name__} content; "
                "content must be a string"
            )
    return [{"role": t["role"], "content": t["content"]} for t in value]


def _render(tokenizer: Any, template: str, turns: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(
        turns, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _conversation(
    value: Any, tokenizer: Any, template: str | None, where: str, trained: range | None, column: str = "messages"
) -> tuple[list[int], list[tuple[int, int]], int, str]:
    """(token ids, the trained (start, end) spans, the last answer's prompt length, the last answer)
    of a conversation; ``trained``: the turns whose assistant answers are trained (default: all)."""
    if template is None:
        raise DataError(
            f"{where}: {column} is a conversation, and the tokenizer has no chat template; set "
            'data.chat_template (e.g. "plain", or a Jinja template) or use a chat model'
        )
    turns = _checked_turns(value, where, column)
    answered = [k for k, t in enumerate(turns) if t["role"] == "assistant" and (trained is None or k in trained)]
    if not answered:
        raise DataError(f"{where}: {column} has no assistant turn to learn; add the answer as an assistant turn")
    if not turns[answered[-1]]["content"].strip():
        raise DataError(f"{where}: the last assistant turn is empty; give the answer, or remove the row")
    ids = _render(tokenizer, template, turns, generation_prompt=False)
    spans = []
    for k in answered:
        before = _render(tokenizer, template, turns[:k], generation_prompt=True)
        through = ids if k == len(turns) - 1 else _render(tokenizer, template, turns[: k + 1], generation_prompt=False)
        if through[: len(before)] != before or ids[: len(through)] != through:
            raise DataError(
                f"{where}: the chat template renders the turns before assistant turn {k + 1} differently once "
                "it follows, so its tokens cannot be told from the prompt's; use a template that renders earlier "
                "turns the same whatever follows (data.chat_template)"
            )
        spans.append((len(before), len(through)))
    return ids, spans, spans[-1][0], turns[answered[-1]]["content"].strip()


def _pair(
    prompt: Any, completion: Any, tokenizer: Any, template: str | None, where: str, columns: list[str]
) -> tuple[list[int], list[tuple[int, int]], int, str]:
    """A prompt/completion row: two strings, or two conversations."""
    if isinstance(prompt, list) or isinstance(completion, list):
        if not (isinstance(prompt, list) and isinstance(completion, list)):
            raise DataError(
                f"{where}: {columns[0]} and {columns[1]} must both be strings or both conversations; fix the row"
            )
        turns = [*prompt, *completion]
        return _conversation(turns, tokenizer, template, where, range(len(prompt), len(turns)), "prompt+completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise DataError(f"{where}: {columns[0]} and {columns[1]} must be strings or conversations; fix the row")
    if not completion.strip():
        raise DataError(f"{where}: the completion is empty; give the answer, or remove the row")
    if template is not None:  # a chat model: the prompt is the user's turn, the completion the answer
        turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        return _conversation(turns, tokenizer, template, where, None, "prompt+completion")
    before = list(tokenizer(prompt)["input_ids"])
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = [*tokenizer(prompt + completion)["input_ids"], *end]
    if ids[: len(before)] != before:
        raise DataError(
            f"{where}: the prompt's tokens change once the completion follows it (a word split across the two); "
            "end the prompt with a space or a newline, or start the completion with one"
        )
    return ids, [(len(before), len(ids))], len(before), completion.strip()


def _masked(ids: list[int], spans: list[tuple[int, int]]) -> list[int]:
    """``ids`` with every position outside the trained spans ignored by the loss."""
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    return labels


def _rows(indices: list[int]) -> str:
    """The first five of ``indices`` as data rows counted from 1, and "..." after them."""
    return ", ".join(str(i + 1) for i in indices[:5]) + (", ..." if len(indices) > 5 else "")


def _too_long(rows: list[int], total: int, split: str, data: DataSection) -> str:
    """The note (or, with ``long_prompts = "error"``, the error) for examples longer than max_length."""
    what = (
        f"data.{split}: {len(rows)} of {total} rows (rows {_rows(rows)}) are longer than data.max_length "
        f"({data.max_length} tokens) with their answer"
    )
    if data.long_prompts == "error":
        raise DataError(f'{what}; raise data.max_length, shorten them, or set data.long_prompts = "drop" or "truncate"')
    cut = "were dropped" if data.long_prompts == "drop" else "were dropped, the answer alone being too long"
    return f"autopeft: {what}: they {cut}; raise data.max_length to keep them"


@hookimpl
def register_tasks(register: Any) -> None:
    register(InstructionTuning())
