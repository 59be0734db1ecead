"""The agent's state: a pure, deterministic fold over committed records (spec 13).

Theory of operation: records are folded in commit order. Memories are live
and grouped by tier; decisions and notes accumulate; the latest constraint
record for a (scope, text) pair decides whether that rule is active; the
latest identity record is the current identity and the earlier ones are its
history; approvals attach to their subject; a signature checks under a key an
identity record published or the keyset in force holds, and an approval is
verified only by a key of the keyset in force (given by the caller: keysets
are frames, not records). Nothing here reads a clock,
the environment or a file, so equal bytes give equal state on every host.
"""

from __future__ import annotations

import gc
import json
import time as _time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.clock import iso
from ..core.errors import CorruptError
from ..core.lazy import lazy
from ..format.commit import decode_records_payload
from ..format.frames import raw_payload
from ..format.records import TIERS, GenericRecord, Memory, decode_fast, decode_record, record_id
from ..format.scan import Reader
from .liveframes import live_frames, live_values
from .liveness import apply_revert
from .stateroot import state_root_of

if TYPE_CHECKING:
    import numpy as np

    from ..format.store import Store
else:
    np = lazy("numpy")

STATE_KINDS = ("memory", "decision", "constraint", "approval", "identity", "note")
EVENT_KINDS = frozenset({"revert"})  # history, not state: never live, never in the state root


def state_root(ids: Iterable[bytes]) -> str:
    """13.1: the two-level hash over the sorted live ids (see _stateroot)."""
    return state_root_of(list(ids))


