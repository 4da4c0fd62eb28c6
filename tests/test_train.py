"""The training loop's pieces: schedule, metrics, batching, determinism, and pruning reports."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from autopeft.blocks import build_context
from autopeft.config import TrainSection
from autopeft.data import Split, TaskData, batches, bucketed_order
from autopeft.precision import uses_bf16
from autopeft.tasks import EvalSettings
from autopeft.testing import tiny_bert
from autopeft.training.train import Fidelity, learning_rate_at, train
from autopeft_plugins.lora import Lora
from autopeft_plugins.tasks import SequenceClassification, predict, score

_CPU = EvalSettings(pad_token_id=0, batch_size=16, device=torch.device("cpu"))


def _fit(model, settings: TrainSection, n_train: int = 48, **kwargs):
    """``train`` on the toy task (the first token gives the label away), learning rate 1e-2, seed 0."""
    data = TaskData(_split(n_train), _split(24, seed=1), None, [0, 1], 0)
    evaluation = EvalSettings(0, settings.eval_batch_size, torch.device("cpu"), settings.precision)
    return train(
        model,
        SequenceClassification(),
        data,
        settings,
        evaluation,
        learning_rate=1e-2,
        metric="accuracy",
        seed=0,
        **kwargs,
    )


def _lora_model():
    torch.manual_seed(0)
    base = tiny_bert().requires_grad_(False)
    lora = {"ranks": [4, 4, 4], "alpha": 2, "targets": "all", "variant": "lora", "dropout": 0.0}
    return Lora().apply(copy.deepcopy(base), build_context(base), lora)


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
    assert predict(model, split, EvalSettings(0, 3, torch.device("cpu"))) == expected


def _trained(evals_per_epoch: int, reports: list, precision: str = "auto") -> tuple[float, torch.Tensor]:
    model = _lora_model()
    settings = TrainSection(
        epochs=3, batch_size=8, eval_batch_size=16, evals_per_epoch=evals_per_epoch, precision=precision
    )
    result = _fit(model, settings, on_report=lambda step, value: reports.append((step, value)) or False)
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
        monkeypatch.setattr("autopeft.precision.cpu_has_bf16", lambda has=has: has)
        assert uses_bf16(cpu, "auto") is has


def test_cpu_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path) -> None:
    from autopeft import precision

    for text, expected in (("flags : fpu avx512f avx512_bf16 sse", True), ("flags : fpu avx2", False)):
        (tmp_path / "cpuinfo").write_text(text)
        monkeypatch.setattr(precision, "Path", lambda _path: tmp_path / "cpuinfo")
        precision.cpu_has_bf16.cache_clear()
        assert precision.cpu_has_bf16() is expected
    precision.cpu_has_bf16.cache_clear()


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


def test_bf16_training_on_a_cpu_runs_short_batches_in_the_math_attention_kernel(monkeypatch) -> None:
    # PyTorch's CPU flash attention is slow to differentiate in bf16 on short sequences: a training
    # step there runs the math kernel (flash disabled while the model computes), evaluation and fp32
    # training as PyTorch chooses, and sequences of CPU_FLASH_MIN_LENGTH tokens or more too.
    from autopeft.precision import CPU_FLASH_MIN_LENGTH, attention_for_training

    flash: list[tuple[bool, bool]] = []  # (training, flash enabled) at each forward pass
    real = torch.nn.Linear.forward

    def recording(self, x):
        flash.append((torch.is_grad_enabled(), torch.backends.cuda.flash_sdp_enabled()))
        return real(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    _trained(1, [], precision="bf16")
    assert {enabled for training, enabled in flash if training} == {False}
    assert {enabled for training, enabled in flash if not training} == {True}  # evaluation
    flash.clear()
    _trained(1, [], precision="fp32")
    assert {enabled for _, enabled in flash} == {True}
    cpu = torch.device("cpu")
    with attention_for_training(cpu, "bf16", CPU_FLASH_MIN_LENGTH):
        assert torch.backends.cuda.flash_sdp_enabled()
    with attention_for_training(torch.device("cuda"), "bf16", 8):
        assert torch.backends.cuda.flash_sdp_enabled()


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
    settings = TrainSection(epochs=3, batch_size=8, eval_batch_size=16, length_buckets=True)
    result = _fit(_lora_model(), settings)
    assert result.steps == 18 and result.metric >= 0.75


# -- fidelity, stopping, and the method hooks -------------------------------------------------------


def test_a_fidelity_in_steps_or_examples_is_a_complete_shorter_or_longer_run() -> None:
    settings = TrainSection(epochs=1, batch_size=8, eval_batch_size=16)  # 6 steps an epoch
    rates: list[float] = []

    def record(step: int, total: int) -> None:
        rates.append(optimizer.param_groups[0]["lr"])

    model = _lora_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    result = _fit(model, settings, fidelity=Fidelity(steps=15), optimizer=optimizer, on_step=record)
    assert result.steps == result.total_steps == 15 and result.stopped_at is None  # 2.5 epochs
    assert rates[-1] == pytest.approx(learning_rate_at(14, 15, 1e-2, 1))  # its own decay, to zero at step 15
    assert Fidelity(examples=20).total_steps(_split(48), settings) == 3  # 20 examples: 3 batches of 8
    with pytest.raises(ValueError):
        Fidelity(steps=3, examples=24)


def test_reports_come_at_the_fidelitys_points_and_on_report_can_stop_the_fit() -> None:
    settings = TrainSection(epochs=3, batch_size=8, eval_batch_size=16)
    reports: list[int] = []
    result = _fit(
        _lora_model(),
        settings,
        fidelity=Fidelity(report_at=(2, 7, 40)),
        on_report=lambda s, v: reports.append(s) or False,
    )
    assert reports == [2, 7] and result.steps == 18  # 40 is past the end; the end is the result, not a report
    stopped = _fit(_lora_model(), settings, on_report=lambda step, value: step >= 6)
    assert stopped.stopped_at == 6 and stopped.steps == 6 and stopped.total_steps == 18


def test_each_parameter_group_keeps_its_own_peak_learning_rate() -> None:
    """A method's optimizer (LoRA+: B learns 16x faster) keeps its ratios through warmup and decay."""
    model = _lora_model()
    a = [p for n, p in model.named_parameters() if p.requires_grad and "lora_B" not in n]
    b = [p for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n]
    optimizer = torch.optim.AdamW([{"params": a, "lr": 1e-3}, {"params": b, "lr": 1.6e-2}])
    seen: list[tuple[float, float]] = []
    _fit(
        model,
        TrainSection(epochs=1, batch_size=8),
        optimizer=optimizer,
        on_step=lambda step, total: seen.append(tuple(g["lr"] for g in optimizer.param_groups)),
    )
    assert len(seen) == 6 and all(high == pytest.approx(16 * low) for low, high in seen)
    assert seen[0][0] == pytest.approx(learning_rate_at(0, 6, 1e-3, 1))


