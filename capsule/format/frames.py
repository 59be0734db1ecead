"""Frames, the chain and the Merkle tree (spec sections 2-4, 6). Sans-IO.

Theory of operation: a capsule is a 64-byte header followed by frames. Each
frame is ``header(32) | payload | chain(32)``. The frame header carries its own
CRC, so a flipped length is caught before it is trusted (3.1). The chain value
of a frame is SHA-256 over the previous chain value, this frame's header and the
SHA-256 of its payload (4.2), so any edit, reorder, removal or splice breaks
every later chain value. Independently every frame is a leaf of an RFC 6962
Merkle tree (4.3), whose root each COMMIT names and signed checkpoints bind.

Nothing here touches a file: functions take bytes and return values or raise
:class:`CorruptError` naming the offset, seq and check that failed.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core import constants as C
from ..core.errors import CorruptError, UnsupportedError
from ..core.lazy import lazy

if TYPE_CHECKING:
    import zstandard

    from .crypto import FrameCipher
else:
    zstandard = lazy("zstandard")

_sha256 = hashlib.sha256


# --- header (2) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileHeader:
    file_id: bytes
    major: int = C.FORMAT_MAJOR
    minor: int = C.FORMAT_MINOR
    flags: int = 0
    hash_alg: int = C.HASH_SHA256
    aead_alg: int = C.AEAD_NONE
    sig_alg: int = C.SIG_ED25519
    codec: int = C.CODEC_ZSTD
    max_frame_len: int = C.MAX_FRAME_LEN_DEFAULT

    def encode(self) -> bytes:
        body = C.HEADER_STRUCT.pack(
            C.MAGIC, self.major, self.minor, self.flags, self.file_id, self.hash_alg,
            self.aead_alg, self.sig_alg, self.codec, self.max_frame_len, bytes(24), 0,
        )[:-4]
        return body + zlib.crc32(body).to_bytes(4, "little")

    @property
    def encrypted(self) -> bool:
        """2.3, 10: the file's content frames are sealed."""
        return bool(self.flags & C.HFLAG_ENCRYPTED)

    @property
    def chain_seed(self) -> bytes:
        """4.2: the chain starts from a hash of the header bytes."""
        return _sha256(C.CHAIN_SEED_TAG + self.encode()).digest()


def new_file_id(epoch: int | None = None, fork_of: bytes = b"") -> bytes:
    """2.5: random, or derived from SOURCE_DATE_EPOCH in reproducible mode (and, for a
    fork, from its parent's file id and fork point root, so it differs from the parent's)."""
    if epoch is None:
        return os.urandom(16)
    return _sha256(C.FILE_ID_TAG + str(epoch).encode() + fork_of).digest()[:16]


def parse_header(data: bytes) -> FileHeader:
    """Parse and check the 64-byte file header (2.1-2.4)."""
    if len(data) < C.HEADER_SIZE:
        if C.MAGIC.startswith(data[:8]) and data:
            raise CorruptError("file is shorter than the 64-byte header", offset=0, check="header-length")
        raise CorruptError("not a capsule (no header)", offset=0, check="header-magic")
    if data[:8] != C.MAGIC:
        # 2.1: distinguish mangled transfers from "some other file".
        if data[1:4] == b"CAP":
            raise CorruptError("magic damaged (file mangled in transfer?)", offset=0, check="header-magic")
        raise CorruptError("not a capsule (bad magic)", offset=0, check="header-magic")
    (_, major, minor, flags, file_id, h, a, s, codec, max_len, reserved, crc) = C.HEADER_STRUCT.unpack(
        data[: C.HEADER_SIZE]
    )
    if zlib.crc32(data[:60]) != crc:
        raise CorruptError("header CRC mismatch", offset=0, check="header-crc")
    if major != C.FORMAT_MAJOR:  # 12.1: an unknown major version MUST be refused
        raise UnsupportedError(
            f"format version {major}.{minor} is not supported (this reader knows {C.FORMAT_MAJOR}.x)",
            offset=8, check="header-version",
        )
    if flags & ~C.HFLAGS_KNOWN:  # 2.3: unknown flag bits MUST be refused
        raise UnsupportedError(f"unknown header flags 0x{flags:04x}", offset=10, check="header-flags")
    if h != C.HASH_SHA256 or codec != C.CODEC_ZSTD or a not in C.AEADS or s != C.SIG_ED25519:
        raise UnsupportedError("unknown algorithm id", offset=28, check="header-algorithms")
    if bool(flags & C.HFLAG_ENCRYPTED) != (a != C.AEAD_NONE):
        # 2.3, 10: the encrypted flag and an AEAD algorithm come together or not at all
        raise CorruptError("the encrypted flag and the AEAD algorithm disagree", offset=10, check="header-flags")
    if not C.FRAME_OVERHEAD < max_len <= C.MAX_FRAME_LEN_CEILING:
        raise CorruptError(f"max frame length {max_len} out of range", offset=32, check="header-limits")
    if reserved != bytes(24):
        raise UnsupportedError("reserved header bytes are not zero", offset=36, check="header-reserved")
    return FileHeader(file_id, major, minor, flags, h, a, s, codec, max_len)


