"""Coverage-guided fuzz target for the frame parser (spec 2, 3, 4.2, 4.3; capsule.format.frames).

The input is one mode byte and a would-be file. The target walks it the way a
structural scan does: ``parse_header`` on the first 64 bytes, then from offset
64 ``parse_frame_header``, the bounds check, ``raw_payload`` (the codec) and the
chain link of every frame, feeding a Merkle tree. Each call must return or raise
a ``DataError``; whatever returns must say what the bytes say:

- a header that parses re-encodes to the same 64 bytes (2.1); a frame header
  that parses re-encodes to the same 32 (3.1), and its lengths are within the
  limits it was given (total = 64 + payload_len <= max frame length, raw_len <=
  256 MiB, raw_len = payload_len without a codec);
- ``raw_payload`` returns exactly raw_len bytes (3.3).

The mode byte lets libFuzzer past the checksums, so that the checks behind
them are reached: bit 0 recomputes the header CRC, bit 1 every frame-header CRC,
bit 2 every chain value, bit 3 checks seq (``expect_seq``), bits 4-7 pick the max
frame length used when the header does not parse.

Run from the repository root (``make fuzz`` does):

    .venv/bin/python tests/fuzz/fuzz_frames.py build/fuzz/corpus/frames -max_total_time=60
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

try:
    import atheris
except ImportError:  # pytest runs check() without it
    atheris = None

import zstandard  # noqa: F401  (imported before instrumenting: only capsule is instrumented)

with (atheris.instrument_imports(include=["capsule"]) if atheris is not None and __name__ == "__main__"
      else contextlib.nullcontext()):
    from capsule.core import constants as C
    from capsule.core.errors import DataError
    from capsule.format.crypto import KeyRequired
    from capsule.format.frames import (
        Merkle,
        chain_next,
        check_frame_body,
        encode_frame_header,
        parse_frame_header,
        parse_header,
        raw_payload,
    )

from tests.fuzz._common import atheris_main, vector_files

NAME = "frames"
MAX_FRAMES = 64  # frames walked per input: enough to cross every seed


def _fix_crc(buf: bytearray, start: int, n: int) -> None:
    buf[start + n : start + n + 4] = zlib.crc32(buf[start : start + n]).to_bytes(4, "little")


def check(data: bytes) -> None:
    if not data:
        return
    mode, buf = data[0], bytearray(data[1:])
    if mode & 1 and len(buf) >= C.HEADER_SIZE:
        _fix_crc(buf, 0, 60)
    header = None
    try:
        header = parse_header(bytes(buf))
    except DataError:
        pass
    else:
        assert header.encode() == bytes(buf[: C.HEADER_SIZE]), "a header that parses must re-encode identically"
    max_len = header.max_frame_len if header is not None else 1 << (6 + (mode >> 4) * 2)
    prev = header.chain_seed if header is not None else bytes(32)
    merkle = Merkle()
    off = C.HEADER_SIZE
    for seq in range(MAX_FRAMES):
        if off + C.FRAME_HEADER_SIZE > len(buf):
            return
        if mode & 2:
            _fix_crc(buf, off, 28)
        raw = bytes(buf[off : off + C.FRAME_HEADER_SIZE])
        try:
            fh = parse_frame_header(raw, off, expect_seq=seq if mode & 8 else None, max_frame_len=max_len)
        except DataError:
            return
        # 3.1: what parsed is exactly what the bytes say, within the limits given
        assert fh.offset == off and fh.raw == raw
        assert fh.total_len == C.FRAME_OVERHEAD + fh.payload_len <= max_len
        sealed = C.AEAD_OVERHEAD if fh.flags & C.FFLAG_AEAD else 0  # 10.2
        assert fh.raw_len <= C.MAX_RAW_LEN and (fh.flags & C.FFLAG_ZSTD or fh.raw_len == fh.payload_len - sealed)
        assert encode_frame_header(fh.ftype, fh.flags, fh.seq, fh.payload_len, fh.raw_len) == raw
        if not mode & 8:
            assert fh.seq == int.from_bytes(raw[8:16], "little")
        else:
            assert fh.seq == seq
        if fh.end > len(buf):  # 3.1: checked before any payload byte is read
            return
        payload = bytes(buf[fh.payload_offset : fh.end - C.TRAILER_SIZE])
        try:
            out = raw_payload(fh, payload)
        except (DataError, KeyRequired):  # 10: a sealed payload needs the file key
            return
        assert len(out) == fh.raw_len, "raw_payload must return exactly raw_len bytes (3.3)"
        if mode & 4:
            buf[fh.end - 32 : fh.end] = chain_next(prev, fh.raw, hashlib.sha256(payload).digest())
        try:
            prev, leaf = check_frame_body(fh, payload, bytes(buf[fh.end - 32 : fh.end]), prev)
        except DataError:
            return
        merkle.append(leaf)
        assert len(merkle.root()) == 32
        off = fh.end


def seeds() -> list[tuple[str, bytes]]:
    out = []
    for p in vector_files():
        rel = p.relative_to(p.parent.parent).as_posix().replace("/", "-")  # vectors-x, v1.0-x
        out.append((f"{rel}", b"\x08" + p.read_bytes()))
        out.append((f"{rel}-fixed", b"\x0f" + p.read_bytes()))
    return out


if __name__ == "__main__":
    atheris_main(NAME, check, seeds)
