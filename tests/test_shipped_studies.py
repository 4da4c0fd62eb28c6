"""The study files shipped in studies/ load, and their data is what their comments and the data README say."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from conftest import ROOT

from autopeft import load_config

STUDIES = sorted((ROOT / "studies").glob("*.toml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_shipped_study_loads_and_names_data_that_is_there(path) -> None:
    config = load_config(path)
    assert config.study.name == path.stem
    for split in (config.data.train, config.data.validation, config.data.test):
        if split is not None and not config.data.dataset:
            assert (path.parent / split).is_file(), split


def test_the_debates_task_has_three_string_classes_and_over_200_steps_a_training() -> None:
    config = load_config(ROOT / "studies" / "debates.toml")
    frames = {
        s: pd.read_parquet(ROOT / "studies" / "data" / f"debates_{s}.parquet") for s in ("train", "validation", "test")
    }
    for frame in frames.values():
        assert set(frame["label"]) == {"democrat", "republican", "moderator"}
        assert frame["text"].str.split().str.len().between(4, 50).all()
    assert [len(f) for f in frames.values()] == [2000, 619, 596]  # the data README's table
    texts = [set(f["text"]) for f in frames.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])  # no sentence in two splits
    steps = math.ceil(len(frames["train"]) / config.train.batch_size) * config.train.epochs
    assert steps >= 200 and config.task.metric == "macro_f1"


def test_the_review_chats_are_one_turn_questions_answered_in_one_word() -> None:
    import json

    splits = {
        s: [json.loads(line)["messages"] for line in (ROOT / "studies" / "data" / f"review_chat_{s}.jsonl").open()]
        for s in ("train", "validation", "test")
    }
    assert [len(rows) for rows in splits.values()] == [800, 200, 400]  # the data README's table
    for rows in splits.values():
        assert all([t["role"] for t in turns] == ["user", "assistant"] for turns in rows)
        assert {turns[1]["content"] for turns in rows} == {"fresh", "rotten"}
    shares = [sum(t[1]["content"] == "fresh" for t in rows) / len(rows) for rows in splits.values()]
    assert [round(s, 3) for s in shares] == [0.54, 0.605, 0.665]
    config = load_config(ROOT / "studies" / "smollm2-instruct.toml")
    assert config.task.type == "instruction" and config.task.metric == "exact_match" and config.data.text == "messages"
