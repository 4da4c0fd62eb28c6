"""Kept weights in a bucket (`[study] artifacts = "s3://bucket/prefix"`), for workers on machines that
share no file system: tested against moto's in-process S3, with the bucket URL's checks and errors."""

from __future__ import annotations

import pytest
from conftest import write_study

from autopeft import AutopeftError, ConfigError, load_config, run_study
from autopeft.cli.command import main
from autopeft.storage.artifact_stores import open_artifact_store

BUCKET = "autopeft-weights"


@pytest.fixture
def s3(monkeypatch):
    """An S3 that lives in this process (moto): a boto3 client of it, with one bucket."""
    mock = pytest.importorskip("moto").mock_aws
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    import boto3

    with mock():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def _keys(client) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def test_weights_go_to_the_bucket_under_the_prefix_and_export_reads_them(tmp_path, s3, capsys, minilm_available):
    path = write_study(
        tmp_path,
        study={"n_trials": 2, "keep_weights": "all", "artifacts": f"s3://{BUCKET}/studies/tiny"},
        search={"methods": ["lora"]},
    )
    study = run_study(path, quiet=True)
    keys = _keys(s3)
    assert len(keys) >= 2 and all(k.startswith("studies/tiny/") for k in keys)  # one adapter per trial, prefixed
    assert not (tmp_path / "tiny.artifacts").exists()  # no folder stands in for the bucket
    assert not list(tmp_path.glob(".autopeft-*"))  # the upload's scratch folder is gone
    out = tmp_path / "export"
    assert main(["export", str(path), "--best", str(out), "--quiet"]) == 0
    assert "kept weights" in capsys.readouterr().out
    assert (out / "adapter_model.safetensors").is_file()
    assert len(study.trials) == 2


def test_a_missing_bucket_stops_the_run_in_one_line_before_any_trial(tmp_path, s3, capsys, minilm_available):
    path = write_study(tmp_path, study={"keep_weights": "all", "artifacts": "s3://no-such-bucket/x"})
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "study.artifacts" in err and "s3://no-such-bucket/x" in err
    assert "NoSuchBucket" in err and "keep_weights" in err
    assert not (tmp_path / "tiny.db").exists() or "Trial" not in err


def test_a_lost_object_raises_not_found_and_a_failing_bucket_an_os_error(s3) -> None:
    from botocore.exceptions import EndpointConnectionError
    from optuna.artifacts.exceptions import ArtifactNotFound

    store = open_artifact_store(f"s3://{BUCKET}/p")
    with pytest.raises(ArtifactNotFound):  # export retrains, as for a cleaned folder
        store.open_reader("gone")

    class Unreachable:
        def get_object(self, **unused):
            raise EndpointConnectionError(endpoint_url="https://s3.example")

    store._store.client = Unreachable()
    with pytest.raises(OSError, match="EndpointConnectionError") as caught:
        store.open_reader("x")
    assert caught.value.filename == f"s3://{BUCKET}/p/x"


@pytest.mark.parametrize(
    "url",
    ["s3://user:secret@bucket/x", "s3://", "s3://Bucket_Upper", "gs://bucket/../up", "s3://bucket:9000/x"],
)
def test_a_malformed_bucket_url_is_refused_when_the_study_loads_without_echoing_it(tmp_path, url) -> None:
    path = write_study(tmp_path, study={"artifacts": url})
    with pytest.raises(ConfigError, match="bucket URL") as caught:
        load_config(path)
    assert "secret" not in str(caught.value)


def test_google_cloud_storage_without_its_library_names_the_extra(monkeypatch) -> None:
    import optuna.artifacts

    def missing(bucket: str) -> None:
        raise ImportError("google-cloud-storage is not installed")

    monkeypatch.setattr(optuna.artifacts, "GCSArtifactStore", missing)
    with pytest.raises(AutopeftError, match=r"pip install 'autopeft\[gcs\]'"):
        open_artifact_store("gs://bucket/studies")


def test_a_folder_is_still_a_folder(tmp_path) -> None:
    path = write_study(tmp_path, study={"artifacts": "weights"})
    config = load_config(path)
    assert config.artifacts_bucket is None and config.artifacts_dir == (tmp_path / "weights").resolve()
    bucket = load_config(write_study(tmp_path, study={"artifacts": f"s3://{BUCKET}/a/b"}))
    assert bucket.artifacts_bucket == f"s3://{BUCKET}/a/b"
