"""Object-count bombs (audit F3): bytes limits do not bound objects.

One byte 0x80 decodes to a 64-byte dict, so a RECORDS frame of a few MB of
empty maps, zstd-compressed to a couple of KB, made ``open``, ``verify`` (which
said ok) and ``put`` build tens of millions of objects: ~1.5 GiB for a 2 KB
file, ~20 GiB for 11 KB. Spec 11 now caps the msgpack objects in one record
and in one RECORDS payload, and readers count them from the headers before
msgpack builds anything. These tests forge such files (with the helpers of
test_hostile, so every check but the one under test passes) and hold every
entry point to a refusal in bounded memory.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

import capsule
from capsule.core import constants as C
from capsule.format import canonical as canon
from capsule.format.records import encode_value, memory_value

from .test_hostile import append_frames, build_base

REC_CAP = C.MAX_RECORD_OBJECTS
FRAME_CAP = C.MAX_FRAME_OBJECTS
# A child process that refuses before building the objects stays near the
# interpreter's own footprint plus the decompressed payload; one that builds
# them needs ~70 bytes per empty map (1.5 GiB for the small file below).
RSS_BUDGET_KIB = 300 * 1024
# In-process budget: objects built while refusing (every bomb here holds over a million).
BLOCK_BUDGET = 100_000


# --- forging ---------------------------------------------------------------------


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return (b"\xdc" + n.to_bytes(2, "big")) if n < 1 << 16 else (b"\xdd" + n.to_bytes(4, "big"))


def map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    return (b"\xde" + n.to_bytes(2, "big")) if n < 1 << 16 else (b"\xdf" + n.to_bytes(4, "big"))


def record(i: int, v: bytes) -> bytes:
    """{"kind": "x", "time": i, "v": <v>}: canonical when ``v`` is."""
    return b"\x83\xa4kind\xa1x\xa4time" + canon.pack(i) + b"\xa1v" + v


def empty_maps(n: int) -> bytes:
    return array_header(n) + b"\x80" * n


def payload(records: list[bytes]) -> bytes:
    return array_header(len(records)) + b"".join(records)


def append_payload(path: Path, raw: bytes, records: int, *, zstd: bool = False) -> int:
    """Append ``raw`` as one committed RECORDS frame; return the frame's offset."""
    if zstd:
        z = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
        frame = (C.FT_RECORDS, C.FFLAG_ZSTD, z, len(raw))
    else:
        frame = (C.FT_RECORDS, 0, raw, len(raw))
    (off,) = append_frames(path, [frame], new_records=records)
    return off


def bomb_file(path: Path, records: int, per: int) -> int:
    """``records`` records of ``per`` empty maps each, zstd-compressed (the audit's file)."""
    build_base(path)
    return append_payload(path, payload([record(i, empty_maps(per)) for i in range(records)]), records, zstd=True)


def objects(v: Any) -> int:
    """Objects in a value as spec 11 counts them: every value once, map keys included."""
    if isinstance(v, dict):
        return 1 + sum(objects(k) + objects(x) for k, x in v.items())
    if isinstance(v, list):
        return 1 + sum(objects(x) for x in v)
    return 1


def bounded(fn: Callable[[], Any], budget: int = BLOCK_BUDGET) -> Any:
    """fn's result or the exception it raised; fails if it built more than ``budget`` objects.

    tracemalloc would slow the header walk twentyfold, so this samples the
    interpreter's count of small-object blocks whenever the garbage collector
    starts, which it does every few hundred container allocations, msgpack's
    included: a decode that builds a million maps is caught in the act.
    """
    base = sys.getallocatedblocks()
    peak = base

    def sample(phase: str, info: dict[str, int]) -> None:
        nonlocal peak
        if phase == "start":
            peak = max(peak, sys.getallocatedblocks())

    gc.callbacks.append(sample)
    try:
        result: Any = fn()
    except Exception as e:  # the caller asserts on the type
        result = e
    finally:
        gc.callbacks.remove(sample)
    assert peak - base < budget, f"{peak - base} objects built"
    return result


def open_and_read(path: Path) -> list[str]:
    with capsule.open(path) as cap:
        return [r.id for r in cap.records()]


