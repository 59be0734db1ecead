"""Structure-aware mutation of capsule files, for the open/verify fuzz target.

Theory of operation: flipping bytes of a whole file almost always stops at the
first CRC or chain value, so the checks behind them (codec, canonical form,
record schemas, COMMIT and INDEX fields, TABLE lookups, blobs) are never reached.
Here a valid file is split into frames (payloads with the codec undone), a few
edits chosen by a byte recipe (:class:`~tests.fuzz._common.Choices`) are applied
to payloads, decoded values, header fields or the frame list, and the file is
rebuilt the way a writer (or an attacker with the library's own encoders, see
``tests/test_hostile.py``) would lay it out:

- every frame header gets its lengths, seq and CRC recomputed, payloads that
  were compressed are compressed again, and every chain value is recomputed;
- every COMMIT names the Merkle root, tree size, record count, previous COMMIT,
  INDEX (and its hash) and tail locator of the rebuilt file;
- every INDEX gets its tree size, frontier, table hashes, kind counts and
  pointers; every TABLE its ids and frame offsets (a record edited in a
  RECORDS frame changes its id); a single-part BLOB its id and size, and the
  INDEX entry naming it; CHECKPOINT, KEYSET and RECOVERY their offsets.

The recipe's first byte can switch one fix-up off, so that the check it would
have satisfied is fuzzed too. All references in a capsule point backwards, so
one pass in file order rebuilds everything. Signatures cannot be forged: an
edit before a CHECKPOINT makes its signature check fail, which is a check too.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zstandard

from capsule.core import constants as C
from capsule.format.blob import part_count
from capsule.format.commit import record_kinds
from capsule.format.frames import Merkle, chain_next, leaf_hash
from capsule.format.index import ENTRY_SIZE, build_table
from capsule.format.records import record_id
from tests.fuzz._common import Choices

_HDR = struct.Struct("<IBBHQIIII")
_LOOSE = {"raw": False, "strict_map_key": False, "max_bin_len": 1 << 24, "max_str_len": 1 << 24,
          "max_array_len": 1 << 20, "max_map_len": 1 << 17, "max_ext_len": 0}
_sha = hashlib.sha256

# fix-ups a recipe can skip (its first byte >= 0xE0 names one in its low bits)
SKIP_CRC, SKIP_CHAIN, SKIP_COMMIT, SKIP_INDEX, SKIP_TABLE, SKIP_BLOB, SKIP_RECORDS = (1 << i for i in range(7))


@dataclass
class Frame:
    orig: int  # offset in the seed file (-1 for a frame an edit made up)
    ftype: int
    flags: int
    raw: bytes  # the payload with the codec undone
    stored: bytes | None = None  # stored bytes used verbatim (a damaged compressed payload)
    fields: dict[str, int] = field(default_factory=dict)  # header fields forced after the fix-up
    bad_crc: bool = False


@dataclass
class Capsule:
    header: bytes
    frames: list[Frame]
    tail: bytes  # bytes after the last whole frame (a torn tail)


def split(data: bytes) -> Capsule:
    """The frames of a well-formed file (the walk stops at the first that is not whole)."""
    frames, off = [], C.HEADER_SIZE
    while off + C.FRAME_OVERHEAD <= len(data):
        total, ftype, flags, _, _, plen, rlen, _, _ = _HDR.unpack_from(data, off)
        if total != C.FRAME_OVERHEAD + plen or off + total > len(data):
            break
        stored = data[off + 32 : off + total - 32]
        f = Frame(off, ftype, flags, stored)
        if flags & C.FFLAG_ZSTD:
            try:
                f.raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=max(rlen, 1))
            except zstandard.ZstdError:
                f.stored = stored
        frames.append(f)
        off += total
    return Capsule(data[: C.HEADER_SIZE], frames, data[off:])


# --- edits --------------------------------------------------------------------------

_WORDS = ["", "kind", "time", "text", "memory", "note", "decision", "tags", "meta", "embedding", "tier",
          "ttl", "source", "records", "root", "prev", "index", "commits", "tree_size", "frontier", "segments",
          "blobs", "type", "hnsw", "vindex", "id", "part", "parts", "size", "length", "offset", "sha256",
          "body", "sigs", "runtime", "keyset", "revert", "drop", "restore", "after", "to", "dim", "space",
          "e\u0301", "\u00e9", "zz", "action", "task"]
_INTS = [0, 1, -1, 2, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1,
         2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**63), 10**18, 1767225600 * 10**9]


def value(c: Choices, depth: int = 0) -> Any:
    """A msgpack value chosen by the recipe: boundaries, wrong types, odd text, deep nests."""
    k = c.below(16)
    if k == 0:
        return None
    if k == 1:
        return bool(c.byte() & 1)
    if k == 2:
        return c.below(256) - 128
    if k == 3:
        return c.pick(_INTS)
    if k == 4:
        return c.pick([0.5, -1.5, 1e308, 5e-324, 2.0**64, 0.1])
    if k == 5:
        return c.pick(_WORDS)
    if k == 6:
        return bytes(c.pick([0, 1, 8, 16, 31, 32, 33, 64]))
    if k == 7 and depth < 3:
        return [value(c, depth + 1) for _ in range(c.below(4))]
    if k == 8 and depth < 3:
        return {c.pick(_WORDS): value(c, depth + 1) for _ in range(c.below(4))}
    if k == 9:
        v: Any = c.below(2)
        for _ in range(30 + c.below(8)):
            v = [v] if c.byte() & 1 else {"k": v}
        return v
    if k == 10:
        return _sha(c.take(4)).hexdigest()
    if k == 11:
        return int.from_bytes(c.take(8), "little") - (1 << 63) * (c.byte() & 1)
    if k == 12:
        return c.take(c.below(40)).decode("utf-8", "replace")
    if k == 13:
        return [c.below(3)] * c.pick([16, 65536, 70000])
    if k == 14:
        return c.take(c.below(80))
    return {}


def edit_value(root: Any, c: Choices) -> Any:
    """Walk down to a node of a decoded value and replace, drop, add or nudge it."""
    parent: Any = None
    key: Any = None
    node = root
    while isinstance(node, dict | list) and node and c.below(4) != 3:
        parent, key = node, c.below(len(node))
        if isinstance(node, dict):
            key = list(node)[key]
        node = node[key]
    op = c.below(6)
    if op == 0 and isinstance(node, dict):
        node[c.pick(_WORDS)] = value(c)
        return root
    if op == 1 and isinstance(node, list):
        node.insert(c.below(len(node) + 1), value(c))
        return root
    if op == 2 and parent is not None:
        del parent[key]
        return root
    if op == 3 and type(node) is int:
        new: Any = node + c.pick([-1, 1, 1 << 32, -(1 << 32)])
    elif op == 3 and isinstance(node, str | bytes) and node:
        i = c.below(len(node))
        new = node[:i] + node[i + 1 :] if c.byte() & 1 else node + node[i : i + 1]
    elif op == 4 and isinstance(node, bytes) and node:
        i = c.below(len(node))
        new = node[:i] + bytes([node[i] ^ (c.byte() | 1)]) + node[i + 1 :]
    else:
        new = value(c)
    if parent is None:
        return new
    parent[key] = new
    return root


def _loads(raw: bytes) -> Any:
    return msgpack.unpackb(raw, **_LOOSE)


def _canon_pack(v: Any, c: Choices | None = None) -> bytes:
    """Sorted keys (so the edit reaches the checks after the canonical ones), unless the recipe says not."""
    if c is not None and c.byte() & 0x0F == 0x0F:
        return msgpack.packb(v, use_bin_type=True)  # as edited: key order kept
    return msgpack.packb(_sorted(v), use_bin_type=True)


def _sorted(v: Any) -> Any:
    if isinstance(v, dict):
        try:
            return {k: _sorted(v[k]) for k in sorted(v)}
        except TypeError:
            return {k: _sorted(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_sorted(x) for x in v]
    return v


def _value_parts(f: Frame) -> tuple[bytes, bytes, bytes] | None:
    """(before, canonical value, after) of a frame's payload, or None."""
    raw = f.raw
    if f.ftype == C.FT_COMMIT:
        return (b"", raw[:-16], raw[-16:]) if len(raw) > 16 else None
    if f.ftype == C.FT_BLOB:
        n = int.from_bytes(raw[:2], "little")
        return (raw[:2], raw[2 : 2 + n], raw[2 + n :]) if 2 + n <= len(raw) else None
    if f.ftype == C.FT_TABLE:
        return None
    return b"", raw, b""


