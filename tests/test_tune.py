"""autopeft.tune: in-memory data, a loaded model, your own training function, the study file it
writes, and the Trainer and SFTTrainer integrations, on the two-block MiniLM and a tiny chat Llama."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
import torch
from conftest import DATA

import autopeft
from autopeft.errors import ConfigError, FitError, ModelError
from autopeft.integrations.transformers import PaddingCollator
from autopeft.search.study import run_study

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SMALL = {"model": {"overrides": {"num_hidden_layers": 2}}}
FAST = {"race": False, "max_length": 32, "batch_size": 16, "methods": ["lora"], "settings": SMALL}


def _frame(split: str, rows: int) -> pd.DataFrame:
    return pd.read_parquet(DATA / f"rotten_tomatoes_{split}.parquet").head(rows)


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return _frame("train", 64), _frame("validation", 40)


def one_step_fit(model, tokenizer, train, validation, learning_rate, max_steps, seed, report) -> float:
    """A user's training loop in plain PyTorch: one step on eight examples, a made-up score."""
    batch = PaddingCollator(tokenizer.pad_token_id)([train[i] for i in range(8)])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    model(**batch).loss.backward()
    optimizer.step()
    return 0.5 + learning_rate


def _states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def test_tune_from_dataframes_recommends_resumes_and_reuses_unchanged_data(
    tmp_path: Path, frames, minilm_available
) -> None:
    train, validation = frames
    result = autopeft.tune(MODEL, train, validation, n_trials=1, folder=tmp_path, quiet=True, **FAST)
    chosen = result.recommended
    assert chosen is not None and chosen["method"] == "lora" and 0.0 <= chosen["accuracy"] <= 1.0
    assert list(result.trials["state"]) == ["COMPLETE"] and "learning_rate" in result.trials.columns
    assert [p["trial"] for p in result.front] == [chosen["trial"]]
    config = result.peft_config()
    assert type(config).__name__ == "LoraConfig" and config.target_modules and config.task_type == "SEQ_CLS"
    files = sorted(p.name for p in (tmp_path / "data").iterdir())

    again = autopeft.tune(MODEL, train, validation, n_trials=2, folder=tmp_path, quiet=True, **FAST)
    assert len(again.study.trials) == 2  # the same study, one trial more
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == files  # unchanged data: the same files

    changed = train.copy()
    changed.loc[0, "text"] = "an entirely new review"
    autopeft.tune(MODEL, changed, validation, n_trials=2, folder=tmp_path, quiet=True, **FAST)
    assert len(list((tmp_path / "data").glob("train-*.parquet"))) == 2  # a changed row: a new file, new tokens


def test_a_study_made_in_python_is_continued_from_the_study_file_it_writes(
    tmp_path: Path, frames, minilm_available
) -> None:
    train, validation = frames
    result = autopeft.tune(
        MODEL, train, validation, n_trials=1, fit=one_step_fit, folder=tmp_path / "py", quiet=True, **FAST
    )
    path = result.to_toml(tmp_path / "cli")
    text = path.read_text()
    assert 'fit = "test_tune:one_step_fit"' in text and "data/train-" in text
    study = run_study(path, n_trials=2, quiet=True)  # what `autopeft run` on the written file does
    assert _states(study) == ["COMPLETE", "COMPLETE"]
    assert all(t.value is not None and t.value > 0.5 for t in study.trials)  # trained by the user's fit


def test_in_memory_data_without_the_text_column_names_the_argument_and_trains_nothing(tmp_path: Path, frames) -> None:
    train, validation = frames
    with pytest.raises(ConfigError, match=r"^train: has no column 'text' .*text=\.\.\."):
        autopeft.tune(MODEL, train.rename(columns={"text": "review"}), validation, folder=tmp_path, quiet=True, **FAST)
    assert not list(tmp_path.glob("*.db"))


def test_a_loaded_model_needs_its_tokenizer_and_the_task_head(tmp_path: Path, frames, minilm_available) -> None:
    from transformers import AutoModel, AutoTokenizer

    from autopeft.registry import get_plugin_manager
    from autopeft.training.models import resolve_model_name

    train, validation = frames
    source, _ = resolve_model_name(get_plugin_manager(), MODEL)
    bare = AutoModel.from_pretrained(source, num_hidden_layers=2)
    with pytest.raises(ConfigError, match=r"^tokenizer: a loaded BertModel needs its tokenizer"):
        autopeft.tune(bare, train, validation, folder=tmp_path, quiet=True, **FAST)
    with pytest.raises(
        ModelError, match=r"AutoModelForSequenceClassification\.from_pretrained\(\.\.\.\) with num_labels=2"
    ):
        autopeft.tune(
            bare,
            train,
            validation,
            tokenizer=AutoTokenizer.from_pretrained(source),
            folder=tmp_path,
            quiet=True,
            **FAST,
        )


