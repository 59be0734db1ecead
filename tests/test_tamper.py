"""Tampering: every rewrite an attacker can make must be caught by a trust-anchored verify.

The attacker here is strong: they hold the file, know the format and run the
re-chaining helper below, which rebuilds a capsule frame by frame and
recomputes everything that is NOT signed (every chain value, every COMMIT's
Merkle root, counts and back-pointers, every INDEX frontier and pointer, every
id table). Whatever is left to catch them is what the spec says must be:

* the signed checkpoint body binds the Merkle root, chain head, state root and
  file id (spec 14.8), so an edited history disagrees with it;
* signatures count only for DISTINCT keys of the keyset in force (14.5), so a
  key counted twice or a revoked key does not reach the threshold;
* a rotation needs a threshold of the old AND of the new keys (14.6);
* the keyset chain must start at an anchor held outside the file (14.7), so a
  file re-signed wholesale by the attacker's own key verifies only unanchored.

Each attack is checked with ``capsule.verify(path, trust=<genuine anchor>)`` and
with ``capsule verify --trust KEY.pub`` (exit 1), and must name the check that
failed. The helper itself is tested first: an untouched capsule must come out
byte-identical, so a failure below is the tamper being caught, not the helper
being wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from capsule_cli.main import app
from typer.testing import CliRunner

import capsule
from capsule.core import constants as C
from capsule.format import canonical as canon
from capsule.format.checkpoint import encode_checkpoint, encode_keyset, parse_keyset
from capsule.format.commit import (
    CommitInfo,
    IndexMeta,
    decode_records_payload,
    encode_commit_payload,
    encode_records_payload,
    parse_commit_payload,
    parse_index_payload,
)
from capsule.format.frames import (
    FileHeader,
    Merkle,
    encode_frame,
    parse_frame_header,
    parse_header,
    raw_payload,
)
from capsule.format.index import ENTRY_SIZE, SegmentRef, build_table
from capsule.format.keys import CHECKPOINT_TAG, ROTATION_PAYLOAD_TYPE
from capsule.format.records import decode_record, record_id
from capsule.format.signing import CheckpointBody, Keyset, rotation_body, sign_body
from capsule.state.fold import EVENT_KINDS, state_root

T0 = 1_700_000_000 * 1_000_000_000
SEC = 1_000_000_000
K1 = capsule.PrivateKey.from_seed(bytes([1]) * 32)  # the agent's genuine key
K2 = capsule.PrivateKey.from_seed(bytes([2]) * 32)  # a second genuine key
MALLORY = capsule.PrivateKey.from_seed(b"mallory".ljust(32, b"\0"))  # the attacker's own key
FILE_A = bytes(range(16))
FILE_B = bytes(range(16, 32))

runner = CliRunner()


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)


class Tick:
    def __init__(self, start: int = T0) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += SEC
        return self.now


# --- the attacker's toolkit: parse a capsule into frames, rebuild it re-chained ---------------------


@dataclass
class Ctx:
    """What the rebuilt file looks like just before the frame being built."""

    file_id: bytes
    seq: int
    chain: bytes  # chain value before this frame
    root: bytes  # Merkle root of the frames before this frame
    checkpoint: tuple[int, bytes] | None  # latest CHECKPOINT so far: (offset, hash)
    keysets: list[tuple[int, Keyset]]  # KEYSET frames so far: (offset, keyset)
    state_root: bytes  # of the records so far (reverts applied, events excluded)


@dataclass
class Frame:
    ftype: int
    raw: bytes  # the payload with the codec undone
    compressed: bool = False
    old_offset: int | None = None  # where it was, so pointers to it can follow it
    old_seq: int | None = None
    build: Callable[[Ctx], bytes] | None = None  # computed during the rebuild (fresh signatures)
    time: int | None = None  # a COMMIT's time


def read_frames(path: Path) -> tuple[FileHeader, list[Frame]]:
    data = path.read_bytes()
    header = parse_header(data[: C.HEADER_SIZE])
    frames = []
    off = C.HEADER_SIZE
    while off < len(data):
        fh = parse_frame_header(data[off : off + C.FRAME_HEADER_SIZE], off, expect_seq=None,
                                max_frame_len=header.max_frame_len)
        payload = data[fh.payload_offset : fh.payload_offset + fh.payload_len]
        raw = raw_payload(fh, payload)
        fr = Frame(fh.ftype, raw, bool(fh.flags & C.FFLAG_ZSTD), off, fh.seq)
        if fh.ftype == C.FT_COMMIT:
            fr.time = parse_commit_payload(raw, off, fh.seq, fh.end, b"").time
        frames.append(fr)
        off = fh.end
    return header, frames


def rebuild(header: FileHeader, frames: list[Frame]) -> bytes:
    """Emit ``frames`` as a fully consistent capsule: everything unsigned is recomputed.

    Pointers (COMMIT prev/index, INDEX checkpoint/keyset/tables, KEYSET and
    CHECKPOINT prev) follow their frames to the new offsets; TABLE entries
    follow their records (a record whose bytes changed gets its new id).
    Signed checkpoint bodies are kept as they are unless a frame has ``build``.
    """
    out = bytearray(header.encode())
    chain, merkle, seq = header.chain_seed, Merkle(), 0
    moved: dict[int, int] = {}  # old frame offset -> new frame offset
    rec_at: dict[tuple[int, int], bytes] = {}  # (new frame offset, slot) -> record id
    tables: dict[int, tuple[int, bytes]] = {}  # old payload offset -> (new payload offset, bytes)
    ids: list[bytes] = []
    dead: set[bytes] = set()
    events: set[bytes] = set()
    kinds: dict[str, int] = {}
    commits = 0
    last_commit: int | None = None
    last_index: tuple[int, bytes] | None = None
    last_ck: tuple[int, bytes] | None = None
    keysets: list[tuple[int, Keyset]] = []
    last_root = Merkle().root()  # the root the last COMMIT named (7.7 revert `after`)

    def ctx() -> Ctx:
        live = [i for i in ids if i not in dead and i not in events]
        return Ctx(header.file_id, seq, chain, merkle.root(), last_ck, list(keysets),
                   bytes.fromhex(state_root(live)))

    def remap(refs: list[SegmentRef]) -> list[SegmentRef]:
        out_refs = []
        for r in refs:
            at, table = tables[r.offset]
            out_refs.append(SegmentRef(at, len(table) // ENTRY_SIZE, hashlib.sha256(table).digest()))
        return out_refs

    for fr in frames:
        pos = len(out)
        if fr.old_offset is not None:
            moved[fr.old_offset] = pos
        t = fr.ftype
        raw = fr.raw
        if fr.build is not None:
            raw = fr.build(ctx())
        elif t == C.FT_TABLE:
            # Record tables and label tables share one layout: (prefix, id, frame offset, slot).
            n = len(raw) // ENTRY_SIZE
            old_ids = np.frombuffer(raw, dtype="S32", count=n, offset=8 * n)
            old_frames = np.frombuffer(raw, dtype="<u8", count=n, offset=40 * n)
            slots = np.frombuffer(raw, dtype="<u4", count=n, offset=48 * n)
            new_frames = np.array([moved[int(f)] for f in old_frames], dtype=np.uint64)
            new_ids = np.array([rec_at.get((int(f), int(s)), bytes(raw[8 * n + 32 * j : 8 * n + 32 * j + 32]))
                                for j, (f, s) in enumerate(zip(new_frames, slots, strict=True))], dtype="S32")
            assert len(old_ids) == n
            raw = build_table(new_ids, new_frames, slots.astype(np.uint32))
            tables[fr.old_offset + C.FRAME_HEADER_SIZE] = (pos + C.FRAME_HEADER_SIZE, raw)  # type: ignore[operator]
        elif t == C.FT_RECORDS:
            # 7.7: a revert names the root of the last commit before it (unsigned: recomputed)
            values = [v for v, _ in decode_records_payload(raw, pos, seq)]
            for v in values:
                if v["kind"] == "revert":  # type: ignore[index]
                    v["after"] = last_root  # type: ignore[index]
            raw = encode_records_payload([canon.pack(v) for v in values])
        elif t == C.FT_INDEX:
            meta = parse_index_payload(raw, fr.old_offset, fr.old_seq)  # type: ignore[arg-type]
            changes: dict[str, object] = {
                "tree_size": seq, "frontier": merkle.peaks, "records": len(ids), "kinds": dict(kinds),
                "checkpoint": last_ck, "keyset": keysets[-1][0] if keysets else None,
            }
            for f in dataclasses.fields(IndexMeta):  # every table list (records, labels, ...)
                v = getattr(meta, f.name)
                if isinstance(v, list) and v and isinstance(v[0], SegmentRef):
                    changes[f.name] = remap(v)
            raw = dataclasses.replace(meta, **changes).encode()  # type: ignore[arg-type]
        elif t == C.FT_COMMIT:
            info = CommitInfo(offset=pos, end=0, seq=seq, time=fr.time or T0, root=merkle.root(),
                              records=len(ids), commits=commits + 1, prev=last_commit,
                              index=last_index[0] if last_index else None,
                              index_hash=last_index[1] if last_index else None)
            raw = encode_commit_payload(info)
            last_root = info.root
        elif t == C.FT_KEYSET:
            kf = parse_keyset(raw, pos, seq)
            raw = encode_keyset(kf.keyset, kf.sigs, keysets[-1][0] if keysets else None)
        elif t == C.FT_CHECKPOINT:
            v = canon.decode(raw)
            raw = canon.pack({**v, "prev": last_ck[0] if last_ck else None})
        # bookkeeping on what is being emitted
        if t == C.FT_RECORDS:
            for slot, (value, data) in enumerate(decode_records_payload(raw, pos, seq)):
                kind = value["kind"]  # type: ignore[index]
                rid = record_id(kind, data)
                rec_at[(pos, slot)] = rid
                ids.append(rid)
                kinds[kind] = kinds.get(kind, 0) + 1
                if kind in EVENT_KINDS:
                    events.add(rid)
                    rec = decode_record(value, rid)
                    dead.update(rec.drop)
                    dead.difference_update(rec.restore)
        elif t == C.FT_INDEX:
            last_index = (pos, hashlib.sha256(raw).digest())
        elif t == C.FT_COMMIT:
            commits, last_commit = commits + 1, pos
        elif t == C.FT_KEYSET:
            keysets.append((pos, parse_keyset(raw, pos, seq).keyset))
        elif t == C.FT_CHECKPOINT:
            last_ck = (pos, hashlib.sha256(CHECKPOINT_TAG + canon.decode(raw)["body"]).digest())
        enc = encode_frame(t, seq, raw, chain, compress=fr.compressed)
        out += enc.data
        merkle.append(enc.leaf)
        chain, seq = enc.chain, seq + 1
    return bytes(out)


def checkpoint_builder(signers: list[capsule.PrivateKey], label: str, *, sigs_from: list[int] | None = None,
                       keyset: Keyset | None = None) -> Callable[[Ctx], bytes]:
    """A CHECKPOINT that is right in every field; signed by ``signers``.

    ``keyset`` names another keyset than the one in force; ``sigs_from`` picks
    signatures by index (repeats allowed) to build the sigs list.
    """

    def build(c: Ctx) -> bytes:
        ks = keyset or c.keysets[-1][1]
        body = CheckpointBody(origin=c.file_id, tree_size=c.seq, root=c.root, chain=c.chain,
                              prev=c.checkpoint[1] if c.checkpoint else None, keyset=ks.digest,
                              state_root=c.state_root, label=label, time=T0 + 10_000 * SEC)
        sigs = body.sign(signers)
        if sigs_from is not None:
            sigs = [sigs[i] for i in sigs_from]
        return encode_checkpoint(body, sigs, c.checkpoint[0] if c.checkpoint else None, None)

    return build


def append_commit(frames: list[Frame], *new: Frame) -> list[Frame]:
    """``frames`` with ``new`` frames and a COMMIT that makes them durable appended."""
    return [*frames, *new, Frame(C.FT_COMMIT, b"", time=T0 + 20_000 * SEC)]


def frame_bounds(path: Path) -> list[tuple[int, int, int]]:
    """(offset, end, type) of every frame, for byte-level surgery."""
    _, frames = read_frames(path)
    data = path.read_bytes()
    out = []
    for fr in frames:
        assert fr.old_offset is not None
        fh = parse_frame_header(data[fr.old_offset : fr.old_offset + C.FRAME_HEADER_SIZE], fr.old_offset,
                                expect_seq=None, max_frame_len=C.MAX_FRAME_LEN_DEFAULT)
        out.append((fh.offset, fh.end, fh.ftype))
    return out


def set_seq(frame: bytes, seq: int) -> bytes:
    """Give a frame another seq and a valid header CRC, keeping its (now wrong) chain value."""
    import zlib

    h = bytearray(frame[: C.FRAME_HEADER_SIZE])
    h[8:16] = seq.to_bytes(8, "little")
    h[28:32] = zlib.crc32(bytes(h[:28])).to_bytes(4, "little")
    return bytes(h) + frame[C.FRAME_HEADER_SIZE :]


# --- fixtures -----------------------------------------------------------------------------------


def build_signed(path: Path, file_id: bytes = FILE_A, *, amount: str = "100") -> None:
    """A capsule with enough frames for INDEX + TABLE frames, two signed checkpoints
    (so label tables exist) and records after them."""
    with capsule.create(path, clock=Tick(), file_id=file_id) as cap:
        with cap.commit() as tx:
            tx.remember(f"approved: transfer ${amount} to alice", tags=["payments"])
            tx.constrain("never pay bob")
            tx.set_identity("agent-7", keys=[K1.public_key])
        for i in range(8):
            with cap.commit() as tx:
                tx.remember(f"filler memory number {i} " + "padding " * 20)
        cap.checkpoint("c1", key=K1)
    with capsule.open(path, "a", clock=Tick(T0 + 100 * SEC)) as cap:  # reopen: close wrote an INDEX
        with cap.commit() as tx:
            tx.note("after c1")
        cap.checkpoint("c2", key=K1)
        with cap.commit() as tx:
            tx.remember("after c2")
        cap.rollback("c1")
        for i in range(8):
            with cap.commit() as tx:
                tx.remember(f"more filler {i}")
        cap.checkpoint("c3", key=K1)


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("signed") / "a.capsule"
    build_signed(path)
    types = [fr.ftype for fr in read_frames(path)[1]]
    # The fixture exercises every frame kind the helper must re-chain.
    assert {C.FT_RECORDS, C.FT_COMMIT, C.FT_INDEX, C.FT_TABLE, C.FT_KEYSET, C.FT_CHECKPOINT} <= set(types)
    assert capsule.verify(path, trust=K1.public_key).ok
    return path


@pytest.fixture(scope="module")
def anchor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The genuine trust anchor as a user holds it: K1's .pub file."""
    key = tmp_path_factory.mktemp("keys") / "agent.key"
    return capsule.save_private_key(key, K1, passphrase=None)


