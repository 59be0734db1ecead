"""Pins for the places spec/format.md used to leave to guesswork.

Each test names the section whose sentence it holds to the code, so an
implementation written from the spec alone and this reference agree on:
liveness (13.1, 7.7), restored records in commit order (7.3, 15), files without
a COMMIT (13.3), bad snapshots (13.3, 16.3), RECOVERY (8.3), task fields (7.9),
BLOB headers and canonical maps (3.4, 5.1), checkpoint signatures (14.9),
`after` (7.7), nesting depth and tags (5.1, 7.1), first-error offsets and check
names (13.3), minor versions (12.5), vectors.json (spec/vectors/README.md) and
table offsets (9.2).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import re
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.core import constants as C
from capsule.core.errors import CorruptError, InvalidRecordError
from capsule.format import canonical as canon
from capsule.format.blob import blob_parts
from capsule.format.commit import decode_records_payload, parse_index_payload, parse_recovery
from capsule.format.frames import FileHeader
from capsule.format.records import _REGISTRY, Memory, decode_record, encode_record
from capsule.handle.capsule import Capsule
from capsule.run import events as ev
from capsule.state.fold import live_records
from tests.test_tamper import Frame, copy_to, read_frames, rebuild

ROOT = Path(__file__).resolve().parent.parent
SPEC = (ROOT / "spec" / "format.md").read_text()
VEC = ROOT / "spec" / "vectors"
T0 = 1_700_000_000 * 1_000_000_000
SEC = 1_000_000_000
K1 = capsule.PrivateKey.from_seed(bytes([1]) * 32)
K2 = capsule.PrivateKey.from_seed(bytes([2]) * 32)
EMPTY_TREE = hashlib.sha256(b"").digest()


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


class Tick:
    def __init__(self, start: int = T0) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += SEC
        return self.now


def stored(rec: Any) -> Any:
    """The record as a reader sees it: encoded, then decoded with its id."""
    rid, data = encode_record(rec)
    return decode_record(canon.decode(data), rid)


def memory(text: str) -> Any:
    return stored(Memory.build(text, time=0))


def revert(drop: tuple[Any, ...] = (), restore: tuple[Any, ...] = ()) -> Any:
    ids = [[bytes.fromhex(r.id) if hasattr(r, "id") else r for r in xs] for xs in (drop, restore)]
    return stored(_REGISTRY["revert"].build(time=0, after=EMPTY_TREE, drop=ids[0], restore=ids[1]))


def nest(depth: int) -> dict[str, Any]:
    """A map of exactly this nesting depth (5.1: a flat map has depth 1)."""
    m: dict[str, Any] = {}
    for _ in range(depth - 1):
        m = {"a": m}
    return m


def live_ids(records: list[Any]) -> list[str]:
    return [r.id for r in live_records(records)]


# --- 13.1, 7.7: liveness is a set difference over an in-order fold of the reverts -------------


def test_13_1_a_drop_before_the_record_is_stored_keeps_it_dead() -> None:
    a, b = memory("a"), memory("b")
    assert live_ids([revert(drop=(a,)), a, b]) == [b.id]  # where the record stands does not matter


def test_13_1_restore_then_drop_and_drop_then_restore() -> None:
    a = memory("a")
    assert live_ids([a, revert(drop=(a,)), revert(restore=(a,))]) == [a.id]
    assert live_ids([a, revert(restore=(a,)), revert(drop=(a,))]) == []
    assert live_ids([a, revert(drop=(a,), restore=(a,))]) == [a.id]  # 7.7: drop before restore


def test_7_7_restore_of_an_event_a_live_id_or_a_stranger_changes_nothing() -> None:
    a, b = memory("a"), memory("b")
    event = revert(drop=(b,))
    stranger = hashlib.sha256(b"never stored").digest()
    recs = [a, b, event, revert(restore=(bytes.fromhex(event.id), a, stranger))]
    assert live_ids(recs) == [a.id]


def test_7_7_readd_is_a_restore_and_13_1_the_record_keeps_its_place(tmp_path: Path) -> None:
    """7.3: the restored `active` record sits where its bytes are, before the later `revoked`."""
    path = tmp_path / "a.capsule"
    with capsule.create(path, clock=Tick()) as cap:
        cap.checkpoint("empty", key=K1)
        with cap.commit() as tx:
            a = tx.constrain("no deploys", scope="deploy", time=T0)
        cap.rollback("empty")
        with cap.commit() as tx:
            b = tx.constrain("no deploys", scope="deploy", status="revoked", time=T0 + 1)
        before = cap.root
        with cap.commit() as tx:
            assert tx.constrain("no deploys", scope="deploy", time=T0) == a  # the same bytes
        last = list(cap.records(kind="revert"))[-1]
        assert last.restore == (bytes.fromhex(a),) and last.drop == () and last.to is None
        assert last.after.hex() == before  # 7.7: the previous COMMIT's root
        assert sum(1 for r in cap.records() if r.id == a) == 1  # stored once
        assert live_ids(list(cap.records())) == [a, b]
        assert cap.state().to_dict()["constraints"] == []  # b, later in commit order, decides
    assert capsule.verify(path).ok
    with capsule.fork(path, tmp_path / "fork.capsule") as child:  # 15: the same order
        assert [r.id for r in child.records()] == [a, b]


# --- 7.7, 15: `after` and the LINEAGE fields -------------------------------------------------------


def test_7_7_after_is_the_root_of_the_previous_commit_in_the_golden_vector() -> None:
    with capsule.open(VEC / "agent.capsule") as cap:
        commits = cap.log()
        for rec in cap.records(kind="revert"):
            off = cap._store.locate(bytes.fromhex(rec.id))[0]  # type: ignore[index]
            prev = [c for c in commits if c.offset < off][-1]
            assert rec.after.hex() == prev.root


def test_7_7_verify_refuses_a_wrong_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, clock=Tick()) as cap:
        cap.checkpoint("empty", key=K1)
        with cap.commit() as tx:
            tx.remember("dropped soon")
        monkeypatch.setattr(Capsule, "root", property(lambda self: "11" * 32))
        cap.rollback("empty")
    rep = capsule.verify(path)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "revert-after"


def test_15_lineage_names_the_fork_commit_root_seq_and_chain(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, clock=Tick()) as cap:
        cap.checkpoint("c1", key=K1)
        with cap.commit() as tx:
            tx.remember("x")
        c = cap._snap.commit
        ck = cap.checkpoints()[-1]
        file_id = cap.file_id
        assert c is not None
    data = path.read_bytes()
    assert data[c.end - 32 : c.end] == c.chain  # the COMMIT frame's own chain value
    capsule.fork(path, tmp_path / "f.capsule").close()
    rep = capsule.verify(tmp_path / "f.capsule", parent=path)
    assert rep.ok, rep.first_error
    assert rep.lineage == {"parent": file_id, "root": c.root.hex(), "tree_size": c.seq, "chain": c.chain.hex(),
                           "checkpoint": ck.hash.hex()}


# --- 13.3: a file without a COMMIT -------------------------------------------------------------


@pytest.mark.parametrize("cut", [64, 100], ids=["header-only", "first-commit-cut"])
def test_13_3_no_commit_opens_empty_but_fails_verify(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "a.capsule"
    path.write_bytes((VEC / "empty.capsule").read_bytes()[:cut])
    rep = capsule.verify(path)
    assert not rep.ok and rep.first_error is not None
    assert (rep.first_error["check"], rep.first_error["offset"], rep.first_error["seq"]) == ("no-commit", 64, 0)
    with capsule.open(path) as cap:
        assert len(cap) == 0 and list(cap.records()) == [] and cap.log() == []
        assert cap.root == EMPTY_TREE.hex() and cap.state_root == capsule.open(VEC / "empty.capsule").state_root
    with capsule.open(path, "a") as cap, cap.commit() as tx:
        tx.remember("first words")
    assert capsule.verify(path).ok
    _, frames = read_frames(path)
    assert (frames[0].ftype == C.FT_RECOVERY) == (cut > 64)  # 8.3: only when bytes were dropped


# --- 13.3, 16.3: a bad snapshot is absent to a reader and a failure to a verifier ---------------


def test_13_3_bad_snapshot_fails_verify_at_its_blob_frame_and_a_reader_rebuilds(tmp_path: Path) -> None:
    header, frames = read_frames(VEC / "search.capsule")
    blob = next(f for f in frames if f.ftype == C.FT_BLOB)
    blob.raw = blob.raw[:-1] + bytes([blob.raw[-1] ^ 1])  # consistent file, the blob's hash is wrong
    forged = copy_to(tmp_path, rebuild(header, frames))
    rep = capsule.verify(forged)
    assert not rep.ok and rep.first_error is not None
    assert (rep.first_error["check"], rep.first_error["offset"], rep.first_error["seq"]) == (
        "blob", blob.old_offset, blob.old_seq)
    with capsule.open(forged) as cap:
        hits = cap.search(vector=[1.0, 0.5, 0.0, 0.5], k=3, mode="vector")
        assert [h.id for h in hits] == [x[0] for x in json.loads((VEC / "vectors.json").read_text())
                                        ["search"]["vector_top3"]]
        assert cap.index_info()["doubt"]  # 16.2: SHOULD say so


# --- 8.3: RECOVERY -----------------------------------------------------------------------------


@pytest.mark.parametrize("change", [{"length": 0}, {"offset": 10_000}, {"extra": 1}],
                         ids=["empty", "after-itself", "unknown-key"])
def test_8_3_recovery_map_is_strict(change: dict[str, Any]) -> None:
    good = {"length": 5, "offset": 1000, "sha256": bytes(32)}
    parse_recovery(canon.encode(good), 1000, 3)
    with pytest.raises(CorruptError) as e:
        parse_recovery(canon.encode({**good, **change}), 1000, 3)
    assert e.value.check == "recovery"


def test_8_3_recovery_must_be_the_first_frame_of_its_commit(tmp_path: Path) -> None:
    assert capsule.verify(VEC / "recovered.capsule").ok
    header, frames = read_frames(VEC / "recovered.capsule")
    r = next(i for i, f in enumerate(frames) if f.ftype == C.FT_RECOVERY)
    rec, records = frames[r], frames[r + 1]
    assert records.ftype == C.FT_RECORDS
    size = frames[r + 2].old_offset - records.old_offset  # type: ignore[operator]
    moved = rec.old_offset + size  # type: ignore[operator]
    rec.raw = canon.encode({**canon.decode(rec.raw), "offset": moved})  # it still names itself
    frames[r], frames[r + 1] = records, rec
    forged = copy_to(tmp_path, rebuild(header, frames))
    _, now = read_frames(forged)
    assert now[r + 1].ftype == C.FT_RECOVERY and now[r + 1].old_offset == moved
    rep = capsule.verify(forged)
    assert not rep.ok and rep.first_error is not None
    assert (rep.first_error["check"], rep.first_error["offset"]) == ("recovery", moved)


# --- 7.9: task fields and defaults ---------------------------------------------------------------


def _spec_table(after: str) -> list[list[str]]:
    lines = SPEC[SPEC.index(after):].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


def _default(text: str) -> Any:
    if text[0].isdigit():
        return int(text.split()[0].replace(",", ""))
    return {"required": dataclasses.MISSING, '`""`': "", "`[]`": (), "`{}`": {}, "nil": None}[text]


def test_7_9_task_defaults_are_the_spec_table() -> None:
    rows = _spec_table("The fields (text is NFC and its limits count code points")
    assert rows, "7.9 field table not found"
    seen = set()
    for field, ops, _type, default in rows:
        for name in re.findall(r"`(\w+)`", field):
            if name == "op":
                continue
            for op in [o.strip() for o in ops.split(",")]:
                cls = ev.EVENT_TYPES[op] if op != "all" else ev.TaskAdded
                f = {x.name: x for x in dataclasses.fields(cls)}[name]
                want = _default(default)
                got = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                assert got == want or (want is dataclasses.MISSING and got is dataclasses.MISSING), (op, name)
                seen.add((cls, name))
    for cls in ev.EVENT_TYPES.values():  # every field of every event is in the table
        assert {f.name for f in dataclasses.fields(cls)} - {"time"} <= {n for c, n in seen if c is cls} | {
            "task"}, cls


def test_7_9_task_bounds_and_one_encoding() -> None:
    assert ev.TaskAdded(time=0, task="a").to_value() == {"op": "add", "task": "a", "time": 0}
    ev.TaskAdded(time=0, task="t" * 256, max_attempts=1000, priority=-(1 << 63))
    for bad in ({"task": "t" * 257}, {"task": ""}, {"max_attempts": 0}, {"max_attempts": 1001},
                {"deps": ["x", "x"]}, {"name": "n" * 1025}):
        with pytest.raises(ev.InvalidTaskEvent):
            ev.TaskAdded(**{"time": 0, "task": "a", **bad})
    with pytest.raises(capsule.CapsuleError):  # a default spelled out
        ev.TaskAdded.from_value({"op": "add", "task": "a", "time": 0, "priority": 0})


# --- 3.4, 5.1: BLOB part headers -------------------------------------------------------------------


def test_3_4_blob_part_header() -> None:
    pieces, bid, size = blob_parts("hnsw", b"")
    assert len(pieces) == 1 and bid == EMPTY_TREE and size == 0
    part = b"".join(pieces[0])
    (n,) = struct.unpack_from("<H", part)
    assert canon.decode(part[2 : 2 + n]) == {"id": bid, "part": 0, "parts": 1, "size": 0, "type": "hnsw"}
    assert len(part) == 2 + n
    want = json.loads((VEC / "vectors.json").read_text())["search"]["snapshot"]
    _, frames = read_frames(VEC / "search.capsule")
    raw = next(f for f in frames if f.ftype == C.FT_BLOB).raw
    n = int.from_bytes(raw[:2], "little")
    head = canon.decode(raw[2 : 2 + n])
    assert list(head) == ["id", "part", "parts", "size", "type"]
    assert head == {"id": bytes.fromhex(want["sha256"]), "part": 0, "parts": 1, "size": want["bytes"],
                    "type": "hnsw"}
    assert hashlib.sha256(raw[2 + n :]).hexdigest() == want["sha256"]


# --- 14.9: signatures ---------------------------------------------------------------------------------


def test_14_9_sigs_entries_and_only_counting_signatures_are_stored(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, clock=Tick()) as cap:
        cap.checkpoint("c1", key=K1)
        cap.checkpoint("c2", key=[K2, K1, K1])  # K2 is outside the keyset {K1}
        cks = cap.checkpoints()
    assert [[s.key_id for s in ck.sigs] for ck in cks] == [[K1.key_id], [K1.key_id]]
    assert [ck.to_dict()["signers"] for ck in cks] == [[K1.key_id], [K1.key_id]]
    _, frames = read_frames(VEC / "agent.capsule")
    for f in frames:
        if f.ftype == C.FT_CHECKPOINT:
            for s in canon.decode(f.raw)["sigs"]:
                assert set(s) == {"keyid", "sig"} and re.fullmatch(r"[0-9a-f]{32}", s["keyid"])
                assert isinstance(s["sig"], bytes) and len(s["sig"]) == 64


# --- 5.1, 7.1: depth, tags, source -----------------------------------------------------------------


def test_5_1_record_depth_counts_the_record_map_and_7_1_meta_is_at_most_31() -> None:
    assert canon.depth({}) == 1 and canon.depth(0) == 0
    Memory.build("x", time=0, meta=nest(31))
    with pytest.raises(InvalidRecordError):
        Memory.build("x", time=0, meta=nest(32))
    ok = {"kind": "memory", "meta": nest(31), "text": "x", "time": 0}
    assert canon.depth(ok) == C.MAX_DEPTH == 32
    decode_records_payload(canon.pack([ok]), 64, 0)
    with pytest.raises(CorruptError) as e:
        decode_records_payload(canon.pack([{**ok, "meta": nest(32)}]), 64, 0)
    assert e.value.check == "canonical"


def test_7_1_tag_limit_is_on_the_stored_nfc_form(tmp_path: Path) -> None:
    with pytest.raises(InvalidRecordError):
        Memory.build("x", time=0, tags=["\u0958" * 256])  # 512 code points once NFC
    m = Memory.build("x", time=0, tags=["\u0958" * 128, "e\u0301" * 256])  # 256 and 256 once NFC
    assert [len(t) for t in m.tags] == [256, 256]
    assert Memory.build("x", time=0, tags=["é", "z", "Z", "a", "é"]).tags == ("Z", "a", "z", "é")
    path = tmp_path / "a.capsule"
    with capsule.create(path) as cap, cap.commit() as tx:
        tx.remember("x", tags=["\u0958" * 128])
    assert capsule.verify(path).ok


def test_7_1_empty_source_is_stored_and_is_another_record() -> None:
    with_empty, without = Memory.build("x", time=0, source=""), Memory.build("x", time=0)
    assert with_empty.to_value()["source"] == "" and "source" not in without.to_value()
    assert encode_record(with_empty)[0] != encode_record(without)[0]
    assert stored(with_empty).source == ""


# --- 13.3: where, and the vocabulary of check names --------------------------------------------------


def _header_with(data: bytes, at: int, value: bytes, *, crc: bool = True) -> bytes:
    h = bytearray(data[:64])
    h[at : at + len(value)] = value
    if crc:
        h[60:64] = zlib.crc32(bytes(h[:60])).to_bytes(4, "little")
    return bytes(h) + data[64:]


HEADER_CASES = [
    ("header-magic", 0, lambda d: _header_with(d, 1, b"X", crc=False)),
    ("header-crc", 0, lambda d: _header_with(d, 12, b"\xff", crc=False)),
    ("header-version", 8, lambda d: _header_with(d, 8, b"\x02")),
    ("header-flags", 10, lambda d: _header_with(d, 10, b"\x01")),
    ("header-algorithms", 28, lambda d: _header_with(d, 28, b"\x02")),
    ("header-limits", 32, lambda d: _header_with(d, 32, (64).to_bytes(4, "little"))),
    ("header-reserved", 36, lambda d: _header_with(d, 40, b"\x01")),
    ("header-length", 0, lambda d: d[:30]),
    ("header-magic", 0, lambda d: b""),
]


@pytest.mark.parametrize(("check", "offset", "damage"), HEADER_CASES, ids=[c[0] + str(c[1]) for c in HEADER_CASES])
def test_13_3_header_failures_name_the_field(tmp_path: Path, check: str, offset: int, damage: Any) -> None:
    path = tmp_path / "a.capsule"
    path.write_bytes(damage((VEC / "empty.capsule").read_bytes()))
    rep = capsule.verify(path)
    assert rep.first_error is not None
    assert (rep.first_error["check"], rep.first_error["offset"], rep.first_error["seq"]) == (check, offset, None)


def spec_check_names() -> set[str]:
    rows = _spec_table("*Check names.*")
    names = {n for row in rows for n in re.findall(r"`([a-z0-9-]+)`", row[0])}
    assert len(names) > 40
    return names


def code_check_names() -> dict[str, str]:
    """Every check name the library and CLI can report, with where it is used."""
    found: dict[str, str] = {}
    for path in sorted([*(ROOT / "capsule").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]):
        where = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                if name in ("CorruptError", "UnsupportedError"):
                    kw = {k.arg: k.value for k in node.keywords}
                    v = kw.get("check")
                    if v is None:
                        found.setdefault("corrupt", f"{where}:{node.lineno} (no check=)")
                    elif isinstance(v, ast.Constant):
                        found.setdefault(v.value, f"{where}:{node.lineno}")
                elif name == "_fail" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                    found.setdefault(node.args[1].value, f"{where}:{node.lineno}")
            elif isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == "check" and isinstance(v, ast.Constant):
                        found.setdefault(v.value, f"{where}:{node.lineno}")
            elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple) and len(node.value.elts) == 2
                  and isinstance(node.value.elts[0], ast.Constant) and isinstance(node.value.elts[0].value, str)
                  and any(getattr(t, "id", "") in ("bad", "problem") for t in node.targets)):
                found.setdefault(node.value.elts[0].value, f"{where}:{node.lineno}")  # check.py's (check, message)
    # verifier/check.py's fallback for a DataError that carries no check
    found.setdefault("record", "capsule/verifier/check.py:_err")
    return found


def test_13_3_every_check_name_the_code_uses_is_in_the_spec() -> None:
    missing = {n: w for n, w in code_check_names().items() if n not in spec_check_names()}
    assert not missing, f"check names used but not listed in spec 13.3: {missing}"


def test_13_3_the_spec_lists_no_check_the_code_never_reports() -> None:
    unused = spec_check_names() - set(code_check_names())
    assert not unused, f"spec 13.3 lists check names no code reports: {unused}"


# --- 12.5: minor versions ------------------------------------------------------------------------------


def test_12_5_a_minor_above_this_one_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import capsule.handle.entry as entry

    path = tmp_path / "a.capsule"
    monkeypatch.setattr(entry, "FileHeader", lambda fid: FileHeader(fid, minor=C.FORMAT_MINOR + 1))
    with capsule.create(path) as cap, cap.commit() as tx:
        rid = tx.remember("from the future")
    monkeypatch.undo()
    assert path.read_bytes()[9] == C.FORMAT_MINOR + 1
    rep = capsule.verify(path)
    assert rep.ok and rep.format_version == f"1.{C.FORMAT_MINOR + 1}"
    with capsule.open(path) as cap:
        assert [r.id for r in cap.records()] == [rid]


def test_12_5_a_minor_zero_file_extended_by_a_1_1_writer_keeps_minor_zero(tmp_path: Path) -> None:
    path = tmp_path / "old.capsule"
    shutil.copy(VEC / "v1.0" / "memories.capsule", path)
    assert path.read_bytes()[9] == 0
    with capsule.open(path, "a") as cap:
        with cap.commit() as tx:
            tx.remember("a 1.1 vector", embedding=[0.5, 0.5, 0.5, 0.5])
        assert cap.save_index()
    assert path.read_bytes()[9] == 0  # 12.5: the header is never rewritten
    rep = capsule.verify(path)
    assert rep.ok and rep.format_version == "1.0", rep.first_error
    with capsule.open(path) as cap:
        assert cap.search(vector=[0.5, 0.5, 0.5, 0.5], k=1, mode="vector")[0].text == "a 1.1 vector"
        info = cap.index_info()
        assert info["snapshot"] is not None and info["doubt"] is None


# --- 9.2: table payload offsets, frame offsets everywhere else ----------------------------------------


def test_9_2_segments_name_table_payloads_and_blobs_name_frames() -> None:
    for name in ("indexed", "search"):
        _, frames = read_frames(VEC / f"{name}.capsule")
        at = {f.old_offset: f for f in frames}
        last: Frame = [f for f in frames if f.ftype == C.FT_INDEX][-1]
        meta = parse_index_payload(last.raw, last.old_offset, last.old_seq)  # type: ignore[arg-type]
        for s in [*meta.segments, *meta.labels]:
            table = at[s.offset - C.FRAME_HEADER_SIZE]
            assert table.ftype == C.FT_TABLE and len(table.raw) == 52 * s.count
            assert hashlib.sha256(table.raw).digest() == s.sha256
        for ref in meta.blobs.values():
            assert at[ref.offset].ftype == C.FT_BLOB
        if name == "indexed":
            assert meta.segments
        else:
            assert meta.blobs


# --- spec/vectors/README.md documents vectors.json ------------------------------------------------------


def test_vectors_readme_documents_every_key() -> None:
    readme = (VEC / "README.md").read_text()
    for doc in (json.loads((VEC / "vectors.json").read_text()),
                json.loads((VEC / "v1.0" / "vectors.json").read_text())):
        for name, entry in doc.items():
            assert f"`{name}`" in readme, name
            for key in entry:
                assert f"`{key}`" in readme, (name, key)
    queries = json.loads((VEC / "vectors.json").read_text())["search"]["queries"]
    for args in queries.values():
        for arg in args:
            assert f"`{arg}`" in readme, arg


def test_17_threat_model_section_exists() -> None:
    assert "\n## 17. Threat model\n" in SPEC
    for sub in ("17.1", "17.2", "17.3", "17.4"):
        assert f"\n### {sub} " in SPEC
