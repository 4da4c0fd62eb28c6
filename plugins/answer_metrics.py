"""Scores of a generated answer against its reference: exact match, normalised exact match, "contains
the answer" and ROUGE-L.

Normalisation is SQuAD's (lower case, punctuation and the articles a/an/the removed, whitespace
collapsed), so that "Fresh." and "fresh" match. ROUGE-L is the F-measure of the longest common
subsequence of the two texts' words, tokenized as Google's ``rouge-score`` does without stemming
(lower case, runs of letters and digits): twenty lines here instead of a dependency on it and NLTK.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

__all__ = ["ANSWER_METRICS", "normalize", "exact_match", "normalized_exact_match", "contains", "rouge_l"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_WORD = re.compile(r"[a-z0-9]+")


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(answer: str, reference: str) -> float:
    """1.0 when the answer is the reference, surrounding whitespace aside."""
    return float(answer.strip() == reference.strip())


def normalized_exact_match(answer: str, reference: str) -> float:
    """1.0 when the two are equal after :func:`normalize`."""
    return float(normalize(answer) == normalize(reference))


def contains(answer: str, reference: str) -> float:
    """1.0 when the normalised reference occurs, as whole words, in the normalised answer: a chat
    model that says "The review is fresh." has given the answer "fresh"."""
    wanted = normalize(reference)
    return float(bool(wanted) and f" {wanted} " in f" {normalize(answer)} ")


def _lcs_length(a: list[str], b: list[str]) -> int:
    """The length of the longest common subsequence of two word lists, one row of the table at a time."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure: the harmonic mean of the longest common subsequence's share of the
    answer's words (precision) and of the reference's (recall); 0.0 when either has no words."""
    got, wanted = _WORD.findall(answer.lower()), _WORD.findall(reference.lower())
    common = _lcs_length(got, wanted)
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


#: Metric name -> score of one (answer, reference) pair; a split's metric is the mean over its examples.
ANSWER_METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "normalized_exact_match": normalized_exact_match,
    "contains": contains,
    "rouge_l": rouge_l,
}
