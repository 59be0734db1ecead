"""Vectors from two sources are not mixed in one index (a review's finding; spec 16.5).

- ``capsule pack lines.jsonl --append`` of lines carrying their own embeddings into a capsule whose
  vectors come from the hash embedder exited 0, said "3 vectors (hash embedder)", and stored the
  lines' vectors: a query embedded by hash never found them.
- ``CapsuleStore(path)`` (hash by default) opened a capsule whose vectors are the agent's own and
  wrote hash vectors beside them, though docs/langgraph-store.md says such a capsule is refused.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

import capsule
from capsule.integrations.langgraph import CapsuleStore

from .clirun import capsule_cli


def test_pack_append_refuses_lines_with_their_own_vectors_into_an_embedders_capsule(tmp_path: Path) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    (src / "a.md").write_text("a document about tides\n")
    out = tmp_path / "a.capsule"
    capsule_cli("pack", str(src), "-o", str(out), "--embedder", "hash")
    dim = capsule.open(out).vector_config().dim
    lines = tmp_path / "foreign.jsonl"
    rng = random.Random(3)
    lines.write_text("".join(json.dumps({"text": f"foreign vector {i}",
                                         "embedding": [rng.random() for _ in range(dim)]}) + "\n" for i in range(3)))
    before = out.read_bytes()
    r = capsule_cli("pack", str(lines), "-o", str(out), "--append", ok=False)
    assert r.returncode == 2 and "bring their own embeddings" in r.stderr, r.stderr
    assert out.read_bytes() == before
    # vouched for: the caller says they are the hash embedder's
    capsule_cli("pack", str(lines), "-o", str(out), "--append", "--embedder", "hash")  # exit 0
    with capsule.open(out) as cap:
        assert sum(1 for m in cap.records(kind="memory") if m.text.startswith("foreign")) == 3


def test_the_store_refuses_a_capsule_of_the_agents_own_vectors(tmp_path: Path) -> None:
    p = tmp_path / "agent.capsule"
    rng = random.Random(2)
    with capsule.create(p) as cap, cap.commit() as tx:
        for i in range(3):
            tx.remember(f"agent vec {i}", embedding=[rng.random() for _ in range(384)])
    before = p.read_bytes()
    with pytest.raises(capsule.UsageError, match="no embedder named"):
        CapsuleStore(p)
    assert p.read_bytes() == before
