"""The newest lexical snapshot of a file as it stands, and a forged one appended in its
place: for tests that check what readers and verify do with a bad snapshot (16.8)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

import capsule
from capsule.core import constants as C
from capsule.search import lexsnap, part


def honest_blob(p: Path) -> bytes:
    """The content of the newest lexical snapshot blob (one part: the tests' files are small)."""
    with capsule.open(p) as cap:
        ref = cap._snap.blobs[lexsnap.BLOB_TYPE]
        raw = cap._h.pread(ref.offset + C.FRAME_HEADER_SIZE, ref.size + 4096)
    hl = struct.unpack_from("<H", raw)[0]
    return raw[2 + hl : 2 + hl + ref.size]


def append_blob(p: Path, blob: bytes) -> None:
    """Append ``blob`` as the newest lexical snapshot (no honest one written at close after it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(part, "LEX_SNAPSHOT_ON_CLOSE", 10**9)
        with capsule.open(p, "a") as cap:
            cap._write_commit([], blob=(lexsnap.BLOB_TYPE, blob))