def copy_to(tmp_path: Path, data: bytes, name: str = "tampered.capsule") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def assert_caught(path: Path, anchor: Path, trust: object, checks: set[str]) -> dict[str, object]:
    """verify with the genuine anchor fails naming one of ``checks``; so does the CLI."""
    rep = capsule.verify(path, trust=trust)  # type: ignore[arg-type]
    assert not rep.ok, "tampering went unnoticed"
    assert rep.first_error is not None and rep.first_error["check"] in checks, rep.first_error
    r = runner.invoke(app, ["verify", str(path), "--trust", str(anchor)])
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert f"verify failed: {rep.first_error['check']}" in r.stderr, r.stderr
    return rep.first_error


# --- the helper is faithful ---------------------------------------------------------------------


def test_rechaining_an_untouched_capsule_is_byte_identical(signed: Path) -> None:
    header, frames = read_frames(signed)
    assert rebuild(header, frames) == signed.read_bytes()


def test_rechaining_hides_an_edit_when_no_checkpoint_follows(tmp_path: Path) -> None:
    """Without a later signed checkpoint an edited history is self-consistent: the chain
    and Merkle tree alone prove integrity against accidents, not against an attacker.
    This is the control for the checkpoint attacks below."""
    path = tmp_path / "plain.capsule"
    with capsule.create(path, clock=Tick(), file_id=FILE_A) as cap:
        with cap.commit() as tx:
            tx.remember("approved: transfer $100 to alice")
        for i in range(20):
            with cap.commit() as tx:
                tx.remember(f"filler {i}")
    header, frames = read_frames(path)
    assert C.FT_INDEX in {f.ftype for f in frames}
    first = next(f for f in frames if f.ftype == C.FT_RECORDS)
    first.raw = first.raw.replace(b"$100", b"$900")
    forged = copy_to(tmp_path, rebuild(header, frames))
    assert capsule.verify(forged).ok
    with capsule.open(forged) as cap:
        assert "approved: transfer $900 to alice" in [r.text for r in cap.records("memory")]


