"""Tokenized data cached on disk: a hit equals a fresh tokenization, and any change misses."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from conftest import write_study

from autopeft import get_plugin_manager, load_config
from autopeft.training.models import load_tokenizer, resolve_model_name
from autopeft.training.token_cache import load_cached_task_data, token_cache_path
from autopeft_plugins.tasks import SequenceClassification

TASK = SequenceClassification()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, minilm_available):
    model = load_config(write_study(tmp_path_factory.mktemp("tokenizer"))).model
    source, offline = resolve_model_name(get_plugin_manager(autoload=False), model.name)
    return load_tokenizer(model, source, offline)


def test_a_hit_equals_a_fresh_tokenization(tmp_path, tokenizer) -> None:
    config = load_config(write_study(tmp_path, data={"labels": [1, 0]}))
    fresh, hit = load_cached_task_data(config, tokenizer, TASK)
    assert not hit and token_cache_path(config, tokenizer).is_file()
    cached, hit = load_cached_task_data(config, tokenizer, TASK)
    assert hit
    assert cached == fresh  # features, labels, label names and padding id, value for value
    assert cached.label_names == [1, 0] and cached.test is None


def test_any_change_to_what_decides_the_tokens_misses(tmp_path, tokenizer) -> None:
    config = load_config(write_study(tmp_path))
    first = token_cache_path(config, tokenizer)
    load_cached_task_data(config, tokenizer, TASK)
    shorter = dataclasses.replace(config, data=dataclasses.replace(config.data, max_length=16))
    reseeded = dataclasses.replace(config, study=dataclasses.replace(config.study, seed=7))
    assert token_cache_path(shorter, tokenizer) != first
    assert token_cache_path(reseeded, tokenizer) != first
    frame = pd.read_parquet(tmp_path / "train.parquet")
    frame.iloc[:100].to_parquet(tmp_path / "train.parquet")  # the data file changed under the same name
    assert token_cache_path(config, tokenizer) != first
    data, hit = load_cached_task_data(config, tokenizer, TASK)
    assert not hit and len(data.train) == 100


def test_a_damaged_file_is_rewritten_and_the_switch_turns_it_off(tmp_path, tokenizer) -> None:
    config = load_config(write_study(tmp_path))
    path = token_cache_path(config, tokenizer)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an archive")
    data, hit = load_cached_task_data(config, tokenizer, TASK)
    assert not hit and len(data.train) == 120
    assert load_cached_task_data(config, tokenizer, TASK)[1]  # rewritten: the next load hits

    (tmp_path / "off").mkdir()
    off = load_config(write_study(tmp_path / "off", data={"cache_tokens": False}))
    assert load_cached_task_data(off, tokenizer, TASK) == (data, False)
    assert not token_cache_path(off, tokenizer).parent.exists()


def test_per_token_labels_round_trip(tmp_path, tokenizer) -> None:
    """A language model's labels (one per token) come back from the cache as they went in."""
    from autopeft_plugins.tasks import CausalLanguageModelling

    config = load_config(write_study(tmp_path, task={"type": "causal-lm", "metric": ""}))
    fresh, hit = load_cached_task_data(config, tokenizer, CausalLanguageModelling())
    cached, hit_again = load_cached_task_data(config, tokenizer, CausalLanguageModelling())
    assert (hit, hit_again) == (False, True)
    assert cached == fresh and isinstance(cached.train.labels[0], list)
    assert token_cache_path(config, tokenizer) != token_cache_path(load_config(write_study(tmp_path)), tokenizer)
