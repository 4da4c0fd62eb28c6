"""Tasks as plugins: the built-in tasks' data, losses and metrics, decoder classifiers, and whole
studies of causal language modelling and token classification."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import torch
import transformers
from conftest import DATA, write_study

from autopeft import Task, get_plugin_manager, hookimpl, load_config, run_study
from autopeft.config import DataSection
from autopeft.data import Split, batches
from autopeft.errors import ConfigError, PluginError
from autopeft.registry import registered_tasks, resolve_study
from autopeft.storage.results import best_trial
from autopeft.tasks import IGNORE_INDEX, EvalSettings
from autopeft.testing import TaskConformance
from autopeft_plugins.tasks import CausalLanguageModelling, SequenceClassification, TokenClassification

_CPU_FP32 = EvalSettings(pad_token_id=0, batch_size=4, device=torch.device("cpu"), precision="fp32")


def _data(**kwargs) -> DataSection:
    return DataSection(train="t.parquet", validation="v.parquet", **kwargs)


def test_builtin_tasks_are_plugins_with_their_metrics() -> None:
    tasks = registered_tasks(get_plugin_manager(autoload=False))
    assert {"sequence-classification", "token-classification", "causal-lm"} <= set(tasks)
    assert tasks["causal-lm"].plugin == "tasks"
    lm = tasks["causal-lm"].task
    assert lm.default_metric == "perplexity" and lm.metrics["loss"] == "minimize" and not lm.new_head
    assert tasks["sequence-classification"].task.worst("accuracy") == 0.0
    assert lm.worst("perplexity") == math.inf


class _Regression(Task):
    """A third-party task: mean squared error of one number per text."""

    name = "regression"
    metrics = {"mse": "minimize"}
    auto_model = "AutoModelForSequenceClassification"

    def columns(self, data):
        return [data.text, data.label]

    def encode(self, rows, tokenizer, data, label_names, split):
        raise NotImplementedError

    def loss(self, logits, labels):
        return torch.nn.functional.mse_loss(logits.squeeze(-1), labels.float())

    def evaluate(self, model, split, metric, settings):
        return 0.0


class _RegressionPlugin:
    @hookimpl
    def register_tasks(self, register):
        register(_Regression())


def test_a_third_party_task_registers_like_a_method(tmp_path: Path, monkeypatch) -> None:
    pm = get_plugin_manager(autoload=False)
    pm.register(_RegressionPlugin(), name="regression-plugin")
    tasks = registered_tasks(pm)
    assert tasks["regression"].plugin == "regression-plugin"
    # resolving checks the type and fills the metric and its direction from the task
    config = resolve_study(load_config(write_study(tmp_path, task={"type": "regression", "metric": ""})), pm).config
    assert (config.task.metric, config.task.direction) == ("mse", "minimize")

    class Twice:
        @hookimpl
        def register_tasks(self, register):
            register(_Regression())

    pm.register(Twice(), name="twice")
    with pytest.raises(PluginError, match="task 'regression' is registered by both"):
        registered_tasks(pm)


def _resolved(path: Path):
    return resolve_study(load_config(path), get_plugin_manager(autoload=False)).config


def test_unknown_task_or_metric_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"task.type: unknown task 'translation'; use one of \['causal-lm'"):
        _resolved(write_study(tmp_path, task={"type": "translation"}))
    with pytest.raises(ConfigError, match="unknown metric 'accuracy' for task 'causal-lm'.*perplexity"):
        _resolved(write_study(tmp_path, task={"type": "causal-lm", "metric": "accuracy"}))
    config = _resolved(write_study(tmp_path, task={"type": "causal-lm", "metric": ""}))
    assert (config.task.metric, config.task.direction, config.data.packing) == ("perplexity", "minimize", True)


class _Words:
    """A whitespace tokenizer with the fast-tokenizer API the tasks use (ids = word lengths + 10)."""

    eos_token_id = 2
    is_fast = True

    def __call__(self, texts, truncation=False, max_length=None, is_split_into_words=False):
        rows = texts if is_split_into_words else [t.split() for t in texts]
        ids = [[1] + [10 + len(w) for w in words] for words in rows]  # 1: a start token
        if truncation:
            ids = [x[:max_length] for x in ids]
        encoding = transformers.BatchEncoding({"input_ids": ids})
        encoding.word_ids = lambda i: [None] + list(range(len(ids[i]) - 1))
        return encoding


def test_causal_lm_packs_texts_into_full_sequences() -> None:
    rows = {"text": ["a bb ccc", "dddd", "e ff ggg hhhh iiiii"]}
    split = CausalLanguageModelling().encode(rows, _Words(), _data(max_length=4), [], "train")
    stream = [1, 11, 12, 13, 2, 1, 14, 2, 1, 11, 12, 13, 14, 15, 2]
    assert [f["input_ids"] for f in split.features] == [stream[0:4], stream[4:8], stream[8:12]]  # remainder dropped
    assert split.labels == [f["input_ids"] for f in split.features]
    unpacked = CausalLanguageModelling().encode(rows, _Words(), _data(max_length=4, packing=False), [], "train")
    assert [f["input_ids"] for f in unpacked.features] == [[1, 11, 12, 13], [1, 14], [1, 11, 12, 13]]
    padded = next(batches(unpacked, 3, 0))
    assert padded["labels"][1].tolist() == [1, 14, IGNORE_INDEX, IGNORE_INDEX]  # padding is not a target


def _llama_config(**changes) -> transformers.LlamaConfig:
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    return transformers.LlamaConfig(
        **{"vocab_size": 64, "num_key_value_heads": 2, "pad_token_id": 0, **sizes, **changes}
    )


def _tiny_llama_lm(vocab: int = 64) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(_llama_config(vocab_size=vocab)).eval()


def test_causal_lm_loss_and_perplexity_match_transformers() -> None:
    model, task = _tiny_llama_lm(), CausalLanguageModelling()
    rng = random.Random(0)
    ids = [[rng.randrange(3, 64) for _ in range(rng.randrange(4, 12))] for _ in range(6)]
    split = Split([{"input_ids": x} for x in ids], [list(x) for x in ids])
    batch = next(batches(split, 6, 0))
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
        theirs = model(**batch, labels=labels).loss  # transformers shifts and ignores -100 itself
    assert torch.allclose(task.loss(logits, labels), theirs, atol=1e-5)
    perplexity = task.evaluate(model, split, "perplexity", _CPU_FP32)
    loss = task.evaluate(model, split, "loss", _CPU_FP32)
    assert math.isclose(perplexity, math.exp(loss), rel_tol=1e-9)
    assert math.isclose(loss, float(theirs), rel_tol=1e-4)  # every sequence's tokens, whatever the batching


def test_token_classification_labels_first_subtokens_and_scores_words(minilm_available) -> None:
    from transformers import AutoTokenizer

    from autopeft_plugins.offline_models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model(name="sentence-transformers/all-MiniLM-L6-v2", offline=True)
    )
    task = TokenClassification()
    rows = {"words": [["Unbelievably", "good", "film"]], "tags": [["ADV", "ADJ", "NOUN"]]}
    data = _data(text="words", label="tags", max_length=32)
    names = task.label_names(rows, data)
    assert names == ["ADJ", "ADV", "NOUN"]
    split = task.encode(rows, tokenizer, data, names, "train")
    pieces = tokenizer.convert_ids_to_tokens(split.features[0]["input_ids"])
    labels = split.labels[0]
    assert pieces[0] == "[CLS]" and labels[0] == IGNORE_INDEX and labels[-1] == IGNORE_INDEX
    first = [i for i, p in enumerate(pieces) if p not in ("[CLS]", "[SEP]") and not p.startswith("##")]
    assert [labels[i] for i in first] == [1, 0, 2]  # one label per word, on its first piece
    assert sum(x != IGNORE_INDEX for x in labels) == 3  # later pieces ("##...") are ignored
    with pytest.raises(Exception, match="data.validation: example 0 has 3 words but 2 labels"):
        task.encode({"words": rows["words"], "tags": [["ADV", "ADJ"]]}, tokenizer, data, names, "validation")


def test_decoder_classifier_pools_the_last_real_token() -> None:
    """A decoder without a pad token pads with its end-of-sequence token: each example's logits are
    the same alone and padded in a batch, so the last real token is the one pooled."""
    torch.manual_seed(0)
    config = _llama_config(num_labels=2, pad_token_id=2)  # pad = eos, as load_base_model sets it
    model = transformers.LlamaForSequenceClassification(config).eval()
    split = Split([{"input_ids": [5, 6, 7, 8, 9]}, {"input_ids": [10, 11]}], [0, 1])
    batch = next(batches(split, 2, pad_token_id=2))
    batch.pop("labels")
    with torch.no_grad():
        together = model(**batch).logits
        alone = model(input_ids=torch.tensor([[10, 11]])).logits
    assert torch.allclose(together[1], alone[0], atol=1e-5)


def _lm_model_dir(tmp_path: Path) -> Path:
    """A tiny Llama language model with MiniLM's tokenizer (no eos token: [SEP] ends each text)."""
    from autopeft_plugins.offline_models import resolve_model

    minilm = Path(resolve_model(name="sentence-transformers/all-MiniLM-L6-v2", offline=True))
    folder = tmp_path / "tiny-lm"
    _tiny_llama_lm(vocab=30522).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm / name).exists():
            shutil.copy(minilm / name, folder / name)
    return folder


