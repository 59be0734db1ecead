"""Hostile input: every malformed or forged byte string gets a typed error, in bounded memory.

The attacker here can write any bytes, including a correct frame-header CRC,
a correct chain and a correct COMMIT around a malicious payload, so each case
below is built to get past every check except the one under test (using the
library's own frame and commit encoders). Each case must end in a
``capsule.DataError`` subclass (never a bare ValueError, MemoryError or a
traceback in the CLI) while Python allocations stay far below what the forged
lengths claim.
"""

from __future__ import annotations

import hashlib
import random
import struct
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

import capsule
from capsule.core import constants as C
from capsule.format import canonical as canon
from capsule.format.commit import CommitInfo, encode_commit_payload
from capsule.format.file import ReadHandle
from capsule.format.frames import (
    FileHeader,
    chain_next,
    encode_frame,
    encode_frame_header,
    leaf_hash,
    parse_header,
)
from capsule.format.scan import load

# Every file here is a few KB; honest processing needs well under 1 MiB. Forged
# lengths claim 64 MiB .. 64 GiB, so anything that trusts them blows this budget.
MEMORY_BUDGET = 32 * 2**20

RawFrame = tuple[int, int, bytes, int]  # (type, flags, stored payload, raw_len)


# --- helpers ---------------------------------------------------------------------


def bounded(fn: Callable[[], Any]) -> BaseException | Any:
    """Run ``fn`` with allocation tracing; return its result or the exception it raised.

    Fails the test if the peak of Python-visible allocations (bytes objects,
    lists, numpy and zstd output buffers all go through the traced allocators)
    exceeds MEMORY_BUDGET.
    """
    tracemalloc.start()
    try:
        result: BaseException | Any = fn()
    except Exception as e:  # the caller asserts on the type
        result = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MEMORY_BUDGET, f"peak allocation {peak / 2**20:.1f} MiB"
    return result


def open_and_read(path: Path) -> tuple[int, str, list[str]]:
    with capsule.open(path) as cap:
        return len(cap), cap.state_root, [r.id for r in cap.records()]


def assert_refused(path: Path, error: type[Exception] = capsule.DataError) -> capsule.VerifyReport:
    """verify names the damage, readers and writers refuse it, nothing is rewritten."""
    before = path.read_bytes()
    rep = bounded(lambda: capsule.verify(path))
    assert isinstance(rep, capsule.VerifyReport), rep
    assert not rep.ok and rep.torn_tail == 0
    assert rep.first_error is not None and isinstance(rep.first_error["offset"], int)
    got = bounded(lambda: open_and_read(path))
    assert isinstance(got, error), got
    got = bounded(lambda: capsule.open(path, "a").close())
    assert isinstance(got, error), got
    assert path.read_bytes() == before  # damage is never truncated or repaired
    return rep


def build_base(path: Path, *, commits: int = 2) -> bytes:
    """A small, valid capsule: create commit + ``commits`` commits of records."""
    clock = iter(range(10**18, 10**18 + 10**6)).__next__
    with capsule.create(path, clock=clock) as cap:
        for i in range(commits):
            with cap.commit() as tx:
                tx.remember(f"memory {i}", tags=["t"], meta={"i": i})
                tx.remember(f"vector {i}", embedding=[0.5, float(i)])
    return path.read_bytes()


