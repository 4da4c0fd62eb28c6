"""Study-file validation: every mistake names the field and the fix, on one line, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_study

from autopeft import ConfigError, get_plugin_manager, load_config
from autopeft.cli.command import main
from autopeft.registry import resolve_study


def test_valid_study_loads_with_defaults(study_file: Path) -> None:
    config = load_config(study_file)
    assert config.study.sampler == "tpe" and config.train.epochs == 1
    assert config.storage == f"sqlite:///{study_file.parent.resolve() / 'tiny'}.db"
    assert config.data_path("train.parquet") == str(study_file.parent / "train.parquet")
    assert config.data_path("user/dataset:train") == "user/dataset:train"
    assert config.model.trust_remote_code is False


@pytest.mark.parametrize(
    "sections,field,fix",
    [
        ({"study": {"n_trials": 0}}, "study.n_trials", "n_trials = 20"),
        ({"study": {"n_trails": 3}}, "study.n_trails", "did you mean 'n_trials'"),
        ({"study": {"sampler": "bayes"}}, "study.sampler", "use one of"),
        ({"study": {"storage": "not a url"}}, "study.storage", "sqlite:///"),
        ({"study": {"keep_weights": "best"}}, "study.keep_weights", 'keep_weights = "front"'),
        ({"study": {"artifacts": ""}}, "study.artifacts", "artifacts = "),
        ({"task": {"metric": "auc"}}, "task.metric", "accuracy"),
        ({"data": {"train": "missing.csv"}}, "data.train", "fix the path"),
        ({"data": {"max_length": "long"}}, "data.max_length", "max_length = 128"),
        ({"data": {"text": ["a", "b", "c"]}}, "data.text", "premise"),
        ({"budget": {"max_trainable": -3}}, "budget.max_trainable", "0.5%"),
        ({"train": {"learning_rate": [1e-2, 1e-4]}}, "train.learning_rate", "[1e-5, 1e-2]"),
        ({"train": {"batch_size": 2.5}}, "train.batch_size", "batch_size ="),
        ({"search": {"methods": ["lora"], "lora": {"learning_rate": [0, 1]}}}, "search.lora.learning_rate", "1e-4"),
        ({"search": {"methods": []}}, "search.methods", "autopeft plugins"),
        ({"search": {"methods": ["lora"], "bitfit": {"x": 1}}}, "search.bitfit", "add 'bitfit' to methods"),
        ({"budget": None}, "budget", "add a [budget] table"),
        ({"data": {"validation": None}}, None, None),
    ],
)
def test_config_errors_name_field_and_fix(tmp_path: Path, sections, field, fix) -> None:
    if field is None:  # removing a required key inside a table
        path = write_study(tmp_path)
        path.write_text(path.read_text().replace('validation = "validation.parquet"\n', ""))
        field, fix = "data.validation", "add validation = ... under [data]"
    else:
        path = write_study(tmp_path, **sections)
    with pytest.raises(ConfigError) as info:  # the task's metric is checked once the task plugins are loaded
        resolve_study(load_config(path), get_plugin_manager(autoload=False))
    message = str(info.value)
    assert message.startswith(field) and fix in message and "\n" not in message


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="study file not found"):
        load_config(tmp_path / "nope.toml")


def test_unknown_section_suggests(tmp_path: Path) -> None:
    path = write_study(tmp_path)
    path.write_text(path.read_text() + "[trian]\nepochs = 2\n")
    with pytest.raises(ConfigError, match="trian: unknown section; did you mean 'train'"):
        load_config(path)


def test_unknown_method_option(tmp_path: Path, minilm_available) -> None:
    path = write_study(tmp_path, search={"methods": ["lora"], "lora": {"rank": [4]}})
    assert main(["run", str(path), "--quiet"]) == 2


def test_cli_bad_study_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    path = write_study(tmp_path, task={"metric": "auc"})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "autopeft: error: task.metric: unknown metric 'auc' for task 'sequence-classification'; "
        "use one of ['accuracy', 'f1', 'macro_f1', 'mcc']"
    ]


def test_cli_unknown_method_lists_installed(tmp_path: Path, capsys, minilm_available) -> None:
    path = write_study(tmp_path, search={"methods": ["lorra"]})
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'lorra'" in err[0]
    assert "installed methods: adalora, adapter, bitfit, eva, ia3, lora, prompt, unfreeze" in err[0]


@pytest.mark.parametrize(
    "command",
    [
        ["trials"],
        ["best"],
        ["pareto"],
        ["run", "--quiet"],
        ["confirm", "--quiet"],
        ["export", "--best", "out"],
        ["report", "-o", "r.html"],
        ["dashboard"],
    ],
)
def test_cli_unreachable_database_masks_password(tmp_path: Path, capsys, command) -> None:
    path = write_study(tmp_path)
    url = "postgresql://alice:s3cret@127.0.0.1:1/db"
    assert main([command[0], str(path), *command[1:], "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "alice:***@" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "options,field",
    [
        ({"r": [0, 8]}, "search.lora.r"),
        ({"r": ["eight"]}, "search.lora.r"),
        ({"r": 8}, "search.lora.r"),
        ({"alpha": [-1]}, "search.lora.alpha"),
        ({"dropout": 1.5}, "search.lora.dropout"),
        ({"targets": ["query+vlaue"]}, "search.lora.targets"),
        ({"rank": [8]}, "search.lora.rank"),
    ],
)
def test_lora_options_are_checked(options, field) -> None:
    from autopeft_plugins.lora import Lora

    with pytest.raises(ConfigError) as info:
        Lora().check_options(options)
    assert str(info.value).startswith(field) and "\n" not in str(info.value)


def test_unfreeze_parts_are_checked() -> None:
    from autopeft_plugins.unfreeze import Unfreeze

    assert Unfreeze().check_options({"parts": ["norm"]}) == {"parts": ["norm"]}
    with pytest.raises(ConfigError, match="search.unfreeze.parts: unknown part 'ffn'"):
        Unfreeze().check_options({"parts": ["ffn"]})


def test_every_study_file_field_declares_its_rules() -> None:
    """A field added without a rule beside it fails here: nothing is checked away from its declaration."""
    from dataclasses import fields

    from autopeft.config import _SECTIONS, Rule

    unruled = [
        f"{section}.{f.name}"
        for section, cls in _SECTIONS.items()
        for f in fields(cls)
        if not f.metadata.get("derived") and not all(isinstance(r, Rule) for r in f.metadata.get("rules", [None]))
    ]
    assert unruled == ["search.options"], unruled  # each method checks its own options table


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("data", "cache_tokens", "yes", "data.cache_tokens: must be true or false; e.g. cache_tokens = true"),
        ("train", "batch_size", 0, "train.batch_size: must be a positive integer, got 0; e.g. batch_size = 16"),
        ("study", "keep_weights", "some", "study.keep_weights: must be one of ['front', 'all', 'none'], got 'some'"),
        ("train", "device", "tpu", 'e.g. device = "auto"'),
        ("budget", "max_trainable", "120%", "budget.max_trainable: "),
    ],
)
def test_rule_messages_name_the_field_the_value_and_the_fix(tmp_path: Path, section, key, value, expected) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_study(tmp_path, **{section: {key: value}}))
    assert expected in str(info.value) and "\n" not in str(info.value)
