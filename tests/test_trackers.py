"""Trackers: every finished trial as one run, read back through each tracker's own client or files:
MLflow's client on an SQLite tracking store, W&B's offline run folders, TensorBoard's event files."""

from __future__ import annotations

import json

import pytest
from conftest import write_study

from autopeft import load_config, run_study
from autopeft.errors import ConfigError


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, minilm_available):
    import os

    folder = tmp_path_factory.mktemp("tracked")
    before = {key: os.environ.get(key) for key in ("WANDB_MODE", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")  # W&B never reaches its servers here
    path = write_study(
        folder,
        study={"n_trials": 3, "trackers": ["mlflow", "wandb", "tensorboard"]},
        data={"max_train_examples": 32, "max_eval_examples": 16},
        train={"batch_size": 8},
    )
    try:
        yield folder, run_study(path, quiet=True)
    finally:
        for key, value in before.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def test_mlflow_has_a_study_run_with_one_nested_run_per_trial(tracked) -> None:
    from mlflow.tracking import MlflowClient

    folder, study = tracked
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'tiny.mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.data.tags.get("autopeft.study") == "tiny"]
    trials = {int(r.data.tags["autopeft.trial"]): r for r in runs if "autopeft.trial" in r.data.tags}
    assert len(parent) == 1 and sorted(trials) == [t.number for t in study.trials]
    for t in study.trials:
        run = trials[t.number]
        assert run.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert (
            run.data.params["method"] == t.user_attrs["method"] and run.data.params["config"] == t.user_attrs["config"]
        )
        assert run.data.metrics["trainable_params"] == t.user_attrs["trainable_params"]
        if t.values:
            assert run.data.metrics["accuracy"] == pytest.approx(t.values[0])
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in losses] == [s for s, _ in t.user_attrs["loss_curve"]] and len(losses) == 4


def _wandb_log(path) -> list:
    """The records of a W&B run's transaction log (``run-<id>.wandb``: what ``wandb sync`` uploads),
    a LevelDB-style log of protobuf records: 7-byte header, 32 KiB blocks, records split in chunks."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, chunks, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # the rest of the block is padding
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_offline_runs_hold_the_config_summary_and_loss(tracked) -> None:
    folder, study = tracked
    logs = sorted((folder / "tiny.wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == len(study.trials)
    by_name = {}
    for log in logs:
        records = _wandb_log(log)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        summary = {
            item.key: json.loads(item.value_json)
            for r in records
            if r.WhichOneof("record_type") == "summary"
            for item in r.summary.update
            if item.key
        }
        steps = [
            json.loads(item.value_json)
            for r in records
            if r.WhichOneof("record_type") == "history"
            for item in r.history.item
            if item.key == "_step" or item.nested_key == ["_step"]
        ]
        by_name[run.display_name] = (run.run_group, config, summary, steps)
    for t in study.trials:
        group, config, summary, steps = by_name[f"trial-{t.number}"]
        assert (
            group == "tiny"
            and config["config"] == t.user_attrs["config"]
            and config["method"] == t.user_attrs["method"]
        )
        assert summary["trainable_params"] == t.user_attrs["trainable_params"]
        if t.values:
            assert summary["accuracy"] == pytest.approx(t.values[0])
        assert len(steps) == len(t.user_attrs["loss_curve"])


def test_tensorboard_writes_one_folder_of_scalars_per_trial(tracked) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, study = tracked
    for t in study.trials:
        events = EventAccumulator(str(folder / "tiny.tensorboard" / f"trial-{t.number}")).Reload()
        assert [e.step for e in events.Scalars("loss")] == [s for s, _ in t.user_attrs["loss_curve"]]
        assert events.Scalars("trainable_params")[0].value == t.user_attrs["trainable_params"]


def test_unknown_or_missing_trackers_are_one_line(tmp_path, monkeypatch) -> None:
    import sys

    with pytest.raises(ConfigError, match=r"^study.trackers: must be a list of distinct names"):
        load_config(write_study(tmp_path, study={"trackers": ["neptune"]}))
    from autopeft.search.trackers import make_trackers

    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    config = load_config(write_study(tmp_path, study={"trackers": ["mlflow"]}))
    with pytest.raises(ConfigError, match=r"pip install 'autopeft\[mlflow\]'"):
        make_trackers(config)
