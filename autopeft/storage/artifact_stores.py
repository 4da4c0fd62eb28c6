"""Which Optuna artifact store a study's ``[study] artifacts`` names: a folder, or a bucket.

A folder (the default, ``<name>.artifacts`` beside the study file) is Optuna's
:class:`~optuna.artifacts.FileSystemArtifactStore`; workers on several machines need it on a shared
file system. Where they share none, ``s3://bucket/prefix`` (Optuna's ``Boto3ArtifactStore``, with the
``s3`` extra; S3-compatible servers such as MinIO through ``AWS_ENDPOINT_URL``) or
``gs://bucket/prefix`` (``GCSArtifactStore``, with the ``gcs`` extra) keeps the weights where every
worker reaches them. Credentials come the cloud's own way (environment, profile, instance role),
never from the study file, so the URL holds none: a bucket name is all it may carry.

Optuna's bucket stores write each artifact at the bucket's top level; :class:`_Prefixed` puts them
under the URL's prefix, so studies share a bucket, and turns a bucket's own errors (no credentials,
no such bucket, a lost connection) into :class:`OSError`, which the callers already treat like a full
disk: the trial's result stands and its weights can be retrained.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from autopeft.bucket_url import BUCKET_SCHEMES, is_bucket_url, parse_bucket_url
from autopeft.errors import AutopeftError, first_line

if TYPE_CHECKING:  # optuna's artifacts load when a store is opened: the study file's checks need none of it
    from optuna.artifacts import FileSystemArtifactStore

__all__ = ["open_artifact_store"]


class _Prefixed:
    """A bucket store whose artifacts live under ``prefix/``, its errors raised as :class:`OSError`."""

    def __init__(self, store: Any, url: str, prefix: str) -> None:
        self._store, self._url, self._prefix = store, url, f"{prefix}/" if prefix else ""

    def _call(self, what: str, artifact_id: str, *args: Any) -> Any:
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            return getattr(self._store, what)(self._prefix + artifact_id, *args)
        except ArtifactNotFound:
            raise
        except Exception as exc:  # botocore's and google's errors share no base class but Exception
            raise OSError(errno.EIO, f"{type(exc).__name__}: {first_line(exc)}", f"{self._url}/{artifact_id}") from exc

    def open_reader(self, artifact_id: str) -> BinaryIO:
        reader: BinaryIO = self._call("open_reader", artifact_id)
        return reader

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._call("write", artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._call("remove", artifact_id)


def open_artifact_store(location: str | Path) -> FileSystemArtifactStore | _Prefixed:
    """The artifact store at ``location``: a folder (which must exist) or a bucket URL.

    Raises:
        AutopeftError: a malformed bucket URL, or the client library its scheme needs is not installed.
    """
    if isinstance(location, Path) or not is_bucket_url(location):
        from optuna.artifacts import FileSystemArtifactStore

        return FileSystemArtifactStore(location)
    parsed = parse_bucket_url(location)
    if parsed is None:
        raise AutopeftError(
            f"study.artifacts: {location!r} is not a bucket URL; use s3://bucket/prefix or gs://bucket/prefix "
            "(credentials come from the environment, never the URL)"
        )
    scheme, bucket, prefix = parsed
    name, extra = BUCKET_SCHEMES[scheme]
    try:
        if scheme == "s3":
            from optuna.artifacts import Boto3ArtifactStore

            store: Any = Boto3ArtifactStore(bucket)
        else:
            from optuna.artifacts import GCSArtifactStore

            store = GCSArtifactStore(bucket)
    except ImportError:
        raise AutopeftError(
            f"study.artifacts: {name} artifacts need its client library; pip install 'autopeft[{extra}]'"
        ) from None
    except Exception as exc:  # e.g. google's client finds no credentials when it is created
        raise AutopeftError(f"study.artifacts: cannot open {location} ({first_line(exc)})") from None
    return _Prefixed(store, location.rstrip("/"), prefix)
