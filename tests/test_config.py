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

    from autopeft.config import SECTIONS, Rule

    unruled = [
        f"{section}.{f.name}"
        for section, cls in SECTIONS.items()
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


@pytest.mark.parametrize(
    ("content", "problem", "fix"),
    [
        (
            '[study]\nname = "x"\n'.encode("utf-16"),
            "is UTF-16 text, and a study file is UTF-8 TOML",
            "save it as UTF-8",
        ),
        (
            '[study]\nname = "x"\n'.encode("utf-16-le"),
            "is UTF-16 text",
            "iconv -f UTF-16 -t UTF-8 s.toml > s-utf8.toml",
        ),
        ('[study]\nname = "x"\n'.encode("utf-32"), "is UTF-32 text", "save it as UTF-8"),
        (
            b"\x7fELF\x02\x01\x01\x00\x00\x00",
            "is a binary file, not a TOML study file (a NUL byte at offset 7)",
            ".toml",
        ),
        (b'[study]\nname = "caf\xe9"\n', "is not UTF-8 text: byte 0xe9 at line 2, column 12 (offset 19)", "UTF-8"),
    ],
)
def test_a_study_file_in_another_encoding_or_binary_names_what_it_is(tmp_path: Path, content, problem, fix) -> None:
    """Not "fix the syntax at the position shown" with no position: what the file is, and how to fix it."""
    path = tmp_path / "s.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {problem}") and fix in message and "\n" not in message, message
    assert "fix the syntax" not in message


def test_a_utf8_byte_order_mark_is_read_as_utf8(tmp_path: Path) -> None:
    path = write_study(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # what Windows editors write
    assert load_config(path).study.name == "tiny"
    path.write_bytes(b"\xef\xbb\xbf[study\n")
    with pytest.raises(
        ConfigError, match=r"not valid TOML \(.*\(at line 1, column 7\)\); fix the syntax at the position shown"
    ):
        load_config(path)


@pytest.mark.parametrize(
    ("key", "value", "fix"),
    [
        ("trust_remote_code", True, "remove it from overrides and set trust_remote_code = true under [model] instead"),
        ("trust_remote_code", False, "set trust_remote_code = false under [model]"),
        ("revision", "main", 'set revision = "..." under [model]'),
        ("torch_dtype", "bfloat16", 'set dtype = "bf16"'),
        ("device_map", "auto", 'set device_map = "auto" under [model]'),
        ("local_files_only", True, "HF_HUB_OFFLINE=1"),
        ("num_labels", 3, "set labels = [...] under [data]"),
    ],
)
def test_an_override_autopeft_sets_itself_names_its_setting(tmp_path: Path, capsys, key, value, fix) -> None:
    """Not "got multiple values for keyword argument ...; install its offline package": the setting to use."""
    path = write_study(tmp_path, model={"overrides": {"num_hidden_layers": 2, key: value}})
    assert main(["best", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"autopeft: error: model.overrides: {key!r} is not a config override"), (
        err
    )
    assert fix in err[0] and "multiple values" not in err[0] and "install" not in err[0], err[0]
    assert not (tmp_path / "tiny.db").exists()


def test_an_override_passed_twice_by_a_task_plugin_is_one_line(tmp_path: Path, minilm_available) -> None:
    """A key the task's own load_model passes (not one autopeft knows) is caught where the model loads."""
    from autopeft.config import ModelSection
    from autopeft.training.models import load_base_model, resolve_model_name
    from autopeft_plugins.tasks import SequenceClassification

    class Pinned(SequenceClassification):
        def load_model(self, source, label_names, **kwargs):
            return super().load_model(source, label_names, output_hidden_states=False, **kwargs)

    section = ModelSection(name="sentence-transformers/all-MiniLM-L6-v2", overrides={"output_hidden_states": True})
    source, offline = resolve_model_name(get_plugin_manager(autoload=False), section.name)
    with pytest.raises(ConfigError) as info:
        load_base_model(section, source, offline, Pinned(), ["a", "b"], 0)
    message = str(info.value)
    assert message.startswith("model.overrides: 'output_hidden_states' reached from_pretrained twice"), message
    assert message.endswith("remove output_hidden_states from overrides") and "install" not in message
