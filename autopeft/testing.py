"""The conformance suite every method plugin passes, built-in or third-party (like ``optuna.testing``).

A plugin author subclasses :class:`MethodConformance` in their own tests::

    from autopeft.testing import MethodConformance
    from my_plugin import MyMethod

    class TestMyMethod(MethodConformance):
        method = MyMethod()

Each test runs on tiny randomly initialised BERT- and Llama-style classifiers built from configs,
in about a second, with no download.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import optuna
import pytest
import torch
from torch import nn

from autopeft.blocks import ModelContext, build_context
from autopeft.methods import PeftMethod, trainable_numel

__all__ = ["MethodConformance", "tiny_bert", "tiny_llama", "TINY_MODELS"]


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


TINY_MODELS: dict[str, Callable[[], nn.Module]] = {"bert": tiny_bert, "llama": tiny_llama}


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, 100, (4, 12), generator=g),
        "attention_mask": torch.ones(4, 12, dtype=torch.long),
        "labels": torch.tensor([0, 1, 0, 1]),
    }


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
        return build_context(base)

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
        return self.method.apply(copy.deepcopy(base).requires_grad_(False), ctx, config)

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

    def test_only_trainable_parameters_change(self, base: nn.Module, ctx: ModelContext) -> None:
        for _, config in list(self._configs(ctx))[:3]:
            model = self._applied(base, ctx, config)
            before = {n: p.detach().clone() for n, p in model.named_parameters()}
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
            for seed in range(2):  # two steps: LoRA's B starts at zero, so A moves only on the second
                model(**_batch(seed)).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
            assert changed <= trainable, sorted(changed - trainable)[:5]
            assert changed, "a training step changed nothing"

    def test_save_load_round_trip(self, base: nn.Module, ctx: ModelContext, tmp_path: Path) -> None:
        config = next(self._configs(ctx))[1]
        torch.manual_seed(1)
        trained = self._applied(base, ctx, config)
        optimizer = torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.5)
        for seed in range(2):
            trained(**_batch(seed)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        self.method.save(trained, tmp_path)
        assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt")), "save must use safetensors"
        torch.manual_seed(2)
        restored = self.method.load(self._applied(base, ctx, config), tmp_path)
        trained.eval(), restored.eval()
        batch = _batch(3)
        with torch.no_grad():
            torch.testing.assert_close(restored(**batch).logits, trained(**batch).logits)
