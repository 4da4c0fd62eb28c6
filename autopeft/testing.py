"""The conformance suites every plugin passes, built-in or third-party (like ``optuna.testing``).

A plugin author subclasses :class:`MethodConformance` or :class:`TaskConformance` in their own tests::

    from autopeft.testing import MethodConformance, TaskConformance
    from my_plugin import MyMethod, MyTask

    class TestMyMethod(MethodConformance):
        method = MyMethod()

    class TestMyTask(TaskConformance):
        task = MyTask()
        data = DataSection(train="-", validation="-", text="sentence", label="label")
        rows = {"sentence": ["a good film", "a dull film", ...], "label": ["pos", "neg", ...]}

Method tests run on tiny randomly initialised BERT- and Llama-style classifiers and a Llama-style
language model (no new head) built from configs; task tests on a tiny Llama-style model with a
word-level tokenizer built from the rows. Each takes about a second, with no download.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import optuna
import pytest
import torch
from torch import nn

from autopeft.blocks import ModelContext, build_context
from autopeft.methods import PeftMethod, trainable_numel
from autopeft.tasks import DataSection, EvalSettings, GenerationSettings, Split, Task
from autopeft.training.resident import BaseLender, base_fingerprint

__all__ = [
    "MethodConformance",
    "TaskConformance",
    "tiny_bert",
    "tiny_llama",
    "tiny_llama_lm",
    "TINY_MODELS",
    "save_random_causal_lm",
    "CHATML_TEMPLATE",
]


#: Sizes both tiny models share: 3 blocks of hidden size 32, 4 heads, a 100-token vocabulary.
_TINY_SIZES: dict[str, Any] = {
    "vocab_size": 100,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def tiny_bert(num_labels: int = 2) -> nn.Module:
    """A 3-block BERT classifier with hidden size 32 (random weights)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(**_TINY_SIZES, num_labels=num_labels)  # type: ignore[call-arg]
    return BertForSequenceClassification(config)


def tiny_llama(num_labels: int = 2) -> nn.Module:
    """A 3-block Llama classifier with hidden size 32 (random weights, no biases, RMSNorm)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(**_TINY_SIZES, num_key_value_heads=2, num_labels=num_labels, pad_token_id=0)  # type: ignore[call-arg]
    return LlamaForSequenceClassification(config)


def tiny_llama_lm() -> nn.Module:
    """A 3-block Llama language model with hidden size 32 (random weights): no new head to train."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**_TINY_SIZES, num_key_value_heads=2, pad_token_id=0)  # type: ignore[call-arg]
    return LlamaForCausalLM(config)


TINY_MODELS: dict[str, Callable[[], nn.Module]] = {"bert": tiny_bert, "llama": tiny_llama, "llama-lm": tiny_llama_lm}


#: ChatML, as SmolLM2 and Qwen format chats: the chat template :func:`save_random_causal_lm` gives.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_random_causal_lm(
    folder: Path, texts: list[str], config: dict[str, Any] | None = None, chat: bool = False
) -> Path:
    """A Llama-family causal LM with random weights, saved with a word-level tokenizer of ``texts``
    as a Hugging Face folder a study file can name: a model of any shape (``config``, e.g. SmolLM2's
    ``config.json``; default: the tiny sizes) where no checkpoint can travel, as on a GPU machine
    without network. Its metric means nothing; its memory, speed and mechanics are the real shape's.

    With ``chat``, the tokenizer is a chat model's: ChatML's ``<|im_start|>`` and ``<|im_end|>``
    special tokens, :data:`CHATML_TEMPLATE` as its chat template, and ``<|im_end|>`` as the
    end-of-sequence token the model stops generating at (the role names join the vocabulary).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    settings = {**_TINY_SIZES, "num_key_value_heads": 2, **(config or {})}
    words = Tokenizer(models.WordLevel(unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["<pad>", "<unk>", "<eos>", *(["<|im_start|>", "<|im_end|>"] if chat else [])]
    trainer = trainers.WordLevelTrainer(vocab_size=settings["vocab_size"], special_tokens=special)
    words.train_from_iterator([*texts, *(["system user assistant"] if chat else [])], trainer)
    eos = "<|im_end|>" if chat else "<eos>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", unk_token="<unk>", eos_token=eos)
    if chat:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
        tokenizer.chat_template = CHATML_TEMPLATE
    settings.update(pad_token_id=0, eos_token_id=tokenizer.eos_token_id, bos_token_id=2)
    torch.manual_seed(0)
    shape = {k: v for k, v in settings.items() if k not in ("architectures", "model_type", "transformers_version")}
    model = LlamaForCausalLM(LlamaConfig(**shape))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _is_language_model(model: nn.Module) -> bool:
    base = getattr(model, "get_base_model", lambda: model)()  # under peft's wrapper
    return type(base).__name__.endswith("ForCausalLM")


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's training loss on ``batch``. A language model's is next-token cross-entropy over
    the input's own positions: prompt tuning prepends virtual tokens, which have no label."""
    if not _is_language_model(model):
        return model(**batch).loss  # type: ignore[no-any-return]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    logits = model(**inputs).logits[:, -labels.shape[1] :]
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


