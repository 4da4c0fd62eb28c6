"""trust_remote_code reaches transformers only as the study file sets it."""

from __future__ import annotations

import pytest

from autopeft.config import ModelSection
from autopeft.errors import ModelError
from autopeft.training.models import load_base_model, load_tokenizer
from autopeft_plugins.tasks import SequenceClassification


class _Loaded(Exception):
    """Raised by the stand-in loaders to end the call once the arguments are seen (the model loader
    reports it as a ModelError, as it does any loading failure)."""


@pytest.mark.parametrize("trusted", [False, True])
def test_trust_remote_code_is_what_the_study_file_says(monkeypatch, trusted: bool) -> None:
    import transformers

    seen: list[object] = []

    def capture(source, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        raise _Loaded

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", capture)
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", capture)
    section = ModelSection(name="some/model", trust_remote_code=True) if trusted else ModelSection(name="some/model")
    for load in (
        lambda: load_tokenizer(section, "some/model", True),
        lambda: load_base_model(section, "some/model", True, SequenceClassification(), [0, 1], 0),
    ):
        with pytest.raises((_Loaded, ModelError)):
            load()
    assert seen == [trusted, trusted]