@dataclass
class State:
    """What is true at one commit. ``to_dict()`` is the ``capsule state`` document."""

    memories: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in TIERS})
    decisions: list[dict[str, Any]] = field(default_factory=list)
    constraints: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    approvals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    identity: dict[str, Any] | None = None
    identity_history: list[str] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)
    live: list[bytes] = field(default_factory=list)
    keys: dict[str, bytes] = field(default_factory=dict)  # key id -> public key any identity published
    vouched: dict[str, bytes] = field(default_factory=dict)  # key id -> key of the keyset in force (7.4)
    valid_at: int | None = None  # 13.6: the memories are the valid-time view's at this time (int ns)
    #: (tier, index) of the memories whose meta holds a float or a bin value (to_json); None: not tracked
    special_meta: list[tuple[str, int]] | None = field(default_factory=list, repr=False, compare=False)

    def vouch(self, keys: Iterable[bytes]) -> None:
        """7.4: the public keys of the keyset in force at this commit (14.4), which
        alone make an approval ``verified``. Not part of the fold: keysets are
        frames, not records, and the state root does not depend on them (13.1)."""
        from ..format.keys import PublicKey

        self.vouched = {PublicKey(raw).key_id: raw for raw in keys}

    @property
    def root(self) -> str:
        return state_root_of(np.array(self.live, dtype="S32"))  # sorted there, in C

    def to_dict(self) -> dict[str, Any]:
        from ..format.keys import PublicKey
        from .kinds import approval_message

        def approvals(rid: str) -> list[dict[str, Any]]:
            # 7.4: `signature_ok` when the signature checks under the approver's key (one an
            # identity published, or one of the keyset in force); `verified` only when that
            # key is a member of the keyset in force, so the keyset chain vouches for it.
            out = []
            for a in self.approvals.get(rid, []):
                member = self.vouched.get(a["approver"])
                raw = member if member is not None else self.keys.get(a["approver"])
                ok = raw is not None and PublicKey(raw).verify(approval_message(bytes.fromhex(rid)),
                                                             bytes.fromhex(a["signature"]))
                out.append({"id": a["id"], "approver": a["approver"], "time": a["time"], "signature_ok": ok,
                            "verified": ok and member is not None})
            return out

        active = [c for c in self.constraints.values() if c["status"] == "active"]
        active.sort(key=lambda c: (c["scope"], c["text"]))
        view = {} if self.valid_at is None else {"valid_at": iso(self.valid_at)}
        return {
            **view,
            "state_root": self.root,
            "records": len(self.live),
            "memories": {t: self.memories[t] for t in TIERS},
            "decisions": [{**d, "approvals": approvals(d["id"])} for d in self.decisions],
            "constraints": [
                {"id": c["id"], "text": c["text"], "scope": c["scope"], "since": c["time"],
                 **({"rule": c["rule"]} if "rule" in c else {}), "approvals": approvals(c["id"])}
                for c in active
            ],
            "identity": self.identity,
            "identity_history": list(self.identity_history),
            "notes": list(self.notes),
            "other_kinds": dict(sorted(self.other.items())),
        }

    def to_json(self) -> str:
        """The ``capsule state --json`` document (13.2): sorted keys, compact separators,
        UTF-8, a bin value as lowercase hex."""
        return self.to_json_bytes().decode()

    def to_json_bytes(self) -> bytes:
        """:meth:`to_json` as UTF-8 bytes, written by msgspec.

        msgspec writes what ``json.dumps(doc, sort_keys=True, ensure_ascii=False,
        separators=(",", ":"))`` writes, byte for byte, except floats (``1e-7`` for
        ``1e-07``) and bin values (base64). Both live only in user maps (memory meta,
        decision inputs, identity config), so those holding one go in with each float
        pre-rendered as ``json`` spells it and each bin value as hex."""
        with _no_gc():  # building the document allocates much and frees nothing cyclic
            return self._json_bytes()

    def _json_bytes(self) -> bytes:
        import msgspec

        doc = self.to_dict()
        if self.special_meta is None:  # a State not made by a fold: look everywhere
            return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                              default=_hex).encode()
        if self.special_meta:
            mems = doc["memories"] = dict(doc["memories"])
            copied: set[str] = set()
            for tier, i in self.special_meta:
                if tier not in copied:
                    mems[tier] = list(mems[tier])
                    copied.add(tier)
                mems[tier][i] = {**mems[tier][i], "meta": _plain(mems[tier][i]["meta"], msgspec.Raw)}
        for d in doc["decisions"]:  # fresh dicts (to_dict adds their approvals)
            if _special(d.get("inputs")):
                d["inputs"] = _plain(d["inputs"], msgspec.Raw)
        ident = doc["identity"]
        if ident is not None and _special(ident):
            doc["identity"] = _plain(ident, msgspec.Raw)
        return _json_encoder().encode(doc)  # type: ignore[no-any-return]


_ENCODER: list[Any] = []


def _json_encoder() -> Any:
    if not _ENCODER:
        import msgspec

        _ENCODER.append(msgspec.json.Encoder(order="sorted"))
    return _ENCODER[0]


def _hex(v: object) -> str:
    """13.2: a bin value prints as lowercase hex."""
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def _special(v: object) -> bool:
    """Whether ``v`` holds a float or a bin value (which msgspec spells otherwise)."""
    t = type(v)
    if t is float or t is bytes:
        return True
    if t is dict:
        return any(_special(x) for x in v.values())  # type: ignore[attr-defined]
    if t is list or t is tuple:
        return any(_special(x) for x in v)  # type: ignore[attr-defined]
    return False


def _plain(v: Any, raw: Any) -> Any:
    """``v`` with every float pre-rendered as ``json`` spells it and every bin value as hex."""
    t = type(v)
    if t is float:
        return raw(float.__repr__(v).encode())
    if t is bytes:
        return v.hex()
    if t is dict:
        return {k: _plain(x, raw) for k, x in v.items()}
    if t is list or t is tuple:
        return [_plain(x, raw) for x in v]
    return v


