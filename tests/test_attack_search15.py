"""Issue 15 review, attacked as a hostile user: tokenizer 2 against a reimplementation written
from the text of spec 16.4.1 alone, the context window around redacted records, hostile lexical
snapshots, fusion arguments, and determinism across processes. Each test that found a defect
says so in its docstring."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import snowballstemmer
from capsule_cli.main import app
from typer.testing import CliRunner

import capsule
from capsule.questions._lifecycle import redacted
from capsule.search.tokenize import term_ids2, tokenize2

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
KEY = capsule.PrivateKey.from_seed(bytes([15]) * 32)

# --- tokenizer 2 from the spec text alone (16.4.1) -----------------------------------------

_STOP_TEXT = """a about above after again against all am an and any are aren as at be because been before being
below between both but by can could couldn d did didn do does doesn doing don down during each
few for from further had hadn has hasn have haven having he her here hers herself him himself
his how i if in into is isn it its itself just ll m me mightn more most mustn my myself needn no
nor not of off on once only or other ought our ours ourselves out over own re s same she should
shouldn so some such t than that the their theirs them themselves then there these they this
those through to too under until up ve very was wasn we were weren what when where which while
who whom why will with would wouldn you your yours yourself yourselves"""
_STOP = frozenset(_STOP_TEXT.split())
_STEM = snowballstemmer.stemmer("english")


def _no_mn(s: str) -> str:
    return "".join(c for c in s if unicodedata.category(c) != "Mn")


def _is_w(c: str) -> bool:
    return c.isalnum() or unicodedata.category(c) in ("Mc", "Me")


def _raw_tokens(t: str) -> list[str]:
    """W+(?:(?:_+|\\.)W+)*(?:[+#]+(?![+#]*W))?, left to right, by hand (no regex engine)."""
    out, i, n = [], 0, len(t)
    while i < n:
        if not _is_w(t[i]):
            i += 1
            continue
        j = i
        while j < n and _is_w(t[j]):
            j += 1
        while True:
            k = j
            if k < n and t[k] == "_":
                while k < n and t[k] == "_":
                    k += 1
            elif k < n and t[k] == ".":
                k += 1
            else:
                break
            if not (k < n and _is_w(t[k])):
                break
            while k < n and _is_w(t[k]):
                k += 1
            j = k
        k = j
        while k < n and t[k] in "+#":
            k += 1
        end = j
        for m in range(k, j, -1):  # the longest run of + and # that no word character follows
            p = m
            while p < n and t[p] in "+#":
                p += 1
            if not (p < n and _is_w(t[p])):
                end = m
                break
        out.append(t[i:end])
        i = end
    return out


def _camel(w: str) -> list[str]:
    cat = [unicodedata.category(c) for c in w]
    up = ("Lu", "Lt")
    if not any(cat[i] == "Ll" and cat[i + 1] in up for i in range(len(w) - 1)):
        return [w]
    pieces, start = [], 0
    for i in range(1, len(w)):
        if cat[i] in up and (cat[i - 1] == "Ll" or (cat[i - 1] in up and i + 1 < len(w) and cat[i + 1] == "Ll")):
            pieces.append(w[start:i])
            start = i
    return [*pieces, w[start:]]


def spec_tokenize2(s: str) -> list[str]:
    t = s if s.isascii() else unicodedata.normalize("NFC", _no_mn(unicodedata.normalize("NFKD", s)))
    out = []
    for raw in _raw_tokens(t):
        parts = [p for w in re.findall(r"\S+", "".join(c if _is_w(c) else " " for c in raw)) for p in _camel(w)]
        for c in ([raw] if len(parts) >= 2 or raw[-1] in "+#" else []) + parts:
            f = unicodedata.normalize("NFC", _no_mn(unicodedata.normalize("NFKD", c.casefold())))
            if not f or f in _STOP:
                continue
            out.append(_STEM.stemWord(f) if re.fullmatch("[a-z]+", f) else f)
    return out


_SPECIAL = [*"_.+#'-/: \x00\t\n", "ﬁ", "ﬀ", "İ", "ı", "ß", "ẞ", "ǅ", "ǈ", "Ａ", "ｂ", "１", "é", "e\u0301", "\u0301",
            "\u0903", "\u20dd", "\u0345", "ʰ", "Ⅻ", "½", "²", "٣", "ا", "ب", "\u200f", "\u202e", "😀", "👍🏽",
            "\u200d", "ᾼ", "ﷺ", "㎏", "µ", "Å", "K", "ǰ", "ŉ", "ΐ", "Σ", "ς", "Ꭰ", "ꭰ", "the", "running",
            "HTTP", "Server", "aB", "xY", "a", "B", "1", "0"]


def _random_text(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(0, 14)):
        r = rng.random()
        if r < 0.6:
            out.append(rng.choice(_SPECIAL))
        elif r < 0.8:
            out.append(chr(rng.randint(0x20, 0x7E)))
        else:
            c = chr(rng.randint(0, 0x2FFFF))
            out.append(c if unicodedata.category(c) != "Cs" else "x")
    return "".join(out)


def test_tokenizer2_matches_a_spec_only_reimplementation() -> None:
    rng = random.Random(15)
    texts = [_random_text(rng) for _ in range(4000)]
    texts += ["Set CMAKE_BUILD_TYPE for C++ and node.js in the Café's runningTotal", "C#", "a+b", "x++y", "a__b",
              "a._b", "..a..", "İstanbul ıi", "Straße STRASSE", "ﬁnance", "ＡＢＣ１２３", "XMLHttpRequest",
              "HTTPServer", "ǅungla", "x" * 5000, "1" * 70, "\u05e9\u05dc\u05d5\u05dd", "ab\x00cd", "+#+#"]
    terms, tid, lens = term_ids2(texts)
    pos = 0
    for s, n in zip(texts, lens.tolist(), strict=True):
        want = spec_tokenize2(s)
        assert tokenize2(s) == want, s
        assert [terms[j].decode() for j in tid[pos:pos + n].tolist()] == want, s
        pos += n
        assert all(t and " " not in t and "\x00" not in t for t in want)


# --- redacted neighbours (7.7.1, 16.4.1) -------------------------------------------------------

def _redacted_view_file(tmp_path: Path) -> tuple[Path, str]:
    p = tmp_path / "r.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("the weather is fine", meta={"session": "s1"})
            secret = tx.remember("password hunter2zebra", meta={"session": "s1"})
            tx.remember("lunch at noon", meta={"session": "s1"})
            tx.remember("unrelated words", meta={"session": "s2"})
        cap.checkpoint("before", key=KEY)
        assert len(cap.search("hunter2zebra")) == 3  # the secret and its two neighbours
        with cap.commit() as tx:
            tx.redact(secret, reason="a secret")
    return p, secret


def test_redacted_neighbour_does_not_leak_through_the_window_library(tmp_path: Path) -> None:
    """Defect: in a view before a redaction, the redacted memory (live there) stayed in its
    neighbours' windows, so searching its secret word found them."""
    p, _ = _redacted_view_file(tmp_path)
    with capsule.open(p) as cap, cap.view("before") as v:
        part = v._search
        hidden = redacted(v._store)
        assert part.search("hunter2zebra", hidden=hidden) == []
        # the neighbours' scores no longer count its words or length: as if it were dead
        got = {h.text: h.score for h in part.search("weather lunch", hidden=hidden)}
        assert set(got) == {"the weather is fine", "lunch at noon"}
    q = tmp_path / "f.capsule"
    with capsule.create(q) as cap:  # the same records, the secret forgotten instead
        with cap.commit() as tx:
            tx.remember("the weather is fine", meta={"session": "s1"})
            f = tx.remember("password hunter2zebra", meta={"session": "s1"})
            tx.remember("lunch at noon", meta={"session": "s1"})
            tx.remember("unrelated words", meta={"session": "s2"})
        with cap.commit() as tx:
            tx.forget(f)
        want = {h.text: h.score for h in cap.search("weather lunch")}
    assert got == want


def test_redacted_neighbour_does_not_leak_through_the_window_view(tmp_path: Path) -> None:
    p, _ = _redacted_view_file(tmp_path)
    with capsule.open(p) as cap, cap.view("before") as v:
        assert list(v.search("hunter2zebra")) == []


def test_redacted_neighbour_does_not_leak_through_the_window_cli(tmp_path: Path) -> None:
    p, _ = _redacted_view_file(tmp_path)
    out = runner.invoke(app, ["search", str(p), "hunter2zebra", "--at", "before", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == []


# --- hostile texts (16.4.1) ------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [("a" + "+" * 200_000 + "b", ["b"]), ("é" + "#" * 200_000 + "b", ["e", "b"]),
                                            (("x" + "+#" * 50_000 + "y ") * 2, ["x", "y", "x", "y"])])
def test_a_long_run_of_plus_before_a_word_is_linear(text: str, want: list[str]) -> None:
    """Defect: the raw-token pattern's lookahead ``(?![+#]*W)`` was tried after each shorter run
    of + and #, rescanning the run: quadratic (200,000 + took about 13 s, a 1 MB one minutes)."""
    import time

    t = time.perf_counter()
    got = tokenize2(text)
    terms, _, _ = term_ids2([text])
    assert time.perf_counter() - t < 1.0
    assert got == want
    assert [t.decode() for t in terms] == sorted(set(got))


# --- determinism across processes (16.4, 16.6) -----------------------------------------------

_SEARCH = """
import json, sys, capsule
with capsule.open(sys.argv[1], mode="r") as cap:
    out = [[(h.id, h.score) for h in cap.search(q, k=20)] for q in sys.argv[2:]]
print(json.dumps(out))
"""


def test_same_results_in_other_processes_hash_seeds_locales_and_copies(tmp_path: Path) -> None:
    rng = random.Random(4)
    p = tmp_path / "d.capsule"
    words = ["deploy", "Café", "C++", "node.js", "runningTotal", "İstanbul", "straße", "ﬁle", "x_y", "the", "1.0"]
    with capsule.create(p) as cap, cap.commit() as tx:
        for i in range(300):
            session: Any = rng.choice([None, 1, 1.0, "1", True, {"a": [1]}, "s" * 3000])
            tx.remember(" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))),
                        meta={} if session is None else {"session": session, "i": i})
    queries = ["deploy cafe", "c++ node.js", "running total", "istanbul strasse file", "x_y 1.0"]
    copy = tmp_path / "copy.capsule"
    copy.write_bytes(p.read_bytes())
    runs = []
    for path, seed, loc in [(p, "0", "C"), (p, "1", "C.UTF-8"), (copy, "12345", "tr_TR.UTF-8"), (copy, "random", "POSIX")]:
        env = {**os.environ, "PYTHONHASHSEED": seed, "LC_ALL": loc}
        out = subprocess.run([sys.executable, "-c", _SEARCH, str(path), *queries], capture_output=True, text=True,
                             env=env, check=True)
        runs.append(json.loads(out.stdout))
    with capsule.open(p, mode="r") as cap:
        here = [[[h.id, h.score] for h in cap.search(q, k=20)] for q in queries]
    assert all(r == here for r in runs)
    assert all(here)


# --- hostile lexical snapshots with session keys (16.8, CAPLEX03) ----------------------------

def _sessioned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Any]]:
    from capsule.search import part

    monkeypatch.setattr(part, "LEX_SNAPSHOT_ON_CLOSE", 2)
    p = tmp_path / "s.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            for i in range(40):
                tx.remember(f"deploy w{i % 7} step{i}", meta={"session": [1, 1.0, "1", True][i % 4]})
        assert cap.save_index()
    return p, _all(p)