def test_a_loaded_model_is_searched_in_place_and_given_back_bit_identical(
    tmp_path: Path, frames, minilm_available
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from autopeft.registry import get_plugin_manager
    from autopeft.training.models import resolve_model_name

    train, validation = frames
    source, _ = resolve_model_name(get_plugin_manager(), MODEL)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_hidden_layers=2, num_labels=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = autopeft.tune(
        model,
        train,
        validation,
        tokenizer=AutoTokenizer.from_pretrained(source),
        n_trials=1,
        fit=one_step_fit,
        folder=tmp_path,
        quiet=True,
        **FAST,
    )
    assert _states(result.study) == ["COMPLETE"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.config.id2label == {0: "0", 1: "1"}


@pytest.mark.parametrize("returned", [None, float("nan"), "0.9"])
def test_a_fit_that_returns_no_number_stops_the_search_at_its_first_trial(
    tmp_path: Path, frames, returned: Any, minilm_available
) -> None:
    def fit(*args: Any) -> Any:
        one_step_fit(*args)
        return returned

    train, validation = frames
    with pytest.raises(
        FitError, match=r"^fit: returned .*; return the study's metric on the validation split as a finite float"
    ):
        autopeft.tune(MODEL, train, validation, n_trials=3, fit=fit, folder=tmp_path, quiet=True, **FAST)
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{tmp_path / 'tune.db'}")
    assert [s for s in _states(study) if s != "WAITING"] == ["FAIL"]  # the queued defaults never started
    assert "returned" in study.trials[0].user_attrs["error"]


def test_a_fit_that_raises_fails_its_trial_and_the_study_goes_on(tmp_path: Path, frames, minilm_available) -> None:
    calls: list[int] = []

    def fit(*args: Any) -> float:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("my trainer broke")
        return one_step_fit(*args)

    train, validation = frames
    result = autopeft.tune(MODEL, train, validation, n_trials=1, fit=fit, folder=tmp_path, quiet=True, **FAST)
    assert _states(result.study) == ["FAIL", "COMPLETE"]
    assert result.study.trials[0].user_attrs["error"] == "RuntimeError: my trainer broke"


def test_a_fit_that_changes_a_frozen_weight_fails_its_trial_naming_the_tensor(
    tmp_path: Path, frames, minilm_available
) -> None:
    calls: list[int] = []

    def fit(model, *args: Any) -> float:
        calls.append(1)
        if len(calls) == 1:
            frozen = next(p for n, p in model.named_parameters() if not p.requires_grad and "embeddings" in n)
            with torch.no_grad():
                frozen.add_(1.0)
        return one_step_fit(model, *args)

    train, validation = frames
    result = autopeft.tune(MODEL, train, validation, n_trials=1, fit=fit, folder=tmp_path, quiet=True, **FAST)
    assert _states(result.study) == ["FAIL", "COMPLETE"]  # the base loaded again: the study went on
    error = result.study.trials[0].user_attrs["error"]
    assert "fit changed the frozen base weight" in error and "embeddings" in error


def test_a_search_trained_by_the_transformers_trainer_prunes_a_trial(tmp_path: Path, frames, minilm_available) -> None:
    from transformers import TrainingArguments

    from autopeft.integrations.transformers import trainer_fit

    scores = iter([0.9, 0.9] + [0.0] * 100)  # the first trial scores well; the rest fall below its median

    def made_up_accuracy(prediction: Any) -> dict[str, float]:
        assert prediction.predictions.shape[-1] == 2  # the real Trainer's predictions of the real model
        return {"accuracy": next(scores)}

    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        per_device_train_batch_size=16,
        eval_strategy="steps",
        eval_steps=2,
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    fit = trainer_fit(args, compute_metrics=made_up_accuracy, metric="eval_accuracy")
    result = autopeft.tune(
        MODEL,
        *frames,
        n_trials=2,
        fit=fit,
        folder=tmp_path,
        quiet=True,
        pruner="median",
        pruner_startup_trials=1,
        pruner_min_steps=0,
        **FAST,
    )
    states = _states(result.study)
    assert states.count("COMPLETE") == 1 and states.count("PRUNED") == 1
    pruned = next(t for t in result.study.trials if t.state.name == "PRUNED")
    assert pruned.user_attrs["steps_saved"] > 0  # the callback stopped the Trainer early
    assert not (tmp_path / "trainer").exists() or not any((tmp_path / "trainer").rglob("*.safetensors"))


def test_a_search_trained_by_trl_sft_trainer_on_chats_prunes_a_trial(tmp_path: Path) -> None:
    from test_instruction import REVIEWS, WORDS, _messages
    from trl import SFTConfig  # the test extra installs it

    from autopeft.integrations.trl import sft_fit
    from autopeft.testing import save_random_causal_lm

    model = save_random_causal_lm(tmp_path / "model", [" ".join(WORDS)], chat=True)
    chats = pd.DataFrame({"messages": [_messages(r, a) for r, a in REVIEWS * 6]})
    scores = iter([0.1, 0.1] + [10.0] * 100)  # the first trial's evaluations score well; the rest worse

    def made_up_loss(prediction: Any) -> dict[str, float]:
        assert prediction.predictions.ndim == 3  # the real SFTTrainer's logits of the real model
        return {"score": next(scores)}

    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        per_device_train_batch_size=4,
        eval_strategy="steps",
        eval_steps=2,
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        gradient_checkpointing=False,
        bf16=False,
    )
    fit = sft_fit(args, metric="eval_score", compute_metrics=made_up_loss)
    returned: list[float] = []

    def recorded(*a: Any) -> float:
        returned.append(fit(*a))
        return returned[-1]

    result = autopeft.tune(
        str(model),
        chats,
        chats.head(8),
        task="instruction",
        budget="5%",
        metric="loss",
        text="messages",
        n_trials=2,
        fit=recorded,
        folder=tmp_path / "study",
        quiet=True,
        race=False,
        methods=["lora"],
        batch_size=4,
        pruner="median",
        pruner_startup_trials=1,
        pruner_min_steps=0,
    )
    states = _states(result.study)
    assert states.count("COMPLETE") == 1 and states.count("PRUNED") == 1
    complete = next(t for t in result.study.trials if t.state.name == "COMPLETE")
    assert complete.value == pytest.approx(returned[0]) and math.isfinite(complete.value)
    pruned = next(t for t in result.study.trials if t.state.name == "PRUNED")
    assert pruned.user_attrs["steps_saved"] > 0  # the callback stopped SFTTrainer early


def test_sft_fit_refuses_packing() -> None:
    from trl import SFTConfig  # the test extra installs it

    from autopeft.integrations.trl import sft_fit

    with pytest.raises(ConfigError, match="packing"):
        sft_fit(SFTConfig(output_dir="unused", packing=True, use_cpu=True, bf16=False))


def test_an_interrupt_returns_the_result_so_far_with_the_trial_queued_again(
    tmp_path: Path, frames, minilm_available
) -> None:
    def fit(*args: Any) -> float:
        raise KeyboardInterrupt  # what a kernel interrupt raises in the middle of a trial

    result = autopeft.tune(MODEL, *frames, n_trials=2, fit=fit, folder=tmp_path, quiet=True, **FAST)
    assert result.interrupted is not None and "trial 0" in result.interrupted
    trial = result.study.trials[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["error"] == "interrupted (Ctrl-C or SIGTERM)"
    assert "WAITING" in _states(result.study)  # queued again: the next tune resumes with it


def test_a_study_file_fit_that_cannot_be_imported_is_one_line(tmp_path: Path) -> None:
    from conftest import write_study

    from autopeft.config import load_config
    from autopeft.registry import resolve_study

    config = load_config(write_study(tmp_path, train={"fit": "no_such_module:fit"}))
    with pytest.raises(ConfigError, match=r"^train\.fit: cannot import 'no_such_module:fit' \(ModuleNotFoundError"):
        resolve_study(config)
    with pytest.raises(ConfigError, match=r'^train\.fit: must be "module:function"'):
        load_config(write_study(tmp_path, train={"fit": "not a function name"}))


def test_a_study_written_by_study_toml_reads_back_as_the_same_config() -> None:
    from conftest import ROOT

    from autopeft.config import config_from_dict, load_config, study_toml, tomllib

    path = ROOT / "studies" / "quickstart.toml"
    raw = tomllib.loads(path.read_text())
    raw["data"]["label"] = 'odd\x7f"label'  # DEL and a quote: escaped as TOML wants
    raw["search"]["lora"] = {"learning_rate": [1e-4, 1e-2]}
    raw["search"]["methods"] = ["lora", "bitfit"]
    again = config_from_dict(tomllib.loads(study_toml(raw)), path)
    assert again == config_from_dict(raw, path)
    assert again.data.label == 'odd\x7f"label' and again.search.options["lora"]["learning_rate"] == [1e-4, 1e-2]
    assert config_from_dict(tomllib.loads(path.read_text()), path) == load_config(path)


def test_workers_read_in_memory_data_from_the_study_file_tune_writes_first(
    tmp_path: Path, frames, monkeypatch, capsys, minilm_available
) -> None:
    import os

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("AUTOPEFT_TEST_MARKS", str(tmp_path / "marks"))  # held_fit: both workers take a trial
    result = autopeft.tune(MODEL, *frames, n_trials=2, fit="held_fit:fit", folder=tmp_path, workers=2, **FAST)
    assert "2 workers read the study from" in capsys.readouterr().out
    text = (tmp_path / "tune.toml").read_text()
    assert 'train = "data/train-' in text and 'fit = "held_fit:fit"' in text
    complete = [t for t in result.study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and len({t.user_attrs["worker"] for t in complete}) == 2
