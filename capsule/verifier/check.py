"""``verify``: prove a capsule's integrity or name its first bad byte (spec 13).

The walk checks, in file order: the header; every frame header, length and
seq; every chain link; for RECORDS frames the codec, the canonical encoding,
each record's schema and that no content id repeats; for COMMIT frames the
Merkle root, record count, back-pointer and INDEX pointer; for INDEX frames
the frontier and counts, and for the INDEX in force at the end that its
tables hold exactly the committed ids at the right places.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CapsuleError, CorruptError, DataError
from ..core.lazy import lazy
from ..format.blob import BlobRef, read_blob
from ..format.checkpoint import (
    CheckpointFrame,
    KeysetFrame,
    parse_checkpoint,
    parse_keyset,
    parse_lineage,
)
from ..format.commit import (
    decode_records_payload,
    parse_commit_payload,
    parse_index_payload,
    parse_recovery,
)
from ..format.file import ReadHandle
from ..format.frames import FileHeader, Merkle, parse_header, raw_payload
from ..format.index import ENTRY_SIZE
from ..format.keys import CHECKPOINT_PAYLOAD_TYPE, PrivateKey, PublicKey
from ..format.pending import torn_fate
from ..format.records import decode_record, record_id
from ..format.scan import Reader, damage_is_not_a_crash, label_key, segment
from ..format.signing import Keyset, anchor_index, count_valid, verify_rotation
from ..run import actions as _actions  # noqa: F401  (registers kinds)
from ..run import tasks as _tasks  # noqa: F401  (registers kinds)
from ..search.lexcheck import BLOB_TYPE as LEX_BLOB
from ..search.lexcheck import LexicalCheck
from ..search.vindex import BLOB_TYPE, VectorIndex, VectorParams
from ..state import kinds as _kinds  # noqa: F401  (7: kinds registered before decoding; verify has no handle)
from ..state.fold import EVENT_KINDS
from ..state.liveness import apply_revert
from ..state.stateroot import state_root_of
from .carried import CarriedCheck, check_parent
from .fast import array_len, check_frame, record_frame
from .journal import JournalCheck
from .lifecycle import check_targets
from .lineage import check_parent as _check_parent  # 15, 15.1: the LINEAGE against the parent
from .lineage import inherited
from .sealed import KEYLESS, KeyslotCheck, keyless_error, keys_for, sealed_frame, unseal_for_verify
from .tables import tables_match
from .vectors import VectorEntries

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")


@dataclass
class VerifyReport:
    ok: bool
    path: str
    file_id: str | None = None
    format_version: str | None = None
    commits: int = 0
    records: int = 0
    frames: int = 0
    bytes: int = 0
    torn_tail: int = 0
    checkpoints: int = 0
    anchored: bool | None = None
    keyset: str | None = None
    lineage: dict[str, Any] | None = None
    first_error: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    #: with an anchor: the checkpoints signed by anchored keys, and the newest of them
    trusted_checkpoints: int | None = None
    signed_prefix: dict[str, Any] | None = None
    #: what the committed file holds beyond the newest trusted checkpoint
    unsigned: dict[str, Any] | None = None
    last_seq: int | None = None  # seq of the last COMMIT
    root: str | None = None  # Merkle root named by the last COMMIT
    policy: list[dict[str, Any]] | None = None  # with policy=True: the violations (7.3.1, policy.py)
    encrypted: bool = False  # 10: the header says so
    contents_checked: bool = True  # 10.6: False for an encrypted file checked without its key
    recoveries: list[dict[str, object]] = field(default_factory=list)  # 8.3: torn tails writers dropped

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "file_id": self.file_id, "format_version": self.format_version,
                "commits": self.commits, "records": self.records, "frames": self.frames, "bytes": self.bytes,
                "last_seq": self.last_seq, "root": self.root,
                "torn_tail_bytes": self.torn_tail, "checkpoints": self.checkpoints,
                "signatures_anchored": self.anchored, "trusted_checkpoints": self.trusted_checkpoints,
                "signed_prefix": self.signed_prefix, "unsigned": self.unsigned, "keyset": self.keyset,
                "lineage": self.lineage, "first_error": self.first_error, "warnings": self.warnings,
                "encrypted": self.encrypted, "contents_checked": self.contents_checked, "recoveries": self.recoveries,
                **({} if self.policy is None else {"policy_violations": self.policy})}


@dataclass(frozen=True, slots=True)
class _Signed:
    """A checkpoint that verified to threshold under keyset ``ks`` (its index in the chain)."""

    offset: int
    seq: int
    end: int
    ks: int
    records: int  # committed records before it
    commits: int  # commits before the one it is in
    label: str
    root: bytes


@dataclass(frozen=True, slots=True)
class Pins:
    """What a verifier remembers from an earlier verification (spec 13.4).

    ``min_seq``: the verified part of the file (the signed prefix with an anchor,
    else the last commit) must reach at least this frame seq. ``expect_root``: a
    COMMIT with this Merkle root (hex) must be in the file, so the file extends
    the state seen then. Together they catch a file frozen or rolled back to an
    older signed commit, which a signature check alone cannot."""

    min_seq: int | None = None
    expect_root: str | None = None


def _err(e: CorruptError | DataError, offset: int | None = None, seq: int | None = None) -> dict[str, Any]:
    return {"offset": getattr(e, "offset", None) if getattr(e, "offset", None) is not None else offset,
            "seq": getattr(e, "seq", None) if getattr(e, "seq", None) is not None else seq,
            "check": getattr(e, "check", "record"), "message": getattr(e, "message", str(e))}


class _Semantic(Exception):
    def __init__(self, error: CorruptError) -> None:
        super().__init__(str(error))
        self.error = error


def verify(path: str | Path, *, deep: bool = True, progress: Callable[[int, int], None] | None = None,
           trust: PublicKey | Keyset | str | None = None, strict: bool = False,
           parent: str | Path | None = None, min_seq: int | None = None,
           expect_root: str | None = None, policy: bool = False, identity: PrivateKey | None = None,
           passphrase: bytes | str | None = None) -> VerifyReport:
    """Check every byte of a capsule. ``deep=False`` skips per-record decoding
    (structure, chain, codec framing and Merkle roots only).

    ``trust`` (a public key, a :class:`Keyset` or a keyset hash, matching any
    keyset of the file's chain) demands that the file's state is covered by a
    checkpoint signed to threshold by anchored keys: with no such checkpoint it
    fails; what lies beyond the newest one is reported in ``unsigned`` (spec 13.4).
    ``strict`` turns every warning into a failure: a torn tail, signatures without
    an anchor, records beyond the signed prefix. ``min_seq`` / ``expect_root``
    pin what an earlier verification saw (:class:`Pins`). ``policy`` re-checks every
    action intent against the rules in force when it was written (7.3.1): ``policy``.
    An encrypted capsule (10.6) is checked without its key for its structure, chain,
    commits, Merkle roots, key slots and signatures; with ``identity`` or
    ``passphrase`` its contents are opened and checked too.

    >>> _ = cap.checkpoint("day-1", key=key)  # cap, key: see tests/test_doctests.py
    >>> capsule.verify("example.capsule", trust=key.public_key).ok
    True
    """
    p = Path(path)
    h = ReadHandle(p)
    try:
        size = h.size()
        rep = VerifyReport(ok=False, path=str(p), bytes=size)
        try:
            header = parse_header(h.pread(0, C.HEADER_SIZE))
        except CorruptError as e:
            rep.first_error = _err(e)
            return rep
        rep.file_id, rep.format_version = header.file_id.hex(), f"{header.major}.{header.minor}"
        keys = keys_for(identity, passphrase)  # or capsule.unlocking(...)'s
        try:
            deep = unseal_for_verify(h, p, rep, keys, deep)  # 10.6: without a key, the structure only
        except CorruptError as e:
            rep.first_error, rep.encrypted = _err(e), header.encrypted
            if keys.identity is not None or keys.passphrase is not None:  # a damaged frame failed the unlock?
                rep.first_error = keyless_error(p, VerifyReport(ok=False, path=str(p), bytes=size), lambda hh, r: _walk(
                    hh, header, size, r, False, None, None, False, Pins(None, None))) or rep.first_error
            return rep
        _walk(h, header, size, rep, deep, progress, trust, strict, Pins(min_seq, expect_root))
        if h.keyless and rep.ok:
            rep.warnings[-1:] = [KEYLESS]
            if strict:  # 13.4: every warning fails a strict verify, this one too (10.6)
                rep.ok = _fail(rep, "keyless", "encrypted, and checked without its key: its contents were not "
                                        "checked (--strict needs --identity or --passphrase-env)")
        if rep.ok and deep:
            check_targets(rep, p, keys)  # 7.7.1: what a lifecycle event may name
        if rep.ok and parent is not None:
            _check_parent(rep, Path(parent), keys)
            check_parent(rep, p, Path(parent), keys)  # 15.2: carried checkpoints are the parent's
        if rep.ok and policy:
            from .policy import check_policy  # noqa: I001  (only with --policy)
            check_policy(rep, p, keys, () if parent is None else (Path(parent),))
        return rep
    finally:
        h.close()


def _state_root(ids: bytearray, dead: set[bytes], events: set[bytes]) -> bytes:
    arr = np.frombuffer(bytes(ids), dtype="S32")
    if gone := dead | events:
        arr = np.array([x for x in (bytes(ids[i : i + 32]) for i in range(0, len(ids), 32)) if x not in gone], "S32")
    return bytes.fromhex(state_root_of(arr))


def _fail(rep: VerifyReport, check: str, message: str, offset: int | None = None) -> bool:
    rep.first_error = {"offset": offset, "seq": None, "check": check, "message": message}
    return False


def _trust(rep: VerifyReport, keysets: list[KeysetFrame], signed: list[_Signed], trust: object, strict: bool,
           pins: Pins, commit_roots: dict[str, int], commit_ends: list[int], sealed: list[int]) -> bool:
    """13.4, 14.7: anchor the keyset chain and measure what the anchored signatures
    cover; pins and --strict last. False (with first_error set) on failure."""
    rep.keyset = keysets[-1].keyset.keyset_hash if keysets else None
    newest: _Signed | None = None
    if strict and rep.torn_tail:
        return _fail(rep, "torn-tail", f"torn tail of {rep.torn_tail} bytes after the last commit (--strict): "
                                       "the copy is incomplete or a write was interrupted", rep.bytes - rep.torn_tail)

    if trust is None:
        if rep.checkpoints:
            rep.anchored = False
            rep.warnings.append("signatures not anchored: pass --trust KEY.pub or a keyset hash to prove "
                                "who signed the checkpoints")
            if strict:
                return _fail(rep, "not-anchored", "signatures not anchored (--strict needs --trust)")
        elif strict:
            return _fail(rep, "unsigned", "no signed checkpoint covers this capsule (--strict)")
    else:
        if not keysets:
            return _fail(rep, "trust-anchor", "--trust given but the capsule has no signed checkpoints")
        try:
            start = anchor_index(trust, [k.keyset for k in keysets])  # type: ignore[arg-type]
        except DataError as e:
            return _fail(rep, "trust-anchor", f"the capsule's keys do not chain to the trusted anchor: {e}",
                         keysets[0].offset)
        rep.anchored = True
        good = [s for s in signed if s.ks >= start]
        rep.trusted_checkpoints = len(good)
        if not good:
            return _fail(rep, "trust-unsigned", "no checkpoint is signed by the anchored keys: nothing in this "
                                                "capsule is vouched for", keysets[start].offset)
        newest = good[-1]
        rep.signed_prefix = {"seq": newest.seq, "bytes": newest.end, "label": newest.label,
                             "offset": newest.offset, "root": newest.root.hex(), "records": newest.records}
        beyond_records = rep.records - newest.records
        if beyond_records <= 0 and sealed and sealed[-1] >= newest.end:
            # 10.6: a sealed RECORDS frame after it, whatever a COMMIT's count says (after its end: a
            # carried checkpoint, 15.2, sits at the LINEAGE's offset and covers up to its COMMIT's end)
            beyond_records = 1
        beyond_commits = rep.commits - newest.commits - 1  # the checkpoint's own commit is covered
        own_commit_end = commit_ends[bisect.bisect_left(commit_ends, newest.end)]
        rep.unsigned = {"records": beyond_records, "commits": max(beyond_commits, 0),
                        "bytes": rep.bytes - rep.torn_tail - own_commit_end}
        if beyond_records:
            msg = (f"{beyond_records} record(s) in {max(beyond_commits, 1)} commit(s) after the last signed "
                   f"checkpoint {newest.label!r} (seq {newest.seq}) are not covered by any trusted signature")
            rep.warnings.append(msg)
            if strict:
                return _fail(rep, "unsigned-tail", msg + " (--strict)", newest.end)
    reach = newest.seq if newest is not None else (rep.last_seq or 0)
    if pins.min_seq is not None and reach < pins.min_seq:
        what = "the signed prefix" if newest is not None else "the last commit"
        return _fail(rep, "pin-min-seq", f"{what} ends at seq {reach}, before the pinned seq {pins.min_seq} "
                                         "(frozen or rolled back?)")
    if pins.expect_root is not None and pins.expect_root.strip().lower() not in commit_roots:
        return _fail(rep, "pin-root", f"no commit in this capsule has the pinned root {pins.expect_root[:16]}... "
                                      "(rolled back or rewritten?)")
    return True


def _walk(h: ReadHandle, header: FileHeader, size: int, rep: VerifyReport, deep: bool,
          progress: Callable[[int, int], None] | None, trust: object = None, strict: bool = False,
          pins: Pins = Pins()) -> None:
    rd = Reader(h, C.HEADER_SIZE, size, 0, header.chain_seed, header.max_frame_len)
    merkle = Merkle()
    ids = bytearray()
    locs: list[tuple[int, int]] = []
    kinds: dict[str, int] = {}
    blobs_seen: set[BlobRef] = set()
    blob_seqs: dict[int, int] = {}  # BLOB frame offset -> seq, to report a bad blob where it is
    lexical = LexicalCheck(h, header.max_frame_len, header.chain_seed)  # 16.8: lexical snapshots against their records
    vectors = VectorEntries(h, header)  # 16.3: vector snapshots against their records
    journal = JournalCheck(h, header.max_frame_len)  # 18: journal snapshots against their records
    tables: dict[int, tuple[int, bytes]] = {}
    last_index: tuple[int, bytes | None, Any] | None = None
    prev_commit: int | None = None
    committed_end = C.HEADER_SIZE
    records = 0
    cur_seq = 0
    kinds_unknown = False
    keysets: list[KeysetFrame] = []
    last_ck: CheckpointFrame | None = None
    chain_before = header.chain_seed
    dead: set[bytes] = set()
    redacted: set[bytes] = set()
    events: set[bytes] = set()
    first_vindex: VectorParams | None = None  # 16.1 over the records so far, for 9.2 `vectors`
    first_dim = 0
    labels_at: dict[bytes, int] = {}
    signed: list[_Signed] = []
    commit_roots: dict[str, int] = {}
    commit_ends: list[int] = []
    carried = CarriedCheck()  # 15.2: the parent's checkpoints the LINEAGE frame carries
    slots = KeyslotCheck(header)  # 10.3
    counts_unknown = False  # 10.6: sealed RECORDS read without the key are not counted
    sealed_records: list[int] = []
    try:
        for fh, payload, leaf in rd.frames():
            try:
                cur_seq = fh.seq
                t = fh.ftype
                if sealed_frame(fh):
                    # 10.6, keyless: a sealed frame is checked for its place only (the chain covered it)
                    kinds_unknown = counts_unknown = True
                    if t == C.FT_INDEX:
                        last_index = (fh.offset, None, None)
                    elif t == C.FT_BLOB:
                        blob_seqs[fh.offset] = fh.seq
                    elif t == C.FT_RECORDS:
                        sealed_records.append(fh.offset)  # 10.6: where records are, not how many
                elif t == C.FT_RECORDS and not deep:
                    # structural: the codec must undo and the array header gives the count
                    n = array_len(raw_payload(fh, payload), fh.offset, fh.seq)
                    kinds_unknown = True
                    records += n
                elif t == C.FT_RECORDS:
                    raw = raw_payload(fh, payload)
                    # 13.3 in bulk (fast.py); a frame it does not accept takes the reference walk below,
                    # which names its failure. A kind the loop below acts on must be in fast.WALK_KINDS,
                    # or be entered here for a bulk frame too (as journal.frame enters actions).
                    got = check_frame(raw)
                    if got is not None:
                        dim = record_frame(got, fh.offset, ids, locs, kinds, lexical, vectors)
                        journal.frame(raw, got.kinds)  # 18: its action records, for journal.check
                        first_dim = first_dim or dim
                        records += len(got)
                    for slot, (value, data) in enumerate(
                            decode_records_payload(raw, fh.offset, fh.seq) if got is None else ()):
                        kind = value.get("kind") if isinstance(value, dict) else None
                        if not isinstance(kind, str):
                            raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
                        rid = record_id(kind, data)
                        if deep:
                            try:
                                rec = decode_record(value, rid)
                            except DataError as e:
                                raise CorruptError(f"record {slot}: {e}", offset=fh.offset, seq=fh.seq,
                                                   check="record-schema") from e
                            if kind == "vindex" and first_vindex is None:
                                first_vindex = VectorParams(rec.space, rec.dim, rec.M, rec.ef_construction, rec.seed,
                                                            rec.embedder)
                            elif kind == "memory" and not first_dim and rec.embedding is not None:
                                first_dim = len(rec.embedding)
                            vectors.record(kind, rid, rec, fh.offset, slot)
                            if kind == "action":
                                journal.record(rec)
                            if kind in EVENT_KINDS:
                                events.add(rid)
                                if kind == "revert":
                                    # 7.7: `after` is the root the last COMMIT before this one named
                                    want = bytes.fromhex(rep.root) if rep.root is not None else Merkle().root()
                                    if rec.after != want and records >= inherited(rep.lineage):  # 15.1
                                        raise CorruptError(f"record {slot}: revert `after` is not the root of the "
                                                           "last commit before it", offset=fh.offset, seq=fh.seq,
                                                           check="revert-after")
                                    apply_revert(dead, redacted, rec)
                        ids += rid
                        locs.append((fh.offset, slot))
                        lexical.record(kind, rid, fh.offset, slot)
                        kinds[kind] = kinds.get(kind, 0) + 1
                        records += 1
                elif t == C.FT_BLOB:
                    blob_seqs[fh.offset] = fh.seq
                    lexical.blob_frame(fh.offset)
                elif t == C.FT_TABLE:
                    tables[fh.payload_offset] = (fh.payload_len, hashlib.sha256(payload).digest())
                elif t == C.FT_INDEX:
                    meta = parse_index_payload(payload, fh.offset, fh.seq)
                    if meta.frontier != merkle.peaks or meta.records != records or (
                        not kinds_unknown and meta.kinds != kinds
                    ):
                        raise CorruptError("INDEX does not match the frames before it", offset=fh.offset, seq=fh.seq,
                                           check="index")
                    if deep and meta.vectors is not None:
                        # 9.2, 16.1: `vectors` is what the records before this INDEX fix
                        p = first_vindex or (VectorParams(dim=first_dim) if first_dim else None)
                        if meta.vectors != ({} if p is None else p.to_value()):
                            raise CorruptError("INDEX vector parameters do not match the records before it",
                                               offset=fh.offset, seq=fh.seq, check="index")
                    for s in meta.segments:
                        if tables.get(s.offset) != (s.count * ENTRY_SIZE, s.sha256):
                            raise CorruptError("INDEX names a table that is not there", offset=fh.offset, seq=fh.seq,
                                               check="index")
                    got_labels: dict[bytes, int] = {}
                    for r in meta.labels:
                        if tables.get(r.offset) != (r.count * ENTRY_SIZE, r.sha256):
                            raise CorruptError("INDEX names a label table that is not there", offset=fh.offset,
                                               seq=fh.seq, check="index")
                        seg = segment(h, r)
                        for j in range(r.count):
                            got_labels.setdefault(seg.key(j), int(seg.frames[j]))
                    if len(got_labels) != sum(r.count for r in meta.labels) or got_labels != labels_at:
                        raise CorruptError("INDEX label tables do not match the checkpoints", offset=fh.offset,
                                           seq=fh.seq, check="index-label")
                    for ref in meta.blobs.values() if deep else ():
                        if ref not in blobs_seen or journal.pending(ref):
                            # 3.4, 16.2: the blob the INDEX names is whole, hashes right and,
                            # for the vector index, passes every bound a reader checks.
                            blobs_seen.add(ref)
                            try:
                                blob, _, check = read_blob(h, ref, header.max_frame_len, fh.offset)
                                check()
                                if ref.type == BLOB_TYPE:  # 16.3: its ids are the entries of 16.1 before it
                                    vectors.check(ref, VectorIndex.decode(blob, where=ref.offset),
                                                  first_vindex or (VectorParams(dim=first_dim) if first_dim else None))
                                if ref.type == LEX_BLOB:
                                    lexical.check(ref, blob)
                                journal.check(ref, fh.offset)  # 18.1: a head is the fold of its records
                            except CorruptError as e:
                                # 13.3: at the BLOB frame that failed (its offset and seq), or at
                                # this INDEX when its entry names no BLOB frame at all
                                at = e.offset if e.offset in blob_seqs else fh.offset
                                raise CorruptError(e.message, offset=at, seq=blob_seqs.get(at, fh.seq),
                                                   check=e.check) from None
                    want_ck = (last_ck.offset, last_ck.hash) if last_ck else None
                    if meta.checkpoint != want_ck or meta.keyset != (keysets[-1].offset if keysets else None):
                        raise CorruptError("INDEX checkpoint or keyset pointer is wrong", offset=fh.offset,
                                           seq=fh.seq, check="index")
                    last_index = (fh.offset, hashlib.sha256(payload).digest(), meta)
                elif t == C.FT_COMMIT:
                    c = parse_commit_payload(payload, fh.offset, fh.seq, fh.end, rd.chain)
                    bad = None
                    if c.root != merkle.root():
                        bad = ("merkle-root", "Merkle root does not match the frames")
                    elif c.records != records and not counts_unknown:
                        bad = ("record-count", f"COMMIT says {c.records} records, the frames hold {records}")
                    elif c.prev != prev_commit or c.commits != rep.commits + 1:
                        bad = ("commit-prev", "COMMIT back-pointer or ordinal is wrong")
                    elif (c.index, c.index_hash if counts_unknown is False else None) != (
                            (last_index[0], last_index[1]) if last_index else (None, None)):
                        bad = ("index", "COMMIT does not name the latest INDEX")
                    elif (wrong := slots.commit(c.keyslots, c.mac)) is not None:
                        bad = wrong
                    elif h.crypt is not None:
                        h.crypt.check_commit(c, chain_before)  # 10.7
                    if bad:
                        raise CorruptError(bad[1], offset=fh.offset, seq=fh.seq, check=bad[0])
                    if counts_unknown:  # 10.6: sealed records are counted by the COMMITs that hold them
                        records = c.records
                    rep.commits += 1
                    rep.last_seq, rep.root = fh.seq, c.root.hex()
                    commit_roots[rep.root] = fh.seq
                    commit_ends.append(fh.end)
                    carried.commit(rep.commits, fh.seq, fh.end, records, c.root,
                                   (lambda: _state_root(ids, dead, events)) if deep else None)  # noqa: B023
                    prev_commit = fh.offset
                    committed_end = fh.end
                    rep.records = records
                elif t == C.FT_KEYSET:
                    kf = parse_keyset(payload, fh.offset, fh.seq)
                    if kf.prev_offset != (keysets[-1].offset if keysets else None):
                        raise CorruptError("KEYSET does not follow the previous one", offset=fh.offset, seq=fh.seq,
                                           check="keyset")
                    if keysets:
                        try:
                            verify_rotation(keysets[-1].keyset, kf.rotation)
                        except DataError as e:
                            raise CorruptError(f"rotation refused: {e}", offset=fh.offset, seq=fh.seq,
                                               check="keyset-rotation") from None
                    keysets.append(kf)
                elif t == C.FT_CHECKPOINT:
                    ck = parse_checkpoint(payload, fh.offset, fh.seq)
                    b = ck.body
                    problem = None
                    if b.origin != header.file_id:
                        problem = ("checkpoint-origin", "checkpoint names another capsule (spliced?)")
                    elif b.root != merkle.root() or b.chain != chain_before:
                        problem = ("checkpoint-root", "checkpoint root or chain does not match the frames before it")
                    elif (ck.prev_offset, b.prev) != ((last_ck.offset, last_ck.hash) if last_ck else (None, None)):
                        problem = ("checkpoint-prev", "checkpoint does not extend the previous one")
                    elif not keysets or b.keyset != keysets[-1].keyset.digest:
                        problem = ("checkpoint-keyset", "checkpoint is not signed under the keyset in force")
                    elif deep and b.state_root != _state_root(ids, dead, events):
                        problem = ("checkpoint-state", "checkpoint state root does not match the records")
                    if problem:
                        raise CorruptError(problem[1], offset=fh.offset, seq=fh.seq, check=problem[0])
                    ks = keysets[-1].keyset
                    n_ok = count_valid(CHECKPOINT_PAYLOAD_TYPE, ck.body_raw, ck.sigs, ks)
                    if n_ok < ks.threshold:
                        raise CorruptError(f"checkpoint {b.label!r} has {n_ok} valid signatures of the "
                                           f"{ks.threshold} keyset v{ks.version} needs", offset=fh.offset,
                                           seq=fh.seq, check="checkpoint-signature")
                    last_ck = ck
                    signed.append(_Signed(fh.offset, fh.seq, fh.end, len(keysets) - 1, records, rep.commits,
                                          b.label, b.root))
                    labels_at[label_key(b.label)] = fh.offset
                    rep.checkpoints += 1
                elif t == C.FT_RECOVERY:
                    rv = parse_recovery(payload, fh.offset, fh.seq)
                    # 8.3: it stands where the dropped bytes began, as the first frame of its commit
                    if rv["offset"] != fh.offset or fh.offset != committed_end:
                        raise CorruptError("RECOVERY does not stand where the dropped bytes began",
                                           offset=fh.offset, seq=fh.seq, check="recovery")
                    rep.recoveries.append({"offset": fh.offset, "seq": fh.seq, "bytes": rv["length"]})
                elif t == C.FT_KEYSLOT:
                    slots.frame(fh, payload, rep.lineage is not None)
                elif t == C.FT_LINEAGE:
                    if fh.seq != 0:
                        raise CorruptError("LINEAGE must be the first frame", offset=fh.offset, seq=fh.seq,
                                           check="lineage")
                    carried = CarriedCheck(lin := parse_lineage(payload, fh.offset, fh.seq))
                    rep.lineage = lin.to_dict()
                elif t & C.CRITICAL:
                    raise CorruptError("unknown critical frame", offset=fh.offset, seq=fh.seq, check="frame-type")
            except CorruptError as e:
                raise _Semantic(e) from None
            merkle.append(leaf)
            chain_before = rd.chain
            rep.frames += 1
            if progress is not None:
                progress(rd.pos, size)
    except _Semantic as sem:
        # A frame that was read whole and then failed a check is damage, never a tear.
        rep.first_error = _err(sem.error, sem.error.offset, cur_seq)
        return
    except CorruptError as e:
        # 8.1-8.2: bad bytes after the last commit are a torn tail (even whole frames:
        # a power loss persists a commit's sectors in any order), unless a header there
        # passes its CRC yet fails a check, another file was joined on, or a later
        # COMMIT shows them durable (it names another predecessor, or an INDEX after them).
        stop = rd.pos
        last = (prev_commit, rep.commits) if prev_commit is not None else None
        if stop >= committed_end and not damage_is_not_a_crash(h, stop, size, header.max_frame_len, last,
                                                               check=e.check, seq=rd.seq):
            rep.torn_tail = size - committed_end
        else:
            rep.first_error = _err(e, stop, cur_seq)
            return
    except CapsuleError as e:
        rep.first_error = _err(e, rd.pos, cur_seq)  # type: ignore[arg-type]
        return
    if rep.torn_tail == 0 and committed_end < size:
        rep.torn_tail = size - committed_end
    if rep.torn_tail:
        rep.warnings.append(f"torn tail of {rep.torn_tail} bytes after the last commit at offset "
                            f"{committed_end}: readers ignore it and the next writer {torn_fate(h.path)}")
    if rep.commits == 0:
        rep.first_error = {"offset": C.HEADER_SIZE, "seq": 0, "check": "no-commit",
                           "message": "the file holds no commit (interrupted create?)"}
        return
    # Only what a COMMIT made durable counts: frames of a torn tail sign nothing.
    signed = [s for s in signed if s.end <= committed_end]
    keysets = [k for k in keysets if k.offset < committed_end]
    if (signed := carried.merge(rep, keysets, signed, _Signed)) is None:  # type: ignore[assignment]
        return
    rep.checkpoints = len(signed)
    if not _trust(rep, keysets, signed, trust, strict, pins, commit_roots, commit_ends, sealed_records):
        return
    if not deep:
        rep.ok = True
        rep.warnings.append("structural check only: record contents, ids and tables were not read")
        return
    # Records before the last commit only; the id table must match them exactly.
    n_committed = rep.records
    all_ids = np.frombuffer(bytes(ids[: 32 * n_committed]), dtype="S32")
    order = np.argsort(all_ids, kind="stable")
    sorted_ids = all_ids[order]
    if n_committed > 1:
        packed = np.frombuffer(sorted_ids.tobytes(), dtype="V32")
        dups = np.nonzero(packed[1:] == packed[:-1])[0]
        if len(dups):
            j = int(order[dups[0] + 1])
            rep.first_error = {"offset": locs[j][0], "seq": None, "check": "duplicate-record",
                               "message": f"record {bytes(sorted_ids[dups[0]]).hex()} appears twice"}
            return
    if last_index is not None:
        off, _, meta = last_index
        segs = [segment(h, s) for s in meta.segments]
        if not tables_match(segs, ids, locs, meta.records):
            rep.first_error = {"offset": off, "seq": meta.tree_size, "check": "index-table",
                               "message": "the INDEX tables do not match the committed records"}
            return
    rep.ok = True