def assert_refused(path: Path, offset: int) -> None:
    """verify names the frame and the check, readers and writers refuse, in bounded memory."""
    before = path.read_bytes()
    rep = bounded(lambda: capsule.verify(path))
    assert isinstance(rep, capsule.VerifyReport), rep
    assert not rep.ok and rep.first_error is not None, "verify accepted an object bomb"
    assert (rep.first_error["offset"], rep.first_error["check"]) == (offset, "canonical"), rep.first_error
    assert "objects" in rep.first_error["message"], rep.first_error
    for fn in (lambda: open_and_read(path), lambda: capsule.open(path, "a").close()):
        err = bounded(fn)
        assert isinstance(err, capsule.CorruptError), err
        assert err.offset == offset and err.check == "canonical" and "objects" in str(err), err
    assert path.read_bytes() == before


# --- the CLI, measured --------------------------------------------------------------

_MEASURE = (
    "import json, resource, subprocess, sys\n"
    "try:\n"
    "    p = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=120)\n"
    "    rc, err = p.returncode, p.stderr\n"
    "except subprocess.TimeoutExpired:\n"
    "    rc, err = 'timeout', ''\n"
    "print(json.dumps({'rc': rc, 'stderr': err, 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
)


def cli_measured(*args: str) -> dict[str, Any]:
    """Run the capsule CLI in a child of a fresh process, so ru_maxrss (KiB) is that command's peak."""
    script = Path(sys.executable).with_name("capsule")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from capsule_cli.main import main; main()"]
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd, *args], capture_output=True, text=True,
                         timeout=180, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module", params=[(20, 1_000_000), (64, 1_000_000)], ids=["2KB-20M-maps", "8KB-64M-maps"])
def bomb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    records, per = request.param
    path = tmp_path_factory.mktemp("bomb") / "bomb.capsule"
    off = bomb_file(path, records, per)
    return path, off


@pytest.mark.parametrize("command", [["open"], ["verify"], ["put", "--text", "hello"]],
                         ids=["open", "verify", "put"])
def test_cli_refuses_a_compressed_object_bomb_in_bounded_memory(bomb: tuple[Path, int], command: list[str]) -> None:
    path, off = bomb
    assert path.stat().st_size < 16 * 1024  # a few KB on disk, tens of millions of maps inside
    before = path.read_bytes()
    got = cli_measured(command[0], str(path), *command[1:])
    assert got["rss"] < RSS_BUDGET_KIB, f"{command[0]} peaked at {got['rss'] / 1024:.0f} MiB"
    assert got["rc"] == 1, got
    assert "Traceback" not in got["stderr"], got["stderr"]
    lines = got["stderr"].strip().splitlines()
    assert len(lines) == 1 and "objects" in lines[0] and f"offset {off}" in lines[0], got["stderr"]
    assert path.read_bytes() == before  # refused, not repaired or appended to


def test_library_refuses_the_bomb_with_offset_and_check(tmp_path: Path) -> None:
    # 3 records of a million empty maps: 3 MB raw, ~210 MB of dicts if built
    path = tmp_path / "a.capsule"
    off = bomb_file(path, 3, 1_000_000)
    assert_refused(path, off)


# --- the caps are exact, and the writer keeps to them --------------------------------


