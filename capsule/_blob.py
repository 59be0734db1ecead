"""BLOB frames: large opaque content split over frames, named by its SHA-256 (spec 3.4).

A blob (today only the vector index snapshot, section 16) is cut into parts of at
most ``BLOB_PART`` bytes, each in its own BLOB frame, written back to back. The
INDEX frame written in the same commit names the blob (type, first frame, parts,
size, SHA-256), which is how a reader finds the newest one without scanning.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from . import _canonical as canon
from . import _constants as C
from ._errors import CorruptError, NonCanonicalError
from ._frames import parse_frame_header

_LEN = struct.Struct("<H")


@dataclass(frozen=True, slots=True)
class BlobRef:
    """9.2 `blobs` entry: where the newest blob of a type lives."""

    type: str
    offset: int  # the first part's BLOB frame
    parts: int
    size: int
    id: bytes  # SHA-256 of the whole content

    def to_value(self) -> list[object]:
        return [self.type, self.offset, self.parts, self.size, self.id]


def blob_parts(btype: str, data: bytes) -> tuple[list[bytes], bytes]:
    """3.4: the BLOB payloads for ``data`` and its content id."""
    bid = hashlib.sha256(data).digest()
    n = max(1, -(-len(data) // C.BLOB_PART))
    out = []
    for i in range(n):
        head = canon.pack({"id": bid, "part": i, "parts": n, "size": len(data), "type": btype})
        out.append(_LEN.pack(len(head)) + head + data[i * C.BLOB_PART : (i + 1) * C.BLOB_PART])
    return out, bid


def parse_blob_refs(v: object, offset: int, bad: type[Exception] | None = None) -> dict[str, BlobRef]:
    """9.2: the INDEX `blobs` array, strictly (sorted by type, distinct)."""
    def err(msg: str) -> CorruptError:
        return CorruptError(msg, offset=offset, check="index")

    if not isinstance(v, list) or not v or len(v) > C.MAX_SEGMENTS:
        raise err("index blob list is malformed")
    out: dict[str, BlobRef] = {}
    for e in v:
        if (not isinstance(e, list) or len(e) != 5 or not isinstance(e[0], str) or not e[0]
                or any(type(x) is not int for x in e[1:4]) or not isinstance(e[4], bytes) or len(e[4]) != 32):
            raise err("index blob entry is malformed")
        t, at, parts, size, bid = e
        if not C.HEADER_SIZE <= at < offset or not 1 <= parts <= 1 << 20 or not 0 <= size <= parts * C.BLOB_PART:
            raise err("index blob entry is out of range")
        if out and t <= max(out):
            raise err("index blob entries are not sorted by type")
        out[t] = BlobRef(t, at, parts, size, bid)
    return out


def read_blob(src: object, ref: BlobRef, max_frame: int, end: int) -> np.ndarray:
    """Read and check a blob: every part's frame header, part header, and the SHA-256.

    Parts are read through the mmap view when the source has one, and copied
    once into the result; the hash covers the assembled bytes.
    """
    out = np.empty(ref.size, np.uint8)
    at, filled, seq = ref.offset, 0, None
    h = hashlib.sha256()
    view = getattr(src, "view", None)
    for i in range(ref.parts):
        def bad(msg: str, at: int = at) -> CorruptError:
            return CorruptError(f"blob {ref.type}: {msg}", offset=at, check="blob")

        fh = parse_frame_header(src.pread(at, C.FRAME_HEADER_SIZE), at, expect_seq=seq,  # type: ignore[attr-defined]
                                max_frame_len=max_frame)
        if fh.ftype != C.FT_BLOB or fh.flags or fh.end > end:
            raise bad("part is not a plain BLOB frame inside the commit")
        payload = view(fh.payload_offset, fh.payload_len) if view else src.pread(fh.payload_offset, fh.payload_len)  # type: ignore[attr-defined]
        if len(payload) < 2:
            raise bad("part is too short")
        hl = _LEN.unpack(bytes(payload[:2]))[0]
        try:
            head = canon.decode(bytes(payload[2 : 2 + hl]))
        except NonCanonicalError as e:
            raise bad(str(e)) from None
        if head != {"id": ref.id, "part": i, "parts": ref.parts, "size": ref.size, "type": ref.type}:
            raise bad(f"part {i} does not belong to this blob")
        data = payload[2 + hl :]
        if filled + len(data) > ref.size or (i < ref.parts - 1 and len(data) != C.BLOB_PART):
            raise bad("part sizes do not add up")
        out[filled : filled + len(data)] = np.frombuffer(data, np.uint8)
        h.update(data)
        filled += len(data)
        at, seq = fh.end, fh.seq + 1
    if filled != ref.size or h.digest() != ref.id:
        raise CorruptError(f"blob {ref.type} does not match its SHA-256", offset=ref.offset, check="blob")
    return out
