"""Tokenizer 2 (spec 16.4.1): pinned examples, the bulk path against the per-text reference,
the stop list and stemmer the spec names, and what a 1.4 capsule's lexical search finds."""

from __future__ import annotations

import re
import sys
import types
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import capsule
from capsule.search import tokenize as tk
from capsule.search.tokenize import (
    STOP_WORDS,
    T1,
    T2,
    TokenizerUnavailable,
    term_ids2,
    tokenize1,
    tokenize2,
)

SPEC = Path(__file__).resolve().parent.parent / "spec" / "format.md"

EXAMPLES = [
    # identifiers: whole, then the parts (16.4.1)
    ("CMAKE_BUILD_TYPE", ["cmake_build_type", "cmake", "build", "type"]),
    ("Set CMAKE_BUILD_TYPE=Release", ["set", "cmake_build_type", "cmake", "build", "type", "releas"]),
    ("C++", ["c++", "c"]),
    ("C#", ["c#", "c"]),
    ("g++ and F#", ["g++", "g", "f#", "f"]),
    ("c++/cli", ["c++", "c", "cli"]),
    ("a+b 1+1", ["b", "1", "1"]),  # + or # before a letter or digit ends nothing: no suffix
    ("node.js", ["node.js", "node", "js"]),
    ("os.path.join()", ["os.path.join", "os", "path", "join"]),
    ("v1.2.3", ["v1.2.3", "v1", "2", "3"]),
    ("__init__ foo__bar", ["init", "foo__bar", "foo", "bar"]),  # underscores at the ends are not part of it
    ("the end...Next", ["end", "next"]),  # one dot joins, three do not
    ("e.g.", ["e.g", "e", "g"]),
    # camelCase
    ("camelCase", ["camelcas", "camel", "case"]),
    ("XMLHttpRequest", ["xmlhttprequest", "xml", "http", "request"]),
    ("getHTTPResponse", ["gethttprespons", "get", "http", "respons"]),
    ("HTTPServer SMSes", ["httpserver", "smses"]),  # no lower-case letter before an upper-case one
    ("iPhone", ["iphon", "phone"]),  # "i" is a stop word
    # accents, case, compatibility forms
    ("Café", ["cafe"]),
    ("CAFE\u0301", ["cafe"]),
    ("naïve Ünïcödé", ["naiv", "unicod"]),
    ("straße STRASSE", ["strass", "strass"]),
    ("ﬁle", ["file"]),
    ("İstanbul", ["istanbul"]),
    # possessives, contractions and stop words
    ("Caroline's", ["carolin"]),
    ("don't I'm we'll they've", []),
    ("O’Brien’s", ["o", "brien"]),
    ("What is the time and where are you?", ["time"]),
    # stems (Snowball English)
    ("running runs ran", ["run", "run", "ran"]),
    ("generously organization university", ["generous", "organiz", "universiti"]),
    ("dying skis news", ["die", "ski", "news"]),
    ("12 345", ["12", "345"]),  # numbers are not stemmed
    ("東京タワー", ["東京タワー"]),
    ("", []),
]


@pytest.mark.parametrize(("text", "want"), EXAMPLES)
def test_pinned_examples(text: str, want: list[str]) -> None:
    assert tokenize2(text) == want


def test_tokenizer_1_is_unchanged() -> None:
    """16.4 (and 16.5: the hash embedder): files before 1.4 and every hash vector keep these tokens."""
    assert tokenize1("Set CMAKE_BUILD_TYPE for C++ in the Café's node.js") == [
        "set", "cmake", "build", "type", "for", "c", "in", "the", "café", "s", "node", "js"]
    assert T1.id == "nfkc-casefold-alnum/1" and T2.id == "fold-ident-stop-snowball-en/2"


