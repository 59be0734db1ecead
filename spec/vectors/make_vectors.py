"""Build the golden vectors of spec/format.md, in reproducible mode.

    python spec/vectors/make_vectors.py            # rewrite spec/vectors/
    python spec/vectors/make_vectors.py --check    # rebuild in a temp dir and compare

tests/test_vectors.py imports ``build`` and checks both the committed bytes and
a fresh rebuild byte for byte. Changing what this script writes is a format
change: bump the version and note it in spec/CHANGES.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import capsule
from capsule.questions.diff_files import lineage_of

EPOCH = 1767225600  # 2026-01-01T00:00:00Z
HERE = Path(__file__).resolve().parent


def _ids_roots(path: Path, identity: Any = None) -> dict[str, Any]:
    with capsule.open(path, identity=identity) as cap:
        return {
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "bytes": path.stat().st_size,
            "file_id": cap.file_id,
            **_records_doc([r.id for r in cap.records()]),
            "commit_roots": [row.root for row in cap.log()],
            "state_root": cap.state_root,
        }


def _records_doc(ids: list[str]) -> dict[str, Any]:
    if len(ids) <= 20:
        return {"records": ids}
    return {"record_count": len(ids), "records_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()}


def build(out: Path) -> dict[str, Any]:
    """Write every vector into ``out`` and return the expected-values document."""
    os.environ["SOURCE_DATE_EPOCH"] = str(EPOCH)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.capsule"):  # only this folder: v1.0/ ... v1.3/ keep the older vectors
        old.unlink()
    docs: dict[str, Any] = {}

    # 1. A new, empty capsule: header + the first COMMIT.
    p = out / "empty.capsule"
    capsule.create(p).close()
    docs["empty"] = _ids_roots(p)

    # 2. Memories exercising every memory field and the canonical rules.
    p = out / "memories.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("deploys are frozen on Fridays", tags=["policy", "ops", "ops"])
            tx.remember("cafe\u0301 opens at 8", meta={"z": 1, "a": [1.5, None, True], "m": {"b": b"\x00\x01"}})
            tx.remember("scratch note", tier="scratch", ttl=3_600_000_000_000, source="planner")
        with cap.commit() as tx:
            tx.remember("vector memory", embedding=[0.25, -0.0, 1.0, -2.5], time=EPOCH * 10**9 - 1)
            tx.put_value({"kind": "memory", "text": "validated fact", "tier": "validated", "tags": ["kb"]})
    docs["memories"] = _ids_roots(p)

    # 3. A torn tail: the memories capsule plus half of an interrupted append.
    torn = out / "torn.capsule"
    scratch = Path(tempfile.mkdtemp()) / "x.capsule"
    scratch.write_bytes(p.read_bytes())
    with capsule.open(scratch, "a") as cap, cap.commit() as tx:
        tx.remember("this commit is torn")
    data = scratch.read_bytes()
    cut = len(p.read_bytes()) + (len(data) - len(p.read_bytes())) // 2
    torn.write_bytes(data[:cut])
    scratch.unlink()
    docs["torn"] = {**_ids_roots(torn), "committed_bytes": len(p.read_bytes())}

    # 4. What a writer makes of it: truncate, RECOVERY frame, COMMIT, then new work.
    rec = out / "recovered.capsule"
    rec.write_bytes(torn.read_bytes())
    with capsule.open(rec, "a") as cap, cap.commit() as tx:
        tx.remember("written after recovery")
    docs["recovered"] = _ids_roots(rec)

    # 5. Enough records for TABLE and INDEX frames, with a merge of two tables; (1.4) two of
    #    three memories name a session, so the lexical snapshots hold session keys (16.8).
    p = out / "indexed.capsule"
    for batch in range(3):
        # two writer sessions: the second close merges the first session's table
        with capsule.create(p, exist_ok=True) as cap, cap.commit() as tx:
            for i in range(300):
                tx.remember(f"m{batch}.{i}", meta={"session": f"s{batch}.{i // 50}"} if i % 3 else None)
    docs["indexed"] = _ids_roots(p)

    # 6. Agent state: every kind, a signed checkpoint, a key rotation, a rollback.
    #    Test keys come from fixed seeds (Ed25519 signing is deterministic).
    k1, k2, k3 = (capsule.PrivateKey.from_seed(bytes([n]) * 32) for n in (1, 2, 3))
    p = out / "agent.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.set_identity("agent-7", name="Ada", model="example-model", config={"temperature": 0.2},
                            keys=[k1.public_key])
            fact = tx.remember("the staging database is db-stg-2", tags=["infra"])
            rule = tx.constrain("no production deploys on Fridays", scope="deploy")
            tx.approve(rule, k1)
            tx.decide("deploy on Thursday", rationale="Friday freeze", evidence=[fact], alternatives=["wait"])
            tx.note("collected facts for the deploy")
        cap.checkpoint("day-1", key=k1, runtime_state=b'{"step": 1}')
        with cap.commit() as tx:
            tx.remember("deploy went out", tier="validated")
            tx.constrain("no production deploys on Fridays", scope="deploy", status="revoked")
        cap.rotate_keys(capsule.Keyset.of([k2.public_key, k3.public_key], threshold=2, version=2),
                        old_signers=[k1], new_signers=[k2, k3])
        cap.checkpoint("day-2", key=[k2, k3])
        cap.rollback("day-1", key=[k2, k3])
    docs["agent"] = {**_ids_roots(p), "checkpoints": _checkpoints(p), "keyset": _keyset(p),
                     "trust_key": k1.public_key.to_text(), "approvals": _approvals(p)}

    # 7. Search (1.1): a vindex record, memories with vectors, a snapshot blob named by
    #    the INDEX, one memory after it (inserted on open), and expected results. (1.4) The
    #    first nine name one of three interleaved sessions and two more hold identifiers and
    #    accents, so the lexical searches exercise tokenizer 2 and the window (16.4.1).
    p = out / "search.capsule"
    with capsule.create(p) as cap:
        cap.configure_vectors(space="cosine", dim=4, M=4, ef_construction=20, seed=7)
        with cap.commit() as tx:
            for i in range(12):
                tx.remember(f"fact {i}: the {'red' if i % 2 else 'blue'} service", tags=[f"t{i % 3}"],
                            tier="validated" if i % 4 == 0 else "working",
                            embedding=[1.0, i / 4, (i % 3) - 1.0, 0.5 if i % 2 else -0.5],
                            meta={"session": i % 3} if i < 9 else None)
            tx.note("the blue service restarts nightly")
            tx.remember("Restarting: set CMAKE_BUILD_TYPE at the Café's node.js box", meta={"session": 0})
            tx.remember("C++ and C# builds restart weekly")
        cap.save_index()
        with cap.commit() as tx:
            tx.remember("fact 12: after the snapshot", embedding=[1.0, 3.0, 0.0, 0.5])
    with capsule.open(p) as cap:
        info = cap.index_info()

        def hits(**kw: Any) -> list[list[Any]]:
            return [[h.id, h.score] for h in cap.search(**kw)]

        # Each expectation's arguments are kept beside it (`queries`), so another
        # implementation can run the same searches (see README.md).
        queries: dict[str, dict[str, Any]] = {
            "vector_top3": {"vector": [1.0, 0.5, 0.0, 0.5], "k": 3, "mode": "vector"},
            "vector_t1_validated": {"vector": [1.0, 0.5, 0.0, 0.5], "k": 5, "mode": "vector", "tags": ["t0"],
                                    "tier": "validated"},
            "lexical_blue": {"query": "blue service", "k": 4, "mode": "lexical"},
            "hybrid": {"query": "red service", "vector": [1.0, 0.5, 0.0, 0.5], "k": 4, "mode": "hybrid"},
            "lexical_identifier": {"query": "cmake_build_type cafe", "k": 3, "mode": "lexical"},
            "lexical_window": {"query": "restarts nightly", "k": 6, "mode": "lexical"},
            "lexical_cpp": {"query": "C++ restarting", "k": 3, "mode": "lexical"},
        }
        docs["search"] = {
            **_ids_roots(p), "snapshot": info["snapshot"], "vectors": info["vectors"], "queries": queries,
            **{name: hits(**q) for name, q in queries.items()},
        }
    # 8. Lifecycles (1.3, 7.7.1, 13.6): two-clock memories, a world-change supersede, a
    #    correction, a promotion, a forget and a redaction, then a signed checkpoint.
    p = out / "lifecycle.capsule"
    day = 86_400 * 10**9
    t0 = EPOCH * 10**9
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            office = tx.remember("the office is in Leeds", valid_from=t0 - 400 * day)
            wrong = tx.remember("the printer is on floor 3")
            fact = tx.remember("backups run nightly", tier="scratch", tags=["ops"])
            gone = tx.remember("the intern's desk is by the window")
            secret = tx.remember("the wifi password is hunter2", tags=["secret"])
            temp = tx.remember("the heating is broken", valid_from=t0 - 10 * day, valid_to=t0 - 5 * day)
        with cap.commit() as tx:
            moved = tx.supersede(office, "the office is in York", valid_from=t0 - 30 * day,
                                 reason="the company moved", actor="ops-bot")
            fixed = tx.supersede(wrong, "the printer is on floor 2", reason="typo")
            promoted = tx.promote(fact, "validated", evidence=[moved], reason="seen in three runs")
            tx.forget(gone, reason="no longer relevant")
            tx.redact(secret, reason="credential leaked into memory", actor="security")
        cap.checkpoint("after-lifecycle", key=k1)
    with capsule.open(p) as cap:
        def valid_at(t: int) -> list[str]:
            return sorted(m["id"] for tier in cap.state(valid_at=t).memories.values() for m in tier)

        at = {"before_move": t0 - 100 * day, "during_heating": t0 - 7 * day, "now": t0}
        docs["lifecycle"] = {
            **_ids_roots(p), "checkpoints": _checkpoints(p), "trust_key": k1.public_key.to_text(),
            "ids": {"office": office, "moved": moved, "wrong": wrong, "fixed": fixed, "fact": fact,
                    "promoted": promoted, "gone": gone, "secret": secret, "temp": temp},
            "live": sorted(m["id"] for tier in cap.state().memories.values() for m in tier),
            "valid_at_times": at, "valid_at": {name: valid_at(t) for name, t in at.items()},
        }

    # 9. Compaction (1.3, 15.1, 15.2): the lifecycle capsule compacted under each policy;
    #    the redacted payload is gone, the signed checkpoint carries over where its state is kept.
    for keep in ("history", "live"):
        c = out / f"compacted-{keep}.capsule"
        capsule.compact(p, c, keep=keep)
        with capsule.open(c) as cap:
            lin = lineage_of(cap)
        rep = capsule.verify(c, parent=p, trust=k1.public_key)
        docs[f"compacted-{keep}"] = {**_ids_roots(c), "lineage": _lineage(lin), "trusted_checkpoints":
                                     rep.trusted_checkpoints, "verify_ok": rep.ok}

    # 10. Encryption at rest (10): sealed for k1 and a passphrase (scrypt log_n 10), the file key
    #     derived from k1's seed (reproducible mode, 10.5); enough records for sealed TABLE, INDEX and
    #     BLOB frames; a checkpoint signed by k1; then k2 added by a second KEYSLOT frame (10.3).
    p = out / "encrypted.capsule"
    secret = "correct horse battery staple"
    with capsule.create(p, recipients=[k1.public_key], passphrase=secret, identity=k1, scrypt_log_n=10) as cap:
        with cap.commit() as tx:
            tx.remember("the vault code is 4711", tags=["secret"], embedding=[0.5, -0.25, 1.0, 0.0])
        with cap.commit() as tx:
            for i in range(300):
                tx.remember(f"sealed note {i} about the launch window", meta={"n": i})
        cap.checkpoint("sealed", key=k1)
    capsule.rekey(p, identity=k1, add=[k2.public_key])
    with capsule.open(p, identity=k1) as cap:
        h = cap._h
        assert h.crypt is not None and h.keyslots is not None
        enc = {"file_key": h.crypt.file_key.hex(), "key_id": h.keyslots.key_id.hex(),
               "recipients": [capsule.PublicKey(r).to_text() for r in h.keyslots.recipients],
               "passphrase": secret, "identity_seed": "01" * 32, "scrypt_log_n": 10}
    rep = capsule.verify(p, trust=k1.public_key)
    docs["encrypted"] = {**_ids_roots(p, identity=k1), **enc, "keyless_verify_ok": rep.ok,
                         "keyless_contents_checked": rep.contents_checked}

    # The offline `hash` embedder (16.5), pinned by the bytes of two vectors.
    vec = capsule.get_embedder("hash").embed(["Deploys freeze on Fridays.", ""])
    docs["search"]["hash_embedder"] = {"sha256": hashlib.sha256(vec.tobytes()).hexdigest(),
                                       "dim": int(vec.shape[1])}
    return docs


def _checkpoints(path: Path) -> list[dict[str, Any]]:
    with capsule.open(path) as cap:
        return [{k: c.to_dict()[k] for k in ("label", "seq", "hash", "state_root", "signers")}
                for c in cap.checkpoints()]


def _approvals(path: Path) -> dict[str, list[dict[str, Any]]]:
    """7.4: each approval of an active constraint, at day-1 (keyset {k1} in force) and at
    the end (rotated to {k2, k3}: k1's signature still checks, nothing vouches for k1)."""
    out = {}
    for at in ("day-1", None):
        with capsule.open(path, at=at) as cap:
            st = cap.state().to_dict()
        out[at or "last"] = [{"subject": c["id"], **{k: a[k] for k in ("id", "approver", "signature_ok", "verified")}}
                             for c in st["constraints"] for a in c["approvals"]]
    return out


def _lineage(lin: Any) -> dict[str, Any]:
    """The LINEAGE fields a second implementation must reproduce (15, 15.1, 15.2)."""
    v = lin.to_value()
    return {k: (x.hex() if isinstance(x, bytes) else x) for k, x in v.items() if k != "carried"} | {
        "carried": len(v.get("carried") or [])}


def _keyset(path: Path) -> str:
    with capsule.open(path) as cap:
        ks = cap.keyset
        assert ks is not None
        return ks.keyset_hash


def main() -> int:
    if "--check" in sys.argv:
        with tempfile.TemporaryDirectory() as d:
            docs = build(Path(d))
            want = json.loads((HERE / "vectors.json").read_text())
            ok = docs == want and all(
                (Path(d) / f).read_bytes() == (HERE / f).read_bytes() for f in os.listdir(d)
            )
        print("vectors match" if ok else "vectors DIFFER")
        return 0 if ok else 1
    docs = build(HERE)
    (HERE / "vectors.json").write_text(json.dumps(docs, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(docs)} vectors to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