def test_causal_lm_study_end_to_end(tmp_path: Path, capsys, minilm_available) -> None:
    from autopeft.cli.command import main

    model = _lm_model_dir(tmp_path)
    path = write_study(
        tmp_path,
        study={"n_trials": 3},
        model={"name": str(model), "overrides": {}},
        task={"type": "causal-lm", "metric": ""},
        data={"max_length": 32, "max_train_examples": 80, "max_eval_examples": 30},
        budget={"max_trainable": "1%"},
        train={"batch_size": 8, "learning_rate": [1e-3, 3e-2]},
        search={"methods": ["lora", "ia3", "unfreeze"]},
    )
    assert main(["plan", str(path)]) == 0
    assert "head: none new (the model's own output layer stays frozen)" in capsys.readouterr().out
    study = run_study(path, quiet=True)
    assert study.directions == [optuna.study.StudyDirection.MINIMIZE]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3 and all(1.0 < t.value < 30522 for t in done)
    assert best_trial(study).value == min(t.value for t in done)  # lower perplexity is better
    # the pretrained LM head is no task head: it stays frozen, and the budget does not pay for it
    assert all(t.user_attrs["trainable_params"] < 0.01 * study.user_attrs["total_params"] for t in done)


def test_token_classification_study_end_to_end(tmp_path: Path, minilm_available) -> None:
    import pandas as pd

    def tagged(split: str, n: int) -> None:
        texts = pd.read_parquet(DATA / f"rotten_tomatoes_{split}.parquet")["text"].head(n)
        with open(tmp_path / f"{split}.jsonl", "w") as out:
            for text in texts:
                words = text.split()[:20]
                tags = ["PUNCT" if not w[0].isalnum() else "CAP" if w[0].isupper() else "LOW" for w in words]
                out.write(json.dumps({"words": words, "tags": tags}) + "\n")

    tagged("train", 120)
    tagged("validation", 40)
    path = write_study(
        tmp_path,
        study={"n_trials": 2},
        task={"type": "token-classification", "metric": "f1"},
        data={"train": "train.jsonl", "validation": "validation.jsonl", "text": "words", "label": "tags"},
        train={"learning_rate": [5e-3, 3e-2], "epochs": 2},
        search={"methods": ["lora"]},
    )
    study = run_study(path, quiet=True)
    assert study.user_attrs["labels"] == ["CAP", "LOW", "PUNCT"]
    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(values) == 2 and max(values) > 0.4  # macro F1 over words; a constant tagger scores under 0.3