def append_frames(path: Path, frames: list[RawFrame], *, new_records: int = 0,
                  commit: bool = True) -> list[int]:
    """Append hand-made frames, correctly chained, then (optionally) a valid COMMIT.

    Everything a reader checks structurally is right -- header CRC, seq, chain,
    Merkle root over every frame (unknown ones included, spec 12.2), record
    count, back-pointer, INDEX pointer -- so only payload-level checks can fail.
    Returns the offsets of the appended frames.
    """
    h = ReadHandle(path)
    try:
        snap = load(h, h.size())
    finally:
        h.close()
    assert snap.torn is None and snap.commit is not None
    seq, chain, merkle, pos = snap.next_seq, snap.chain, snap.merkle.copy(), snap.end
    out = bytearray()
    offsets = []
    for ftype, flags, payload, raw_len in frames:
        hdr = encode_frame_header(ftype, flags, seq, len(payload), raw_len)
        ph = hashlib.sha256(payload).digest()
        chain = chain_next(chain, hdr, ph)
        merkle.append(leaf_hash(hdr, ph))
        offsets.append(pos)
        out += hdr + payload + chain
        pos += C.FRAME_OVERHEAD + len(payload)
        seq += 1
    if commit:
        c = snap.commit
        info = CommitInfo(offset=pos, end=0, seq=seq, time=0, root=merkle.root(),
                          records=snap.records + new_records, commits=c.commits + 1, prev=c.offset,
                          index=c.index, index_hash=c.index_hash)
        out += encode_frame(C.FT_COMMIT, seq, encode_commit_payload(info), chain).data
    with path.open("ab") as f:
        f.write(out)
    return offsets


def frame_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset, type) of every frame of a well-formed file."""
    out, off = [], C.HEADER_SIZE
    while off < len(data):
        total, ftype = struct.unpack_from("<IB", data, off)
        out.append((off, ftype))
        off += total
    return out


def reheader(data: bytes, off: int, **fields: int) -> bytes:
    """Rewrite fields of the frame header at ``off`` and recompute its CRC (a 'trusted' forgery).

    For an uncompressed frame a new payload_len is mirrored into raw_len, so the
    raw-length rule (raw_len == payload_len) cannot be what catches the forgery.
    """
    names = ["total_len", "ftype", "flags", "reserved", "seq", "payload_len", "raw_len", "key_epoch", "crc"]
    values = dict(zip(names, C.FRAME_HEADER_STRUCT.unpack_from(data, off), strict=True))
    if "payload_len" in fields and not values["flags"] & C.FFLAG_ZSTD:
        values["raw_len"] = min(fields["payload_len"], C.MAX_RAW_LEN)
    values.update(fields)
    body = C.FRAME_HEADER_STRUCT.pack(*[values[n] for n in names[:-1]], 0)[:28]
    return data[:off] + body + zlib.crc32(body).to_bytes(4, "little") + data[off + 32 :]


def with_header(data: bytes, header: bytes) -> bytes:
    """Swap in a new file header and recompute every chain value (the seed hashes the header).

    Merkle leaves and COMMIT/INDEX payloads do not depend on the chain, so the
    result is a fully valid file whenever ``header`` is acceptable.
    """
    chain = hashlib.sha256(C.CHAIN_SEED_TAG + header).digest()
    out, off = bytearray(header), C.HEADER_SIZE
    while off < len(data):
        total = struct.unpack_from("<I", data, off)[0]
        hdr, payload = data[off : off + 32], data[off + 32 : off + total - 32]
        chain = chain_next(chain, hdr, hashlib.sha256(payload).digest())
        out += hdr + payload + chain
        off += total
    return bytes(out)


def header_bytes(data: bytes, **changes: Any) -> bytes:
    """The file's header with fields changed and the header CRC recomputed."""
    old = parse_header(data[: C.HEADER_SIZE])
    fields = {f: getattr(old, f) for f in old.__slots__}  # type: ignore[attr-defined]
    fields.update(changes)
    return FileHeader(**fields).encode()


def raw_header(data: bytes, **changes: Any) -> bytes:
    """Like header_bytes, for values FileHeader cannot express (reserved bytes)."""
    names = ["magic", "major", "minor", "flags", "file_id", "h", "a", "s", "codec", "max_len", "reserved", "crc"]
    values = dict(zip(names, C.HEADER_STRUCT.unpack_from(data, 0), strict=True))
    values.update(changes)
    body = C.HEADER_STRUCT.pack(*[values[n] for n in names[:-1]], 0)[:60]
    return body + zlib.crc32(body).to_bytes(4, "little")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("capsule")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c",
                                                  "from capsule_cli.main import main; main()"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)


