"""Regressions from a new-user pass over the CLI and library (a fresh-context review).

Each test names the defect it pins; the CLI ones run `capsule` in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import capsule


def cli(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "CAPSULE_IDENTITY"}
    return subprocess.run([str(Path(sys.executable).with_name("capsule")), *map(str, args)], capture_output=True,
                          text=True, timeout=120, env={**base, "COLUMNS": "200", "CAPSULE_SCRYPT_LOG_N": "10", **env})


def ok(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    r = cli(*args, **env)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


# --- 1: an encrypted capsule with an INDEX frame and a lifecycle event ------------------------------
# The kind walk read each INDEX's payload with the sealed frame's header, so every liveness fold
# (list, get, state, search, put ...) of such a file raised "this capsule is encrypted" with the key.


@pytest.mark.parametrize("how", ["recipient", "passphrase"])
def test_an_encrypted_capsule_with_an_index_survives_every_lifecycle_verb(tmp_path: Path, how: str) -> None:
    key = capsule.generate_key()
    seal: dict[str, object] = {"recipients": [key.public_key]} if how == "recipient" else {"passphrase": "pw pw pw"}
    unseal: dict[str, object] = {"identity": key} if how == "recipient" else {"passphrase": "pw pw pw"}
    p = tmp_path / "sealed.capsule"
    with capsule.create(p, scrypt_log_n=10, **seal) as cap:  # type: ignore[arg-type]
        with cap.commit() as tx:
            ids = [tx.remember(f"fact {i} about the launch", tags=["t"]) for i in range(5000)]  # past an INDEX
        with cap.commit() as tx:
            tx.forget(ids[0], reason="stale")
        with cap.commit() as tx:
            tx.redact(ids[1], reason="secret")
        with cap.commit() as tx:
            new = tx.supersede(ids[2], "fact 2, revised")
        with cap.commit() as tx:
            tx.promote(ids[3], "validated")
    with capsule.open(p, **unseal) as cap:  # type: ignore[arg-type]
        st = cap.state()
        live = {m["id"] for tier in st.memories.values() for m in tier}
        assert ids[0] not in live and ids[1] not in live and ids[2] not in live and new in live
        assert len(live) == 4998
        assert cap.search("revised", k=1)[0].id == new
    assert capsule.verify(p, **unseal).ok  # type: ignore[arg-type]
    with capsule.open(p, "a", **unseal) as cap, cap.commit() as tx:  # type: ignore[arg-type]
        tx.remember("after the events")


def test_cli_pack_encrypt_then_forget_keeps_the_capsule_readable(tmp_path: Path) -> None:
    ok("keygen", "-o", tmp_path / "a.key")
    src = tmp_path / "r.jsonl"
    src.write_text('{"text":"one"}\n{"text":"two"}\n')
    cap = tmp_path / "v.capsule"
    ok("pack", src, "-o", cap, "--encrypt", "-r", tmp_path / "a.key.pub")  # its close writes an INDEX
    rows = json.loads(ok("list", cap, "-i", tmp_path / "a.key", "--json").stdout)
    ok("forget", cap, rows[0]["id"], "-i", tmp_path / "a.key", "--reason", "x")
    after = json.loads(ok("list", cap, "-i", tmp_path / "a.key", "--json").stdout)
    assert [r["id"] for r in after] == [r["id"] for r in rows[1:]]
    for verb in (("state",), ("log",), ("timeline",), ("verify",), ("search", "two")):
        ok(verb[0], cap, *verb[1:], "-i", tmp_path / "a.key")


# --- 2: a first push published a file damaged before its last INDEX ----------------------------------
# An open reads from the last INDEX on (6.3), so push shipped such a file and every pull refused it.


def _commit_offsets(data: bytes) -> list[int]:
    import struct

    out, at = [], 64
    while at + 32 <= len(data):
        length, ftype = struct.unpack("<IB", data[at : at + 5])
        if ftype == 0x82:
            out.append(at)
        at += length
    return out


def test_a_first_push_refuses_a_file_damaged_before_its_last_index(tmp_path: Path) -> None:
    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap:
        for i in range(40):  # one commit each: INDEX frames follow, so an open skips the early frames
            with cap.commit() as tx:
                tx.remember(f"fact {i}")
    data = bytearray(p.read_bytes())
    bad = _commit_offsets(bytes(data))[1] + 60
    data[bad] ^= 0x10
    p.write_bytes(bytes(data))
    remote = tmp_path / "remote"
    r = cli("push", p, remote.as_uri())
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "nothing was pushed" in r.stderr, r.stderr
    assert not (remote / "manifests").exists() or not any((remote / "manifests").iterdir())
    assert p.read_bytes() == bytes(data)  # only read
    good = tmp_path / "g.capsule"
    with capsule.create(good) as cap, cap.commit() as tx:
        tx.remember("fine")
    ok("push", good, (tmp_path / "remote2").as_uri())


# --- 3: a fork child compacted its parent's file in place; the parent's next commits were lost ----


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("out", [None, "copy.capsule"])
def test_a_fork_child_cannot_compact_through_the_parents_writer(tmp_path: Path, out: str | None) -> None:
    p = tmp_path / "f.capsule"
    cap = capsule.create(p)
    with cap.commit() as tx:
        tx.remember("before the fork")
    pid = os.fork()
    if pid == 0:  # the child: every write through the inherited writer is refused
        try:
            cap.compact(None if out is None else tmp_path / out)
        except capsule.UsageError:
            os._exit(7)
        except BaseException:
            os._exit(8)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
    with cap.commit() as tx:
        rid = tx.remember("the parent's commit after the child tried")
    cap.close()
    with capsule.open(p) as again:
        assert rid in again and len(again) == 2
    assert not (tmp_path / "copy.capsule").exists()


# --- 4: a reader opening while the writer cuts a torn tail got a raw struct.error -------------------


def test_the_tail_locator_of_a_file_that_shrank_while_read_is_none(tmp_path: Path) -> None:
    from capsule.core import constants as C
    from capsule.format.scan import tail_commit_offset

    class Shrunk:  # pread past the new end returns what is left: fewer bytes than asked
        def pread(self, offset: int, n: int) -> bytes:
            return b"\0" * (n // 2)

    assert tail_commit_offset(Shrunk(), C.HEADER_SIZE + 4096) is None


def test_readers_racing_a_torn_tail_repair_get_a_snapshot_or_a_library_error(tmp_path: Path) -> None:
    p = tmp_path / "race.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("first")
        with cap.commit() as tx:
            for i in range(3000):
                tx.remember(f"big {i} " + os.urandom(2000).hex())
    os.truncate(p, p.stat().st_size - 10)  # a torn tail: the next writer cuts it back
    reader = ("import capsule, sys, time\nend = time.time() + 2\nwhile time.time() < end:\n"
              "    try:\n        with capsule.open(sys.argv[1]) as c: len(c)\n"
              "    except capsule.CapsuleError: pass\n")
    rp = subprocess.Popen([sys.executable, "-c", reader, str(p)], stderr=subprocess.PIPE, text=True)
    import time

    time.sleep(0.4)
    with capsule.open(p, "a") as w, w.commit() as tx:
        tx.remember("after recovery")
    _, err = rp.communicate(timeout=60)
    assert rp.returncode == 0, err


# --- 5: verify misread frame 0 (no chain seed) when checking a lexical snapshot ---------------------


def test_a_lexical_snapshot_over_frame_zero_verifies(tmp_path: Path) -> None:
    from capsule.core import constants as C
    from capsule.core.clock import default_clock
    from capsule.format.file import WriteHandle
    from capsule.format.frames import FileHeader, Merkle, new_file_id
    from capsule.format.scan import Snapshot
    from capsule.handle.capsule import Capsule
    from capsule.handle.encrypting import begin_file

    p = tmp_path / "lex0.capsule"
    h = WriteHandle(p, create=True)
    fid = new_file_id(None)
    header, _ = begin_file(h, fid, C.FORMAT_MINOR, None, plain=FileHeader(fid))
    cap = Capsule(p, h, Snapshot(header, C.HEADER_SIZE, None, header.chain_seed, Merkle(), 0), "a", default_clock())
    with cap.commit() as tx:  # a first commit holding records: the RECORDS frame is frame 0, at offset 64
        for i in range(300):
            tx.remember(f"first commit memory {i}")
    cap.close()
    with capsule.open(p, "a") as cap, cap.commit() as tx:
        for i in range(600):
            tx.remember(f"second commit memory {i}")
    rep = capsule.verify(p)
    assert rep.ok, rep.first_error


# --- 6: a living fork child kept the writer's flock after the parent closed ----------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_the_parent_that_closes_its_writer_frees_the_lock_while_a_fork_child_lives(tmp_path: Path) -> None:
    p = tmp_path / "lock.capsule"
    cap = capsule.create(p)
    with cap.commit() as tx:
        tx.remember("a")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child lives on, holding its copy of the descriptor, until told to go
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    try:
        cap.close()
        with capsule.open(p, "a") as again, again.commit() as tx:  # no wait: the lock is free now
            tx.remember("b")
        with pytest.raises(capsule.Locked), capsule.open(p, "a"), capsule.open(p, "a"):
            pass  # and it is still a real lock
    finally:
        os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)
    with capsule.open(p) as done:
        assert len(done) == 2


# --- 7: re-adding a forgotten record after a compaction that purged it left it dead -----------------


@pytest.mark.parametrize("keep", [None, "history", "checkpoints", "live"])
def test_re_adding_a_forgotten_record_makes_it_live_whatever_the_compaction(tmp_path: Path, keep: str | None) -> None:
    p = tmp_path / "readd.capsule"
    cap = capsule.create(p)
    with cap.commit() as tx:
        rid = tx.remember("the wiki moved", time=1000)
        tx.remember("an unrelated fact", time=1001)
    with cap.commit() as tx:
        tx.forget(rid)
    if keep is not None:
        cap.compact(keep=keep)
        cap = capsule.open(p, "a")
    with cap.commit() as tx:
        again = tx.remember("the wiki moved", time=1000)
    assert again == rid
    live = {m["id"] for ms in cap.state().memories.values() for m in ms}
    cap.close()
    assert rid in live and len(live) == 2
    assert capsule.verify(p).ok
    with capsule.open(p) as back:  # and a reopen agrees
        assert rid in {m["id"] for ms in back.state().memories.values() for m in ms}


# --- 8: a reader's refresh() after an in-place compaction stayed on the old file in silence -------


def test_a_readers_refresh_says_the_file_was_replaced(tmp_path: Path) -> None:
    p = tmp_path / "r.capsule"
    w = capsule.create(p)
    with w.commit() as tx:
        a = tx.remember("alpha")
    r = capsule.open(p)
    with w.commit() as tx:
        tx.remember("beta")
    assert r.refresh() is True and len(r) == 2  # an append: the reader moves on
    w.compact(keep="history")
    with pytest.raises(capsule.UsageError, match="was replaced"):
        r.refresh()
    assert a in r  # it still reads the file it opened
    r.close()
    with capsule.open(p) as fresh:
        assert len(fresh) == 2


# --- 9: CLI wording a new user tripped on -------------------------------------------------------------


def test_state_says_how_many_older_memories_it_did_not_show(tmp_path: Path) -> None:
    p = tmp_path / "s.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        for i in range(7):
            tx.remember(f"fact {i}", time=1000 + i)
    text = ok("state", p).stdout
    assert "fact 6" in text and "fact 1" not in text
    assert "... 2 older (all of them: --json, or capsule list --tier working)" in text


def test_get_says_when_a_record_is_no_longer_live(tmp_path: Path) -> None:
    p = tmp_path / "g.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            a = tx.remember("old fact")
        with cap.commit() as tx:
            tx.supersede(a, "new fact")
    assert "not live" in ok("get", p, a).stdout
    assert json.loads(ok("get", p, a, "--json").stdout)["live"] is False
    new = json.loads(ok("list", p, "--json").stdout)[0]["id"]
    assert "not live" not in ok("get", p, new).stdout
    assert json.loads(ok("get", p, new, "--json").stdout)["live"] is True


def test_errors_name_the_cli_options_not_the_library_ones(tmp_path: Path) -> None:
    ok("keygen", "-o", tmp_path / "k.key")
    r = cli("keygen", "-o", tmp_path / "k.key")
    assert r.returncode == 2 and "overwrite=True" not in r.stderr and "remove it first" in r.stderr, r.stderr
    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("x")
    r = cli("diff", p, "--from", "nosuch", "--to", "1")
    assert r.returncode != 0 and "--at" not in r.stderr and "'nosuch'" in r.stderr, r.stderr
    r = cli("report", p, "-o", tmp_path / "no" / "such" / "r.html")
    assert r.returncode == 2 and ".tmp" not in r.stderr and "no such folder" in r.stderr, r.stderr


# --- 10: pack --append of an unchanged JSONL file packed every line again --------------------------


def test_pack_append_of_the_same_jsonl_adds_nothing_and_a_changed_one_only_its_new_lines(tmp_path: Path) -> None:
    src = tmp_path / "m.jsonl"
    src.write_text('{"text":"alice owns billing"}\n{"text":"p95 is 300 ms","tags":["perf"]}\n'
                   '{"text":"fixed","time":"2025-01-01T00:00:00Z"}\n{"kind":"note","text":"a note"}\n')
    p = tmp_path / "m.capsule"
    capsule.pack(src, p)
    with capsule.open(p) as cap:
        first = len(cap)
    again = capsule.pack(src, p, append=True)
    assert again.new == 0 and again.records == 0
    assert again.sync.unchanged.files == 1 and again.sync.unchanged.chunks == 4
    with capsule.open(p) as cap:
        assert len(cap) == first
    with src.open("a") as f:
        f.write('{"text":"a new line"}\n')
    changed = capsule.pack(src, p, append=True)
    assert changed.new == 1 and changed.sync.changed.files == 1 and changed.sync.unchanged.chunks == 4
    with capsule.open(p, "a") as cap:
        texts = [m.text for m in cap.live("memory")]
        assert sorted(texts) == ["a new line", "alice owns billing", "fixed", "p95 is 300 ms"]
        gone = next(m.id for m in cap.live("memory") if m.text == "alice owns billing")
        with cap.commit() as tx:
            tx.forget(gone)
    back = capsule.pack(src, p, append=True)  # a forgotten line is packed again
    assert back.new == 1
    with capsule.open(p) as cap:
        assert sorted(m.text for m in cap.live("memory")).count("alice owns billing") == 1
    r = ok("pack", src, "-o", p, "--append", "--json")
    assert json.loads(r.stdout)["new"] == 0


# --- 11: run_once nested in its own effect said InDoubt ----------------------------------------------


def test_run_once_nested_in_its_own_effect_is_a_usage_error(tmp_path: Path) -> None:
    ran: list[str] = []
    with capsule.create(tmp_path / "a.capsule") as cap:
        with pytest.raises(capsule.UsageError, match="already being run by this thread") as e:
            cap.run_once("k", lambda: cap.run_once("k", lambda: ran.append("inner")))
        assert not isinstance(e.value, capsule.InDoubt)
        assert ran == []
        assert cap.run_once("other", lambda: "fine") == "fine"  # the key's lock was released


# --- 12: a second attack on this session's changes ------------------------------------------------


def _pack_lines(tmp_path: Path, name: str, *lines: str) -> Path:
    src = tmp_path / name
    src.write_text("".join(line + "\n" for line in lines))
    return src


def test_pack_append_packs_again_a_constraint_or_identity_line_to_make_it_current(tmp_path: Path) -> None:
    p = tmp_path / "cs.capsule"
    capsule.create(p).close()
    on = _pack_lines(tmp_path, "on.jsonl", '{"kind": "constraint", "text": "no deploys on Friday"}')
    off = _pack_lines(tmp_path, "off.jsonl",
                      '{"kind": "constraint", "text": "no deploys on Friday", "status": "revoked"}')
    for src in (on, off, on):
        assert capsule.pack(src, p, append=True, embedder=None).new == 1
    with capsule.open(p) as cap:
        assert [c["text"] for c in cap.state().to_dict()["constraints"]] == ["no deploys on Friday"]
    a = _pack_lines(tmp_path, "a.jsonl", '{"kind": "identity", "agent_id": "a1", "name": "Alice"}')
    b = _pack_lines(tmp_path, "b.jsonl", '{"kind": "identity", "agent_id": "a1", "name": "Bob"}')
    for src in (a, b, a):
        capsule.pack(src, p, append=True, embedder=None)
    with capsule.open(p) as cap:
        assert cap.state().to_dict()["identity"]["name"] == "Alice"


def test_pack_append_keeps_a_lines_own_new_embedding_and_checks_its_dimension(tmp_path: Path) -> None:
    p = tmp_path / "v.capsule"
    capsule.pack(_pack_lines(tmp_path, "a.jsonl", '{"text": "alpha fact", "embedding": [0.1, 0.2, 0.3]}'), p)
    same = capsule.pack(_pack_lines(tmp_path, "a2.jsonl", '{"text": "alpha fact", "embedding": [0.1, 0.2, 0.3]}'),
                        p, append=True)
    assert same.new == 0
    moved = capsule.pack(_pack_lines(tmp_path, "b.jsonl", '{"text": "alpha fact", "embedding": [0.9, 0.0, 0.0]}'),
                         p, append=True)
    assert moved.new == 1
    with pytest.raises(capsule.InvalidRecordError, match="line 1: embedding has dimension 4"):
        capsule.pack(_pack_lines(tmp_path, "z.jsonl", '{"text": "alpha fact", "embedding": [1, 2, 3, 4]}'),
                     p, append=True)


def test_pack_append_renews_a_memory_with_a_ttl(tmp_path: Path) -> None:
    p = tmp_path / "t.capsule"
    src = _pack_lines(tmp_path, "t.jsonl", '{"text": "a short-lived fact", "ttl": 1}')
    capsule.pack(src, p, embedder=None)
    assert capsule.pack(src, p, append=True, embedder=None).new == 1  # its copy may have expired: a fresh one


def test_refresh_after_a_change_of_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        with capsule.create(tmp_path / d / "x.capsule") as c, c.commit() as tx:
            tx.remember(d)
    monkeypatch.chdir(tmp_path / "a")
    r = capsule.open("x.capsule")
    with capsule.open(tmp_path / "a" / "x.capsule", "a") as w, w.commit() as tx:
        tx.remember("new")
    monkeypatch.chdir(tmp_path / "b")  # another x.capsule here: not the reader's file
    assert r.refresh() is True and len(r) == 2
    r.close()


def test_the_mcp_service_reopens_when_refresh_finds_the_file_replaced(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from capsule.integrations import _mcp_service as svc_mod

    p = tmp_path / "m.capsule"
    with capsule.create(p) as c, c.commit() as tx:
        tx.remember("fact")
    svc = svc_mod.Service(p, read_only=True)
    try:
        ident = svc._ident
        with capsule.open(p, "a") as w:
            with w.commit() as tx:
                tx.remember("after")
            w.compact(keep="history")  # the path now names a new file
        monkeypatch.setattr(svc_mod, "_identity", lambda _p: ident)  # the look before refresh misses it
        assert svc._read(lambda cap: len(cap)) == 2
    finally:
        svc.close()


def test_get_keeps_an_application_records_own_live_field(tmp_path: Path) -> None:
    from capsule.format.records import GenericRecord

    p = tmp_path / "g.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        rid = tx.put(GenericRecord("myapp.thing", {"kind": "myapp.thing", "time": 5, "live": "yes please", "x": 1}))
    assert json.loads(ok("get", p, rid, "--json").stdout)["live"] == "yes please"
    assert "yes please" in ok("get", p, rid).stdout


def test_rotate_keys_from_a_plain_key_to_a_sealed_one(tmp_path: Path) -> None:
    old, new, p = tmp_path / "old.key", tmp_path / "new.key", tmp_path / "k.capsule"
    ok("keygen", "-o", old)
    ok("keygen", "-o", new, "--passphrase-env", "P", P="seal pass")
    ok("init", p)
    ok("checkpoint", p, "--key", old, "--label", "c1")
    r = cli("rotate-keys", p, "--key", old, "--new", new, "--passphrase-env", "P", P="seal pass")
    assert r.returncode == 2 and "not encrypted" in r.stderr  # one passphrase for both: the old says no
    rot = json.loads(ok("rotate-keys", p, "--key", old, "--new", new, "--new-passphrase-env", "P", "--json",
                        P="seal pass").stdout)
    assert rot["version"] == 2 and len(rot["revoked"]) == 1
    ok("checkpoint", p, "--key", new, "--passphrase-env", "P", "--label", "c2", P="seal pass")
    ok("verify", p, "--trust", f"{new}.pub")


# --- 13: the integrations review ------------------------------------------------------------------


def test_the_id_of_an_over_long_request_is_read_from_its_end() -> None:
    from capsule.integrations._mcp_stdio import _last_id

    assert _last_id(b'xxxx","jsonrpc":"2.0","id":7}') == 7
    assert _last_id(b'xxxx"},"jsonrpc":"2.0","id":"req-9"}\n'.rstrip()) == "req-9"
    assert _last_id(b'xxxx","nested":{"id":7}}') is None  # an inner object's id is not the request's
    assert _last_id(b'xxxx","id":true}') is None and _last_id(b'xxxx') is None


def test_an_over_long_request_from_the_mcp_client_gets_an_error_not_silence(tmp_path: Path) -> None:
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
    from mcp.shared.exceptions import McpError

    p = tmp_path / "big.capsule"
    capsule.create(p).close()

    async def main() -> str:
        params = StdioServerParameters(command=str(Path(sys.executable).with_name("capsule")),
                                       args=["serve", str(p), "--mcp"])
        async with stdio_client(params) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            with anyio.fail_after(60):  # the client puts the id last: before, no answer ever came
                try:
                    await s.call_tool("remember", {"text": "y" * (17 * 1024 * 1024)})
                except McpError as e:
                    got = str(e)
                else:
                    got = "answered"
            alive = await s.call_tool("search", {"query": "y"})
            assert not alive.isError
            return got

    assert "longer than" in anyio.run(main)


def test_a_query_vector_is_checked_like_a_stored_one(tmp_path: Path) -> None:
    plain, emb = tmp_path / "plain.capsule", tmp_path / "emb.capsule"
    with capsule.create(plain) as c, c.commit() as tx:
        tx.remember("hello")
    with capsule.create(emb) as c, c.commit() as tx:
        tx.remember("hello", embedding=[0.1, 0.2])
    with capsule.open(plain) as c:
        assert c.search(vector=[1.0, 2.0]) == []  # no vectors yet: nothing to find (not an error)
        with pytest.raises(capsule.UsageError, match="finite float32"):
            c.search(vector=[1e39, 2.0])
    with capsule.open(emb) as c:
        with pytest.raises(capsule.UsageError, match="finite float32"):  # 1e39 is inf as float32
            c.search(vector=[1e39, 2.0])
        with pytest.raises(capsule.UsageError, match="list of numbers"):
            c.search(vector=["a", 1])
        assert len(c.search(vector=[1.0, 2.0])) == 1


def test_a_time_outside_the_nanosecond_range_names_the_range(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "t.capsule") as c, c.commit() as tx:
        for when in ("9999-12-31T00:00:00Z", "1960-01-01T00:00:00Z"):
            with pytest.raises(capsule.InvalidRecordError, match="outside 1970-01-01 .. 2262-04-11"):
                tx.remember("x", valid_from=when)


def test_the_mcp_search_tool_takes_an_integral_float_for_k(tmp_path: Path) -> None:
    from capsule.integrations._mcp_service import Service

    p = tmp_path / "k.capsule"
    with capsule.create(p) as c, c.commit() as tx:
        for i in range(8):
            tx.remember(f"note {i}")
    svc = Service(p, read_only=True)
    try:
        assert len(svc.search({"query": "note", "k": 5.0})["hits"]) == 5
        with pytest.raises(capsule.UsageError, match="k must be an integer"):
            svc.search({"query": "note", "k": 5.5})
    finally:
        svc.close()


# --- 14: SIGTERM during pack sometimes said "could not be read again (Bad file descriptor)" ----------


def test_an_interrupt_as_a_file_is_opened_surfaces_as_the_interrupt(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from capsule.ingest import source

    f = tmp_path / "x.md"
    f.write_text("hi")

    def interrupted(real: Any) -> Any:
        def call(*a: Any, **k: Any) -> Any:
            real(*a, **k).close()  # the file object is made, then dropped (closing its descriptor) ...
            raise KeyboardInterrupt  # ... by a signal handled just after
        return call

    monkeypatch.setattr(os, "fdopen", interrupted(os.fdopen))
    monkeypatch.setattr(source, "open", interrupted(open), raising=False)
    with pytest.raises(KeyboardInterrupt):  # was OSError(EBADF) from closing the descriptor twice
        source.read_regular(f, 100, "a test")


def test_a_blank_checkpoint_label_is_refused(tmp_path: Path) -> None:
    key = capsule.generate_key()
    with capsule.create(tmp_path / "c.capsule") as cap:
        size = cap.size
        for label in ("", "   "):
            with pytest.raises(capsule.UsageError, match="non-blank"):
                cap.checkpoint(label, key=key)
        assert cap.size == size and cap.checkpoint("day-1", key=key).label == "day-1"


# --- 15: a damaged segment on the remote could not be mended ---------------------------------------


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_push_check_mends_a_damaged_or_missing_segment(tmp_path: Path, damage: str) -> None:
    import capsule.sync

    p, remote = tmp_path / "x.capsule", tmp_path / "r"
    with capsule.create(p) as cap:
        for text in ("one", "two"):
            with cap.commit() as tx:
                tx.remember(text)
            capsule.sync.push(p, remote.as_uri())
    seg = sorted((remote / "segments").iterdir())[-1]
    if damage == "flip":
        b = bytearray(seg.read_bytes())
        b[len(b) // 2] ^= 0xFF
        seg.write_bytes(bytes(b))
    else:
        seg.unlink()
    r = cli("pull", remote.as_uri(), tmp_path / "y.capsule")
    assert r.returncode == 1 and "--check" in r.stderr, r.stderr  # the refusal says how to mend it
    assert capsule.sync.push(p, remote.as_uri()).status == "up-to-date"  # a plain push does not look
    rep = capsule.sync.push(p, remote.as_uri(), check=True)
    assert rep.status == "up-to-date" and rep.repaired == [f"segments/{seg.name}"]
    ok("pull", remote.as_uri(), tmp_path / "y.capsule")
    assert capsule.sync.push(p, remote.as_uri(), check=True).repaired == []
    with capsule.open(tmp_path / "y.capsule") as y:
        assert sorted(m.text for m in y.live("memory")) == ["one", "two"]
