"""What a bucket URL (``s3://bucket/prefix``, ``gs://bucket/prefix``) may hold, read without any cloud library.

It sits in the ground, beside :mod:`autopeft.config`, because the study file's checks need it: a
malformed ``[study] artifacts`` URL is refused when the study loads, long before a store is opened
(:mod:`autopeft.storage.artifact_stores`). A bucket name and a path are all a URL may carry, so
credentials can never sit in a study file.
"""

from __future__ import annotations

import re

__all__ = ["BUCKET_SCHEMES", "is_bucket_url", "parse_bucket_url"]

#: URL scheme -> (what the store is called, the pip extra that brings its client library)
BUCKET_SCHEMES = {"s3": ("S3", "s3"), "gs": ("Google Cloud Storage", "gcs")}

# scheme://bucket[/prefix]: bucket names as S3 and GCS allow them (no user, password or port), and a
# prefix of plain path segments.
_BUCKET_URL = re.compile(
    r"(?P<scheme>s3|gs)://(?P<bucket>[a-z0-9][a-z0-9._-]{1,221}[a-z0-9])(?P<prefix>(/[\w.+=-]+)*)/?"
)


def is_bucket_url(value: str) -> bool:
    """Whether ``value`` is an ``s3://`` or ``gs://`` URL (well formed or not): it names a bucket, not a folder."""
    return value.split("://", 1)[0] in BUCKET_SCHEMES and "://" in value


def parse_bucket_url(url: str) -> tuple[str, str, str] | None:
    """(scheme, bucket, prefix) of a well-formed bucket URL, else None."""
    match = _BUCKET_URL.fullmatch(url)
    if match is None or any(part in (".", "..") for part in match["prefix"].split("/")):
        return None
    return match["scheme"], match["bucket"], match["prefix"].strip("/")