def assert_cli_data_error(path: Path) -> None:
    """Exit 1 with one line on stderr and no traceback, for both `open` and `verify`."""
    for command in ("open", "verify"):
        proc = cli(command, str(path))
        assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        prefix = "capsule: error:" if command == "open" else "capsule: verify failed:"
        assert lines[0].startswith(prefix), lines[0]


def record_payload(*records: dict[str, Any]) -> bytes:
    return canon.encode(list(records))


def records_frame(payload: bytes) -> RawFrame:
    return (C.FT_RECORDS, 0, payload, len(payload))


# --- positive controls: the forging helpers make valid files ------------------------


def test_helpers_build_valid_appends(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    build_base(path)
    before = open_and_read(path)
    rec = {"kind": "memory", "text": "hand made", "time": 5}
    big = {"kind": "memory", "text": "zstd " * 200, "time": 6}
    z = zstandard.ZstdCompressor(write_content_size=True).compress(record_payload(big))
    append_frames(path, [records_frame(record_payload(rec)),
                         (C.FT_RECORDS, C.FFLAG_ZSTD, z, len(record_payload(big)))], new_records=2)
    rep = capsule.verify(path)
    assert rep.ok and rep.records == before[0] + 2, rep.first_error
    n, _, ids = open_and_read(path)
    assert n == before[0] + 2 and ids[: before[0]] == before[2]
    with capsule.open(path) as cap:
        assert [cap.get(i).text for i in ids[-2:]] == ["hand made", "zstd " * 200]


def test_rechained_header_with_a_newer_minor_version_opens(tmp_path: Path) -> None:
    # 12.1: a higher minor version of a known major is readable. Also proves with_header().
    path = tmp_path / "a.capsule"
    data = build_base(path)
    before = open_and_read(path)
    path.write_bytes(with_header(data, header_bytes(data, minor=7)))
    assert capsule.verify(path).ok
    assert open_and_read(path) == before


# --- forged frame lengths ------------------------------------------------------------


def last_commit(data: bytes) -> int:
    return [off for off, t in frame_offsets(data) if t == C.FT_COMMIT][-1]


def middle_records(data: bytes) -> int:
    return [off for off, t in frame_offsets(data) if t == C.FT_RECORDS][0]


@pytest.mark.parametrize(
    ("name", "target", "forge", "checks"),
    [
        # total_len disagrees with payload_len: caught before the length is used.
        ("total-too-big", middle_records, lambda t, p: {"total_len": t + 4096}, {"frame-length"}),
        ("total-too-small", middle_records, lambda t, p: {"total_len": t - 1}, {"frame-length"}),
        ("payload-too-big", last_commit, lambda t, p: {"payload_len": p + 1}, {"frame-length"}),
        # Consistent, but over the header's max frame length (64 MiB by default).
        ("over-max", middle_records,
         lambda t, p: {"total_len": C.MAX_FRAME_LEN_DEFAULT + 1, "payload_len": C.MAX_FRAME_LEN_DEFAULT - 63},
         {"frame-length"}),
        ("u32-max", last_commit, lambda t, p: {"total_len": 2**32 - 1, "payload_len": 2**32 - 65},
         {"frame-length"}),
        # Consistent and in range, but the frame would run past the end of the file.
        ("past-eof-middle", middle_records,
         lambda t, p: {"total_len": 2**20, "payload_len": 2**20 - 64}, {"frame-truncated"}),
        # Consistent and shorter: the next "frame" starts inside this payload.
        ("shrunk", middle_records, lambda t, p: {"total_len": t - 8, "payload_len": p - 8},
         {"chain", "frame-header-crc", "frame-length", "frame-seq", "frame-truncated"}),
    ],
)
def test_forged_frame_lengths(tmp_path: Path, name: str, target: Callable[[bytes], int],
                              forge: Callable[[int, int], dict[str, int]], checks: set[str]) -> None:
    path = tmp_path / f"{name}.capsule"
    data = build_base(path)
    off = target(data)
    total, plen = struct.unpack_from("<I", data, off)[0], struct.unpack_from("<I", data, off + 16)[0]
    path.write_bytes(reheader(data, off, **forge(total, plen)))
    rep = assert_refused(path, capsule.CorruptError)
    assert rep.first_error is not None
    assert rep.first_error["check"] in checks, rep.first_error
    assert rep.first_error["offset"] == off


@pytest.mark.parametrize("max_frame_len", [C.MAX_FRAME_LEN_DEFAULT, C.MAX_FRAME_LEN_CEILING])
def test_forged_last_commit_length_past_eof_is_not_allocated(tmp_path: Path, max_frame_len: int) -> None:
    """A consistent, in-range length on the *last* COMMIT that runs past EOF.

    The fast open path (tail locator -> COMMIT) reads ``payload_len + 32``
    bytes of a frame whose length it has not compared with the file size yet,
    so a ~1 KB file makes open() allocate the full declared length: 64 MiB with
    the default header, 256 MiB (the raw-length cap of an uncompressed frame)
    with a legal 1 GiB max-frame header. Spec 3.1 lists "the frame ends within
    the file" among the checks that come before the frame is used.
    """
    path = tmp_path / "a.capsule"
    data = build_base(path, commits=1)
    before = open_and_read(path)  # the state the last commit below was added to
    with capsule.open(path, "a") as cap, cap.commit() as tx:
        tx.remember("the last commit")
    data = with_header(path.read_bytes(), header_bytes(data, max_frame_len=max_frame_len))
    off = last_commit(data)
    total = min(max_frame_len, C.MAX_RAW_LEN + C.FRAME_OVERHEAD)
    path.write_bytes(reheader(data, off, total_len=total, payload_len=total - C.FRAME_OVERHEAD))
    # Today this is reported as damage (8.2(b): the COMMIT's own locator points
    # at it); reading it as a torn last commit would be sound too. Either way
    # the only acceptable costs are a typed error and bounded memory.
    rep = bounded(lambda: capsule.verify(path))
    assert isinstance(rep, capsule.VerifyReport) and rep.ok == (rep.torn_tail > 0), rep
    got = bounded(lambda: open_and_read(path))
    assert isinstance(got, capsule.CorruptError) or got == before, got
    got = bounded(lambda: capsule.open(path, "a").close())
    assert got is None or isinstance(got, capsule.CorruptError), got


def test_zstd_flag_on_a_commit_frame_is_refused(tmp_path: Path) -> None:
    """Spec 3.3 / 6.1: only RECORDS payloads may be compressed; COMMIT payloads MUST NOT be.

    Setting the codec flag on the last COMMIT (header CRC and chain value
    recomputed; the Merkle root covers only earlier frames) gives a file that
    verify calls ok and open() accepts. Besides the malleability, the flag
    frees raw_len from payload_len, so the past-EOF length forgery above could
    then claim the full 1 GiB max frame length.
    """
    path = tmp_path / "a.capsule"
    data = build_base(path)
    off = last_commit(data)
    forged = reheader(data, off, flags=C.FFLAG_ZSTD)
    path.write_bytes(with_header(forged, forged[: C.HEADER_SIZE]))  # recompute the chain values
    rep = assert_refused(path, capsule.DataError)
    assert rep.first_error is not None and rep.first_error["offset"] == off


# --- zstd ---------------------------------------------------------------------------


def zstd_claiming(size: int) -> bytes:
    """A 16-byte zstd frame: magic, single-segment descriptor with an 8-byte content
    size, then one empty last raw block. It declares ``size`` bytes and holds none."""
    return b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + size.to_bytes(8, "little") + b"\x01\x00\x00"


def zstd_lying_small() -> bytes:
    """A real frame of 1 MiB of zeros whose content-size field was edited to say 100."""
    z = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(2**20))
    assert z[4] == 0xA0  # single segment, 4-byte content size at bytes 5..8
    return z[:5] + (100).to_bytes(4, "little") + z[9:]


