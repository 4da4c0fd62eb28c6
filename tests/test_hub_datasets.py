"""`[data] dataset`, `subset`, `revision` and split slices, through HF `datasets`, tested offline on a
local `datasets` repository folder with two configurations (what a hub dataset such as GLUE is)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import DATA, workbench_for, write_study

from autopeft import load_config
from autopeft.errors import ConfigError
from autopeft.training.data_files import load_split

_CARD = """---
configs:
- config_name: sentiment
  data_files:
  - split: train
    path: sentiment/train.csv
  - split: validation
    path: sentiment/validation.csv
- config_name: other
  data_files:
  - split: train
    path: other/train.csv
---
"""


def _repository(folder) -> None:
    """A `datasets` repository folder: a card naming two configurations, CSV files with extra columns."""
    repo = folder / "reviews"
    for config, split, rows in (("sentiment", "train", 100), ("sentiment", "validation", 40), ("other", "train", 10)):
        (repo / config).mkdir(parents=True, exist_ok=True)
        frame = pd.read_parquet(DATA / f"rotten_tomatoes_{split}.parquet").head(rows)
        frame.assign(sentence=frame["text"], source=config)[["sentence", "label", "source"]].to_csv(
            repo / config / f"{split}.csv", index=False
        )
    (repo / "README.md").write_text(_CARD)


def _study(folder, **data):
    _repository(folder)
    values = {"dataset": "reviews", "subset": "sentiment", "text": "sentence"} | data
    return load_config(write_study(folder, data=values))


def test_a_configuration_and_split_slices_are_read(tmp_path) -> None:
    config = _study(tmp_path, train="train[:90%]", validation="train[90%:]", test="validation")
    train, validation, test = (load_split(config, key) for key in ("train", "validation", "test"))
    assert (train.num_rows, validation.num_rows, test.num_rows) == (90, 10, 40)
    assert set(train.column("source").to_pylist()) == {"sentiment"}
    (tmp_path / "other").mkdir()
    other = _study(tmp_path / "other", subset="other", train="train")
    assert load_split(other, "train").num_rows == 10


def test_the_revision_is_passed_to_datasets(tmp_path, monkeypatch) -> None:
    import datasets

    seen = {}
    real = datasets.load_dataset

    def load(path, name=None, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(path=path, name=name, **kwargs)
        return real(path, name, split=kwargs["split"])  # a local folder has no revisions to choose from

    monkeypatch.setattr(datasets, "load_dataset", load)
    config = _study(tmp_path, revision="v1.0", train="train[:50%]")
    assert load_split(config, "train").num_rows == 50
    assert seen["name"] == "sentiment" and seen["revision"] == "v1.0" and seen["split"] == "train[:50%]"
    assert seen["path"] == str((tmp_path / "reviews").resolve())


def test_a_study_trains_on_a_hub_style_dataset(tmp_path, minilm_available) -> None:
    bench = workbench_for(_study(tmp_path, train="train[:80%]", validation="train[80%:]", test="validation"))
    assert (len(bench.data.train), len(bench.data.validation), len(bench.data.test)) == (80, 20, 40)
    lora = {"ranks": [4, 4], "alpha": 2, "targets": "query+value", "variant": "lora", "dropout": 0.0}
    assert 0.0 <= bench.fit("lora", lora, learning_rate=3e-3, seed=0).metric <= 1.0


@pytest.mark.parametrize("key", ["subset", "revision"])
def test_subset_or_revision_without_a_dataset_is_an_error(tmp_path, key) -> None:
    with pytest.raises(ConfigError, match=rf"^data.{key}: is only read with data.dataset; add dataset = "):
        load_config(write_study(tmp_path, data={key: "x"}))