def edit_frame_value(f: Frame, c: Choices) -> None:
    parts = _value_parts(f)
    if parts is None:
        return
    before, body, after = parts
    try:
        v = _loads(body)
    except Exception:
        return
    packed = _canon_pack(edit_value(v, c), c)
    if f.ftype == C.FT_BLOB:
        before = len(packed).to_bytes(2, "little") if len(packed) < 1 << 16 else before
    f.raw = before + packed + after


def _interesting_byte(c: Choices) -> int:
    return c.pick([0, 1, 0x7F, 0x80, 0xFF, 0xC0, 0xC1, 0xD9, 0xDC, 0xDD, 0xDE, 0xDF, 0xCB, 0xCA])


def mutate(seed: bytes, c: Choices) -> bytes:
    """A rebuilt, consistently re-checksummed mutant of ``seed`` (see the module docstring)."""
    cap = split(seed)
    b = c.byte()
    skip = 1 << (b & 7) if b >= 0xE0 else 0  # one recipe in eight skips one fix-up
    for _ in range(1 + c.below(3)):
        _edit(cap, c)
    data = build(cap, skip)
    op = c.below(8)
    if op == 1:  # a torn write
        data = data[: C.HEADER_SIZE + c.below(max(1, len(data) - C.HEADER_SIZE))]
    elif op == 2:  # garbage or a second file after the end
        data += c.take(c.below(64)) if c.byte() & 1 else seed[: C.HEADER_SIZE + c.below(256)]
    return data