def _apply(method: PeftMethod, model: nn.Module, *, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
    return method.apply(model, ctx, config)


def _batch(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch ``model`` computes its own loss on: class labels, or the input ids for a language model."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (4, 12), generator=g)
    labels = ids.clone() if _is_language_model(model) else torch.tensor([0, 1, 0, 1])
    return {"input_ids": ids, "attention_mask": torch.ones(4, 12, dtype=torch.long), "labels": labels}


class MethodConformance:
    """Tests that hold for every :class:`~autopeft.PeftMethod`. Set :attr:`method` in a subclass."""

    #: The method under test.
    method: ClassVar[PeftMethod]
    #: The ``[search.<name>]`` table to test with (defaults when empty).
    options: ClassVar[dict[str, Any]] = {}
    #: Configurations sampled per test.
    n_samples: ClassVar[int] = 6

    @pytest.fixture(params=sorted(TINY_MODELS))
    def base(self, request: pytest.FixtureRequest) -> nn.Module:
        torch.manual_seed(0)
        return TINY_MODELS[request.param]().requires_grad_(False)

    @pytest.fixture
    def ctx(self, base: nn.Module) -> ModelContext:
        return build_context(base, new_head=not _is_language_model(base))

    def _options(self) -> dict[str, Any]:
        return self.method.check_options(dict(self.options))

    def _configs(
        self, ctx: ModelContext, budget: int | None = None
    ) -> Iterator[tuple[optuna.trial.FrozenTrial, dict[str, Any]]]:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        options = self._options()
        for _ in range(self.n_samples):
            trial = study.ask()
            config = self.method.suggest(trial, ctx, options, budget or ctx.total_params)
            study.tell(trial, 0.0)
            yield study.trials[-1], config
        yield study.trials[-1], self.method.smallest(ctx, options)

    def _applied(self, base: nn.Module, ctx: ModelContext, config: dict[str, Any]) -> nn.Module:
        """``config`` applied to a copy of ``base``, and initialised from two batches when the method
        has a data-driven initialisation (the count is checked after it, as the driver does)."""
        model = self.method.apply(copy.deepcopy(base).requires_grad_(False), ctx, config)
        if type(self.method).initialize is not PeftMethod.initialize:
            self.method.initialize(model, [_batch(model, seed) for seed in range(2)])
        return model

    def test_name_is_set(self) -> None:
        assert isinstance(self.method.name, str) and self.method.name.isidentifier()

    def test_suggested_parameters_are_prefixed_and_json(self, ctx: ModelContext) -> None:
        import json

        for trial, config in self._configs(ctx):
            assert all(p.startswith(f"{self.method.name}.") for p in trial.params), trial.params
            assert json.loads(json.dumps(config)) == config

    def test_count_equals_trainable_after_apply(self, base: nn.Module, ctx: ModelContext) -> None:
        for _, config in self._configs(ctx):
            model = self._applied(base, ctx, config)
            assert self.method.count_trainable(ctx, config) == trainable_numel(model), config

    def test_count_needs_no_weights(self, ctx: ModelContext) -> None:
        # The closed-form count must agree with applying the method to a weightless meta copy.
        for _, config in self._configs(ctx):
            assert self.method.count_trainable(ctx, config) == PeftMethod.count_trainable(self.method, ctx, config)

    def test_head_is_trainable(self, base: nn.Module, ctx: ModelContext) -> None:
        model = self._applied(base, ctx, self.method.smallest(ctx, self._options()))
        assert self.method.count_trainable(ctx, self.method.smallest(ctx, self._options())) >= ctx.head_params
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        for head in ctx.head:
            assert any(f"{head}." in f".{n}" for n in trained), f"head {head} not trainable"

    def test_smallest_is_smallest(self, ctx: ModelContext) -> None:
        least = self.method.count_trainable(ctx, self.method.smallest(ctx, self._options()))
        assert all(least <= self.method.count_trainable(ctx, c) for _, c in self._configs(ctx))

    def test_largest_is_largest(self, ctx: ModelContext) -> None:
        most = self.method.count_trainable(ctx, self.method.largest(ctx, self._options()))
        assert all(most >= self.method.count_trainable(ctx, c) for _, c in self._configs(ctx))

    def _trains_nothing(self, base: nn.Module, ctx: ModelContext) -> bool:
        """Whether the method has nothing to train in this model (BitFit in a model without biases,
        and no new head): then applying it must make nothing trainable, and the search skips it."""
        largest = self.method.largest(ctx, self._options())
        if self.method.count_trainable(ctx, largest) > 0:
            return False
        assert trainable_numel(self._applied(base, ctx, largest)) == 0
        return True

    def test_only_trainable_parameters_change(self, base: nn.Module, ctx: ModelContext) -> None:
        if self._trains_nothing(base, ctx):
            return
        for _, config in list(self._configs(ctx))[:3]:
            model = self._applied(base, ctx, config)
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
            for seed in range(2):  # two steps: LoRA's B starts at zero, so A moves only on the second
                _loss(model, _batch(model, seed)).backward()
                optimizer.step()
                optimizer.zero_grad()
            changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
            assert changed <= trainable, sorted(changed - trainable)[:5]
            assert changed, "a training step changed nothing"

    def test_the_base_is_given_back_bit_identical(self, base: nn.Module, ctx: ModelContext) -> None:
        """Trials apply the method to the resident base itself (:mod:`autopeft.training.resident`): after one
        trained step, every base tensor must be bit-identical to before, and the next trial must
        find the base as the first did. A method that rewrites frozen weights sets ``modifies_base``."""
        if self.method.modifies_base:
            return
        resident = copy.deepcopy(base)
        before = base_fingerprint(resident)
        lender = BaseLender(resident)
        counts = []
        for _, config in list(self._configs(ctx))[:3]:
            with lender.lend(functools.partial(_apply, self.method, ctx=ctx, config=config)) as model:
                if type(self.method).initialize is not PeftMethod.initialize:
                    self.method.initialize(model, [_batch(model, seed) for seed in range(2)])
                counts.append((trainable_numel(model), self.method.count_trainable(ctx, config)))
                trainable = [p for p in model.parameters() if p.requires_grad]
                if trainable:
                    optimizer = torch.optim.SGD(trainable, lr=0.5)
                    _loss(model, _batch(model, 0)).backward()
                    optimizer.step()
            assert base_fingerprint(resident) == before
            assert not any(p.requires_grad for p in resident.parameters())
        assert all(actual == counted for actual, counted in counts), counts

    def test_save_load_round_trip(self, base: nn.Module, ctx: ModelContext, tmp_path: Path) -> None:
        if self._trains_nothing(base, ctx):
            return
        config = next(self._configs(ctx))[1]
        torch.manual_seed(1)
        trained = self._applied(base, ctx, config)
        optimizer = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.5)
        for seed in range(2):
            _loss(trained, _batch(trained, seed)).backward()
            optimizer.step()
            optimizer.zero_grad()
        self.method.save(trained, tmp_path)
        assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt")), "save must use safetensors"
        torch.manual_seed(2)
        restored = self.method.load(self._applied(base, ctx, config), tmp_path)
        trained.eval(), restored.eval()
        batch = {k: v for k, v in _batch(trained, 3).items() if k != "labels"}
        with torch.no_grad():
            torch.testing.assert_close(restored(**batch).logits, trained(**batch).logits)

    def test_warm_start_replays_through_suggest(self, ctx: ModelContext) -> None:
        """The known-good configuration, queued as Optuna parameters, is what ``suggest`` then samples."""
        options = self._options()
        params = self.method.warm_start(ctx, options)
        if params is None:  # nothing to replay: the driver queues nothing for this method
            return
        assert all(k.startswith(f"{self.method.name}.") for k in params), params
        study = optuna.create_study()
        study.enqueue_trial(params)
        trial = study.ask()
        config = self.method.suggest(trial, ctx, options, 2**62)
        assert {k: trial.params[k] for k in params} == params  # every queued value is one suggest asks for
        assert self.method.suggest(optuna.trial.FixedTrial(dict(trial.params)), ctx, options, 2**62) == config

    def test_optimizer_trains_exactly_the_trainable_parameters(self, base: nn.Module, ctx: ModelContext) -> None:
        config = next(self._configs(ctx))[1]
        model = self._applied(base, ctx, config)
        optimizer = self.method.optimizer(model, config, 1e-3, 0.0)
        if optimizer is None:  # AdamW on the trainable parameters: the training loop's default
            return
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        assert optimized == trainable, "the optimizer must update every trainable parameter and nothing else"
        assert all(group["lr"] > 0 for group in optimizer.param_groups)


# -- tasks --------------------------------------------------------------------------------------------


def _words(value: Any) -> list[str]:
    return [str(w) for w in value] if isinstance(value, list) else str(value).split()


class TaskConformance:
    """Tests that hold for every :class:`~autopeft.Task`. Set :attr:`task`, :attr:`data` and :attr:`rows`.

    The rows are a small train split as columns (column -> values, as the task reads a file); they
    are encoded, a tiny Llama-style model of the task's ``auto_model`` is built for them, and the
    task's loss, metrics and baseline are checked on it.
    """

    #: The task under test.
    task: ClassVar[Task]
    #: The ``[data]`` section the rows are read with (``train``/``validation`` are not opened).
    data: ClassVar[DataSection]
    #: A few training rows: column name -> values (at least 4 rows, and two classes where the task has them).
    rows: ClassVar[dict[str, list[Any]]]

    @pytest.fixture
    def tokenizer(self) -> Any:
        """A word-level fast tokenizer over the rows' words (whitespace-split texts, or word lists)."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        words = sorted({w for values in self.rows.values() for v in values for w in _words(v)})
        vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[EOS]", *words])}
        backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]"
        )

    @pytest.fixture
    def encoded(self, tokenizer: Any) -> tuple[Split, list[Any]]:
        names = self.task.label_names(self.rows, self.data)
        return self.task.encode(self.rows, tokenizer, self.data, names, "train"), names

    @pytest.fixture
    def model(self, tokenizer: Any, encoded: tuple[Split, list[Any]], tmp_path: Path) -> nn.Module:
        """The task's model, loaded through :meth:`Task.load_model` from a saved tiny Llama."""
        import transformers

        config = transformers.LlamaConfig(
            **{**_TINY_SIZES, "vocab_size": len(tokenizer)}, num_key_value_heads=2, pad_token_id=0
        )  # type: ignore[call-arg]
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
        return self.task.load_model(str(tmp_path / "tiny"), encoded[1]).float()

    def _settings(self, names: list[Any] | None = None, tokenizer: Any = None) -> EvalSettings:
        labels = tuple(str(n) for n in names or [])
        return EvalSettings(
            pad_token_id=0,
            batch_size=3,
            device=torch.device("cpu"),
            precision="fp32",
            label_names=labels,
            tokenizer=tokenizer,
            generation=GenerationSettings(max_new_tokens=4, stop_token_ids=(2,)),
        )

    def test_declares_name_metrics_and_model_class(self) -> None:
        import transformers

        assert isinstance(self.task.name, str) and self.task.name
        assert self.task.metrics and set(self.task.metrics.values()) <= {"maximize", "minimize"}
        assert self.task.default_metric in self.task.metrics
        assert hasattr(transformers, self.task.auto_model), f"transformers has no {self.task.auto_model}"

    def test_columns_are_the_ones_the_rows_have(self) -> None:
        columns = self.task.columns(self.data)
        assert columns and all(isinstance(c, str) for c in columns)
        assert set(columns) <= set(self.rows), f"the test rows lack {sorted(set(columns) - set(self.rows))}"

    def test_encode_gives_token_ids_and_a_label_per_example_or_token(
        self, encoded: tuple[Split, list[Any]], tokenizer: Any
    ) -> None:
        split, names = encoded
        assert len(split) > 0 and len(split.features) == len(split.labels)
        for features, label in zip(split.features, split.labels):
            ids = features["input_ids"]
            assert ids and all(isinstance(t, int) and 0 <= t < len(tokenizer) for t in ids)
            if isinstance(label, list):
                assert len(label) == len(ids), "per-token labels: one per input id"
            else:
                assert isinstance(label, int) and 0 <= label < max(len(names), 1)

    def test_loss_is_a_finite_differentiable_scalar(self, model: nn.Module, encoded: tuple[Split, list[Any]]) -> None:
        from autopeft.data import batches

        batch = next(batches(encoded[0], 4, 0))
        labels = batch.pop("labels")
        loss = self.task.loss(model(**batch).logits, labels)
        assert loss.dim() == 0 and math.isfinite(float(loss.detach()))
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    def test_training_loss_is_the_loss_of_all_the_logits(
        self, model: nn.Module, encoded: tuple[Split, list[Any]]
    ) -> None:
        """:meth:`Task.training_loss` may compute fewer logits than the model would, never another loss."""
        from autopeft.data import batches

        batch = next(batches(encoded[0], 4, 0))
        labels = batch.pop("labels")
        model.eval()  # no dropout: both passes compute the same function
        expected = self.task.loss(model(**batch).logits.float(), labels)
        found = self.task.training_loss(model, batch, labels)
        assert found.dim() == 0
        assert torch.allclose(found, expected, rtol=1e-4, atol=1e-6), f"{float(found)} != {float(expected)}"
        found.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())

    def test_every_metric_is_a_number_no_worse_than_worst(
        self, model: nn.Module, encoded: tuple[Split, list[Any]], tokenizer: Any
    ) -> None:
        model.train()
        for metric, direction in self.task.metrics.items():
            settings = self._settings(encoded[1], tokenizer)
            value = self.task.evaluate(model, encoded[0], metric, settings)
            assert isinstance(value, float) and not math.isnan(value), metric
            assert value == self.task.evaluate(model, encoded[0], metric, settings), "evaluation is not repeatable"
            worst = self.task.worst(metric)
            assert (value >= worst) if direction == "maximize" else (value <= worst), (metric, value, worst)
        assert model.training, "evaluate must leave the model in the mode it found it in"

    def test_baseline_is_none_or_a_named_value(self, encoded: tuple[Split, list[Any]]) -> None:
        found = self.task.baseline(encoded[0], encoded[0], self.task.default_metric)
        assert found is None or isinstance(found[0], str) and isinstance(found[1], float)

    def test_model_baseline_is_none_or_a_named_value_of_the_untouched_model(
        self, model: nn.Module, encoded: tuple[Split, list[Any]], tokenizer: Any
    ) -> None:
        before = {n: p.detach().clone() for n, p in model.state_dict().items()}
        model.train()
        found = self.task.model_baseline(
            model, encoded[0], self.task.default_metric, self._settings(encoded[1], tokenizer)
        )
        assert found is None or isinstance(found[0], str) and isinstance(found[1], float) and not math.isnan(found[1])
        assert model.training, "model_baseline must leave the model in the mode it found it in"
        assert all(torch.equal(before[n], p) for n, p in model.state_dict().items()), "model_baseline changed weights"

    def test_baseline_loss_is_none_or_a_finite_loss(self, encoded: tuple[Split, list[Any]]) -> None:
        loss = self.task.baseline_loss(encoded[0], encoded[0])
        assert loss is None or isinstance(loss, float) and math.isfinite(loss) and loss >= 0

    def test_a_short_training_run_learns_something(self, model: nn.Module, encoded: tuple[Split, list[Any]]) -> None:
        from autopeft.config import TrainSection
        from autopeft.data import TaskData
        from autopeft.training.train import Fidelity, train

        ctx = build_context(model, new_head=self.task.new_head)
        if self.task.new_head:
            assert ctx.head, "the task gives the model a new head, and no head module was found"
        model.requires_grad_(False)
        PeftMethod.unfreeze_block_params(model, ctx, [len(ctx.blocks) - 1], lambda b: list(b.params))
        data = TaskData(encoded[0], encoded[0], None, encoded[1], 0)
        settings = TrainSection(batch_size=2, precision="fp32")
        result = train(
            model,
            self.task,
            data,
            settings,
            self._settings(),
            learning_rate=1e-2,
            metric=self.task.default_metric,
            seed=0,
            fidelity=Fidelity(steps=3),
        )
        assert result.steps == 3 and math.isfinite(result.metric) and result.train_tokens > 0
