"""The GPU check of issue 18: what a lent GPU machine (one GPU, no network, 8 minutes) can tell.

    bash benchmarks/gpu_check.sh          # there: installs the carried wheels, then runs this
    python benchmarks/gpu_check.py        # anywhere; on a CPU the quantized parts say why they are skipped

The SmolLM2 checkpoint cannot travel (94 MiB of the 64 MiB a call may carry), so a model of its shape
(SmolLM2-135M: 30 blocks, hidden 576, tied embeddings) is built with random weights, with a word-level
tokenizer of the Rotten Tomatoes text: its perplexity means nothing, its memory and speed are the
real shape's (the metric is measured on CPU, ``benchmarks/bench_resident.py``). Then:

1. a 4-trial study with a bf16 base and one with an nf4 base: per trial the method, tokens/s and
   peak GPU memory;
2. resident base weights after loading, fp32, bf16 and nf4 (CUDA memory allocated by the load);
3. a hash of every base tensor before and after 20 trials of mixed methods on the resident bf16 base,
   with each trial's peak GPU memory (flat: nothing accumulates between trials);
4. training tokens/s of autopeft's fit against a plain peft + torch loop on the same batches (LoRA r=8
   on q and v, bf16 base, bf16 autocast, fused AdamW);
5. the tests marked ``gpu``.

Everything printed also goes to ``$OUT/gpu_check.json`` when ``$OUT`` is set.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from common import ROOT, STUDIES, workbench

DATA = STUDIES / "data"
#: SmolLM2-135M-Instruct's shape (its config.json, less what a random model does not need).
SMOLLM2 = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}
FOUND: dict[str, Any] = {}


def say(key: str, value: Any) -> None:
    FOUND[key] = value
    print(f"{key}: {json.dumps(value)}", flush=True)


def study_file(folder: Path, model_dir: Path, examples: int, **model: str) -> Path:
    """A 4-trial causal-LM study of the random SmolLM2 on the Rotten Tomatoes text."""
    lines = [
        "[study]",
        'name = "gpu-check"',
        "n_trials = 4",
        "seed = 0",
        'keep_weights = "none"',
        "[model]",
        f'name = "{model_dir}"',
        *(f'{k} = "{v}"' for k, v in model.items()),
        "[task]",
        'type = "causal-lm"',
        "[data]",
        f'train = "{DATA / "rotten_tomatoes_train.parquet"}"',
        f'validation = "{DATA / "rotten_tomatoes_validation.parquet"}"',
        'text = "text"',
        "max_length = 128",
        f"max_train_examples = {examples}",
        f"max_eval_examples = {examples // 4}",
        "cache_tokens = false",
        "[budget]",
        'max_trainable = "0.5%"',
        "[train]",
        "batch_size = 8",
        "eval_batch_size = 32",
        "[search]",
        'methods = ["lora", "ia3", "unfreeze"]',
    ]
    path = folder / f"study-{'-'.join(model.values()) or 'fp32'}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_studies(folder: Path, model_dir: Path, examples: int, quantized: bool) -> None:
    from autopeft import run_study

    for label, model in [("bf16", {"dtype": "bf16"}), ("nf4", {"quantization": "nf4"})]:
        if label == "nf4" and not quantized:
            say(f"study_{label}", "skipped: needs a CUDA GPU and bitsandbytes")
            continue
        started = time.perf_counter()
        study = run_study(study_file(folder, model_dir, examples, **model), quiet=True)
        rows = [
            {
                "trial": t.number,
                "state": t.state.name,
                "method": t.user_attrs.get("method"),
                "tokens_per_second": round(t.user_attrs.get("tokens_per_second", 0.0)),
                "peak_memory_mb": round(t.user_attrs.get("peak_memory_mb", 0.0)),
            }
            for t in study.trials
        ]
        say(f"study_{label}", {"seconds": round(time.perf_counter() - started, 1), "trials": rows})


def resident_memory(folder: Path, model_dir: Path, examples: int, quantized: bool) -> None:
    """MiB of device memory the base weights hold once loaded, per storage."""
    found = {}
    for label, model in [("fp32", {}), ("bf16", {"dtype": "bf16"}), ("nf4", {"quantization": "nf4"})]:
        if label == "nf4" and not quantized:
            continue
        gc.collect()
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        bench = workbench(study_file(folder, model_dir, examples, **model))
        found[label] = round((torch.cuda.memory_allocated() - before) / 2**20, 1)
        del bench
    ratios = {k: round(v / found["fp32"], 3) for k, v in found.items()}
    say("resident_base_mib", found)
    say("resident_base_vs_fp32", ratios)


def base_hash_check(folder: Path, model_dir: Path, examples: int) -> None:
    import optuna

    from autopeft.training.resident import base_fingerprint
    from autopeft.training.train import Fidelity

    bench = workbench(study_file(folder, model_dir, examples, dtype="bf16"))
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    before = base_fingerprint(bench.base)
    peaks = []
    for seed in range(20):
        name = ["lora", "ia3", "unfreeze"][seed % 3]
        trial = sampler.ask()
        config = bench.enabled[name].suggest(trial, bench.ctx, bench.options[name], bench.budget)
        sampler.tell(trial, 0.0)
        result = bench.fit(name, config, learning_rate=1e-3, seed=seed, fidelity=Fidelity(steps=5))
        peaks.append(round(result.peak_memory_mb))
    say("peak_memory_mb_per_trial", peaks)
    say("base_bit_identical_after_20_trials", base_fingerprint(bench.base) == before)


def throughput(folder: Path, model_dir: Path, examples: int, steps: int) -> None:
    """Training tokens/s: autopeft's fit against a plain peft + torch loop on the same batches."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from autopeft.data import batches
    from autopeft.training.train import Fidelity

    bench = workbench(study_file(folder, model_dir, examples, dtype="bf16"))
    lora = {"ranks": [8] * len(bench.ctx.blocks), "alpha": 2, "targets": "query+value", "variant": "lora"}
    ours = bench.fit("lora", {**lora, "dropout": 0.0}, learning_rate=1e-3, seed=0, fidelity=Fidelity(steps=steps))
    data, pad = bench.data, bench.data.pad_token_id
    del bench
    gc.collect()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    tokens, started = 0, time.perf_counter()
    for step, batch in enumerate(batches(data.train, 8, pad)):
        if step == steps:
            break
        batch = {k: v.to(device) for k, v in batch.items()}
        tokens += int(batch["attention_mask"].sum())
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss  # input_ids, attention_mask, labels: what autopeft's fit gets
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    plain = tokens / (time.perf_counter() - started)
    mine = ours.train_tokens / ours.train_seconds
    say("tokens_per_second", {"autopeft": round(mine), "plain_peft_torch": round(plain)})
    say("autopeft_vs_plain", round(mine / plain, 3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=None, help="training sequences a trial (400 on a GPU)")
    parser.add_argument("--steps", type=int, default=40, help="steps of the throughput comparison")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    examples = args.examples or (400 if gpu else 48)
    try:
        import bitsandbytes  # noqa: F401

        quantized = gpu
    except ImportError:
        quantized = False
    say("device", torch.cuda.get_device_name() if gpu else "cpu")
    from autopeft.testing import save_random_causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        texts = pd.read_parquet(DATA / "rotten_tomatoes_train.parquet")["text"].tolist()
        model_dir = save_random_causal_lm(folder / "smollm2-random", texts, SMOLLM2)
        run_studies(folder, model_dir, examples, quantized)
        if gpu:
            resident_memory(folder, model_dir, examples, quantized)
        base_hash_check(folder, model_dir, examples)
        throughput(folder, model_dir, examples, args.steps)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", str(ROOT / "tests")],
        capture_output=True,
        text=True,
    )
    say("gpu_tests", tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-500:])
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(FOUND, indent=2))


if __name__ == "__main__":
    main()