# --- attacks ------------------------------------------------------------------------------------


def edit_first_record(frames: list[Frame]) -> None:
    first = next(f for f in frames if f.ftype == C.FT_RECORDS)
    assert b"$100" in first.raw
    first.raw = first.raw.replace(b"$100", b"$900")  # still a valid, canonical memory


def test_edited_record_rechained_disagrees_with_the_signed_checkpoint(signed: Path, anchor: Path,
                                                                      tmp_path: Path) -> None:
    header, frames = read_frames(signed)
    edit_first_record(frames)
    forged = copy_to(tmp_path, rebuild(header, frames))
    err = assert_caught(forged, anchor, K1.public_key, {"checkpoint-root", "checkpoint-state", "content-id"})
    assert err["offset"] == next(f.old_offset for f in frames if f.ftype == C.FT_CHECKPOINT)  # the first one
    # Not anchored makes no difference: the genuine signature binds the old root.
    rep = capsule.verify(forged)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == err["check"]


def test_edited_record_with_checkpoint_bodies_rewritten_breaks_the_signatures(signed: Path, anchor: Path,
                                                                              tmp_path: Path) -> None:
    """The attacker also rewrites each checkpoint body to the new roots, keeping the
    genuine signatures (they cannot make new ones)."""
    header, frames = read_frames(signed)
    edit_first_record(frames)
    for f in frames:
        if f.ftype == C.FT_CHECKPOINT:
            old = canon.decode(f.raw)
            genuine_sigs = old["sigs"]
            label = CheckpointBody.from_bytes(old["body"]).label

            def build(c: Ctx, label: str = label, sigs: object = genuine_sigs) -> bytes:
                v = canon.decode(checkpoint_builder([MALLORY], label)(c))
                return canon.pack({**v, "sigs": sigs})

            f.build = build
    forged = copy_to(tmp_path, rebuild(header, frames))
    assert_caught(forged, anchor, K1.public_key, {"checkpoint-signature"})


