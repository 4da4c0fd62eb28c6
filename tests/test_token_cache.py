"""Tokenized data cached on disk: a hit equals a fresh tokenization, and any change misses."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
from conftest import write_study

from autopeft import get_plugin_manager, load_config
from autopeft.errors import DataError
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


# -- what loading says about the rows it keeps (issue 27) -------------------------------------------


def _spoil(folder, split: str, rows: dict[int, dict]) -> None:
    """Blank the given cells (row -> {column: None}) of ``split``'s parquet file."""
    frame = pd.read_parquet(folder / f"{split}.parquet")
    for row, cells in rows.items():
        for column, value in cells.items():
            frame.loc[row, column] = value
    frame.to_parquet(folder / f"{split}.parquet")


def test_dropped_rows_are_counted_per_split_and_column_and_survive_the_cache(tmp_path, tokenizer) -> None:
    config = load_config(write_study(tmp_path))
    _spoil(tmp_path, "train", {3: {"text": None}, 7: {"label": None}, 9: {"text": "   ", "label": None}})
    _spoil(tmp_path, "validation", {0: {"label": None}})
    fresh, hit = load_cached_task_data(config, tokenizer, TASK)
    assert not hit and (len(fresh.train), len(fresh.validation)) == (117, 59)
    assert fresh.notes == [
        "autopeft: data.train: dropped 3 of 120 rows of 'train.parquet' with an empty or missing value "
        '(text: 2, label: 2); set data.on_missing = "error" to refuse such a file',
        "autopeft: data.validation: dropped 1 of 60 rows of 'validation.parquet' with an empty or missing value "
        '(label: 1); set data.on_missing = "error" to refuse such a file',
    ]
    cached, hit = load_cached_task_data(config, tokenizer, TASK)
    assert hit and cached.notes == fresh.notes  # a worker that reads the cache says the same


def test_on_missing_error_refuses_the_split_naming_the_first_row(tmp_path, tokenizer) -> None:
    config = load_config(write_study(tmp_path, data={"on_missing": "error"}))
    _spoil(tmp_path, "validation", {4: {"text": None}, 11: {"text": ""}})
    with pytest.raises(DataError) as caught:
        load_cached_task_data(config, tokenizer, TASK)
    assert str(caught.value) == (
        "data.validation: 2 of 60 rows of 'validation.parquet' have an empty or missing value (text: 2), "
        'the first at data row 5; fill in or remove those rows, or set data.on_missing = "drop"'
    )
    (tmp_path / "clean").mkdir()
    clean = load_config(write_study(tmp_path / "clean", data={"on_missing": "error"}))
    assert load_cached_task_data(clean, tokenizer, TASK)[0].notes == []  # complete files: no word, no error


def test_a_configured_class_absent_from_train_is_warned(tmp_path, tokenizer) -> None:
    config = load_config(write_study(tmp_path, data={"labels": [0, 1, 2]}))
    data, _ = load_cached_task_data(config, tokenizer, TASK)
    assert data.label_names == [0, 1, 2]
    assert data.notes == [
        "autopeft: data.train: the class 2 of the labels [0, 1, 2] never occurs in the train split, so the model "
        "cannot learn it; add train examples or remove it from data.labels"
    ]
    both = load_config(write_study(tmp_path, data={"labels": [0, 1, 2, 3]}))
    assert (
        "the classes 2, 3 of the labels [0, 1, 2, 3] never occur"
        in load_cached_task_data(both, tokenizer, TASK)[0].notes[0]
    )


def test_a_validation_split_below_the_minimum_is_warned(tmp_path, tokenizer) -> None:
    from autopeft.data import MIN_VALIDATION_EXAMPLES

    one = load_config(write_study(tmp_path, data={"max_eval_examples": 1}))
    assert load_cached_task_data(one, tokenizer, TASK)[0].notes == [
        f"autopeft: data.validation: only 1 example, fewer than the minimum of {MIN_VALIDATION_EXAMPLES}: its "
        "metric is mostly noise and the best trial wins by chance; add validation examples (each trial's line "
        "shows its standard error)"
    ]
    at = load_config(write_study(tmp_path, data={"max_eval_examples": MIN_VALIDATION_EXAMPLES}))
    assert load_cached_task_data(at, tokenizer, TASK)[0].notes == []


def test_a_column_named_twice_is_one_line_before_and_while_loading(tmp_path, tokenizer) -> None:
    from autopeft.training.data_files import check_columns

    (tmp_path / "train.csv").write_text("text,label,label\ngood,1,1\nbad,0,0\nfine,1,0\n")
    config = load_config(write_study(tmp_path, data={"train": "train.csv"}))
    expected = (
        "data.train: column 'label' appears 2 times (columns: text, label, label); rename or remove the extra "
        "ones, so that each column name is unique"
    )
    with pytest.raises(DataError) as before_the_model:
        check_columns(config, TASK.columns(config.data))
    with pytest.raises(DataError) as loading:
        load_cached_task_data(config, tokenizer, TASK)
    assert str(before_the_model.value) == str(loading.value) == expected
    (tmp_path / "train.csv").write_text("text,label,extra,extra\ngood,1,a,b\nbad,0,c,d\n")  # not a column it reads
    assert len(load_cached_task_data(config, tokenizer, TASK)[0].train) == 2