def _all(p: Path) -> list[Any]:
    with capsule.open(p, mode="r") as cap:
        return [[(h.id, h.score) for h in cap.search(q, k=50, mode="lexical")] for q in ("deploy", "w3", "step5 w1")]


def _ses_ix_swapped(blob: bytes) -> bytes:
    from tests.test_lexical_snapshot import _patch

    return _patch(blob, "ses_ix", 0, (2).to_bytes(4, "little"))


def _ses_ix_past(blob: bytes) -> bytes:
    from tests.test_lexical_snapshot import _patch

    return _patch(blob, "ses_ix", 4, (10**6).to_bytes(4, "little"))


def _ses_doc_back(blob: bytes) -> bytes:
    from tests.test_lexical_snapshot import _patch

    return _patch(blob, "ses_doc", 4, (0).to_bytes(4, "little"))


def _old_layout(blob: bytes) -> bytes:
    return b"CAPLEX02" + blob[8:]


def _tokenizer_1(blob: bytes) -> bytes:
    from tests.test_lexical_snapshot import reheader

    return reheader(blob, tokenizer="nfkc-casefold-alnum/1")


def _lying_sessions(blob: bytes) -> bytes:
    from tests.test_lexical_snapshot import reheader

    return reheader(blob, session_docs=3)