@pytest.mark.parametrize(
    ("name", "payload", "raw_len", "check"),
    [
        ("claims-64GiB", zstd_claiming(64 * 2**30), 100, "zstd-size"),
        ("claims-64GiB-raw-at-limit", zstd_claiming(64 * 2**30), C.MAX_RAW_LEN, "zstd-size"),
        ("no-content-size", b"\x28\xb5\x2f\xfd\x00\x00\x01\x00\x00", 100, "zstd-size"),
        ("lies-small", zstd_lying_small(), 100, "zstd"),
        ("not-zstd", b"definitely not a zstd frame", 100, "zstd"),
    ],
)
def test_zstd_bombs(tmp_path: Path, name: str, payload: bytes, raw_len: int, check: str) -> None:
    assert zstandard.frame_content_size(zstd_claiming(64 * 2**30)) == 64 * 2**30
    path = tmp_path / f"{name}.capsule"
    build_base(path)
    (off,) = append_frames(path, [(C.FT_RECORDS, C.FFLAG_ZSTD, payload, raw_len)], new_records=1)
    rep = assert_refused(path, capsule.CorruptError)
    assert rep.first_error is not None
    assert (rep.first_error["offset"], rep.first_error["check"]) == (off, check)
    # The reader's error names the same place and check.
    err = bounded(lambda: capsule.open(path))
    assert isinstance(err, capsule.CorruptError) and (err.offset, err.check) == (off, check)