def resign_everything(frames: list[Frame], key: capsule.PrivateKey) -> None:
    """Replace the genesis KEYSET with ``key`` alone and re-sign every checkpoint with it."""
    for f in frames:
        if f.ftype == C.FT_KEYSET:
            assert parse_keyset(f.raw, f.old_offset, f.old_seq).prev_offset is None  # type: ignore[arg-type]
            f.raw = encode_keyset(Keyset.of([key.public_key]), [], None)
        elif f.ftype == C.FT_CHECKPOINT:
            label = CheckpointBody.from_bytes(canon.decode(f.raw)["body"]).label
            f.build = checkpoint_builder([key], label)


def test_checkpoints_resigned_with_the_attackers_key_fail_only_against_the_anchor(
        signed: Path, anchor: Path, tmp_path: Path) -> None:
    header, frames = read_frames(signed)
    edit_first_record(frames)
    resign_everything(frames, MALLORY)
    forged = copy_to(tmp_path, rebuild(header, frames))
    rep = capsule.verify(forged)  # self-consistent: the attacker did everything right
    assert rep.ok and rep.anchored is False and rep.checkpoints == 3, rep.first_error
    assert rep.warnings and "not anchored" in rep.warnings[0]
    with capsule.open(forged) as cap:
        assert [ck.body.label for ck in cap.checkpoints()] == ["c1", "c2", "c3"]
    strict = capsule.verify(forged, strict=True)
    assert not strict.ok and strict.first_error is not None and strict.first_error["check"] == "not-anchored"
    for trust in (K1.public_key, Keyset.of([K1.public_key]).keyset_hash):
        assert_caught(forged, anchor, trust, {"trust-anchor"})
    # The attacker's own anchor accepts it: the anchor is exactly what decides.
    assert capsule.verify(forged, trust=MALLORY.public_key).ok


