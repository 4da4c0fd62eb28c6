"""The training loop's pieces: schedule, metrics, batching, determinism, and pruning reports."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from autopeft.blocks import build_context
from autopeft.config import TrainSection
from autopeft.data import Split, batches, bucketed_order
from autopeft.testing import tiny_bert
from autopeft.train import learning_rate_at, predict, score, train, uses_bf16
from autopeft_plugins.lora import Lora
from autopeft_plugins.tasks import SequenceClassification


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    rates = [learning_rate_at(s, total_steps=10, peak=1.0, warmup_steps=2) for s in range(10)]
    assert rates[:2] == [0.5, 1.0]
    assert rates[2] == 1.0 and all(a > b for a, b in zip(rates[2:], rates[3:]))
    assert learning_rate_at(10, 10, 1.0, 2) == 0.0


def test_scores() -> None:
    labels, predictions = [0, 1, 1, 0], [0, 1, 0, 0]
    assert score("accuracy", labels, predictions) == 0.75
    assert score("f1", labels, predictions) == pytest.approx(2 / 3)
    assert score("mcc", labels, labels) == 1.0
    assert score("f1", [0, 1, 2], [0, 1, 1]) == pytest.approx((1 + 2 / 3 + 0) / 3)  # macro for 3 classes


def _split(n: int = 24, seed: int = 0) -> Split:
    rng = random.Random(seed)
    features, labels = [], []
    for _ in range(n):
        label = rng.randint(0, 1)
        ids = [rng.randint(10, 99) for _ in range(rng.randint(3, 10))]
        ids[0] = 5 if label else 6  # learnable: the first token gives the label away
        features.append({"input_ids": ids})
        labels.append(label)
    return Split(features, labels)


def test_batches_pad_dynamically_and_mask() -> None:
    split = _split()
    batch = next(batches(split, 4, pad_token_id=0))
    longest = max(len(f["input_ids"]) for f in split.features[:4])
    assert batch["input_ids"].shape == (4, longest)
    assert batch["attention_mask"].sum().item() == sum(len(f["input_ids"]) for f in split.features[:4])
    assert batch["labels"].tolist() == split.labels[:4]
    shuffled = [b["labels"].tolist() for b in batches(split, 4, 0, random.Random(1))]
    assert sorted(sum(shuffled, [])) == sorted(split.labels)


def test_predict_keeps_example_order() -> None:
    torch.manual_seed(0)
    model = tiny_bert().eval()
    split = _split(10)
    expected = []
    for f in split.features:
        with torch.no_grad():
            expected.append(int(model(input_ids=torch.tensor([f["input_ids"]])).logits.argmax()))
    assert predict(model, split, 0, batch_size=3, device=torch.device("cpu")) == expected


def _trained(evals_per_epoch: int, reports: list, precision: str = "auto") -> tuple[float, torch.Tensor]:
    torch.manual_seed(0)
    base = tiny_bert().requires_grad_(False)
    ctx = build_context(base)
    model = Lora().apply(
        copy.deepcopy(base), ctx, {"ranks": [4, 4, 4], "alpha": 2, "targets": "all", "variant": "lora", "dropout": 0.0}
    )
    settings = TrainSection(
        epochs=3, batch_size=8, eval_batch_size=16, evals_per_epoch=evals_per_epoch, precision=precision
    )
    result = train(
        model,
        SequenceClassification(),
        _split(48),
        _split(24, seed=1),
        0,
        settings,
        1e-2,
        "accuracy",
        torch.device("cpu"),
        seed=0,
        report=lambda step, value: reports.append((step, value)),
    )
    assert result.steps == 18 and result.train_tokens > 0 and result.train_seconds > 0
    return result.metric, torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])


def test_training_learns_is_seeded_and_reports_before_the_end() -> None:
    reports: list = []
    metric, weights = _trained(2, reports)
    assert metric >= 0.75  # the first token gives the label away
    assert [step for step, _ in reports] == [3, 6, 9, 12, 15]  # the final evaluation is the result, not a report
    again: list = []
    metric_again, weights_again = _trained(1, again)
    assert [step for step, _ in again] == [6, 12]
    assert metric_again == metric and torch.equal(weights, weights_again)  # evaluations do not disturb training


def test_precision_decides_bf16_autocast(monkeypatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not uses_bf16(cpu, "fp32") and uses_bf16(cpu, "bf16") and not uses_bf16(cuda, "fp32")
    for has in (True, False):  # auto: bf16 where the CPU multiplies bf16 in hardware
        monkeypatch.setattr("autopeft.train.cpu_has_bf16", lambda has=has: has)
        assert uses_bf16(cpu, "auto") is has


def test_cpu_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path) -> None:
    from autopeft import train

    for text, expected in (("flags : fpu avx512f avx512_bf16 sse", True), ("flags : fpu avx2", False)):
        (tmp_path / "cpuinfo").write_text(text)
        monkeypatch.setattr(train, "Path", lambda _path: tmp_path / "cpuinfo")
        train.cpu_has_bf16.cache_clear()
        assert train.cpu_has_bf16() is expected
    train.cpu_has_bf16.cache_clear()


def test_bf16_on_cpu_trains_in_bf16_and_learns(monkeypatch) -> None:
    # The matmuls run in bf16 (seen by a forward hook), the trained parameters stay fp32, and the
    # model still learns the task; fp32 training is unchanged by the option's existence.
    dtypes: list[torch.dtype] = []
    real = torch.nn.Linear.forward

    def recording(self, x):
        out = real(self, x)
        dtypes.append(out.dtype)
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    metric, weights = _trained(1, [], precision="bf16")
    assert torch.bfloat16 in dtypes and weights.dtype == torch.float32
    assert metric >= 0.75
    dtypes.clear()
    _trained(1, [], precision="fp32")
    assert set(dtypes) == {torch.float32}


def test_length_buckets_cut_padding_and_keep_every_example() -> None:
    lengths = [random.Random(i).randint(1, 64) for i in range(1000)]
    split = Split([{"input_ids": [1] * n} for n in lengths], [0] * 1000)

    def padded(order: list[int]) -> int:
        return sum(int(b["input_ids"].numel()) for b in batches(split, 32, 0, order=order))

    order = bucketed_order(split, 32, random.Random(0))
    assert sorted(order) == list(range(1000))
    assert len(list(batches(split, 32, 0, order=order))) == 32  # as many steps as planned_steps counts
    shuffled = list(range(1000))
    random.Random(0).shuffle(shuffled)
    assert padded(order) < 0.6 * padded(shuffled)
    assert order != bucketed_order(split, 32, random.Random(1))  # still a random order


def test_length_buckets_train_and_learn() -> None:
    torch.manual_seed(0)
    base = tiny_bert().requires_grad_(False)
    model = Lora().apply(
        copy.deepcopy(base),
        build_context(base),
        {"ranks": [4, 4, 4], "alpha": 2, "targets": "all", "variant": "lora", "dropout": 0.0},
    )
    settings = TrainSection(epochs=3, batch_size=8, eval_batch_size=16, length_buckets=True)
    result = train(
        model,
        SequenceClassification(),
        _split(48),
        _split(24, seed=1),
        0,
        settings,
        1e-2,
        "accuracy",
        torch.device("cpu"),
        seed=0,
    )
    assert result.steps == 18 and result.metric >= 0.75