def _times(d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    d["time"] = iso(d["time"])
    if "valid_from" in d:  # a memory's world-time bounds (7.1, 1.3) print as times too
        d["valid_from"] = iso(d["valid_from"])
    if "valid_to" in d:
        d["valid_to"] = iso(d["valid_to"])
    return d


def live_records(records: Iterable[Any]) -> list[Any]:
    """The live state records in commit order: events removed, reverts applied (13.1)."""
    recs = list(records)
    dead: set[bytes] = set()
    red: set[bytes] = set()
    for rec in recs:
        if rec.kind == "revert":
            apply_revert(dead, red, rec)
    return [r for r in recs if r.kind not in EVENT_KINDS and bytes.fromhex(r.id) not in dead]


def dead_ids(reverts: Iterable[Any], redacted: set[bytes] | None = None) -> set[bytes]:
    """Ids that ``revert`` events (in commit order) currently hold dead (13.1);
    ``redacted`` (if given) receives the ids redacted among them (7.7.1)."""
    dead: set[bytes] = set()
    red: set[bytes] = set() if redacted is None else redacted
    for rec in reverts:
        apply_revert(dead, red, rec)
    return dead


def fold(records: Iterable[Any]) -> State:
    """Fold records (in commit order) into a :class:`State`."""
    st = State()
    for rec in live_records(records):
        _add(st, rec, bytes.fromhex(rec.id))
    return st


def _add(st: State, rec: Any, rid: bytes) -> None:
    kind = rec.kind
    st.live.append(rid)
    if isinstance(rec, Memory):
        d = rec.to_dict()
        d.pop("embedding", None)
        if rec.embedding is not None:
            d["embedding_dim"] = int(rec.embedding.shape[0])
        mems = st.memories[rec.tier]
        if st.special_meta is not None and rec.meta and _special(rec.meta):
            st.special_meta.append((rec.tier, len(mems)))
        mems.append(_times(d))
    elif kind == "decision":
        st.decisions.append(_times(rec.to_dict()))
    elif kind == "constraint":
        key = (rec.scope, rec.text)
        if rec.status == "active":
            st.constraints[key] = {"id": rec.id, "text": rec.text, "scope": rec.scope,
                                   "status": "active", "time": iso(rec.time)}
            if rec.rule is not None:  # 7.3.1: what the agent must ask approval for
                st.constraints[key]["rule"] = dict(rec.rule)
        else:
            st.constraints.pop(key, None)
    elif kind == "approval":
        st.approvals.setdefault(rec.subject.hex(), []).append(
            {"id": rec.id, "approver": rec.approver, "signature": rec.signature.hex(), "time": iso(rec.time)}
        )
    elif kind == "identity":
        st.identity = _times(rec.to_dict())
        st.identity_history.append(rec.id)
        from ..format.keys import PublicKey

        for raw in rec.keys:
            st.keys[PublicKey(raw).key_id] = raw
    elif kind == "note":
        st.notes.append(_times(rec.to_dict()))
    else:
        name = rec.kind_name if isinstance(rec, GenericRecord) else kind
        st.other[name] = st.other.get(name, 0) + 1


# --- the fast path: the state straight from a store's RECORDS frames --------------------
#
# ``fold(store.records())`` builds a record object per record and a dict from it. Here a
# memory, nearly every record of a large capsule, goes from its decoded canonical map to
# its state entry directly: the map passed the canonical profile (5.1) when its frame was
# decoded, and :func:`_memory_entry` checks the 7.1 schema that ``Memory.from_value`` would
# (fields, types, ranges, defaults omitted, tags sorted). Anything it does not accept goes
# the slow way, which accepts it or raises the reader's error. Every other kind is decoded
# as ``records()`` decodes it. A frame of plain memories only (the bulk of a large capsule)
# goes faster still, through typed structs checked in C (memframe.py), or when that has any
# doubt, the way above. The result equals ``fold(store.records())``.

_MEMORY_FIELDS = frozenset(Memory.FIELDS)
_TIME_MAX = 1 << 63
_EMPTY: Any = object()
_PLAIN = frozenset({str, int, bool, type(None)})  # values json and msgspec write alike


def fold_store(store: Store, view: tuple[int, frozenset[bytes]] | None = None) -> State:
    """The state at ``store``'s snapshot: ``fold(store.records())``, in one pass and
    without a record object per memory. With ``view`` (valid time, the ids it hides:
    ``validtime.fold_at``) its memories are the valid-time view's (13.6); its live ids and
    root stay the commit's."""
    from .memframe import memory_frame  # msgspec loads on first use, not at start-up

    store.check_open()
    snap = store.snap
    valid_at, hide = (None, None) if view is None else view
    st = State(valid_at=valid_at)
    dims: list[bytes] = []  # embedding bytes, checked in bulk below
    reverts = "revert" in snap.kinds or hide is not None  # liveness needs every revert first (13.1): two passes
    rows: list[tuple[bytes, Any]] = []  # with reverts: (id, memory entry or record object)
    dead: set[bytes] = set()
    red: set[bytes] = set()
    iso_ = _IsoCache()
    live, mems, special = st.live, st.memories, st.special_meta
    assert special is not None
    # a history mostly dead: the live records alone, one by one, the dead set known (liveframes.py)
    plan = live_frames(store) if view is None else None
    if plan is not None:
        dead = plan[1]
        for lid, lkind, lvalue in live_values(store, plan[0]):
            lentry = _memory_entry(lvalue, lid, iso_, dims) if lkind == "memory" else None
            rows.append((lid, decode_record(lvalue, lid) if lentry is None else lentry))
    with _no_gc():  # millions of small containers, none of them cyclic
        rd = Reader(store.h, C.HEADER_SIZE, snap.end, 0, snap.header.chain_seed, snap.header.max_frame_len)
        for fh, payload, _ in rd.frames() if plan is None else ():
            if fh.ftype != C.FT_RECORDS:
                continue
            raw = raw_payload(fh, payload)
            fast = memory_frame(raw, fh.offset, fh.seq, iso_, dims)
            if fast is not None:  # plain memories, checked in C (memframe.py)
                rids, entries = fast
                if reverts:
                    rows.extend(zip(rids, entries, strict=True))
                elif b"\xa4tier" not in raw:  # all in the default tier
                    live.extend(rids)
                    mems["working"].extend(entries)
                else:
                    live.extend(rids)
                    for e in entries:
                        mems[e["tier"]].append(e)
                continue
            for value, data in decode_records_payload(raw, fh.offset, fh.seq):
                kind = value.get("kind") if type(value) is dict else None
                if type(kind) is not str:
                    raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
                rid = record_id(kind, data)
                entry = _memory_entry(value, rid, iso_, dims) if kind == "memory" else None  # type: ignore[arg-type]
                if entry is None:
                    # a kind with a checked-in-C reader (reverts, task events): the record it gives
                    # is the one decode_record gives, or none, and then decode_record decides
                    entry = decode_fast(data, (kind,)) or decode_record(value, rid)
                    if kind == "revert":
                        apply_revert(dead, red, entry)
                    if reverts:
                        rows.append((rid, entry))
                    elif entry.kind not in EVENT_KINDS:
                        _add(st, entry, rid)
                elif reverts:
                    rows.append((rid, entry))
                else:  # a live memory (inline: this is the loop of a 100k-record state)
                    live.append(rid)
                    tier = mems[entry["tier"]]
                    meta = entry["meta"]
                    if meta and not _PLAIN.issuperset(map(type, meta.values())) and _special(meta):
                        special.append((entry["tier"], len(tier)))
                    tier.append(entry)
        if dims and not _embeddings_ok(dims):
            return fold(store.records())  # the slow way raises the reader's error, in commit order
        if hide is None:
            for rid, entry in rows:
                if rid not in dead:
                    _place(st, rid, entry)
        else:  # 13.6: the view's memories; the live ids (and so the root) stay the commit's
            for rid, entry in rows:
                # 13.6 (1): T filters memories only; any other kind is in the view when live, even
                # one a (forged, 7.7.1) supersede names, whose cut ``hide`` would otherwise take
                if rid not in (hide if type(entry) is dict or entry.kind == "memory" else dead):
                    _place(st, rid, entry)
            st.live = [rid for rid, e in rows if rid not in dead and (type(e) is dict or e.kind not in EVENT_KINDS)]
    return st


def _place(st: State, rid: bytes, entry: Any) -> None:
    if type(entry) is dict:
        st.live.append(rid)
        mems = st.memories[entry["tier"]]
        meta = entry["meta"]
        if meta and not _PLAIN.issuperset(map(type, meta.values())) and _special(meta):
            st.special_meta.append((entry["tier"], len(mems)))  # type: ignore[union-attr]
        mems.append(entry)
    elif entry.kind not in EVENT_KINDS:
        _add(st, entry, rid)


def _memory_entry(v: dict[str, Any], rid: bytes, iso_: _IsoCache, dims: list[bytes]) -> dict[str, Any] | None:
    """A memory's state entry from its canonical map when it meets 7.1 as
    ``Memory.from_value`` checks it; None sends it the slow way (which decides)."""
    if not v.keys() <= _MEMORY_FIELDS:
        return None
    try:
        text, t = v["text"], v["time"]
    except KeyError:
        return None
    if type(text) is not str or type(t) is not int or not 0 <= t < _TIME_MAX:
        return None
    n = 3  # kind, text, time
    tags = v.get("tags", _EMPTY)
    if tags is not _EMPTY:
        # 7.1: present only when non-empty; text, 1..256 code points each, distinct and sorted
        if type(tags) is not list or not tags:
            return None
        try:
            joined = "".join(tags)
            if tags != sorted(set(tags)) or not tags[0] or (len(joined) > 256 and max(map(len, tags)) > 256):
                return None  # unsorted, repeated, an empty tag (it sorts first) or one over 256
        except TypeError:  # not all text
            return None
        n += 1
    else:
        tags = []
    meta = v.get("meta", _EMPTY)
    if meta is not _EMPTY:
        if type(meta) is not dict or not meta:  # canonical (5.1) already: any non-empty map is 7.1's
            return None
        n += 1
    else:
        meta = {}
    tier = v.get("tier", "working")
    if tier != "working":
        if tier != "scratch" and tier != "validated":
            return None
        n += 1
    elif "tier" in v:
        return None  # the default spelled out
    d = {"id": rid.hex(), "kind": "memory", "time": iso_(t), "text": text, "tags": tags, "meta": meta, "tier": tier}
    if len(v) > n:
        ttl = v.get("ttl")
        if ttl is not None:
            if type(ttl) is not int or not 0 < ttl < _TIME_MAX:
                return None
            d["ttl"] = ttl
        source = v.get("source")
        if source is not None:
            if type(source) is not str:
                return None
            d["source"] = source
        emb = v.get("embedding")
        if emb is not None:
            shape = emb.get("shape") if type(emb) is dict else None
            if (type(emb) is not dict or len(emb) != 3 or emb.get("dtype") != "f32" or type(shape) is not list
                    or len(shape) != 1 or type(shape[0]) is not int or not 1 <= shape[0] <= 65536
                    or type(emb.get("data")) is not bytes or len(emb["data"]) != 4 * shape[0]):
                return None
            d["embedding_dim"] = shape[0]
            dims.append(emb["data"])
        vf, vt = v.get("valid_from"), v.get("valid_to")
        if vf is not None or vt is not None:  # 7.1 (1.3): times, and from < to when both
            for b in (vf, vt):
                if b is not None and (type(b) is not int or not 0 <= b < _TIME_MAX):
                    return None
            if vf is not None and vt is not None and not vf < vt:
                return None
            if vf is not None:
                d["valid_from"] = iso_(vf)
            if vt is not None:
                d["valid_to"] = iso_(vt)
        if len(v) != n + ("ttl" in d) + ("source" in d) + ("embedding_dim" in d) + ("valid_from" in d) + (
                "valid_to" in d):
            return None  # a field present as nil
    return d


def _embeddings_ok(dims: list[bytes]) -> bool:
    """7.1: every stored float32 is finite and no zero is negative (one pass over all)."""
    import numpy as np

    arr = np.frombuffer(b"".join(dims), "<f4")
    return bool(np.isfinite(arr).all()) and not bool((np.signbit(arr) & (arr == 0)).any())


class _IsoCache:
    """``iso`` with the seconds part remembered: records of one commit share their second."""

    __slots__ = ("_secs", "_base")

    def __init__(self) -> None:
        self._secs = -1
        self._base = ""

    def __call__(self, ns: int) -> str:
        secs, frac = divmod(ns, 1_000_000_000)
        if secs != self._secs:
            self._secs, self._base = secs, _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(secs))
        if frac:
            return f"{self._base}.{frac:09d}".rstrip("0") + "Z"
        return self._base + "Z"

    def many(self, times: list[int]) -> list[str]:
        """``[self(t) for t in times]``: a frame's times at once, in NumPy when there are enough
        of them to pay for its calls (some 60% of the loop's time at 100k records)."""
        if len(times) >= _ISO_VECTOR_MIN:
            try:
                a = np.array(times, dtype=np.int64)
            except OverflowError:  # a time past 2^63 - 1 (no record holds one): the loop decides
                pass
            else:
                if a.min() >= 0:  # before 1970 (no record holds one either): the loop
                    return _iso_array(a)
        out = []
        last, base = self._secs, self._base
        for ns in times:
            secs, frac = divmod(ns, 1_000_000_000)
            if secs != last:
                last, base = secs, _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(secs))
            out.append(f"{base}.{frac:09d}".rstrip("0") + "Z" if frac else base + "Z")
        self._secs, self._base = last, base
        return out