@pytest.mark.parametrize("how", ["swap", "duplicate", "drop"])
@pytest.mark.parametrize("resequence", [False, True], ids=["raw", "resequenced"])
def test_frames_swapped_duplicated_or_dropped_break_the_chain(signed: Path, anchor: Path, tmp_path: Path,
                                                              how: str, resequence: bool) -> None:
    data = signed.read_bytes()
    bounds = frame_bounds(signed)
    i = next(j for j, b in enumerate(bounds) if b[2] == C.FT_RECORDS and bounds[j + 1][2] == C.FT_COMMIT)
    (a0, a1, _), (b0, b1, _) = bounds[i], bounds[i + 1]
    fa, fb = data[a0:a1], data[b0:b1]
    if how == "swap":  # RECORDS and its COMMIT trade places
        first, second = (set_seq(fb, i), set_seq(fa, i + 1)) if resequence else (fb, fa)
        mid = first + second
    elif how == "duplicate":
        mid = fa + (set_seq(fa, i + 1) if resequence else fa) + fb
    else:  # a RECORDS frame removed
        mid = set_seq(fb, i) if resequence else fb
    forged = copy_to(tmp_path, data[:a0] + mid + data[b1:])
    checks = {"chain"} if resequence else {"frame-seq", "chain"}
    err = assert_caught(forged, anchor, K1.public_key, checks)
    assert err["offset"] in (a0, a0 + (a1 - a0 if how == "duplicate" else 0))