def test_gradient_accumulation_matches_one_batch_of_the_same_size() -> None:
    """Two batches of 8 added up before each step train what one batch of 16 does: the same examples
    in the same order, the same mean loss, the same number of optimizer steps."""
    whole, halves = _lora_model(), _lora_model()
    for module in [*whole.modules(), *halves.modules()]:  # dropout would draw other masks for other shapes
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    one = _fit(whole, TrainSection(batch_size=16, epochs=2, precision="fp32"), n_train=48)
    halved = TrainSection(batch_size=8, epochs=2, precision="fp32", gradient_accumulation_steps=2)
    two = _fit(halves, halved, n_train=48)
    assert one.steps == two.steps == 6 and one.train_tokens == two.train_tokens
    for (name, a), b in zip(whole.named_parameters(), halves.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_a_partial_last_step_and_a_fidelity_count_optimizer_steps() -> None:
    settings = TrainSection(batch_size=8, epochs=1, gradient_accumulation_steps=4)
    assert Fidelity().total_steps(_split(40), settings) == 2  # 5 batches: a step of 4, then one of 1
    assert Fidelity(examples=64).total_steps(_split(40), settings) == 2  # 64 examples = 2 steps of 32
    assert _fit(_lora_model(), settings, n_train=40).steps == 2


def test_a_non_finite_loss_never_reaches_the_weights(monkeypatch) -> None:
    """The loss is read after the step (no host sync per step on a GPU): the scaler skipped the NaN
    step on the device, so the weights are those before it, finite."""
    from autopeft.training.train import NonFiniteLoss

    model = _lora_model()
    real, calls = SequenceClassification.loss, []

    def nan_on_the_third(self, logits, labels):
        calls.append(1)
        loss = real(self, logits, labels)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(SequenceClassification, "loss", nan_on_the_third)
    before: dict[str, torch.Tensor] = {}

    def keep(step: int, total: int, loss: float) -> None:
        if step == 2:
            before.update({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    with pytest.raises(NonFiniteLoss, match="at step 2"):
        _fit(model, TrainSection(batch_size=8, epochs=1, precision="fp32"), progress=keep)
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.isfinite(p).all() and torch.equal(p, before[name]), name


def test_the_loss_is_read_in_batches_on_an_accelerator(monkeypatch) -> None:
    """Every step's loss still reaches ``progress``, in order, but read every few steps at once (an
    accelerator waits for each read); a CPU, where reading costs nothing, reads every step."""
    import autopeft.training.train as train_module

    events: list[tuple[str, int]] = []

    def run() -> None:
        events.clear()
        _fit(
            _lora_model(),
            TrainSection(batch_size=4, epochs=1, precision="fp32"),
            n_train=40,
            on_step=lambda step, total: events.append(("step", step)),
            progress=lambda step, total, loss: events.append(("loss", step)),
        )

    run()
    assert events[:4] == [("step", 1), ("loss", 1), ("step", 2), ("loss", 2)]
    monkeypatch.setattr(train_module, "_read_every", lambda device: 4)
    run()
    assert events[:8] == [("step", s) for s in range(1, 5)] + [("loss", s) for s in range(1, 5)]
    assert [s for kind, s in events if kind == "loss"] == list(range(1, 11))  # all ten, the last two at the end
