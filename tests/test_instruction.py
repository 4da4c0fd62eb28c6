"""The instruction task: its formats, TRL's way of masking, its metrics and baselines, bad rows, and a
study on a tiny chat model end to end."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from autopeft.errors import DataError
from autopeft.tasks import (
    IGNORE_INDEX,
    DataSection,
    EvalSettings,
    GenerationSettings,
    LossTally,
    generate_answers,
    scored_frame,
    teacher_forced_answers,
    validation_loss,
)
from autopeft.testing import TaskConformance, save_random_causal_lm
from autopeft_plugins.answer_metrics import contains, exact_match, normalize, normalized_exact_match, rouge_l
from autopeft_plugins.instruction import PLAIN_CHAT_TEMPLATE, InstructionTuning

TASK = InstructionTuning()
WORDS = "is this review fresh or rotten a great film dull plot answer in one word hello hi thanks bye yes no".split()
REVIEWS = [("a great film", "fresh"), ("dull plot", "rotten"), ("great plot", "fresh"), ("a dull film", "rotten")]


def _messages(review: str, answer: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "answer in one word"},
        {"role": "user", "content": f"is this review fresh or rotten {review}"},
        {"role": "assistant", "content": answer},
    ]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """A tiny random Llama with a ChatML tokenizer: special tokens and a chat template."""
    return save_random_causal_lm(tmp_path_factory.mktemp("chat") / "model", [" ".join(WORDS)], chat=True)


@pytest.fixture(scope="module")
def tokenizer(chat_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chat_model)


def _data(**kwargs: Any) -> DataSection:
    return DataSection(train="-", validation="-", **{"text": "messages", **kwargs})


def _text(tokenizer: Any, ids: list[int]) -> str:
    """The tokens, joined without the spaces a word-level decoder puts between them."""
    return "".join(tokenizer.convert_ids_to_tokens(ids))


def _decoded(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    """The trained tokens (see :func:`_text`)."""
    return _text(tokenizer, [t for t, y in zip(ids, labels) if y != IGNORE_INDEX])


# -- formats and masking ------------------------------------------------------------------------------


def test_messages_train_only_the_assistant_tokens_found_by_prefix(tokenizer: Any) -> None:
    rows = {"messages": [_messages(r, a) for r, a in REVIEWS]}
    split = TASK.encode(rows, tokenizer, _data(), [], "train")
    assert split.answers == ["fresh", "rotten", "fresh", "rotten"]
    for features, labels, length in zip(split.features, split.labels, split.prompt_lengths or []):
        ids = features["input_ids"]
        assert isinstance(labels, list) and len(labels) == len(ids)
        assert _decoded(tokenizer, ids, labels) in ("fresh<|im_end|>", "rotten<|im_end|>")  # the answer and its end
        assert all(y == IGNORE_INDEX for y in labels[:length])  # the prompt, generation prompt included
        assert _text(tokenizer, ids[:length]).endswith("<|im_start|>assistant")
    rendered = tokenizer.apply_chat_template(rows["messages"][0], tokenize=False)
    assert split.features[0]["input_ids"] == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_every_assistant_turn_is_trained_and_the_last_is_the_answer(tokenizer: Any) -> None:
    turns = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "bye"},
    ]
    split = TASK.encode({"messages": [turns]}, tokenizer, _data(), [], "validation")
    ids, labels = split.features[0]["input_ids"], split.labels[0]
    assert _decoded(tokenizer, ids, labels) == "hi<|im_end|>bye<|im_end|>"
    assert split.answers == ["bye"]
    assert _text(tokenizer, ids[: split.prompt_lengths[0]]).count("<|im_end|>") == 3  # hello, hi, thanks


def test_prompt_loss_trains_the_prompt_on_train_only(tokenizer: Any) -> None:
    rows = {"messages": [_messages(*REVIEWS[0])]}
    train = TASK.encode(rows, tokenizer, _data(prompt_loss=True), [], "train")
    validation = TASK.encode(rows, tokenizer, _data(prompt_loss=True), [], "validation")
    assert train.labels[0] == train.features[0]["input_ids"]
    assert _decoded(tokenizer, validation.features[0]["input_ids"], validation.labels[0]) == "fresh<|im_end|>"


def test_string_pairs_take_the_chat_template_where_there_is_one(tokenizer: Any) -> None:
    rows = {"prompt": ["is this review fresh or rotten a great film"], "completion": ["fresh"]}
    split = TASK.encode(rows, tokenizer, _data(text=["prompt", "completion"]), [], "train")
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": rows["prompt"][0]}, {"role": "assistant", "content": "fresh"}], tokenize=False
    )
    assert tokenizer.decode(split.features[0]["input_ids"]) == tokenizer.decode(
        tokenizer(expected, add_special_tokens=False)["input_ids"]
    )
    assert _decoded(tokenizer, split.features[0]["input_ids"], split.labels[0]) == "fresh<|im_end|>"


def test_string_pairs_without_a_template_are_concatenated_with_the_end_token(tokenizer: Any) -> None:
    rows = {"prompt": ["is this review fresh or rotten a great film answer"], "completion": [" fresh"]}
    split = TASK.encode(rows, tokenizer, _data(text=["prompt", "completion"], chat_template="none"), [], "train")
    ids = split.features[0]["input_ids"]
    assert tokenizer.decode(ids) == "is this review fresh or rotten a great film answer fresh <|im_end|>"
    assert _decoded(tokenizer, ids, split.labels[0]) == "fresh<|im_end|>"
    assert split.answers == ["fresh"] and split.prompt_lengths == [len(ids) - 2]


def test_conversational_pairs_train_the_completion_turns_only(tokenizer: Any) -> None:
    prompt = [
        {"role": "user", "content": "dull plot"},
        {"role": "assistant", "content": "rotten"},  # a worked example in the prompt: not trained
        {"role": "user", "content": "a great film"},
    ]
    rows = {"prompt": [prompt], "completion": [[{"role": "assistant", "content": "fresh"}]]}
    split = TASK.encode(rows, tokenizer, _data(text=["prompt", "completion"]), [], "train")
    assert _decoded(tokenizer, split.features[0]["input_ids"], split.labels[0]) == "fresh<|im_end|>"


def test_the_plain_template_formats_a_base_model_conversation(tokenizer: Any) -> None:
    rows = {"messages": [_messages(*REVIEWS[1])]}
    split = TASK.encode(rows, tokenizer, _data(chat_template="plain"), [], "train")
    text = _text(tokenizer, split.features[0]["input_ids"])
    assert "<|im_start|>" not in text and text.endswith("rotten<|im_end|>")  # eos after the answer
    rendered = tokenizer.apply_chat_template(rows["messages"][0], chat_template=PLAIN_CHAT_TEMPLATE, tokenize=False)
    assert rendered.startswith("System: answer in one word\nUser: is this") and rendered.endswith("rotten<|im_end|>\n")
    prompt = _text(tokenizer, split.features[0]["input_ids"][: split.prompt_lengths[0]])
    assert prompt.endswith("plot<unk><unk>")  # "User: ... dull plot" then "Assistant:" (no such words here)


def test_long_examples_are_dropped_truncated_or_refused_naming_the_rows(tokenizer: Any) -> None:
    long = " ".join(["great"] * 40)
    rows = {"messages": [_messages(*REVIEWS[0]), _messages(long, "fresh"), _messages(*REVIEWS[1])]}
    dropped = TASK.encode(rows, tokenizer, _data(max_length=24), [], "train")
    assert len(dropped) == 2 and dropped.answers == ["fresh", "rotten"]
    assert "1 of 3 rows (rows 2)" in dropped.notes[0] and "max_length" in dropped.notes[0]
    cut = TASK.encode(rows, tokenizer, _data(max_length=24, long_prompts="truncate"), [], "train")
    assert len(cut) == 3 and len(cut.features[1]["input_ids"]) == 24
    assert cut.notes == [
        "autopeft: data.train: 1 of 3 rows (rows 2) had their prompt cut from the left to fit data.max_length "
        "(24 tokens)"
    ]
    assert _decoded(tokenizer, cut.features[1]["input_ids"], cut.labels[1]) == "fresh<|im_end|>"
    assert _text(tokenizer, cut.features[1]["input_ids"][: cut.prompt_lengths[1]]).endswith("assistant")
    with pytest.raises(DataError, match=r"data.train: 1 of 3 rows \(rows 2\) are longer than data.max_length"):
        TASK.encode(rows, tokenizer, _data(max_length=24, long_prompts="error"), [], "train")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yes"}], "unknown role 'robot'"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "yes"}], "has int content"),
        ([{"role": "user", "content": "hello"}], "no assistant turn"),
        ([{"role": "user", "content": "hello"}, {"role": "assistant", "content": " "}], "last assistant turn is empty"),
        ("hello", "must be a non-empty list"),
        ([{"role": "user"}], "not a {role, content} object"),
    ],
)
def test_a_bad_conversation_is_one_line_naming_the_row(tokenizer: Any, row: Any, message: str) -> None:
    rows = {"messages": [_messages(*REVIEWS[0]), row]}
    with pytest.raises(DataError, match="data.train: row 2") as caught:
        TASK.encode(rows, tokenizer, _data(), [], "train")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_messages_on_a_tokenizer_without_a_template_ask_for_one(tokenizer: Any) -> None:
    with pytest.raises(DataError, match="no chat template; set data.chat_template"):
        TASK.encode({"messages": [_messages(*REVIEWS[0])]}, tokenizer, _data(chat_template="none"), [], "train")


def test_a_template_that_renders_earlier_turns_differently_is_refused(tokenizer: Any) -> None:
    shifty = (  # the last turn is marked "final": a prompt's rendering is no prefix of the whole
        "{% for m in messages %}{% if loop.last %}final {% endif %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant{% endif %}"
    )
    with pytest.raises(DataError, match="row 1: the chat template renders the turns before assistant turn 3"):
        TASK.encode({"messages": [_messages(*REVIEWS[0])]}, tokenizer, _data(chat_template=shifty), [], "train")


def test_mixed_and_empty_pairs_are_refused(tokenizer: Any) -> None:
    data = _data(text=["prompt", "completion"])
    mixed = {"prompt": ["hello"], "completion": [[{"role": "assistant", "content": "hi"}]]}
    with pytest.raises(DataError, match="must both be strings or both conversations"):
        TASK.encode(mixed, tokenizer, data, [], "train")
    with pytest.raises(DataError, match="row 1: the completion is empty"):
        TASK.encode({"prompt": ["hello"], "completion": ["  "]}, tokenizer, data, [], "train")


# -- metrics, generation and baselines ------------------------------------------------------------------


def test_answer_metrics_on_known_pairs() -> None:
    assert exact_match(" fresh\n", "fresh") == 1.0 and exact_match("Fresh", "fresh") == 0.0
    assert normalize("The  Review, is FRESH!") == "review is fresh"
    assert normalized_exact_match("Fresh.", "fresh") == 1.0 and normalized_exact_match("fresh!", "rotten") == 0.0
    assert contains("The review is fresh.", "fresh") == 1.0 and contains("refreshing", "fresh") == 0.0
    assert contains("anything", "") == 0.0
    # LCS of "the cat sat on the mat" and "the cat lay on a mat": the cat on mat (4 words)
    assert rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(2 * (4 / 6) * (4 / 6) / (8 / 6))
    assert rouge_l("", "fresh") == 0.0 and rouge_l("Fresh!", "fresh") == 1.0


def _settings(tokenizer: Any, batch_size: int = 4, max_new_tokens: int = 3) -> EvalSettings:
    return EvalSettings(
        pad_token_id=tokenizer.pad_token_id,
        batch_size=batch_size,
        device=torch.device("cpu"),
        precision="fp32",
        tokenizer=tokenizer,
        generation=GenerationSettings(max_new_tokens, (tokenizer.eos_token_id,)),
    )


class _Parrot(torch.nn.Module):
    """A 'model' whose generate appends fixed token ids to every prompt: what generate_answers does
    with its output is then known."""

    def __init__(self, answer: list[int]) -> None:
        super().__init__()
        self.answer, self.seen = answer, []

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.seen.append((input_ids.tolist(), attention_mask.tolist(), kwargs))
        return torch.cat([input_ids, torch.tensor([self.answer] * len(input_ids))], dim=1)


def test_generation_is_left_padded_greedy_and_scored_against_the_answers(tokenizer: Any) -> None:
    rows = {"messages": [_messages(*r) for r in REVIEWS] + [_messages("a great film " * 3, "fresh")]}
    split = TASK.encode(rows, tokenizer, _data(), [], "validation")
    fresh = tokenizer("fresh", add_special_tokens=False)["input_ids"]
    parrot = _Parrot([*fresh, tokenizer.eos_token_id])
    settings = _settings(tokenizer, batch_size=8)
    assert generate_answers(parrot, split, settings) == ["fresh"] * 5
    ids, mask, kwargs = parrot.seen[0]
    assert all(row[-1] == 1 for row in mask) and any(row[0] == 0 for row in mask)  # left-padded
    assert kwargs["do_sample"] is False and kwargs["use_cache"] is True and kwargs["max_new_tokens"] == 3
    assert TASK.evaluate(parrot, split, "exact_match", settings) == pytest.approx(3 / 5)
    assert TASK.evaluate(parrot, split, "contains", settings) == pytest.approx(3 / 5)


def test_a_real_model_answers_the_same_in_batches_as_alone(chat_model: Path, tokenizer: Any) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(chat_model).train()
    rows = {"messages": [_messages(*r) for r in REVIEWS] + [_messages("a great film " * 3, "fresh")]}
    split = TASK.encode(rows, tokenizer, _data(), [], "validation")
    together = generate_answers(model, split, _settings(tokenizer, batch_size=5, max_new_tokens=4))
    alone = generate_answers(model, split, _settings(tokenizer, batch_size=1, max_new_tokens=4))
    assert together == alone and all(isinstance(a, str) for a in together)
    assert model.training  # generate_answers restores the mode it found
    loss = TASK.evaluate(model, split, "loss", _settings(tokenizer))
    assert TASK.evaluate(model, split, "perplexity", _settings(tokenizer)) == pytest.approx(torch.tensor(loss).exp())


def test_teacher_forced_answers_follow_greedy_decoding_and_give_the_loss_in_the_same_pass(
    chat_model: Path, tokenizer: Any
) -> None:
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(chat_model)
    model.resize_token_embeddings(len(tokenizer))  # answers in the tokenizer's words, not unknown ids
    settings = _settings(tokenizer, batch_size=3, max_new_tokens=3)
    prompts = [f"{a} {b}" for a in ("a great", "a dull", "great", "dull") for b in ("film", "plot", "review")]
    rows = {"messages": [_messages(p, "fresh") for p in prompts]}
    greedy = generate_answers(model, TASK.encode(rows, tokenizer, _data(), [], "validation"), settings)
    # The prompts whose greedy answer is words the tokenizer spells back the same (the random model
    # also emits <unk>, which decoding drops), each answer then given as the reference
    hidden = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    spelled = [(p, g) for p, g in zip(prompts, greedy) if g and not hidden & set(_greedy_ids(model, tokenizer, p))]
    assert len(spelled) >= 4, greedy
    echoed = {"messages": [_messages(p, g) for p, g in spelled]}
    split = TASK.encode(echoed, tokenizer, _data(), [], "validation")
    tally = LossTally(TASK.loss)
    forced = replace(settings, tally=tally, generation=replace(settings.generation, teacher_forced=True))
    assert teacher_forced_answers(model, split, forced) == [g for _, g in spelled]
    assert TASK.evaluate(model, split, "exact_match", forced) == 1.0
    assert TASK.evaluate(model, split, "exact_match", settings) == 1.0
    assert tally.mean == pytest.approx(validation_loss(TASK, model, split, settings))  # one pass gave both
    # against other references both read the same exact match: a wrong first token is wrong either way
    other = TASK.encode({"messages": [_messages(p, "fresh") for p in prompts]}, tokenizer, _data(), [], "validation")
    assert TASK.evaluate(model, other, "exact_match", forced) == TASK.evaluate(model, other, "exact_match", settings)


@pytest.mark.parametrize("method", ["lora", "prompt-tuning", "no output embeddings"])
def test_the_answer_only_loss_computes_the_logits_at_the_answers_only(
    chat_model: Path, tokenizer: Any, method: str
) -> None:
    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from autopeft.data import batches

    base = AutoModelForCausalLM.from_pretrained(chat_model)
    base.resize_token_embeddings(len(tokenizer))
    config = PromptTuningConfig(num_virtual_tokens=3) if method == "prompt-tuning" else LoraConfig(r=2)
    model = get_peft_model(base, config.__class__(**{**config.to_dict(), "task_type": "CAUSAL_LM"})).eval()
    if method == "no output embeddings":  # a model whose head the hook cannot find computes every logit
        model.base_model.model.get_output_embeddings = lambda: None
    rows = {"messages": [_messages(*r) for r in REVIEWS]}
    batch = next(batches(TASK.encode(rows, tokenizer, _data(), [], "train"), 4, tokenizer.pad_token_id))
    labels = batch.pop("labels")
    widths: list[int] = []  # the positions the head computed logits at
    base.lm_head.register_forward_hook(lambda _m, _a, out: widths.append(out.shape[1]))
    expected = TASK.loss(model(**batch).logits.float(), labels)
    found = TASK.training_loss(model, batch, labels)
    scored = (labels != IGNORE_INDEX).any(0).nonzero().squeeze(1).tolist()  # the answers' tokens
    frame = sorted({p for t in scored for p in (t - 1, t)})  # and the positions that predict them
    assert scored_frame(labels).tolist() == frame and 2 * len(frame) < labels.shape[1]
    assert widths[1] == (len(frame) if method != "no output embeddings" else widths[0])
    assert float(found.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    found.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("method", ["lora", "prompt-tuning"])
def test_an_evaluation_computes_the_logits_at_the_answers_only_and_scores_the_same(
    chat_model: Path, tokenizer: Any, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from peft import LoraConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from autopeft import tasks

    base = AutoModelForCausalLM.from_pretrained(chat_model)
    base.resize_token_embeddings(len(tokenizer))
    config = PromptTuningConfig(num_virtual_tokens=3) if method == "prompt-tuning" else LoraConfig(r=2)
    model = get_peft_model(base, config.__class__(**{**config.to_dict(), "task_type": "CAUSAL_LM"}))
    reviews = [f"{a} {b}" for a in ("a great", "a dull", "dull") for b in ("film", "plot")]
    rows = {"messages": [_messages(review, "fresh") for review in reviews]}
    split = TASK.encode(rows, tokenizer, _data(), [], "validation")
    widths: list[int] = []  # the positions the head computed logits at, a batch
    base.lm_head.register_forward_hook(lambda _m, _a, out: widths.append(out.shape[1]))
    settings = _settings(tokenizer, batch_size=3, max_new_tokens=3)
    forced = replace(settings, tally=LossTally(TASK.loss), generation=replace(settings.generation, teacher_forced=True))
    framed = (TASK.evaluate(model, split, "loss", settings), teacher_forced_answers(model, split, forced))
    tally, framed_widths = forced.tally.mean, list(widths)
    monkeypatch.setattr(tasks, "_frame", lambda *_: None)  # every position's logits, as before
    widths.clear()
    whole = (TASK.evaluate(model, split, "loss", settings), teacher_forced_answers(model, split, forced))
    assert max(framed_widths) * 2 < min(widths)  # a few positions a batch: the answers'
    assert framed[0] == pytest.approx(whole[0], rel=1e-5) and framed[1] == whole[1]
    assert tally == pytest.approx(forced.tally.mean, rel=1e-5)


def _greedy_ids(model: Any, tokenizer: Any, review: str) -> list[int]:
    """The token ids ``model`` generates greedily (3 at most) after the review's prompt."""
    prompt = tokenizer.apply_chat_template(_messages(review, "")[:-1], add_generation_prompt=True, return_tensors="pt")
    ids = prompt if isinstance(prompt, torch.Tensor) else prompt["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    return list(out[0, ids.shape[1] :].tolist())


def test_dora_norms_are_cached_for_an_evaluation_pass_where_they_fit_and_change_no_answer(
    chat_model: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from autopeft import inference_cache

    base = AutoModelForCausalLM.from_pretrained(chat_model)
    config = LoraConfig(r=2, use_dora=True, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(base, config).train()
    layers = [m for m in model.modules() if hasattr(m, "_dora_cache")]
    assert layers and inference_cache.dora_cache_bytes(model) == sum(
        4 * m.get_base_layer().weight.numel() for m in model.modules() if getattr(m, "use_dora", {}).get("default")
    )
    held: list[int] = []  # cached entries seen after each forward pass
    layers[0].register_forward_hook(lambda *_: held.append(len(layers[0]._dora_cache)))
    rows = {"messages": [_messages(*r) for r in REVIEWS]}
    split = TASK.encode(rows, tokenizer, _data(), [], "validation")
    found = {}
    for share in (0.25, 0.0):  # fits; then nothing may be cached
        monkeypatch.setattr(inference_cache, "FREE_MEMORY_SHARE", share)
        held.clear()
        answers = generate_answers(model, split, _settings(tokenizer, batch_size=2, max_new_tokens=4))
        found[share] = answers, TASK.evaluate(model, split, "loss", _settings(tokenizer)), list(held)
        assert all(len(m._dora_cache) == 0 for m in layers)  # emptied after the pass
    assert found[0.25][:2] == found[0.0][:2]  # the same answers and loss
    assert max(found[0.25][2]) > 0 and max(found[0.0][2]) == 0
    assert model.training


def test_the_majority_answer_baseline_and_the_base_models_own(tokenizer: Any) -> None:
    rows = {"messages": [_messages(*r) for r in [*REVIEWS, ("great plot", "fresh")]]}
    train = TASK.encode(rows, tokenizer, _data(), [], "train")
    validation = TASK.encode({"messages": [_messages(*r) for r in REVIEWS]}, tokenizer, _data(), [], "validation")
    assert TASK.baseline(train, validation, "exact_match") == ("majority answer 'fresh'", 0.5)
    name, value = TASK.baseline(train, validation, "loss")
    assert name == "unigram model" and value > 0
    fresh = tokenizer("rotten", add_special_tokens=False)["input_ids"]
    found = TASK.model_baseline(_Parrot(fresh), validation, "exact_match", _settings(tokenizer))
    assert found == ("zero-shot base model", 0.5)


class TestInstructionConformance(TaskConformance):
    task = InstructionTuning()
    data = DataSection(train="-", validation="-", text=["prompt", "completion"], max_length=32)
    rows = {
        "prompt": ["is this film good ?", "is this plot dull ?", "is this film dull ?", "is this plot good ?"],
        "completion": [" yes", " yes", " no", " no"],
    }


# -- a study end to end ---------------------------------------------------------------------------------


def _chat_study(folder: Path, chat_model: Path, train: list[Any], validation: list[Any]) -> Path:
    """A study file on the tiny chat model, its data the conversations given, the race off."""
    data = folder / "data"
    data.mkdir()
    for split, rows in (("train", train), ("validation", validation)):
        with (data / f"{split}.jsonl").open("w") as handle:
            for turns in rows:
                handle.write(json.dumps({"messages": turns}) + "\n")
    study = folder / "study.toml"
    study.write_text(
        f"""
[study]
name = "chat"
n_trials = 2

[model]
name = "{chat_model}"

[task]
type = "instruction"
metric = "exact_match"
max_new_tokens = 3

[data]
train = "data/train.jsonl"
validation = "data/validation.jsonl"
text = "messages"
max_length = 48

[budget]
max_trainable = "5%"

[train]
batch_size = 4
precision = "fp32"
device = "cpu"

[search]
methods = ["lora"]
race = false
proxy = false
"""
    )
    return study


def test_a_bad_row_stops_the_run_in_one_line_before_any_training(chat_model: Path, tmp_path: Path, capsys) -> None:
    from autopeft.cli.command import main

    good = [_messages(*r) for r in REVIEWS]
    bad = [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "fresh"}]
    study = _chat_study(tmp_path, chat_model, [good[0], bad, *good[1:]], good)
    assert main(["run", str(study), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.train: row 2: turn 1 of messages has the unknown role 'robot'" in err[0], err
    if (tmp_path / "chat.db").exists():  # nothing was trained: no trial was even asked for
        with sqlite3.connect(tmp_path / "chat.db") as db:
            assert db.execute("select count(*) from trials").fetchone() == (0,)


def test_a_fit_ranked_by_its_loss_reads_its_metric_from_that_pass_without_generating(
    chat_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A race's short rung: the loss ranks it, so one teacher-forced pass gives loss and metric
    from autopeft import load_config
    from autopeft.registry import resolve_study
    from autopeft.training.train import Fidelity
    from autopeft.training.workbench import Workbench

    reviews = [_messages(*r) for r in REVIEWS * 4]
    bench = Workbench(resolve_study(load_config(_chat_study(tmp_path, chat_model, reviews, reviews[:8]))))
    lora = {"ranks": [2] * len(bench.ctx.blocks), "alpha": 2, "targets": "query+value", "variant": "lora"}
    lora["dropout"] = 0.0
    full = bench.fit("lora", lora, learning_rate=1e-3, seed=0, fidelity=Fidelity(steps=2))

    def no_generating(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a fit ranked by its loss generated")

    monkeypatch.setattr("autopeft_plugins.instruction.generate_answers", no_generating)
    short = bench.fit("lora", lora, learning_rate=1e-3, seed=0, fidelity=Fidelity(steps=2), score_loss=True)
    assert short.validation_loss is not None and 0.0 <= short.metric <= 1.0
    assert short.metric == full.metric  # exact match reads the same, teacher-forced or generated
    with pytest.raises(AssertionError, match="generated"):
        bench.fit("lora", lora, learning_rate=1e-3, seed=0, fidelity=Fidelity(steps=2))


def test_a_study_on_a_chat_model_reports_both_baselines(chat_model: Path, tmp_path: Path, capsys) -> None:
    from autopeft import run_study

    reviews = [_messages(*r) for r in REVIEWS * 6]
    study = _chat_study(tmp_path, chat_model, reviews, reviews[:8])
    run_study(study)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "majority answer 'fresh' baseline 0.5000" in text and "zero-shot base model baseline" in text
    stored = optuna.load_study(study_name="chat", storage=f"sqlite:///{tmp_path / 'chat.db'}")
    record = stored.user_attrs["baseline"]
    names = {record["name"], *(b["name"] for b in record.get("also", []))}
    assert names == {"majority answer 'fresh'", "zero-shot base model"}
    assert record["value"] <= min(b["value"] for b in record.get("also", [record]))  # the weaker is the mark
    trained = [t for t in stored.trials if t.values]
    assert trained and all(0.0 <= t.values[0] <= 1.0 for t in trained)

    from autopeft.cli.command import main

    assert main(["trials", str(study)]) == 0
    listed = capsys.readouterr().out
    assert "baseline: " in listed and "majority answer 'fresh' 0.5000" in listed and "zero-shot base model" in listed
    assert main(["report", str(study), "-o", str(tmp_path / "report.html")]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "majority answer" in page and "zero-shot base model" in page

    # The export serves: its own tokenizer with the chat template, a card with the prompt format, and
    # plain transformers + peft on the same local base answer as autopeft's loaded model does.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import autopeft
    from autopeft.outputs.export import export

    [record] = export(study, tmp_path / "export")
    folder = tmp_path / "export"
    assert {"tokenizer.json", "tokenizer_config.json", "adapter_model.safetensors"} <= set(record["weights"]["files"])
    card = (folder / "README.md").read_text()
    assert "## Prompt format and generation" in card and "<|im_start|>user" in card and "generate(" in card
    model, served = autopeft.load_model(folder, tokenizer=True)
    assert served.chat_template and served.padding_side == "left"
    conversations = [_messages(review, answer) for review, answer in REVIEWS * 2]
    split = TASK.encode({"messages": conversations}, served, _data(), [], "validation")
    ours = generate_answers(model, split, _settings(served, batch_size=8, max_new_tokens=3))

    tokenizer = AutoTokenizer.from_pretrained(folder)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(chat_model), folder).eval()
    theirs = []
    for turns in conversations:
        ids = tokenizer.apply_chat_template(
            turns[:-1], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        out = plain.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        theirs.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    assert theirs == ours
    best = max(trained, key=lambda t: t.values[0])
    assert record["trial"]["number"] == best.number
    score = sum(a == r for a, (_, r) in zip(theirs, REVIEWS * 2)) / len(theirs)
    assert score == pytest.approx(best.values[0])  # the validation split is these eight conversations


_CHATS_CARD = """---
configs:
- config_name: reviews
  data_files:
  - split: train
    path: reviews/train.jsonl
---
"""


@pytest.mark.parametrize("form", ["jsonl", "json", "parquet", "dataset"])
def test_nested_messages_load_from_files_and_datasets(tokenizer: Any, tmp_path: Path, form: str) -> None:
    """Nested turns survive every reader: JSON Lines, a JSON array, Parquet, and a `datasets`
    repository folder with a configuration (what a hub dataset is)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from autopeft import load_config
    from autopeft.training.token_cache import load_task_data

    rows = [{"messages": _messages(*r)} for r in REVIEWS * 2]
    if form == "dataset":
        (tmp_path / "chats" / "reviews").mkdir(parents=True)
        (tmp_path / "chats" / "README.md").write_text(_CHATS_CARD)
        (tmp_path / "chats" / "reviews" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        data = 'dataset = "chats"\nsubset = "reviews"\ntrain = "train[:6]"\nvalidation = "train[6:]"'
    else:
        path = tmp_path / f"chats.{form}"
        if form == "parquet":
            pq.write_table(pa.Table.from_pylist(rows), path)
        else:
            lines = [json.dumps(r) for r in rows]
            path.write_text("[" + ",".join(lines) + "]" if form == "json" else "\n".join(lines) + "\n")
        data = f'train = "{path.name}"\nvalidation = "{path.name}"'
    study = tmp_path / "study.toml"
    study.write_text(
        f'[study]\nname = "s"\n[model]\nname = "m"\n[task]\ntype = "instruction"\n'
        f'[data]\n{data}\ntext = "messages"\ncache_tokens = false\n[budget]\nmax_trainable = "1%"\n'
    )
    loaded = load_task_data(load_config(study), tokenizer, TASK)
    expected = [a for _, a in REVIEWS * 2]
    assert loaded.train.answers == (expected[:6] if form == "dataset" else expected)
    assert _decoded(tokenizer, loaded.train.features[0]["input_ids"], loaded.train.labels[0]) == "fresh<|im_end|>"
