"""Fuzzing the study-file loader: anything malformed is one line naming the field, never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import _toml, write_study
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autopeft.config import SECTIONS, load_config
from autopeft.errors import ConfigError

# "section.key: problem; fix", or the file itself ("/path/study.toml: not valid TOML ...").
_ONE_LINE = re.compile(r"^\S+: .+; .+$")

_text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters='\\"'), max_size=12)
_scalars = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=True), _text, st.booleans())
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), inner, max_size=3)
    ),
    max_leaves=6,
)
_keys = st.sampled_from(sorted({f.name for cls in SECTIONS.values() for f in cls.__dataclass_fields__.values()}))
_mutation = st.tuples(
    st.sampled_from([*SECTIONS, "sudo", "Study"]),
    st.one_of(_keys, st.from_regex(r"[a-z_]{1,10}", fullmatch=True)),
    st.one_of(st.none(), _values),  # None: delete the key (or the whole section)
)


def _assert_one_line(exc: ConfigError) -> None:
    message = str(exc)
    assert "\n" not in message and _ONE_LINE.match(message), message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_study_files_load_or_fail_with_one_line(tmp_path: Path, mutations) -> None:
    path = write_study(tmp_path)
    base = {
        "study": {"name": "fuzz", "n_trials": 3},
        "model": {"name": "m", "overrides": {"num_hidden_layers": 2}},
        "data": {"train": "train.parquet", "validation": "validation.parquet"},
        "budget": {"max_trainable": "0.5%"},
        "train": {"epochs": 1},
        "search": {"methods": ["lora"]},
    }
    for section, key, value in mutations:
        table = base.setdefault(section, {})
        if value is None:
            if key in table:
                del table[key]
            else:
                base.pop(section, None)
        else:
            table[key] = value
    path.write_text(_toml(base))
    try:
        load_config(path)
    except ConfigError as exc:
        _assert_one_line(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_arbitrary_text_is_a_one_line_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "study.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError as exc:
        _assert_one_line(exc)
    else:
        raise AssertionError(f"loaded a study from {text!r}")