def test_json_rows_stay_strict_json_with_an_infinite_value() -> None:
    from autopeft.storage.results import format_rows

    text = format_rows([{"number": 0, "perplexity": math.inf, "test": 12.5}], "json")
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == [
        {"number": 0, "perplexity": None, "test": 12.5}
    ]


def test_cells_a_tokenizer_cannot_read_are_a_one_line_error(tmp_path: Path, minilm_available, capsys) -> None:
    from autopeft.cli.command import main

    for split in ("train", "validation"):
        rows = [{"text": 1000 + i, "label": i % 2} for i in range(8)]  # numbers, not texts
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_study(tmp_path, data={"train": "train.jsonl", "validation": "validation.jsonl"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.train: cannot tokenize the text, label columns" in err[0], err


def test_prompt_tuning_serves_per_token_tasks() -> None:
    """Prompt tuning prepends virtual tokens: the per-token tasks score the input's own positions,
    and the loss reaches the soft prompt."""
    from autopeft.blocks import build_context
    from autopeft_plugins.prompt import PromptTuning

    base = _tiny_llama_lm().requires_grad_(False)
    task = CausalLanguageModelling()
    model = PromptTuning().apply(base, build_context(base, new_head=False), {"tokens": 4})
    rng = random.Random(0)
    ids = [[rng.randrange(3, 64) for _ in range(rng.randrange(4, 12))] for _ in range(4)]
    split = Split([{"input_ids": x} for x in ids], [list(x) for x in ids])
    batch = next(batches(split, 4, 0))
    labels = batch.pop("labels")
    logits = model(**batch).logits
    assert logits.shape[1] == labels.shape[1] + 4
    task.loss(logits, labels).backward()
    prompt = [p for p in model.parameters() if p.requires_grad]
    assert prompt and all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompt)
    assert 1.0 < task.evaluate(model, split, "perplexity", _CPU_FP32) < 64 * 4


# -- the task conformance kit, run on the built-in tasks ----------------------------------------------

_REVIEWS = {
    "text": ["a fine warm film", "a dull cold film", "warm and fine acting", "cold dull acting", "fine film"],
    "label": ["fresh", "rotten", "fresh", "rotten", "fresh"],
}


class TestSequenceClassificationConformance(TaskConformance):
    task = SequenceClassification()
    data = DataSection(train="-", validation="-")
    rows = _REVIEWS


class TestTokenClassificationConformance(TaskConformance):
    task = TokenClassification()
    data = DataSection(train="-", validation="-", text="words", label="tags")
    rows = {
        "words": [["Ada", "met", "Alan"], ["Paris", "is", "big"], ["Alan", "left", "Paris"], ["it", "rains"]],
        "tags": [["PER", "O", "PER"], ["LOC", "O", "O"], ["PER", "O", "LOC"], ["O", "O"]],
    }


class TestCausalLanguageModellingConformance(TaskConformance):
    task = CausalLanguageModelling()
    data = DataSection(train="-", validation="-", max_length=8)
    rows = {"text": _REVIEWS["text"] * 2}


def test_entities_are_read_from_iob_tags_and_scored_whole() -> None:
    from autopeft_plugins.tasks import entity_f1, entity_spans

    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {(0, 2, "PER"), (3, 4, "LOC")}
    assert entity_spans(["I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC"]) == {(0, 2, "PER"), (2, 3, "LOC"), (3, 5, "LOC")}
    assert entity_spans(["PER", "PER", "O", "LOC"]) == {(0, 2, "PER"), (3, 4, "LOC")}  # no prefixes: runs
    assert entity_spans(["O", "O"]) == set()
    truth = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG"]]
    assert entity_f1(truth, truth) == 1.0
    assert entity_f1(truth, [["O"] * 4, ["O", "O"]]) == 0.0  # 5 of 6 words right, no entity found
    half = [["B-PER", "O", "O", "B-LOC"], ["O", "B-ORG"]]  # PER cut short: 2 of 3 found, 2 of 3 right
    assert entity_f1(truth, half) == pytest.approx(2 / 3)


def test_token_classification_scores_entity_f1_per_sentence(tmp_path: Path) -> None:
    from autopeft_plugins.tasks import TokenClassification

    task = TokenClassification()
    split = Split([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}], [[1, 2, 0], [0, 1]])
    names = ("O", "B-PER", "I-PER")

    class Perfect(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, **kw):  # the truth, as logits
            table = {1: 1, 2: 2, 3: 0, 4: 0, 5: 1}
            labels = torch.tensor([[table.get(int(t), 0) for t in row] for row in input_ids])
            return SimpleNamespace(logits=torch.nn.functional.one_hot(labels, 3).float())

    settings = EvalSettings(0, 2, torch.device("cpu"), "fp32", names)
    assert task.evaluate(Perfect(), split, "entity_f1", settings) == 1.0
    with pytest.raises(ValueError, match="needs the label names"):
        task.evaluate(Perfect(), split, "entity_f1", EvalSettings(0, 2, torch.device("cpu"), "fp32"))
    assert task.baseline(split, split, "entity_f1") is None and task.worst("entity_f1") == 0.0