def test_stop_words_and_probes_are_the_spec_s() -> None:
    """The stop list printed in 16.4.1 is the one in the code, word for word, and the stems
    the spec names to pin the stemmer are the ones the code checks."""
    text = SPEC.read_text()
    at = text.index("#### 16.4.1")
    block = text[at : text.index("### 16.5", at)]
    listed = re.search(r"stop list[^`]*?:\n\n((?:    .*\n)+)", block)
    assert listed is not None, "16.4.1 lists the stop words in an indented block"
    assert set(listed.group(1).split()) == STOP_WORDS and len(listed.group(1).split()) == len(STOP_WORDS)
    flat = " ".join(block.split())
    for word, stem in tk.PROBES.items():
        assert f"`{word}` → `{stem}`" in flat, word


def test_a_stop_word_never_survives_and_stems_are_stable() -> None:
    assert not set(tokenize2(" ".join(sorted(STOP_WORDS)))), "every stop word is dropped"
    words = ["connection", "connected", "connecting", "connects", "deploys", "deployed", "deploying"]
    assert {t for w in words for t in tokenize2(w)} == {"connect", "deploy"}


# --- the bulk path is the reference, text by text ------------------------------------------------

PIECE = st.sampled_from(list("ab Z9_-.+#'’\x00\t") + [
    "é", "É", "ß", "ﬁ", "İ", "Σ", "ς", "\u0301", "\u0308", "٣", "ｶ", "①", "\u00a0", "K", "ि", "्", "हि", "한",
    "abcdefgh", "abcdefghi", "x" * 17, "Café", "CMAKE_BUILD", "C++", "C#", "node.js", "camelCase", "iPhone", "the",
    "running", "..", "__", "++", "1.5", "Ünï", "don't"])