def test_zstd_bomb_in_a_torn_tail_is_dropped_unread(tmp_path: Path) -> None:
    # Uncommitted bytes are never decompressed: readers ignore them, the writer drops them.
    path = tmp_path / "a.capsule"
    build_base(path)
    before = open_and_read(path)
    append_frames(path, [(C.FT_RECORDS, C.FFLAG_ZSTD, zstd_claiming(64 * 2**30), 100)], commit=False)
    path.write_bytes(path.read_bytes()[:-5])  # cut inside the chain value: a torn append
    assert bounded(lambda: open_and_read(path)) == before
    rep = capsule.verify(path)
    assert rep.ok and rep.torn_tail > 0

    def recover() -> str:
        with capsule.open(path, "a") as cap, cap.commit() as tx:  # the first commit drops the tail
            return tx.remember("after recovery")

    new_id = bounded(recover)
    assert isinstance(new_id, str), new_id
    rep = capsule.verify(path)
    assert rep.ok and rep.torn_tail == 0, rep.first_error
    assert open_and_read(path)[2] == [*before[2], new_id]


# --- canonical msgpack ----------------------------------------------------------------

NESTED_10000 = b"\x91" * 10000 + b"\xc0"
HOSTILE_VALUES = {
    "array32-huge": b"\xdd\xff\xff\xff\xff",
    "map32-huge": b"\xdf\xff\xff\xff\xff",
    "str32-huge": b"\xdb\xff\xff\xff\xff",
    "bin32-huge": b"\xc6\xff\xff\xff\xff",
    "array-at-limit-no-data": b"\xdd\x00\x0f\x42\x40",
    "map-at-limit-no-data": b"\xdf\x00\x01\x86\xa0",
    "duplicate-keys": b"\x82\xa1a\x01\xa1a\x02",
    "unsorted-keys": b"\x82\xa1b\x01\xa1a\x02",
    "non-minimal-uint8": b"\xcc\x01",
    "non-minimal-int64": b"\xd3" + (5).to_bytes(8, "big"),
    "str8-for-fixstr": b"\xd9\x01a",
    "bin16-for-bin8": b"\xc5\x00\x01z",
    "nan": b"\xcb" + struct.pack(">d", float("nan")),
    "infinity": b"\xcb" + struct.pack(">d", float("-inf")),
    "negative-zero": b"\xcb" + struct.pack(">d", -0.0),
    "float32": b"\xca" + struct.pack(">f", 1.5),
    "ext": b"\xd4\x01\x00",
    "ext8-empty": b"\xc7\x00\x05",
    "timestamp": b"\xd6\xff\x00\x00\x00\x00",
    "nested-10000": NESTED_10000,
    "non-utf8": b"\xa2\xff\xfe",
    "utf8-surrogate": b"\xa3\xed\xa0\x80",
    "not-nfc": b"\xa3e\xcc\x81",
    "int-key": b"\x81\x01\x02",
    "bin-key": b"\x81\xc4\x01a\x02",
    "truncated": b"\x92\x01",
    "reserved-0xc1": b"\xc1",
}