# -- issue 27: labels listed twice, the metric's standard error ----------------------------------------


@pytest.mark.parametrize("task", [SequenceClassification(), TokenClassification()], ids=lambda t: t.name)
def test_a_label_listed_twice_is_named_not_reported_as_unseen(task) -> None:
    from autopeft.errors import DataError

    per_word = task.name.startswith("token")
    rows = {"text": [["a"], ["b"]], "label": [[0], [1]]} if per_word else {"text": ["a", "b"], "label": [0, 1]}
    with pytest.raises(DataError) as caught:
        task.label_names(rows, _data(labels=[0, 0]))
    message = str(caught.value)
    assert message == "data.labels: [0, 0] lists the label 0 twice; list each label once, one per class"
    assert "not among the train labels" not in message
    with pytest.raises(DataError, match=r"lists the label 'neg' 3 times"):
        task.label_names(rows, _data(labels=["neg", "pos", "neg", "neg"]))
    assert task.label_names(rows, _data(labels=[1, 0])) == [1, 0]


def test_the_standard_error_of_a_share_is_never_zero_on_few_examples() -> None:
    task = SequenceClassification()
    one = Split([{"input_ids": [1]}], [1])
    thousand = Split([{"input_ids": [1]}] * 1000, [1] * 1000)
    # One example scored right: accuracy 1.0, yet nothing is known; Agresti-Coull: sqrt(.6 * .4 / 5).
    assert task.standard_error(one, "accuracy", 1.0) == pytest.approx(math.sqrt(0.6 * 0.4 / 5))
    # Many examples: close to the plain binomial sqrt(p (1 - p) / n).
    assert task.standard_error(thousand, "accuracy", 0.7) == pytest.approx(math.sqrt(0.7 * 0.3 / 1000), rel=0.01)
    # MCC lives on [-1, 1]: twice the error of the share it maps to.
    assert task.standard_error(thousand, "mcc", 0.4) == pytest.approx(
        2 * task.standard_error(thousand, "accuracy", 0.7), rel=1e-9
    )
    words = Split([{"input_ids": [1, 2, 3]}] * 2, [[IGNORE_INDEX, 0, 1], [IGNORE_INDEX, 1, 1]])
    assert TokenClassification().standard_error(words, "accuracy", 0.5) == pytest.approx(math.sqrt(0.25 / 8))
    assert CausalLanguageModelling().standard_error(one, "perplexity", 12.0) is None  # no estimate: none shown