TEXT = st.one_of(st.lists(PIECE, max_size=14).map("".join), st.text(max_size=40))


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(TEXT, max_size=8), chunk=st.sampled_from([1, 3, 1 << 22]))
def test_bulk_is_the_reference(texts: list[str], chunk: int) -> None:
    """16.4.1: term_ids2 (byte table, chunks numbered in NumPy, each distinct chunk expanded
    once) gives exactly tokenize2's tokens, text by text, numbered in byte order."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tk, "_CHUNK_CHARS", chunk)
        terms, tid, lens = term_ids2(texts)
    want = [[t.encode() for t in tokenize2(x)] for x in texts]
    assert terms == sorted({t for w in want for t in w})
    assert lens.tolist() == [len(w) for w in want]
    assert [terms[i] for i in tid.tolist()] == [t for w in want for t in w]
    assert all(b" " not in t and b"\x00" not in t and t for t in terms), "a token is never empty nor holds a space"


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_a_token_is_folded(text: str) -> None:
    """A token holds no upper-case ASCII letter, nonspacing mark or space, and the same text
    in another case or with its accents gives the same tokens."""
    got = tokenize2(text)
    for t in got:
        assert not any(c.isspace() or unicodedata.category(c) == "Mn" or ("A" <= c <= "Z") for c in t), t
    if text.isascii():
        assert tokenize2(text.upper()) == tokenize2(text.lower()) or re.search(r"[a-z][A-Z]|[A-Z][a-z]", text)


def _old_release(monkeypatch: pytest.MonkeyPatch, *, pystemmer: bool, snowball: bool) -> None:
    """Make the chosen builds stem like snowballstemmer 2.2 (`internal` -> `intern`), the others
    missing, and forget the stemmer loaded so far."""
    tk._stemmer()  # the real one, loaded and checked
    real = sys.modules["snowballstemmer.english_stemmer"].EnglishStemmer

    class Old:
        def __init__(self, *_: object) -> None:
            pass

        def stemWord(self, w: str) -> str:  # noqa: N802 - the stemmers' name
            return "intern" if w == "internal" else str(real().stemWord(w))

    py = types.ModuleType("Stemmer")
    py.Stemmer = Old  # type: ignore[attr-defined]
    sb = types.ModuleType("snowballstemmer.english_stemmer")
    sb.EnglishStemmer = Old if snowball else real  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "Stemmer", py if pystemmer else None)
    monkeypatch.setitem(sys.modules, "snowballstemmer.english_stemmer", sb)
    monkeypatch.setattr(tk, "_STEMMER", [])
    monkeypatch.setattr(tk, "_STEMS", {})
    monkeypatch.setattr(tk, "_CHUNKS", {})


def test_a_stemmer_of_another_release_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """16.4.1 names Snowball 3.1's English stemmer: one that stems a probe otherwise (here
    snowballstemmer 2.2's `internal` -> `intern`) makes tokenizer 2 unavailable, never silently
    different (its scores and snapshots would not be another host's)."""
    _old_release(monkeypatch, pystemmer=True, snowball=True)
    with pytest.raises(TokenizerUnavailable, match="'internal' as 'intern'"):
        tokenize2("internal affairs")
    assert tk.available(T2.id) is None and tk.available(T1.id) is T1 and tk.available("whitespace/9") is None
    assert isinstance(TokenizerUnavailable("x"), capsule.UsageError)


def test_a_wrong_pystemmer_falls_back_to_snowballstemmer(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyStemmer of another release is passed over for snowballstemmer 3.1, which stems right;
    without PyStemmer at all, snowballstemmer alone serves."""
    want = tokenize2("internal affairs of the university")
    _old_release(monkeypatch, pystemmer=True, snowball=False)
    assert tokenize2("internal affairs of the university") == want
    assert "internal" in want
    _old_release(monkeypatch, pystemmer=False, snowball=False)
    assert tokenize2("internal affairs of the university") == want


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=18), min_size=1, max_size=400))
def test_pystemmer_stems_as_the_python_reference(words: list[str]) -> None:
    """The C build the reference prefers stems every a-z word as snowballstemmer 3.1.1 (the
    release 16.4.1 names) does; a corpus check of 210k words agreed too."""
    import Stemmer
    from snowballstemmer.english_stemmer import EnglishStemmer

    ref = EnglishStemmer()
    fast = Stemmer.Stemmer("english", 0)
    assert fast.stemWords(words) == [ref.stemWord(w) for w in words]


def test_stemming_from_many_threads_agrees() -> None:
    """Stemmer objects are not thread-safe: each thread gets its own, and stems agree."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    from snowballstemmer.english_stemmer import EnglishStemmer

    rng = random.Random(3)
    words = ["".join(rng.choice("abcdefghilmnorstuy") for _ in range(rng.randint(3, 14))) + rng.choice(
        ("ing", "ed", "ational", "ization", "ies", "ness", "ly", "")) for _ in range(4000)]
    ref = EnglishStemmer()
    want = [ref.stemWord(w) for w in words]
    stem = tk._stemmer()
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda ws: [stem(w) for w in ws], [words] * 16))
    assert all(g == want for g in got)


# --- what a 1.4 capsule finds ------------------------------------------------------------------


def test_a_new_capsule_searches_text_as_people_write_it(tmp_path: Path) -> None:
    """Issue 15: the bare identifier finds its page, `cafe` finds `Café`, `C++` is not `C`."""
    p = tmp_path / "docs.capsule"
    with capsule.create(p) as cap:
        assert cap.format_version == "1.4"
        with cap.commit() as tx:
            ids = {
                "build": tx.remember("variable/CMAKE_BUILD_TYPE.rst: specifies the build type on single-config "
                                     "generators"),
                "generic": tx.remember("the build system generates a build type for each configuration type"),
                "cafe": tx.remember("Meet at the Café at noon"),
                "cpp": tx.remember("C++ templates and the standard library"),
                "c": tx.remember("C is a small language; see the C standard"),
                "node": tx.remember("node.js event loop and timers"),
            }

        def top(q: str) -> str:
            hits = cap.search(q, mode="lexical", k=3)
            return next(k for k, v in ids.items() if v == hits[0].id)

        assert top("CMAKE_BUILD_TYPE") == "build"
        assert top("cafe") == "cafe" and top("CAFÉS") == "cafe"
        assert top("C++") == "cpp"
        assert top("node.js timer") == "node"
        assert cap.search("the and of", mode="lexical") == [], "stop words alone match nothing"