def _edit(cap: Capsule, c: Choices) -> None:
    frames = cap.frames
    op = c.below(12)
    if op == 11:  # the file header: any field, CRC recomputed by build
        h = bytearray(cap.header)
        i = c.below(60)
        h[i] = _interesting_byte(c) if c.byte() & 1 else h[i] ^ (1 << c.below(8))
        cap.header = bytes(h)
        return
    if not frames:
        return
    others = [f for f in frames if f.ftype != C.FT_COMMIT]  # every other frame is a COMMIT: favour the rest
    pool = others if others and c.byte() & 3 != 3 else frames
    f = pool[c.below(len(pool))]
    if op in (0, 1, 2):  # a decoded value: what reaches the schema checks
        edit_frame_value(f, c)
    elif op == 3:  # flip a payload byte
        if f.raw:
            i = c.below(len(f.raw))
            f.raw = f.raw[:i] + bytes([f.raw[i] ^ (c.byte() | 1)]) + f.raw[i + 1 :]
    elif op == 4:  # overwrite a payload byte with an interesting one
        if f.raw:
            i = c.below(len(f.raw))
            f.raw = f.raw[:i] + bytes([_interesting_byte(c)]) + f.raw[i + 1 :]
    elif op == 5:  # splice: payload length changes
        i = c.below(len(f.raw) + 1)
        f.raw = f.raw[:i] + c.take(c.below(16)) + f.raw[i + c.below(16) :]
    elif op == 6:  # a header field
        name = c.pick(["ftype", "flags", "seq", "reserved", "key_epoch", "raw_len", "total_len", "payload_len",
                       "crc"])
        v = c.pick([0, 1, 2, 3, 0x80, 0xFF, 0x81, 0x82, 0x85, 0x87, 0x8A, 0x0A, 0x0B, 0x03, 0x04, C.MAX_RAW_LEN,
                    C.MAX_RAW_LEN + 1, 2**31, 2**32 - 1, 64, 63])
        if name == "ftype":
            f.ftype = v & 0xFF
        elif name == "flags":
            f.flags = v & 0xFF
        elif name == "crc":
            f.bad_crc = True
        else:
            f.fields[name] = v
    elif op == 7:  # compressed bytes damaged behind a valid CRC and chain
        z = f.stored if f.stored is not None else zstandard.ZstdCompressor(write_content_size=True).compress(f.raw)
        if z:
            i = c.below(len(z))
            f.stored = z[:i] + bytes([z[i] ^ (c.byte() | 1)]) + z[i + 1 :]
            f.flags |= C.FFLAG_ZSTD
    elif op == 8:  # drop a frame
        frames.remove(f)
    elif op == 9:  # repeat a frame
        frames.insert(c.below(len(frames) + 1), Frame(f.orig, f.ftype, f.flags, f.raw, f.stored, dict(f.fields)))
    else:  # swap two neighbours
        i = frames.index(f)
        if i + 1 < len(frames):
            frames[i], frames[i + 1] = frames[i + 1], frames[i]


