"""``verify``: prove a capsule's integrity or name its first bad byte (spec 13).

The walk checks, in file order: the header; every frame header, length and
seq; every chain link; for RECORDS frames the codec, the canonical encoding,
each record's schema and that no content id repeats; for COMMIT frames the
Merkle root, record count, back-pointer and INDEX pointer; for INDEX frames
the frontier and counts, and for the INDEX in force at the end that its
tables hold exactly the committed ids at the right places.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _constants as C
from ._commit import decode_records_payload, parse_commit_payload, parse_index_payload
from ._errors import CapsuleError, CorruptError, DataError
from ._file import ReadHandle
from ._frames import FileHeader, Merkle, parse_header, raw_payload
from ._index import Segment, merge_inputs
from ._records import decode_record, record_id
from ._scan import Reader, damage_is_not_a_crash


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
    first_error: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "file_id": self.file_id, "format_version": self.format_version,
                "commits": self.commits, "records": self.records, "frames": self.frames, "bytes": self.bytes,
                "torn_tail_bytes": self.torn_tail, "first_error": self.first_error, "warnings": self.warnings}


def _err(e: CorruptError | DataError, offset: int | None = None, seq: int | None = None) -> dict[str, Any]:
    return {"offset": getattr(e, "offset", None) if getattr(e, "offset", None) is not None else offset,
            "seq": getattr(e, "seq", None) if getattr(e, "seq", None) is not None else seq,
            "check": getattr(e, "check", "record"), "message": getattr(e, "message", str(e))}


def _array_len(raw: bytes, offset: int, seq: int) -> int:
    b = raw[:1]
    if b and 0x90 <= b[0] <= 0x9F:
        return b[0] & 0x0F
    if b == b"\xdc" and len(raw) >= 3:
        return int.from_bytes(raw[1:3], "big")
    if b == b"\xdd" and len(raw) >= 5:
        return int.from_bytes(raw[1:5], "big")
    raise CorruptError("RECORDS payload is not an array", offset=offset, seq=seq, check="records")


def verify(path: str | Path, *, deep: bool = True, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check every byte of a capsule. ``deep=False`` skips per-record decoding
    (structure, chain, codec framing and Merkle roots only)."""
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
        _walk(h, header, size, rep, deep, progress)
        return rep
    finally:
        h.close()


def _walk(h: ReadHandle, header: FileHeader, size: int, rep: VerifyReport, deep: bool,
          progress: Callable[[int, int], None] | None) -> None:
    rd = Reader(h, C.HEADER_SIZE, size, 0, header.chain_seed, header.max_frame_len)
    merkle = Merkle()
    ids = bytearray()
    locs: list[tuple[int, int]] = []
    kinds: dict[str, int] = {}
    tables: dict[int, tuple[int, bytes]] = {}
    last_index: tuple[int, bytes, Any] | None = None
    prev_commit: int | None = None
    committed_end = C.HEADER_SIZE
    records = 0
    cur_seq = 0
    kinds_unknown = False
    try:
        for fh, payload, leaf in rd.frames():
            cur_seq = fh.seq
            t = fh.ftype
            if t == C.FT_RECORDS and not deep:
                # structural: the codec must undo and the array header gives the count
                n = _array_len(raw_payload(fh, payload), fh.offset, fh.seq)
                kinds_unknown = True
                records += n
            elif t == C.FT_RECORDS:
                raw = raw_payload(fh, payload)
                for slot, (value, data) in enumerate(decode_records_payload(raw, fh.offset, fh.seq)):
                    kind = value.get("kind") if isinstance(value, dict) else None
                    if not isinstance(kind, str):
                        raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
                    rid = record_id(kind, data)
                    if deep:
                        try:
                            decode_record(value, rid)
                        except DataError as e:
                            raise CorruptError(f"record {slot}: {e}", offset=fh.offset, seq=fh.seq,
                                               check="record-schema") from e
                    ids += rid
                    locs.append((fh.offset, slot))
                    kinds[kind] = kinds.get(kind, 0) + 1
                    records += 1
            elif t == C.FT_TABLE:
                tables[fh.payload_offset] = (fh.payload_len, hashlib.sha256(payload).digest())
            elif t == C.FT_INDEX:
                meta = parse_index_payload(payload, fh.offset, fh.seq)
                if meta.frontier != merkle.peaks or meta.records != records or (
                    not kinds_unknown and meta.kinds != kinds
                ):
                    raise CorruptError("INDEX does not match the frames before it", offset=fh.offset, seq=fh.seq,
                                       check="index")
                for s in meta.segments:
                    if tables.get(s.offset) != (s.count * 52, s.sha256):
                        raise CorruptError("INDEX names a table that is not there", offset=fh.offset, seq=fh.seq,
                                           check="index")
                last_index = (fh.offset, hashlib.sha256(payload).digest(), meta)
            elif t == C.FT_COMMIT:
                c = parse_commit_payload(payload, fh.offset, fh.seq, fh.end, rd.chain)
                bad = None
                if c.root != merkle.root():
                    bad = ("merkle-root", "Merkle root does not match the frames")
                elif c.records != records:
                    bad = ("record-count", f"COMMIT says {c.records} records, the frames hold {records}")
                elif c.prev != prev_commit or c.commits != rep.commits + 1:
                    bad = ("commit-prev", "COMMIT back-pointer or ordinal is wrong")
                elif (c.index, c.index_hash) != ((last_index[0], last_index[1]) if last_index else (None, None)):
                    bad = ("index", "COMMIT does not name the latest INDEX")
                if bad:
                    raise CorruptError(bad[1], offset=fh.offset, seq=fh.seq, check=bad[0])
                rep.commits += 1
                prev_commit = fh.offset
                committed_end = fh.end
                rep.records = records
            elif t & C.CRITICAL:
                raise CorruptError("unknown critical frame", offset=fh.offset, seq=fh.seq, check="frame-type")
            merkle.append(leaf)
            rep.frames += 1
            if progress is not None:
                progress(rd.pos, size)
    except CorruptError as e:
        stop = rd.pos
        if stop >= committed_end and not damage_is_not_a_crash(h, stop, size, header.max_frame_len):
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
                            f"{committed_end}: readers ignore it and the next writer truncates it")
    if rep.commits == 0:
        rep.first_error = {"offset": C.HEADER_SIZE, "seq": 0, "check": "no-commit",
                           "message": "the file holds no commit (interrupted create?)"}
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
        segs = [Segment(s, h.pread(s.offset, s.count * 52)) for s in meta.segments]
        tids, tframes, tslots = merge_inputs(segs, {})
        torder = np.argsort(tids, kind="stable")
        expect = {(bytes(ids[32 * i : 32 * i + 32])): locs[i] for i in range(meta.records)}
        got = {bytes(segs_id): (int(f), int(s)) for segs_id, f, s in
               zip(np.frombuffer(tids[torder].tobytes(), dtype="V32"), tframes[torder], tslots[torder], strict=True)}
        if got != expect:
            rep.first_error = {"offset": off, "seq": meta.tree_size, "check": "index-table",
                               "message": "the INDEX tables do not match the committed records"}
            return
    rep.ok = True