def test_frame_spliced_from_another_capsule_breaks_the_chain(signed: Path, anchor: Path, tmp_path: Path) -> None:
    other = tmp_path / "b.capsule"
    build_signed(other, FILE_B, amount="900")
    a, b = signed.read_bytes(), other.read_bytes()
    ba, bb = frame_bounds(signed), frame_bounds(other)
    # The same frame position in both: the other capsule's record says $900.
    i = next(j for j, f in enumerate(ba) if f[2] == C.FT_RECORDS)
    assert bb[i][2] == C.FT_RECORDS and bb[i][0] == ba[i][0]
    theirs = b[bb[i][0] : bb[i][1]]
    assert b"$900" in raw_of(theirs) and len(theirs) == ba[i][1] - ba[i][0]
    forged = copy_to(tmp_path, a[: ba[i][0]] + theirs + a[ba[i][1] :])
    assert_caught(forged, anchor, K1.public_key, {"chain"})


def raw_of(frame: bytes) -> bytes:
    fh = parse_frame_header(frame[: C.FRAME_HEADER_SIZE], 0, expect_seq=None, max_frame_len=C.MAX_FRAME_LEN_DEFAULT)
    return raw_payload(fh, frame[C.FRAME_HEADER_SIZE : C.FRAME_HEADER_SIZE + fh.payload_len])