# --- frames (3) ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameHeader:
    offset: int
    total_len: int
    ftype: int
    flags: int
    seq: int
    payload_len: int
    raw_len: int
    key_epoch: int
    raw: bytes  # the 32 header bytes as stored

    @property
    def end(self) -> int:
        return self.offset + self.total_len

    @property
    def payload_offset(self) -> int:
        return self.offset + C.FRAME_HEADER_SIZE

    @property
    def type_name(self) -> str:
        return C.FRAME_TYPE_NAMES.get(self.ftype, f"0x{self.ftype:02x}")

    def opened(self, plain_len: int) -> FrameHeader:
        """10.2: the header as readers of a sealed frame's plaintext see it: the payload
        length and flags of the plaintext; offsets, seq and the stored bytes (``raw``,
        which the chain and Merkle tree cover) as stored."""
        return FrameHeader(self.offset, self.total_len, self.ftype, self.flags & ~C.FFLAG_AEAD, self.seq,
                           plain_len, self.raw_len, self.key_epoch, self.raw)


def encode_frame_header(ftype: int, flags: int, seq: int, payload_len: int, raw_len: int) -> bytes:
    total = C.FRAME_OVERHEAD + payload_len
    body = C.FRAME_HEADER_STRUCT.pack(total, ftype, flags, 0, seq, payload_len, raw_len, 0, 0)[:-4]
    return body + zlib.crc32(body).to_bytes(4, "little")


def parse_frame_header(
    data: bytes, offset: int, *, expect_seq: int | None, max_frame_len: int
) -> FrameHeader:
    """Check a frame header before trusting any length in it (3.1)."""
    if len(data) < C.FRAME_HEADER_SIZE:
        raise CorruptError("truncated frame header", offset=offset, seq=expect_seq, check="frame-truncated")
    raw = bytes(data[: C.FRAME_HEADER_SIZE])
    total, ftype, flags, reserved, seq, plen, rlen, epoch, crc = C.FRAME_HEADER_STRUCT.unpack(raw)
    if zlib.crc32(raw[:28]) != crc:
        raise CorruptError("frame header CRC mismatch", offset=offset, seq=expect_seq, check="frame-header-crc")
    if total != C.FRAME_OVERHEAD + plen or total > max_frame_len:
        raise CorruptError(
            f"frame length {total} is inconsistent or over the limit {max_frame_len}",
            offset=offset, seq=expect_seq, check="frame-length",
        )
    if expect_seq is not None and seq != expect_seq:
        raise CorruptError(f"frame seq {seq}, expected {expect_seq}", offset=offset, seq=expect_seq, check="frame-seq")
    if reserved != 0 or epoch != 0:
        raise UnsupportedError("reserved frame header fields are not zero", offset=offset, seq=seq, check="frame-reserved")
    if flags & ~C.FFLAGS_KNOWN:
        raise UnsupportedError(f"unknown frame flags 0x{flags:02x}", offset=offset, seq=seq, check="frame-flags")
    if flags & C.FFLAG_ZSTD and ftype in C.KNOWN_FRAME_TYPES and ftype != C.FT_RECORDS:
        # 3.3: only RECORDS payloads may be compressed
        raise CorruptError("codec flag on a frame type that must be stored plain", offset=offset, seq=seq,
                           check="frame-flags")
    sealed = C.AEAD_OVERHEAD if flags & C.FFLAG_AEAD else 0
    if sealed and ftype not in C.KNOWN_FRAME_TYPES:
        raise UnsupportedError(f"sealed frame of unknown type 0x{ftype:02x}", offset=offset, seq=seq,
                               check="frame-flags")
    if sealed and (ftype not in C.SEALED_TYPES or plen < sealed):
        # 10.2: only content frames are sealed, and a sealed payload holds at least nonce and tag
        raise CorruptError("AEAD flag on a frame that is never sealed, or too short to be", offset=offset, seq=seq,
                           check="frame-flags")
    if rlen > C.MAX_RAW_LEN or (not flags & C.FFLAG_ZSTD and rlen != plen - sealed):
        raise CorruptError(f"raw length {rlen} is invalid", offset=offset, seq=seq, check="frame-raw-length")
    if ftype & C.CRITICAL and ftype not in C.KNOWN_FRAME_TYPES:
        # 12.2: an unknown critical frame type MUST be refused.
        raise UnsupportedError(
            f"unknown critical frame type 0x{ftype:02x}", offset=offset, seq=seq, check="frame-type"
        )
    return FrameHeader(offset, total, ftype, flags, seq, plen, rlen, epoch, raw)


