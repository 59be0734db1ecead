"""``--json`` documents escape C1 and bidi controls (F23): the regex scan that replaced
``str.translate`` gives the same text, whatever the mix of characters."""

from __future__ import annotations

import json

from capsule_cli._render import _JSON_ESCAPES, escape_json, json_text
from hypothesis import given, settings
from hypothesis import strategies as st

_ESCAPED = [chr(c) for c in _JSON_ESCAPES]
_chars = st.one_of(st.sampled_from(_ESCAPED), st.characters(codec="utf-8"),
                   st.sampled_from(["é", "€", "\u2027", "\u202f", "\u2065", "\u206a", "\u061b", "\u00a0", "Ā", "💥"]))


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_chars, max_size=80))
def test_escapes_are_those_of_translate(s: str) -> None:
    doc = json.dumps({"text": s, "tags": [s[:3]]}, ensure_ascii=False)
    assert escape_json(doc.encode()) == doc.translate(_JSON_ESCAPES).encode()
    assert json_text({"text": s}) == json.dumps({"text": s}, sort_keys=True, ensure_ascii=False, indent=None) \
        .translate(_JSON_ESCAPES)
    assert json.loads(escape_json(doc.encode())) == json.loads(doc)  # a JSON reader gets the same string


def test_every_escaped_character_is_escaped() -> None:
    s = "".join(_ESCAPED)
    out = escape_json(json.dumps(s, ensure_ascii=False).encode())
    assert out.isascii() and out.count(b"\\u") == len(_ESCAPED)