def test_checkpoint_transplanted_from_another_capsule_is_refused(signed: Path, anchor: Path,
                                                                 tmp_path: Path) -> None:
    """Both capsules are signed by the same genuine key and have the same shape; the
    attacker swaps this capsule's latest checkpoint for the other's (validly signed,
    same seq) and re-chains."""
    other = tmp_path / "b.capsule"
    build_signed(other, FILE_B, amount="900")
    _, theirs = read_frames(other)
    header, frames = read_frames(signed)
    mine = [f for f in frames if f.ftype == C.FT_CHECKPOINT][-1]
    stolen = [f for f in theirs if f.ftype == C.FT_CHECKPOINT][-1]
    assert mine.old_seq == stolen.old_seq and mine.raw != stolen.raw
    body = canon.decode(stolen.raw)

    def graft(c: Ctx) -> bytes:  # their signed body and signatures; only the unsigned prev pointer fixed
        return canon.pack({**body, "prev": c.checkpoint[0] if c.checkpoint else None})

    mine.build = graft
    forged = copy_to(tmp_path, rebuild(header, frames))
    assert_caught(forged, anchor, K1.public_key, {"checkpoint-origin"})


@pytest.fixture(scope="module")
def two_of_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("t2") / "a.capsule"
    with capsule.create(path, clock=Tick(), file_id=FILE_A) as cap:
        with cap.commit() as tx:
            tx.remember("needs two signatures")
        cap.checkpoint("c1", key=[K1, K2])
        with cap.commit() as tx:
            tx.remember("unapproved change")
    assert capsule.verify(path, trust=Keyset.of([K1, K2], threshold=2).keyset_hash).ok
    return path


@pytest.mark.parametrize("sigs_from", [[0, 0], [0, 0, 0], [0]], ids=["twice", "thrice", "once"])
def test_one_key_counted_twice_does_not_meet_a_threshold_of_two(two_of_two: Path, tmp_path: Path,
                                                                sigs_from: list[int]) -> None:
    """The K1 holder alone appends a checkpoint whose sigs list K1's valid signature repeatedly."""
    header, frames = read_frames(two_of_two)
    forged = copy_to(tmp_path, rebuild(header, append_commit(
        frames, Frame(C.FT_CHECKPOINT, b"", build=checkpoint_builder([K1], "c2", sigs_from=sigs_from)))))
    trust = Keyset.of([K1, K2], threshold=2).keyset_hash
    rep = capsule.verify(forged, trust=trust)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "checkpoint-signature"
    assert "1 valid signatures" in rep.first_error["message"]
    r = runner.invoke(app, ["verify", str(forged), "--trust", trust])
    assert r.exit_code == 1 and "checkpoint-signature" in r.stderr
    # Control: the same checkpoint with K2's signature too is accepted.
    ok = copy_to(tmp_path, rebuild(header, append_commit(
        frames, Frame(C.FT_CHECKPOINT, b"", build=checkpoint_builder([K1, K2], "c2")))), "ok.capsule")
    assert capsule.verify(ok, trust=trust).ok


def test_a_signature_relabelled_as_another_key_does_not_count(two_of_two: Path, tmp_path: Path) -> None:
    """K1's signature listed under K2's key id (and K1's own): K2's slot is invalid."""
    header, frames = read_frames(two_of_two)

    def build(c: Ctx) -> bytes:
        v = canon.decode(checkpoint_builder([K1], "c2")(c))
        sig = v["sigs"][0]
        return canon.pack({**v, "sigs": [sig, {"keyid": K2.key_id, "sig": sig["sig"]}]})

    forged = copy_to(tmp_path, rebuild(header, append_commit(frames, Frame(C.FT_CHECKPOINT, b"", build=build))))
    rep = capsule.verify(forged, trust=Keyset.of([K1, K2], threshold=2).keyset_hash)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "checkpoint-signature"