@pytest.mark.parametrize("raw", list(HOSTILE_VALUES.values()), ids=list(HOSTILE_VALUES))
def test_canonical_decode_refuses(raw: bytes) -> None:
    err = bounded(lambda: canon.decode(raw))
    assert isinstance(err, capsule.NonCanonicalError), err


def test_canonical_decode_refuses_trailing_bytes() -> None:
    err = bounded(lambda: canon.decode(canon.encode({"a": 1}) + b"\x00"))
    assert isinstance(err, capsule.NonCanonicalError) and "trailing" in str(err)


def test_deep_nesting_error_names_the_reason() -> None:
    # _canonical.decode means to fall back to the exception's type name when its
    # text is empty (msgpack's StackError has none), but `e or ...` is always the
    # exception itself, so the message ends up as "malformed msgpack:  (spec 5.2)".
    with pytest.raises(capsule.NonCanonicalError) as info:
        canon.decode(NESTED_10000)
    assert str(info.value).split("malformed msgpack:")[1].split("(spec")[0].strip(), str(info.value)


RECORD_PREFIX = b"\x91\x83\xa4kind\xa1x\xa4time\x00\xa1v"  # [{"kind": "x", "time": 0, "v": ...


@pytest.mark.parametrize(
    "payload",
    [RECORD_PREFIX + v for v in HOSTILE_VALUES.values()]
    + [record_payload({"kind": "x", "time": 0}) + b"\x00",  # trailing bytes after the array
       b"\x90",  # an empty RECORDS array
       b"\x81\xa4kind\xa1x",  # a map, not an array
       b"\x91\x01",  # a record that is not a map
       b"\x91\x81\xa4time\x00"],  # a record without a kind
    ids=[*HOSTILE_VALUES, "trailing", "empty-array", "not-array", "not-map", "no-kind"],
)
def test_hostile_records_payload_in_a_valid_frame(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "a.capsule"
    build_base(path)
    (off,) = append_frames(path, [records_frame(payload)], new_records=1)
    rep = assert_refused(path, capsule.CorruptError)
    assert rep.first_error is not None and rep.first_error["offset"] == off
    assert rep.first_error["check"] in {"canonical", "records", "record"}, rep.first_error


def nested(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("depth", [40, 600])
def test_record_nesting_deeper_than_the_limit_is_refused(tmp_path: Path, depth: int) -> None:
    """Spec 11: "msgpack nesting depth of a record: 32", enforced by readers.

    normalize() (the writer side) refuses depth > 32, but decode() has no depth
    bound below msgpack's own stack limit (~1000), so a record of an unknown
    kind nested 40 or 600 deep verifies as ok and is returned by records().
    """
    path = tmp_path / "a.capsule"
    build_base(path)
    deep = b"\x91" * depth + b"\x00"  # [[[...0...]]], canonical except for its depth
    append_frames(path, [records_frame(RECORD_PREFIX + deep)], new_records=1)
    rep = bounded(lambda: capsule.verify(path))
    assert not rep.ok, "verify accepted a record nested deeper than 32"
    got = bounded(lambda: open_and_read(path))
    assert isinstance(got, capsule.DataError), got


def test_memory_meta_nesting_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    build_base(path)
    rec = canon.pack({"kind": "memory", "meta": {"m": nested(40)}, "text": "t", "time": 0})
    (off,) = append_frames(path, [records_frame(b"\x91" + rec)], new_records=1)
    rep = capsule.verify(path)
    assert not rep.ok and rep.first_error is not None
    assert rep.first_error["offset"] == off
    assert rep.first_error["check"] in {"record-schema", "canonical"}, rep.first_error
    got = bounded(lambda: open_and_read(path))
    assert isinstance(got, capsule.DataError), got


# --- header ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "change", "error", "check"),
    [
        ("major-2", {"major": 2}, capsule.UnsupportedError, "header-version"),
        ("major-255", {"major": 255, "minor": 255}, capsule.UnsupportedError, "header-version"),
        # 2.3, 10: the encrypted flag and an AEAD algorithm come together or not at all
        ("flag-encrypted", {"flags": C.HFLAG_ENCRYPTED}, capsule.CorruptError, "header-flags"),
        ("flag-unknown", {"flags": 0x8000}, capsule.UnsupportedError, "header-flags"),
        ("hash-alg", {"h": 2}, capsule.UnsupportedError, "header-algorithms"),
        ("aead-alg", {"a": C.AEAD_CHACHA20_POLY1305}, capsule.CorruptError, "header-flags"),
        ("aead-gcm-reserved", {"a": C.AEAD_AES256_GCM, "flags": C.HFLAG_ENCRYPTED}, capsule.UnsupportedError,
         "header-algorithms"),
        ("reserved", {"reserved": b"\x01" + bytes(23)}, capsule.UnsupportedError, "header-reserved"),
        ("max-frame-too-small", {"max_len": C.FRAME_OVERHEAD}, capsule.CorruptError, "header-limits"),
        ("max-frame-too-big", {"max_len": C.MAX_FRAME_LEN_CEILING + 1}, capsule.CorruptError, "header-limits"),
    ],
)
def test_header_fields_are_refused(tmp_path: Path, name: str, change: dict[str, Any],
                                   error: type[Exception], check: str) -> None:
    path = tmp_path / f"{name}.capsule"
    data = build_base(path)
    # Rechained, so nothing but the header field itself is wrong.
    path.write_bytes(with_header(data, raw_header(data, **change)))
    rep = assert_refused(path, error)
    assert rep.first_error is not None and rep.first_error["check"] == check
    err = bounded(lambda: capsule.open(path))
    assert type(err) is error and err.check == check  # type: ignore[union-attr]


def test_future_major_version_cli(tmp_path: Path) -> None:
    path = tmp_path / "future.capsule"
    data = build_base(path)
    path.write_bytes(with_header(data, raw_header(data, major=2)))
    assert_cli_data_error(path)
    proc = cli("open", str(path))
    assert "version 2." in proc.stderr


# --- unknown frame types ------------------------------------------------------------------


@pytest.mark.parametrize("ftype", [C.FT_SESSION, 0xC1, 0xFF])
def test_unknown_critical_frame_is_refused(tmp_path: Path, ftype: int) -> None:
    path = tmp_path / "a.capsule"
    build_base(path)
    (off,) = append_frames(path, [(ftype, 0, b"\x80", 1)])
    rep = assert_refused(path, capsule.UnsupportedError)
    assert rep.first_error is not None
    assert (rep.first_error["offset"], rep.first_error["check"]) == (off, "frame-type")


def test_keyslot_frame_in_a_plain_capsule_fails_verify(tmp_path: Path) -> None:
    """10.3: key slots belong to encrypted files; one in a plain file is damage, named where it is."""
    path = tmp_path / "a.capsule"
    build_base(path)
    (off,) = append_frames(path, [(C.FT_KEYSLOT, 0, b"\x80", 1)])
    rep = capsule.verify(path)
    assert not rep.ok and rep.first_error is not None
    assert (rep.first_error["offset"], rep.first_error["check"]) == (off, "keyslot")


@pytest.mark.parametrize("ftype", [C.FT_BLOB, 0x0C, 0x7F])
def test_unknown_non_critical_frame_is_skipped_but_chained(tmp_path: Path, ftype: int) -> None:
    path = tmp_path / "a.capsule"
    build_base(path)
    before = open_and_read(path)
    rec = {"kind": "memory", "text": "after the unknown frame", "time": 9}
    opaque = b"opaque future data \x00\xff"
    append_frames(path, [(ftype, 0, opaque, len(opaque)), records_frame(record_payload(rec))], new_records=1)
    rep = capsule.verify(path)
    assert rep.ok and rep.torn_tail == 0, rep.first_error
    n, _, ids = open_and_read(path)
    assert n == before[0] + 1 and ids[:-1] == before[2]
    # A writer appends after it; the unknown frame stays in the chain and the Merkle tree.
    with capsule.open(path, "a") as cap:
        with cap.commit() as tx:
            tx.remember("and a writer carries on")
        assert [r.commits for r in cap.log()] == list(range(1, cap.commit_count + 1))
    rep = capsule.verify(path)
    assert rep.ok and rep.records == before[0] + 2, rep.first_error


def test_unknown_non_critical_frame_with_unknown_flags_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    build_base(path)
    (off,) = append_frames(path, [(0x0C, C.FFLAG_AEAD, b"sealed", 6)])
    rep = assert_refused(path, capsule.UnsupportedError)
    assert rep.first_error is not None
    assert (rep.first_error["offset"], rep.first_error["check"]) == (off, "frame-flags")


def test_tampered_unknown_frame_breaks_the_chain(tmp_path: Path) -> None:
    # Skipped is not unchecked: editing a non-critical frame's payload is caught.
    path = tmp_path / "a.capsule"
    build_base(path)
    (off,) = append_frames(path, [(0x0C, 0, b"opaque", 6)])
    with capsule.open(path, "a") as cap, cap.commit() as tx:
        # 8.2: an edit inside the last commit reads as a torn tail; after a later commit it cannot.
        tx.remember("a later commit")
    data = bytearray(path.read_bytes())
    data[off + C.FRAME_HEADER_SIZE] ^= 0x20
    path.write_bytes(bytes(data))
    rep = assert_refused(path, capsule.CorruptError)
    assert rep.first_error is not None
    assert (rep.first_error["offset"], rep.first_error["check"]) == (off, "chain")


# --- not capsules at all ---------------------------------------------------------------------

PNG = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)
       + struct.pack(">I", zlib.crc32(b"IHDR" + struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0))))
