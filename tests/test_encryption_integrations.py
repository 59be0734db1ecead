"""Encryption at rest (spec 10) under the LangGraph adapters: opened inside capsule.unlocking(),
they read and write a sealed capsule, and nothing they store shows in the file's bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

import capsule

pytest.importorskip("langgraph.checkpoint.base")


def test_saver_on_an_encrypted_capsule_keeps_nothing_in_the_clear(tmp_path: Path) -> None:
    from langgraph.checkpoint.base import empty_checkpoint

    from capsule.integrations.langgraph import CapsuleSaver

    key = capsule.generate_key()
    p = tmp_path / "graph.capsule"
    capsule.create(p, recipients=[key.public_key]).close()
    cfg = {"configurable": {"thread_id": "thread-SECRET-7731", "checkpoint_ns": ""}}
    with capsule.unlocking(identity=key):
        saver = CapsuleSaver(p)
    ck = empty_checkpoint()
    ck["channel_values"] = {"note": "channel value SECRET-4411"}
    saver.put(cfg, ck, {"source": "input", "step": 0}, {})
    got = saver.get_tuple(cfg)
    assert got is not None and got.checkpoint["channel_values"]["note"] == "channel value SECRET-4411"
    raw = p.read_bytes()
    assert b"SECRET-7731" not in raw and b"SECRET-4411" not in raw
    with pytest.raises(capsule.KeyRequired):
        CapsuleSaver(p, read_only=True)  # outside unlocking(): no key, a clear refusal
    with capsule.unlocking(identity=key):
        reader = CapsuleSaver(p, read_only=True)
    assert reader.get_tuple(cfg) is not None
    assert capsule.verify(p, identity=key).ok


def test_store_on_an_encrypted_capsule(tmp_path: Path) -> None:
    from capsule.integrations.langgraph import CapsuleStore

    key = capsule.generate_key()
    p = tmp_path / "store.capsule"
    capsule.create(p, recipients=[key.public_key]).close()
    with capsule.unlocking(identity=key):
        store = CapsuleStore(p)
    store.put(("users", "u1"), "prefs", {"units": "metric SECRET-9090"})
    item = store.get(("users", "u1"), "prefs")
    assert item is not None and item.value["units"] == "metric SECRET-9090"
    assert b"SECRET-9090" not in p.read_bytes()


def test_mcp_service_opens_an_encrypted_capsule_from_worker_threads(tmp_path: Path) -> None:
    """The MCP server's handlers run in worker threads, which do not inherit capsule.unlocking():
    the service keeps the keys it started with for every later open (reads and writes)."""
    import threading

    from capsule.integrations._mcp_service import Service

    key = capsule.generate_key()
    p = tmp_path / "mcp.capsule"
    capsule.create(p, recipients=[key.public_key]).close()
    with capsule.unlocking(identity=key):
        svc = Service(p)
    got: list[object] = []

    def worker() -> None:
        try:
            got.append(svc.remember({"text": "remembered from a worker SECRET-5151"}))
            got.append(svc.search({"query": "remembered worker"}))
        except BaseException as e:  # noqa: BLE001 - the assertion below reports it
            got.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    svc.close()
    assert not any(isinstance(g, BaseException) for g in got), got
    assert b"SECRET-5151" not in p.read_bytes()
    with capsule.open(p, identity=key) as cap:
        assert [m.text for m in cap.records(kind="memory")] == ["remembered from a worker SECRET-5151"]


def test_an_identity_in_scope_is_not_made_a_recipient(tmp_path: Path) -> None:
    """create(passphrase=) inside capsule.unlocking(identity=k) seals for the passphrase only:
    the key in scope (there to open files) must not silently become a reader of new ones."""
    key = capsule.generate_key()
    p = tmp_path / "pw.capsule"
    with capsule.unlocking(identity=key):
        capsule.create(p, passphrase="pw", scrypt_log_n=10).close()
    with pytest.raises(capsule.WrongKey):
        capsule.open(p, identity=key)
    with capsule.open(p, passphrase="pw") as cap:
        assert cap.encrypted