# --- rebuild ------------------------------------------------------------------------


class _State:
    """What the rebuilt file holds so far, for the fix-ups of later frames."""

    def __init__(self) -> None:
        self.moved: dict[int, int] = {}  # seed offset -> rebuilt offset (frame starts and payload starts)
        self.stored: dict[int, bytes] = {}  # rebuilt payload offset -> stored payload
        self.ids: dict[int, list[bytes]] = {}  # rebuilt RECORDS frame offset -> record ids by slot
        self.blobs: dict[int, tuple[bytes, int, int]] = {}  # rebuilt BLOB offset -> (id, size, parts)
        self.records = 0
        self.kinds: Counter[str] = Counter()
        self.commit: int | None = None  # the last COMMIT's offset
        self.commits = 0

    def at(self, old: Any) -> Any:
        return self.moved.get(old, old) if type(old) is int else old


def build(cap: Capsule, skip: int = 0) -> bytes:
    out = bytearray(cap.header)
    if not skip & SKIP_CRC:
        out[60:64] = zlib.crc32(out[:60]).to_bytes(4, "little")
    chain = _sha(C.CHAIN_SEED_TAG + bytes(out)).digest()
    merkle = Merkle()
    st = _State()
    for seq, f in enumerate(cap.frames):
        off = len(out)
        if f.orig >= 0:
            st.moved.setdefault(f.orig, off)
            st.moved.setdefault(f.orig + C.FRAME_HEADER_SIZE, off + C.FRAME_HEADER_SIZE)
        raw = _fix_payload(f, off, seq, merkle, st, skip)
        if f.stored is not None:
            stored = f.stored
        elif f.flags & C.FFLAG_ZSTD:
            stored = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
        else:
            stored = raw
        h = {"total_len": C.FRAME_OVERHEAD + len(stored), "ftype": f.ftype, "flags": f.flags, "reserved": 0,
             "seq": seq, "payload_len": len(stored), "raw_len": len(raw), "key_epoch": 0}
        h.update({k: v % (1 << (8 * (8 if k == "seq" else 2 if k == "reserved" else 4)))
                  for k, v in f.fields.items()})
        body = _HDR.pack(h["total_len"], h["ftype"], h["flags"], h["reserved"], h["seq"], h["payload_len"],
                         h["raw_len"], h["key_epoch"], 0)[:28]
        crc = zlib.crc32(body) ^ (1 if f.bad_crc or skip & SKIP_CRC else 0)
        hdr = body + crc.to_bytes(4, "little")
        ph = _sha(stored).digest()
        chain = chain_next(chain, hdr, ph) if not skip & SKIP_CHAIN else _sha(chain).digest()
        merkle.append(leaf_hash(hdr, ph))
        st.stored[off + C.FRAME_HEADER_SIZE] = stored
        out += hdr + stored + chain
        if f.ftype == C.FT_COMMIT:
            st.commit, st.commits = off, st.commits + 1
    return bytes(out + cap.tail)