def test_the_validation_loss_is_tallied_from_the_metrics_own_pass_and_equals_a_pass_of_its_own() -> None:
    import dataclasses

    from autopeft.tasks import LossTally, validation_loss

    task = SequenceClassification()
    split = Split([{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5]}, {"input_ids": [6]}], [1, 0, 1])
    passes = []

    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, **kw):  # logits from the first token
            passes.append(len(input_ids))
            first = input_ids[:, :1].float()
            return SimpleNamespace(logits=torch.cat([first / 10, -first / 10], dim=1))

    tally = LossTally(task.loss)
    assert tally.mean is None
    settings = dataclasses.replace(_CPU_FP32, batch_size=2, tally=tally)
    accuracy = task.evaluate(Fixed(), split, "accuracy", settings)
    tallied, forwards = tally.mean, len(passes)
    assert tallied is not None and forwards == 2  # one pass over the split, in batches of 2
    logits = torch.tensor([[0.1, -0.1], [0.4, -0.4], [0.6, -0.6]])
    assert tallied == pytest.approx(float(torch.nn.functional.cross_entropy(logits, torch.tensor([1, 0, 1]))))
    assert validation_loss(task, Fixed(), split, _CPU_FP32) == pytest.approx(tallied)
    task.evaluate(Fixed(), split, "accuracy", settings)
    assert tally.mean == pytest.approx(tallied) and 0.0 <= accuracy <= 1.0  # a new pass starts a new tally