def chain_next(prev: bytes, header_raw: bytes, payload_hash: bytes) -> bytes:
    """4.2: chain = SHA-256(tag || previous chain || frame header || SHA-256(payload))."""
    return _sha256(C.CHAIN_TAG + prev + header_raw + payload_hash).digest()


def leaf_hash(header_raw: bytes, payload_hash: bytes) -> bytes:
    """4.3: RFC 6962 leaf hash over the frame header and its payload hash."""
    return _sha256(b"\x00" + header_raw + payload_hash).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    data: bytes  # the frame's bytes; empty when built in pieces
    chain: bytes
    leaf: bytes
    header: bytes
    pieces: tuple[bytes | bytearray | memoryview, ...] = ()  # header, payload, chain, when built so (``split``)


def encode_frame(
    ftype: int, seq: int, raw_payload: bytes | bytearray | list[bytes | bytearray | memoryview], prev_chain: bytes,
    *, compress: bool = False, level: int = 3, crypt: FrameCipher | None = None, split: bool = False,
) -> EncodedFrame:
    """Build one frame. Compression is kept only when it saves bytes (3.3); with ``crypt``
    (an encrypted file), a content frame's payload is sealed after compression (10.2).
    ``split``: the frame as ``pieces`` (header, payload, chain), for a large payload that
    need not be copied once more to be written. A payload given as a list of byte pieces
    is read back to back, and the frame is always built in pieces when it stays plain."""
    if isinstance(raw_payload, list):  # pieces to be read back to back (a blob part, F22)
        if not (compress or (crypt is not None and ftype in C.SEALED_TYPES)):
            return _plain_pieces(ftype, seq, raw_payload, prev_chain)
        raw_payload = b"".join(raw_payload)
    payload = raw_payload
    flags = 0
    if compress and len(raw_payload) > 128:  # tiny payloads never shrink
        z = _compressor(level).compress(raw_payload)
        if len(z) < len(raw_payload):
            payload, flags = z, C.FFLAG_ZSTD
    if crypt is not None and ftype in C.SEALED_TYPES:
        flags |= C.FFLAG_AEAD
        header = encode_frame_header(ftype, flags, seq, len(payload) + C.AEAD_OVERHEAD, len(raw_payload))
        payload = crypt.seal(header, payload)
    else:
        header = encode_frame_header(ftype, flags, seq, len(payload), len(raw_payload))
    ph = _sha256(payload).digest()
    chain = chain_next(prev_chain, header, ph)
    if split:
        return EncodedFrame(b"", chain, leaf_hash(header, ph), header, (header, payload, chain))
    return EncodedFrame(header + payload + chain, chain, leaf_hash(header, ph), header)


