"""BLOB frames: large opaque content split over frames, named by its SHA-256 (spec 3.4).

A blob (today only the vector index snapshot, section 16) is cut into parts of at
most ``BLOB_PART`` bytes, each in its own BLOB frame, written back to back. The
INDEX frame written in the same commit names the blob (type, first frame, parts,
size, SHA-256), which is how a reader finds the newest one without scanning.
"""

from __future__ import annotations

import hashlib
import queue
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core import constants as C
from ..core.errors import CorruptError, NonCanonicalError
from ..core.lazy import lazy
from . import canonical as canon
from .crypto import unseal
from .frames import parse_frame_header

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

_LEN = struct.Struct("<H")
#: The fewest file bytes a part takes besides its data: frame header, trailer, header length.
_PART_MIN = C.FRAME_OVERHEAD + _LEN.size


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


def part_count(size: int) -> int:
    """3.4: parts of exactly ``BLOB_PART`` bytes, the last holding the rest (at least one)."""
    return max(1, -(-size // C.BLOB_PART))


Buffer = bytes | bytearray | memoryview


def blob_parts(btype: str, data: Buffer | Sequence[Buffer]) -> tuple[list[list[Buffer]], bytes, int]:
    """3.4: the BLOB payloads for ``data``, its content id and its size.

    ``data`` is the content, whole or as pieces (byte buffers) to be read back to back;
    each payload is a list of pieces too: its part header, then views of the content,
    so a blob of hundreds of megabytes is never copied to be written (F22)."""
    pieces = [memoryview(data).cast("B")] if isinstance(data, Buffer) else [memoryview(x).cast("B") for x in data]
    h = hashlib.sha256()
    for x in pieces:
        h.update(x)
    bid, size = h.digest(), sum(map(len, pieces))
    n = part_count(size)
    out: list[list[Buffer]] = []
    it = iter(pieces)
    cur, at = memoryview(b""), 0  # the piece being cut, and how much of it is taken
    for i in range(n):
        head = canon.pack({"id": bid, "part": i, "parts": n, "size": size, "type": btype})
        payload: list[Buffer] = [_LEN.pack(len(head)) + head]
        want = min(C.BLOB_PART, size - i * C.BLOB_PART)
        while want:
            if at == len(cur):
                cur, at = next(it), 0
                continue
            take = min(want, len(cur) - at)
            payload.append(cur[at : at + take])
            at, want = at + take, want - take
        out.append(payload)
    return out, bid, size


def parse_blob_refs(v: object, offset: int) -> dict[str, BlobRef]:
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
        if not C.HEADER_SIZE <= at < offset or size < 0 or parts != part_count(size):
            raise err("index blob entry is out of range")
        # 9.2: the parts are whole frames between the first one and this INDEX, so
        # the size is bounded by the file before anything is allocated for it.
        if size + parts * _PART_MIN > offset - at:
            raise err("index blob entry is larger than the file before it")
        if out and t <= max(out):
            raise err("index blob entries are not sorted by type")
        out[t] = BlobRef(t, at, parts, size, bid)
    return out


def read_blob(src: object, ref: BlobRef, max_frame: int, end: int) -> tuple[np.ndarray, int, Callable[[], None]]:
    """Read a blob, checking every part's frame header and part header.

    Each part's data is read straight into the result (one copy from the page
    cache). The SHA-256 runs in a thread (hashlib releases the GIL) while the
    caller parses: returns the content, the offset just past the last part, and
    ``check()``, which waits for the hash and raises CorruptError on a mismatch.
    The caller MUST call ``check()`` before trusting anything it derived.
    """
    # 11: nothing is allocated for a size the file cannot hold (an INDEX entry is input too).
    if ref.parts != part_count(ref.size) or ref.size + ref.parts * _PART_MIN > end - ref.offset:
        raise CorruptError(f"blob {ref.type} is larger than the file holds", offset=ref.offset, check="blob")
    out = np.empty(ref.size, np.uint8)
    mv = memoryview(out.data)
    h = hashlib.sha256()
    todo: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()

    def hash_parts() -> None:
        while (chunk := todo.get()) is not None:
            h.update(chunk)

    worker = threading.Thread(target=hash_parts, name="capsule-blob-sha256", daemon=True)
    worker.start()
    try:
        at = _read_parts(src, ref, max_frame, end, mv, todo)
    finally:
        todo.put(None)

    def check() -> None:
        worker.join()
        if h.digest() != ref.id:
            raise CorruptError(f"blob {ref.type} does not match its SHA-256", offset=ref.offset, check="blob")

    return out, at, check


def _read_parts(src: object, ref: BlobRef, max_frame: int, end: int, mv: memoryview,
                todo: queue.SimpleQueue[memoryview | None]) -> int:
    at, filled, seq = ref.offset, 0, None
    sealed = getattr(src, "crypt", None) is not None  # 10.2: each part is opened whole
    for i in range(ref.parts):
        def bad(msg: str, at: int = at) -> CorruptError:
            return CorruptError(f"blob {ref.type}: {msg}", offset=at, check="blob")

        plain: bytes | None = None
        if sealed:
            # the tag authenticates the part where it stands (10.2); the blob's SHA-256 the whole
            head_fh = parse_frame_header(src.pread(at, C.FRAME_HEADER_SIZE), at, expect_seq=seq,  # type: ignore[attr-defined]
                                         max_frame_len=max_frame)
            if head_fh.end > end:
                raise bad("part is not a plain BLOB frame inside the commit")
            fh, plain = unseal(src, head_fh, src.pread(head_fh.payload_offset, head_fh.payload_len))  # type: ignore[attr-defined]
        else:
            fh = parse_frame_header(src.pread(at, C.FRAME_HEADER_SIZE), at, expect_seq=seq,  # type: ignore[attr-defined]
                                    max_frame_len=max_frame)
        if fh.ftype != C.FT_BLOB or fh.flags or fh.end > end or fh.payload_len < 2:
            raise bad("part is not a plain BLOB frame inside the commit")
        hl = _LEN.unpack(plain[:2] if plain is not None else src.pread(fh.payload_offset, 2))[0]  # type: ignore[attr-defined]
        if 2 + hl > fh.payload_len:
            raise bad("part header runs past the frame")
        try:
            head = canon.decode(plain[2 : 2 + hl] if plain is not None
                                else src.pread(fh.payload_offset + 2, hl))  # type: ignore[attr-defined]
        except NonCanonicalError as e:
            raise bad(str(e)) from None
        if head != {"id": ref.id, "part": i, "parts": ref.parts, "size": ref.size, "type": ref.type}:
            raise bad(f"part {i} does not belong to this blob")
        n = fh.payload_len - 2 - hl
        if filled + n > ref.size or (i < ref.parts - 1 and n != C.BLOB_PART):
            raise bad("part sizes do not add up")
        chunk = mv[filled : filled + n]
        if plain is not None:
            chunk[:] = plain[2 + hl :]
        elif src.readinto(fh.payload_offset + 2 + hl, chunk) != n:  # type: ignore[attr-defined]
            raise bad("part runs past the end of the file")
        todo.put(chunk)
        filled += n
        at, seq = fh.end, fh.seq + 1
    if filled != ref.size:
        raise CorruptError(f"blob {ref.type} is shorter than its size", offset=ref.offset, check="blob")
    return at