def _fix_payload(f: Frame, off: int, seq: int, merkle: Merkle, st: _State, skip: int) -> bytes:
    raw = f.raw
    try:
        if f.ftype == C.FT_RECORDS:
            if not skip & SKIP_RECORDS:
                pairs = record_kinds(raw, off, seq)
                st.ids[off] = [record_id(k, d) for k, d in pairs]
                st.records += len(pairs)
                st.kinds.update(k for k, _ in pairs)
        elif f.ftype == C.FT_COMMIT and not skip & SKIP_COMMIT and len(raw) > 16:
            v = _loads(raw[:-16])
            if isinstance(v, dict):
                idx = v.get("index")
                if isinstance(idx, list) and idx and type(idx[0]) is int:
                    at = st.at(idx[0])
                    payload = st.stored.get(at + C.FRAME_HEADER_SIZE)
                    v["index"] = [at, _sha(payload).digest() if payload is not None else idx[-1]]
                v.update(root=merkle.root(), tree_size=seq, records=st.records, prev=st.commit)
                if type(v.get("commits")) is int:
                    v["commits"] = st.commits + 1
                raw = _canon_pack(v) + C.TAIL_MAGIC + off.to_bytes(8, "little")
        elif f.ftype == C.FT_INDEX and not skip & SKIP_INDEX:
            v = _loads(raw)
            if isinstance(v, dict):
                _fix_index(v, seq, merkle, st)
                raw = _canon_pack(v)
        elif f.ftype == C.FT_TABLE and not skip & SKIP_TABLE:
            raw = _fix_table(raw, st)
        elif f.ftype == C.FT_BLOB and not skip & SKIP_BLOB:
            n = int.from_bytes(raw[:2], "little")
            v = _loads(raw[2 : 2 + n])
            data = raw[2 + n :]
            if isinstance(v, dict) and v.get("parts") == 1:
                v.update(id=_sha(data).digest(), size=len(data), parts=part_count(len(data)))
                head = _canon_pack(v)
                raw = len(head).to_bytes(2, "little") + head + data
                st.blobs[off] = (v["id"], len(data), v["parts"])
        elif f.ftype in (C.FT_CHECKPOINT, C.FT_KEYSET):
            v = _loads(raw)
            if isinstance(v, dict) and type(v.get("prev")) is int:
                v["prev"] = st.at(v["prev"])
                raw = _canon_pack(v)
        elif f.ftype == C.FT_RECOVERY:
            v = _loads(raw)
            if isinstance(v, dict) and "offset" in v:
                v["offset"] = off
                raw = _canon_pack(v)
    except Exception:  # whatever an edit broke, the library must meet it, not the forge
        pass  # so the payload is left as the edit made it
    return raw


def _fix_index(v: dict[str, Any], seq: int, merkle: Merkle, st: _State) -> None:
    v["tree_size"] = seq
    v["frontier"] = merkle.peaks
    for key in ("segments", "labels"):
        segs = v.get(key)
        if not isinstance(segs, list):
            continue
        total = 0
        for s in segs:
            if isinstance(s, list) and len(s) == 3:
                s[0] = st.at(s[0])
                table = st.stored.get(s[0])
                if table is not None:
                    s[1], s[2] = len(table) // ENTRY_SIZE, _sha(table).digest()
                total += s[1] if type(s[1]) is int else 0
        if key == "segments":
            v["records"] = total
            if sum(st.kinds.values()) == total:
                v["kinds"] = dict(sorted(st.kinds.items()))
    x = v.get("checkpoint")
    if isinstance(x, list) and x and type(x[0]) is int:
        x[0] = st.at(x[0])
    if type(v.get("keyset")) is int:
        v["keyset"] = st.at(v["keyset"])
    blobs = v.get("blobs")
    if isinstance(blobs, list):
        for b in blobs:
            if isinstance(b, list) and len(b) == 5:
                b[1] = st.at(b[1])
                if b[1] in st.blobs:
                    b[4], b[3], b[2] = st.blobs[b[1]]


def _fix_table(raw: bytes, st: _State) -> bytes:
    """Point each row at where its frame moved and at its record's id there, re-sorted (9.1)."""
    n = len(raw) // ENTRY_SIZE
    if n == 0 or len(raw) != n * ENTRY_SIZE:
        return raw
    ids = np.frombuffer(raw, dtype="S32", count=n, offset=8 * n).copy()
    frames = np.frombuffer(raw, dtype="<u8", count=n, offset=40 * n).astype(np.uint64)
    slots = np.frombuffer(raw, dtype="<u4", count=n, offset=48 * n).copy()
    for i in range(n):
        at = st.at(int(frames[i]))
        frames[i] = at
        got = st.ids.get(at)
        if got is not None and int(slots[i]) < len(got):
            ids[i] = got[int(slots[i])]
    return build_table(ids, frames, slots)