NOT_CAPSULES = {
    "empty": b"",
    "random": random.Random(1234).randbytes(4096),
    "png": PNG + bytes(100),
    "text": b"user prefers metric units\n" * 10,
    "magic-prefix-only": C.MAGIC[:6],
    "zeros": bytes(64),
    "crlf-mangled": C.MAGIC.replace(b"\r\n", b"\n") + bytes(100),
}


@pytest.mark.parametrize("content", list(NOT_CAPSULES.values()), ids=list(NOT_CAPSULES))
def test_not_a_capsule(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.capsule"
    path.write_bytes(content)
    rep = assert_refused(path, capsule.CorruptError)
    assert rep.first_error is not None
    assert rep.first_error["check"] in {"header-magic", "header-length"} and rep.first_error["offset"] == 0
    with pytest.raises(capsule.CorruptError) as info:
        capsule.open(path)
    assert type(info.value) is capsule.CorruptError  # "not a capsule", not "unsupported"


@pytest.mark.parametrize("name", ["empty", "random", "png", "text"])
def test_not_a_capsule_cli(tmp_path: Path, name: str) -> None:
    path = tmp_path / "x.capsule"
    path.write_bytes(NOT_CAPSULES[name])
    assert_cli_data_error(path)
    assert path.read_bytes() == NOT_CAPSULES[name]
