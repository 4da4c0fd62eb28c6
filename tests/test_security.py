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


# -- passwords in storage URLs ----------------------------------------------------------------------

# Every reserved character in a password, and in a user name, unencoded; one percent-encoded password
# (accepted: it reaches the server, which refuses the connection); one ':' in a password (accepted:
# SQLAlchemy and the masking both split at the first ':').
_PASSWORD = "Qk7vXZr9wJ"
_URLS = [  # (URL, its password, refused for an unencoded character)
    *[
        (
            f"postgresql://autopeft:{_PASSWORD[:5]}{c}{_PASSWORD[5:]}@127.0.0.1:1/nowhere",
            f"{_PASSWORD[:5]}{c}{_PASSWORD[5:]}",
            c != ":",
        )
        for c in "@/?#%:"
    ],
    ("postgresql://u:S3cr@tPw_zz9@127.0.0.1:1/db", "S3cr@tPw_zz9", True),  # the case the issue found
    (
        f"postgresql+psycopg://autopeft:{_PASSWORD[:5]}%40{_PASSWORD[5:]}@127.0.0.1:1/nowhere",
        f"{_PASSWORD[:5]}@{_PASSWORD[5:]}",
        False,
    ),
    (f"postgresql://us@er:{_PASSWORD}@127.0.0.1:1/nowhere", _PASSWORD, True),
    (f"postgresql://us/er:{_PASSWORD}@127.0.0.1:1/nowhere", _PASSWORD, True),
    (f"mysql://autopeft:{_PASSWORD[:5]}#{_PASSWORD[5:]}@127.0.0.1:1/nowhere", f"{_PASSWORD[:5]}#{_PASSWORD[5:]}", True),
]


def _pieces(password: str, shortest: int = 4) -> set[str]:
    """Every run of ``shortest`` or more bytes of ``password``, and of its percent-encoded form."""
    from urllib.parse import quote

    found = set()
    for form in {password, quote(password, safe="")}:
        found |= {form[i:j] for i in range(len(form)) for j in range(i + shortest, len(form) + 1)}
    return found


def _leaks(text: str, password: str) -> list[str]:
    return sorted(piece for piece in _pieces(password) if piece in text)


@pytest.mark.parametrize("command", ["run", "trials", "worker", "report"])
@pytest.mark.parametrize("given", ["--storage", "study file", "environment"])
@pytest.mark.parametrize(("url", "password", "refused"), _URLS, ids=[f"url{i}" for i in range(len(_URLS))])
def test_no_byte_of_a_password_in_any_output(
    tmp_path, monkeypatch, capsys, command, given, url, password, refused
) -> None:
    """`run`, `trials`, `worker` and `report` with a storage URL whose password (or user name) holds
    reserved characters: one line, exit code 2, and no four bytes in a row of the password."""
    from conftest import write_study

    from autopeft.cli.command import main
    from autopeft.storage.backends import STORAGE_ENV

    monkeypatch.delenv(STORAGE_ENV, raising=False)
    path = write_study(tmp_path, study={"storage": url} if given == "study file" else {})
    if given == "environment":
        monkeypatch.setenv(STORAGE_ENV, url)
    args = [command, str(path), *(["--storage", url] if given == "--storage" else [])]
    args += {"report": ["-o", str(tmp_path / "report.html")], "run": ["--quiet"], "worker": ["--quiet"]}.get(
        command, []
    )
    capsys.readouterr()
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert not _leaks(out + err, password), (out + err, _leaks(out + err, password))
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autopeft: error: study.storage: "), err
    assert "Traceback" not in err and not (tmp_path / "tiny.db").exists()
    if refused:
        assert "percent-encode" in lines[0] and "%40" in lines[0], lines[0]  # refused, with how to encode it
    else:  # it reached the server's address, which refuses the connection
        assert "Connection refused" in lines[0] and "127.0.0.1:1/nowhere" in lines[0], lines[0]
    if "us@er" in url or "us/er" in url:
        assert "the user name in postgresql://***@127.0.0.1:1/nowhere holds an unencoded" in lines[0]


def test_the_refusal_names_the_character_and_its_code() -> None:
    from autopeft.errors import AutopeftError
    from autopeft.storage.backends import check_credentials

    with pytest.raises(AutopeftError) as caught:
        check_credentials("postgresql://u:S3cr@tPw_zz9@127.0.0.1/db")
    assert str(caught.value).startswith(
        "study.storage: the password in postgresql://***@127.0.0.1/db holds an unencoded '@', which the "
        "database driver reads as part of the address; percent-encode the password ('@' as %40,"
    )
    for fine in (
        "postgresql://u:S3cr%40tPw_zz9@127.0.0.1/db",  # encoded
        "postgresql://u@host/db?application_name=x",
        "sqlite:///path/with@sign.db",  # a file name, not credentials
        "postgresql://u:a:b@host/db",  # a ':' in the password is parsed right, and masked
    ):
        check_credentials(fine)
