"""`autopeft init`: a study file from a model and data files that `autopeft plan` accepts, on the
quickstart data and on a CSV with string labels and extra columns."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import DATA

from autopeft import load_config
from autopeft.cli.command import main
from autopeft.cli.init import detect_columns, write_study_file

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def test_the_quickstart_data_gives_a_study_plan_accepts(tmp_path, capsys, monkeypatch, minilm_available) -> None:
    shutil.copytree(DATA, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    args = ["init", "--model", MODEL, "--train", "data/rotten_tomatoes_train.parquet"]
    args += ["--validation", "data/rotten_tomatoes_validation.parquet", "--out", "studies/sentiment.toml"]
    (tmp_path / "studies").mkdir()
    assert main(args) == 0
    assert "wrote studies/sentiment.toml" in capsys.readouterr().out
    text = (tmp_path / "studies" / "sentiment.toml").read_text()
    assert "# 2 classes in 'label': 0, 1" in text and "22,713,986 parameters" in text
    config = load_config(tmp_path / "studies" / "sentiment.toml")  # paths relative to the study file
    assert config.data.train == "../data/rotten_tomatoes_train.parquet" and config.data.text == "text"
    assert config.data.label == "label" and config.task.metric == "accuracy" and config.budget.max_trainable == "0.5%"
    assert main(["plan", "studies/sentiment.toml"]) == 0
    assert "budget 114k (0.5%)" in capsys.readouterr().out
    assert main(args) == 2  # never overwritten
    assert "exists" in capsys.readouterr().err


def test_string_labels_and_extra_columns_are_told_apart(tmp_path, capsys, minilm_available) -> None:
    frame = pd.read_parquet(DATA / "rotten_tomatoes_train.parquet").head(300)
    rows = pd.DataFrame(
        {
            "id": range(len(frame)),
            "review": frame["text"],
            "verdict": frame["category"],  # "fresh" / "rotten"
            "movie": frame["movie_name"],
            "score": [0.5] * len(frame),
        }
    )
    rows.iloc[:200].to_csv(tmp_path / "train.csv", index=False)
    rows.iloc[200:].to_csv(tmp_path / "valid.csv", index=False)
    found = detect_columns(str(tmp_path / "train.csv"))
    assert (found.text, found.label, found.classes) == ("review", "verdict", ["fresh", "rotten"])
    out = tmp_path / "reviews.toml"
    args = [
        "init",
        "--model",
        MODEL,
        "--train",
        str(tmp_path / "train.csv"),
        "--validation",
        str(tmp_path / "valid.csv"),
    ]
    assert main([*args, "--budget", "50k", "-o", str(out)]) == 0
    config = load_config(out)
    assert (config.data.text, config.data.label, config.budget.max_trainable) == ("review", "verdict", "50k")
    assert main(["plan", str(out)]) == 0
    assert "2 classes (fresh, rotten)" in capsys.readouterr().out


def test_a_named_column_that_is_not_there_is_one_line(tmp_path, capsys) -> None:
    pd.DataFrame({"text": ["a b c", "d e f"], "label": [0, 1]}).to_csv(tmp_path / "t.csv", index=False)
    code = main(
        [
            "init",
            "--model",
            MODEL,
            "--train",
            str(tmp_path / "t.csv"),
            "--validation",
            str(tmp_path / "t.csv"),
            "--text",
            "body",
            "--out",
            str(tmp_path / "s.toml"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--text: no column 'body' (columns: text, label)" in err[0]
    assert not Path(tmp_path / "s.toml").exists()


def test_interactive_answers_replace_the_guesses(tmp_path, monkeypatch, minilm_available) -> None:

    pd.DataFrame({"a": ["x y z"] * 4, "b": ["short"] * 4, "c": [0, 1, 0, 1]}).to_csv(tmp_path / "t.csv", index=False)
    answers = iter(["b", "c", "1%"])
    questions: list[str] = []

    def ask(question: str, default: str) -> str:
        questions.append(f"{question} [{default}]")
        return next(answers)

    out = write_study_file(
        tmp_path / "s.toml", model=MODEL, train=str(tmp_path / "t.csv"), validation=str(tmp_path / "t.csv"), ask=ask
    )
    assert questions[0].endswith("[a]") and questions[1].endswith("[c]")
    config = load_config(out)
    assert (config.data.text, config.data.label, config.budget.max_trainable) == ("b", "c", "1%")


@pytest.mark.parametrize("rows", [{"text": ["only text", "no labels"]}])
def test_no_label_column_is_a_language_model_study(tmp_path, rows) -> None:
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    found = detect_columns(str(tmp_path / "t.csv"))
    assert found.label is None and found.classes == []


@pytest.mark.parametrize("form", ["messages", "pairs"])
def test_chat_and_prompt_completion_data_give_an_instruction_study(tmp_path, form) -> None:
    import json

    from autopeft.testing import save_random_causal_lm

    model = save_random_causal_lm(tmp_path / "model", ["hello hi"], chat=True)
    if form == "messages":
        row = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}], "id": 1}
    else:
        row = {"prompt": "hello", "completion": "hi", "id": 1}
    (tmp_path / "t.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    found = detect_columns(str(tmp_path / "t.jsonl"))
    assert found.instruction and found.label is None
    out = write_study_file(
        tmp_path / "s.toml", model=str(model), train=str(tmp_path / "t.jsonl"), validation=str(tmp_path / "t.jsonl")
    )
    config = load_config(out)
    assert config.task.type == "instruction" and config.task.metric == "loss"
    assert config.data.text == ("messages" if form == "messages" else ["prompt", "completion"])
