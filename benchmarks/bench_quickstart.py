"""Time a quickstart-sized autopeft search beside a plain PyTorch loop on the same batches.

    python benchmarks/bench_quickstart.py [--trials 4]

Per autopeft trial: setup (copy + apply), train and eval seconds, training tokens/s. The plain loop
trains LoRA r=8 on query+value (peft, no autopeft code in the step) over the identical tokenized
batches with the same gradient clipping, so the two tokens/s figures compare the training step itself.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch
import torch.nn.functional as F
from common import study, tokenized

from autopeft import run_study
from autopeft.data import batches
from autopeft.registry import ResolvedStudy
from autopeft.training.models import load_base_model


def plain_loop_tokens_per_second(resolved: ResolvedStudy) -> tuple[float, float]:
    """(tokens/s, seconds) of one epoch of a hand-written LoRA loop over the study's batches."""
    from peft import LoraConfig, get_peft_model

    config = resolved.config
    tokenizer, data, source, offline = tokenized(resolved)
    model = load_base_model(config.model, source, offline, resolved.task, data.label_names, tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    model.train()
    tokens, started = 0, time.perf_counter()
    for batch in batches(data.train, config.train.batch_size, data.pad_token_id, random.Random(0)):
        labels = batch.pop("labels")
        loss = F.cross_entropy(model(**batch).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.train.max_grad_norm)  # same work as autopeft's step
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - started
    return tokens / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    args = parser.parse_args()
    resolved = study()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        trials = run_study(resolved, n_trials=args.trials, storage=f"sqlite:///{folder}/bench.db", quiet=True).trials
        total = time.perf_counter() - started
    print(f"autopeft: {args.trials} trials in {total:.1f} s (model load and tokenization included)\n")
    print("| trial | method | trainable | setup s | train s | eval s | train tokens/s | accuracy |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in trials:
        a = t.user_attrs
        if "train_seconds" not in a:
            continue
        print(
            f"| {t.number} | {a['method']} | {a['trainable_params']} | {a['setup_seconds']:.2f} | "
            f"{a['train_seconds']:.1f} | "
            f"{a['eval_seconds']:.1f} | {a['tokens_per_second']:.0f} | {t.value:.4f} |"
        )
    lora = [
        t.user_attrs["tokens_per_second"]
        for t in trials
        if t.user_attrs.get("method") == "lora" and "tokens_per_second" in t.user_attrs
    ]
    plain, seconds = plain_loop_tokens_per_second(resolved)
    print(
        f"\nplain PyTorch loop, LoRA r=8 query+value, same batches: {plain:.0f} tokens/s "
        f"({seconds:.1f} s for one epoch)"
    )
    if lora:
        print(
            f"autopeft LoRA trials: {sum(lora) / len(lora):.0f} tokens/s on average "
            f"({sum(lora) / len(lora) / plain:.2f} x the plain loop)"
        )


if __name__ == "__main__":
    main()