def _plain_pieces(ftype: int, seq: int, pieces: list[bytes | bytearray | memoryview], prev_chain: bytes
                  ) -> EncodedFrame:
    """A stored, unsealed frame whose payload is ``pieces`` back to back, never joined."""
    size = sum(map(len, pieces))
    header = encode_frame_header(ftype, 0, seq, size, size)
    h = _sha256()
    for x in pieces:
        h.update(x)
    ph = h.digest()
    chain = chain_next(prev_chain, header, ph)
    return EncodedFrame(b"", chain, leaf_hash(header, ph), header, (header, *pieces, chain))


_tls = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread and level: building one costs more than a small frame."""
    cache = getattr(_tls, "zc", None)
    if cache is None:
        cache = _tls.zc = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def check_frame_body(fh: FrameHeader, payload: bytes, trailer: bytes, prev_chain: bytes) -> tuple[bytes, bytes]:
    """Verify the chain link of a frame whose bytes are in hand; return (chain, leaf)."""
    ph = _sha256(payload).digest()
    chain = chain_next(prev_chain, fh.raw, ph)
    if chain != trailer:
        raise CorruptError("chain value mismatch", offset=fh.offset, seq=fh.seq, check="chain")
    return chain, leaf_hash(fh.raw, ph)


def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompressor per thread, made on first use (start-up). python-zstandard's
    decompressor holds one native context and is not safe to share: two threads reading
    at once made one of them fail a good frame ('Destination buffer is too small')."""
    d: zstandard.ZstdDecompressor | None = getattr(_tls, "zd", None)
    if d is None:
        d = _tls.zd = zstandard.ZstdDecompressor()
    return d


def raw_payload(fh: FrameHeader, payload: bytes) -> bytes:
    """Undo the frame codec with bounded memory (3.3, 11)."""
    if fh.flags & C.FFLAG_AEAD:
        # 10: a sealed frame read without the file key (a structural check) has no content
        from .crypto import KeyRequired

        raise KeyRequired("this capsule is encrypted: its contents need --identity KEY or --passphrase-env VAR")
    if not fh.flags & C.FFLAG_ZSTD:
        return payload
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as e:
        raise CorruptError(f"bad zstd frame: {e}", offset=fh.offset, seq=fh.seq, check="zstd") from e
    # 3.3: the declared content size MUST equal the authenticated raw length
    # before anything is allocated; a forged 14-byte frame can claim 64 GiB.
    if declared != fh.raw_len:
        raise CorruptError(
            f"zstd declares {declared} bytes, frame says {fh.raw_len}",
            offset=fh.offset, seq=fh.seq, check="zstd-size",
        )
    try:
        # 3.3: the payload is exactly one zstd frame; bytes after it (junk, a second
        # frame) would hide data in a signed file, so they are refused.
        out = _decompressor().decompress(payload, max_output_size=fh.raw_len, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise CorruptError(f"zstd: {e}", offset=fh.offset, seq=fh.seq, check="zstd") from e
    if len(out) != fh.raw_len:
        raise CorruptError("decompressed length mismatch", offset=fh.offset, seq=fh.seq, check="zstd-size")
    return out


# --- Merkle tree (4.3) -------------------------------------------------------------


class Merkle:
    """Compact range of an RFC 6962 tree: the roots of its perfect subtrees."""

    __slots__ = ("size", "_peaks")

    def __init__(self, size: int = 0, peaks: list[bytes] | None = None) -> None:
        self.size = size
        self._peaks: list[bytes] = list(peaks or [])
        if len(self._peaks) != bin(size).count("1"):
            raise CorruptError("Merkle frontier does not match its size", check="merkle-frontier")

    def copy(self) -> Merkle:
        return Merkle(self.size, self._peaks)

    @property
    def peaks(self) -> list[bytes]:
        return list(self._peaks)

    def append(self, leaf: bytes) -> None:
        node = leaf
        size = self.size
        peaks = self._peaks
        while size & 1:
            node = node_hash(peaks.pop(), node)
            size >>= 1
        peaks.append(node)
        self.size += 1

    def root(self) -> bytes:
        """MTH(D[0:n]) per RFC 6962 section 2.1; the empty tree hashes the empty string."""
        if not self._peaks:
            return _sha256(b"").digest()
        node = self._peaks[-1]
        for p in reversed(self._peaks[:-1]):
            node = node_hash(p, node)
        return node