@pytest.fixture(scope="module")
def rotated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keyset {K1} v1, then rotated to {K2} v2 (K1 revoked), then a checkpoint by K2."""
    path = tmp_path_factory.mktemp("rot") / "a.capsule"
    with capsule.create(path, clock=Tick(), file_id=FILE_A) as cap:
        with cap.commit() as tx:
            tx.remember("before rotation")
        cap.checkpoint("c1", key=K1)
        cap.rotate_keys(Keyset.of([K2.public_key], version=2), old_signers=[K1], new_signers=[K2])
        with cap.commit() as tx:
            tx.remember("after rotation")
        cap.checkpoint("c2", key=K2)
        with cap.commit() as tx:
            tx.remember("the change the attacker wants signed")
    assert capsule.verify(path, trust=K1.public_key).ok
    return path


@pytest.mark.parametrize("names", ["current-keyset", "revoked-keyset"])
def test_a_revoked_key_cannot_sign_after_rotation(rotated: Path, anchor: Path, tmp_path: Path, names: str) -> None:
    header, frames = read_frames(rotated)
    keyset = Keyset.of([K1.public_key]) if names == "revoked-keyset" else None
    forged = copy_to(tmp_path, rebuild(header, append_commit(
        frames, Frame(C.FT_CHECKPOINT, b"", build=checkpoint_builder([K1], "c3", keyset=keyset)))))
    want = {"checkpoint-signature"} if keyset is None else {"checkpoint-keyset"}
    assert_caught(forged, anchor, K1.public_key, want)
    # Control: the same checkpoint by the current key verifies (the helper is not the failure).
    ok = copy_to(tmp_path, rebuild(header, append_commit(
        frames, Frame(C.FT_CHECKPOINT, b"", build=checkpoint_builder([K2], "c3")))), "ok.capsule")
    assert capsule.verify(ok, trust=K1.public_key).ok


def forged_rotation(new: Keyset, signers: list[capsule.PrivateKey]) -> Callable[[Ctx], bytes]:
    def build(c: Ctx) -> bytes:
        prev_at, old = c.keysets[-1]
        sigs = sign_body(ROTATION_PAYLOAD_TYPE, rotation_body(old, new), signers)
        return encode_keyset(new, sigs, prev_at)

    return build


@pytest.mark.parametrize("side", ["new-keys-only", "old-keys-only", "attacker-only"])
def test_rotation_needs_both_old_and_new_thresholds(signed: Path, anchor: Path, tmp_path: Path, side: str) -> None:
    header, frames = read_frames(signed)
    if side == "new-keys-only":  # the attacker takes over with their own key
        new, signers = Keyset.of([MALLORY.public_key], version=2), [MALLORY]
    elif side == "old-keys-only":  # a new key that never consented
        new, signers = Keyset.of([K2.public_key], version=2), [K1]
    else:  # the attacker adds themself beside K1 and signs as the "new" side
        new, signers = Keyset.of([K1.public_key, MALLORY.public_key], threshold=2, version=2), [MALLORY]
    # ...and then signs what they came for, with the key the forged keyset lets in.
    signer = K2 if side == "old-keys-only" else MALLORY
    forged = copy_to(tmp_path, rebuild(header, append_commit(
        frames, Frame(C.FT_KEYSET, b"", build=forged_rotation(new, signers)),
        Frame(C.FT_CHECKPOINT, b"", build=checkpoint_builder([signer], "taken-over")))))
    err = assert_caught(forged, anchor, K1.public_key, {"keyset-rotation"})
    assert "rotation" in str(err["message"])
    # Even without an anchor the broken rotation is refused: it is checked on the walk.
    rep = capsule.verify(forged)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "keyset-rotation"
    # Control: the same rotation signed by both sides verifies.
    good = Keyset.of([K2.public_key], version=2)
    ok = copy_to(tmp_path, rebuild(header, append_commit(
        frames, Frame(C.FT_KEYSET, b"", build=forged_rotation(good, [K1, K2])),
        Frame(C.FT_CHECKPOINT, b"", build=checkpoint_builder([K2], "rotated")))), "ok.capsule")
    assert capsule.verify(ok, trust=K1.public_key).ok