def meta_of(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, memory value) for a memory whose record holds exactly ``n`` objects."""
    def value(k: int) -> dict[str, Any]:
        return memory_value("t", time=5, meta={"a": [0] * 1_000_000, "b": [0] * k})

    k = n - objects(value(0))
    assert k > 0
    v = value(k)
    assert objects(v) == n
    return v["meta"], v


def test_record_at_the_cap_round_trips_and_one_more_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    build_base(path)
    meta, _ = meta_of(REC_CAP)
    with capsule.open(path, "a") as cap, cap.commit() as tx:
        rid = tx.remember("t", meta=meta, time=5)
    with capsule.open(path) as cap:
        got = cap.get(rid)
        assert got is not None and got.meta == meta
    rep = capsule.verify(path)
    assert rep.ok, rep.first_error
    # The same record with one object more, forged past the encoder: every reader refuses it.
    _, over = meta_of(REC_CAP + 1)
    off = append_payload(path, payload([canon.pack(over)]), 1)
    assert_refused(path, off)


def test_encoder_refuses_a_record_over_the_cap(tmp_path: Path) -> None:
    meta, v = meta_of(REC_CAP + 1)
    with pytest.raises(capsule.InvalidRecordError) as info:
        encode_value("memory", v)
    msg = str(info.value)
    assert "\n" not in msg and "objects" in msg and str(REC_CAP) in msg, msg
    path = tmp_path / "a.capsule"
    before = build_base(path)
    with capsule.open(path, "a") as cap, cap.commit() as tx, pytest.raises(capsule.InvalidRecordError, match="objects"):
        tx.remember("t", meta=meta, time=5)
    assert path.read_bytes() == before
    with pytest.raises(capsule.NonCanonicalError, match="objects"):
        canon.encode(v)


# --- no way around the count ------------------------------------------------------------


def nested_arrays() -> bytes:
    # 1,100 arrays of 1,000 empty maps inside one array: no container near its own limit
    inner = empty_maps(1000)
    return record(0, array_header(1100) + inner * 1100)


def maps_as_keys() -> bytes:
    # map keys that are arrays of maps: msgpack builds a key before strict_map_key refuses it
    key = empty_maps(600_000)
    return record(0, map_header(2) + key + b"\x00" + key + b"\x01")


def maps_as_values() -> bytes:
    # a map of 60,000 entries, each value a map of 8 entries whose values are empty maps
    value = map_header(8) + b"".join(bytes([0xA1, 0x61 + j]) + b"\x80" for j in range(8))
    return record(0, map_header(60_000) + b"".join(b"\xa5" + b"%05d" % i + value for i in range(60_000)))


def many_small_records() -> list[bytes]:
    # 100,000 records of 27 objects: each far under the record cap, 2.7M together
    return [record(i, empty_maps(20)) for i in range(100_000)]


@pytest.mark.parametrize(
    "records",
    [[nested_arrays()], [maps_as_keys()], [maps_as_values()], many_small_records()],
    ids=["nested-arrays", "maps-as-keys", "maps-as-values", "many-small-records"],
)
def test_the_count_cannot_be_bypassed(tmp_path: Path, records: list[bytes]) -> None:
    path = tmp_path / "a.capsule"
    build_base(path)
    off = append_payload(path, payload(records), len(records))
    assert_refused(path, off)


def test_many_records_just_under_the_frame_cap_are_accepted(tmp_path: Path) -> None:
    # records of 27 objects up to the payload cap, then one over it
    n = (FRAME_CAP - 1) // 27
    path = tmp_path / "a.capsule"
    build_base(path)
    recs = [record(i, empty_maps(20)) for i in range(n)]
    append_payload(path, payload(recs), n, zstd=True)
    rep = capsule.verify(path)
    assert rep.ok, rep.first_error
    over = [record(n + i, empty_maps(20)) for i in range(n + 1)]  # new times: no duplicate ids
    off = append_payload(path, payload(over), n + 1, zstd=True)
    rep = capsule.verify(path)
    assert not rep.ok and rep.first_error is not None, "verify accepted a payload over the cap"
    assert rep.first_error["offset"] == off and str(FRAME_CAP) in rep.first_error["message"], rep.first_error


HALF = REC_CAP // 2  # one array cannot pass the cap alone: MAX_ARRAY is below it


@pytest.mark.parametrize(
    "raw",
    [array_header(2) + empty_maps(HALF) * 2,
     map_header(2) + b"\xa1a" + empty_maps(HALF) + b"\xa1b" + empty_maps(HALF),
     array_header(1) + map_header(1) + b"\xa1a" + array_header(2) + empty_maps(HALF) * 2],
    ids=["arrays", "under-a-map", "deeper"],
)
def test_canonical_decode_counts_before_building(raw: bytes) -> None:
    # every other canonical value (COMMIT, INDEX, RECOVERY, CHECKPOINT ...) gets the record cap
    err = bounded(lambda: canon.decode(raw))
    assert isinstance(err, capsule.NonCanonicalError) and "objects" in str(err), err


def test_canonical_decode_accepts_exactly_the_cap() -> None:
    raw = array_header(2) + empty_maps(HALF) + empty_maps(HALF - 3)
    v = canon.decode(raw)
    assert objects(v) == REC_CAP
    err = bounded(lambda: canon.decode(array_header(2) + empty_maps(HALF) + empty_maps(HALF - 2)))
    assert isinstance(err, capsule.NonCanonicalError) and str(REC_CAP) in str(err), err
