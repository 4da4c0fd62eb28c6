"""Time loading a study's data: tokenizing it, against reading the tokenized cache a worker left.

    python benchmarks/bench_token_cache.py [--train-examples 0]

The quickstart's data with every training snippet (``--train-examples 0``) or a subsample: once with
``[data] cache_tokens = false``, once on a cache miss (tokenizes, then writes), then on a hit, as a
second worker of the same study would start.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from common import QUICKSTART as STUDY
from common import study

from autopeft.training.models import load_tokenizer, resolve_model_name
from autopeft.training.token_cache import load_cached_task_data, token_cache_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-examples", type=int, default=0, help="0: every training snippet")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(STUDY.parent / "data", Path(folder) / "data")
        shutil.copy(STUDY, Path(folder) / STUDY.name)
        resolved = study(Path(folder) / STUDY.name)
        data = dataclasses.replace(resolved.config.data, max_train_examples=args.train_examples or None)
        config = dataclasses.replace(resolved.config, data=data)
        source, offline = resolve_model_name(resolved.pm, config.model.name)
        tokenizer = load_tokenizer(config.model, source, offline)
        off = dataclasses.replace(config, data=dataclasses.replace(data, cache_tokens=False))
        timings = {}
        for label, settings in (("no cache", off), ("cache miss (tokenize + write)", config), ("cache hit", config)):
            started = time.perf_counter()
            loaded, hit = load_cached_task_data(settings, tokenizer, resolved.task)
            timings[label] = time.perf_counter() - started
        size = token_cache_path(config, tokenizer).stat().st_size
    examples = len(loaded.train) + len(loaded.validation) + len(loaded.test or [])
    print(f"{examples:,} examples ({len(loaded.train):,} train), cache file {size / 2**20:.1f} MiB")
    for label, seconds in timings.items():
        print(f"{label}: {seconds:.2f} s")
    print(f"a worker finding the cache loads its data {timings['no cache'] / timings['cache hit']:.1f}x faster")


if __name__ == "__main__":
    main()