@pytest.mark.parametrize("damage", [_ses_ix_past, _ses_doc_back, _old_layout, _tokenizer_1, _lying_sessions])
def test_a_hostile_session_snapshot_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Any) -> None:
    from tests.test_lexical_snapshot import forge, honest

    p, want = _sessioned(tmp_path, monkeypatch)
    _, blob = honest(p)
    forge(p, damage(blob))
    assert _all(p) == want
    with capsule.open(p, mode="r") as cap:
        cap.search("deploy", mode="lexical")
        assert "rebuilt the lexical index" in (cap.index_info()["doubt"] or "")


def test_a_session_snapshot_that_moves_a_memory_to_another_session_is_caught_by_verify(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within its bounds a snapshot is trusted by a reader (16.3, 16.8: it is the writer's word,
    as a signed checkpoint covers it); the verifier rebuilds and compares, and must say so."""
    from tests.test_lexical_snapshot import forge, honest

    p, _ = _sessioned(tmp_path, monkeypatch)
    _, blob = honest(p)
    forge(p, _ses_ix_swapped(blob))
    rep = capsule.verify(p)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "lexical", rep.first_error


def test_tokenizer2_from_many_threads_at_once() -> None:
    """Threads tokenizing texts with marks never met before (each thread its own) while the
    shared mark set grows: no 'set changed size during iteration', and the same tokens as one
    thread alone gives."""
    import threading
    import unicodedata

    from capsule.search.tokenize import tokenize2

    marks = [chr(c) for c in range(0x0900, 0x0DFF) if unicodedata.category(chr(c)) in ("Mc", "Me")]
    texts = [f"k{m}a word{i} caf\u00e9 {m}x" for i, m in enumerate(marks)]
    want = {t: None for t in texts}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(part: list[str]) -> None:
        try:
            start.wait()
            for t in part:
                want[t] = tokenize2(t)  # type: ignore[assignment]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(texts[i::8],)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert all(want[t] == tokenize2(t) for t in texts)