#: below this many times the NumPy calls cost more than the loop they replace
_ISO_VECTOR_MIN = 32
_ISO_CONST: list[Any] = []


def _iso_array(a: np.ndarray) -> list[str]:
    """``iso`` of every time in ``a`` (int64 ns, none negative), built as one UCS-4 table.

    Each row is the 30 code points of ``YYYY-MM-DDTHH:MM:SS.fffffffffZ``: the seconds part from
    ``time.strftime`` once per distinct second (as ``iso`` writes it), the nine digits of the
    fraction, then ``Z`` moved to just after the last non-zero digit (or over the point when the
    fraction is zero) and NULs after it. A NumPy str item drops trailing NULs, so each row reads
    back as ``iso`` spells that time. Int64 ns never pass 2262, so the year has four digits."""
    if not _ISO_CONST:
        _ISO_CONST.append((10 ** np.arange(8, -1, -1, dtype=np.int64), np.arange(30)))
    powers, cols = _ISO_CONST[0]
    n = len(a)
    secs, frac = np.divmod(a, 1_000_000_000)
    distinct, which = np.unique(secs, return_inverse=True)
    bases = np.array([_time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(s)) for s in distinct.tolist()], "<U19")
    rows = np.empty((n, 30), dtype="<u4")
    rows[:, :19] = bases.view("<u4").reshape(-1, 19)[which.reshape(-1)]
    rows[:, 19] = ord(".")
    digits = frac[:, None] // powers % 10
    rows[:, 20:29] = digits + ord("0")
    # where Z goes: after the last non-zero digit of the fraction, or at the point when it is 0
    zpos = np.where(frac == 0, 19, 29 - np.argmax(digits[:, ::-1] != 0, axis=1))
    rows[cols > zpos[:, None]] = 0
    rows[np.arange(n), zpos] = ord("Z")
    return rows.view("<U30").reshape(-1).tolist()


@contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic collector while a fold builds its (acyclic) containers: at 100k
    records it otherwise spends a third of the fold re-walking them."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
