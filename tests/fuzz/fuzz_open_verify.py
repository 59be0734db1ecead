"""Coverage-guided fuzz target for opening, reading and verifying a capsule (spec 2-9, 11, 13.3).

The input becomes a file, which is then verified (``capsule.verify``) and read
(``capsule.open``, ``len``, ``state_root``, every record, ``get`` on a few ids,
a vector search when the file has vectors, the summary, state fold, checkpoints,
actions, commit log and a view at the first commit). Only ``CapsuleError`` subclasses
may escape, and the two paths must agree: when ``verify`` passes, reading must
not fail and must find the number of records ``verify`` counted. When bit 1 of
the first byte is set, a writer then opens the file and commits one record: a
writer that refuses the file must leave it byte for byte, and on a file that
verified it must not refuse, and the file must still verify after the commit.

Each input is either a whole file (first byte even: libFuzzer mutates the bytes,
starting from the golden vectors in ``spec/vectors``, written into the corpus
folder at start) or a recipe (first byte odd: the second picks a vector, the
rest drive ``tests/fuzz/forge.mutate``, which edits payloads, decoded values,
header fields or frames and then recomputes lengths, CRCs, chain values, Merkle
roots, COMMIT, INDEX and TABLE fields, so that the deeper checks are reached).

Run from the repository root (``make fuzz`` does):

    .venv/bin/python tests/fuzz/fuzz_open_verify.py build/fuzz/corpus/open_verify -max_total_time=60
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

try:
    import atheris
except ImportError:  # pytest runs check() without it
    atheris = None

import cryptography  # noqa: F401  (imported before instrumenting: only capsule is instrumented)
import hnswlib  # noqa: F401
import msgpack  # noqa: F401
import numpy  # noqa: F401
import zstandard  # noqa: F401

with (atheris.instrument_imports(include=["capsule"]) if atheris is not None and __name__ == "__main__"
      else contextlib.nullcontext()):
    import capsule
    from capsule.core.errors import CapsuleError

from tests.fuzz import forge
from tests.fuzz._common import Choices, atheris_main, vector_files

NAME = "open_verify"
SEEDS = [p.read_bytes() for p in vector_files()]
MAX_RECORDS = 5000  # records read per input (the largest vector holds 900)


def scratch() -> Path:
    """Where an input is written; removed after each input (libFuzzer's exit skips atexit)."""
    return Path(tempfile.gettempdir()) / f"capsule-fuzz-{os.getpid()}.capsule"


def materialize(data: bytes) -> bytes | None:
    """The file an input stands for (see the module docstring)."""
    if not data:
        return None
    if data[0] % 2 == 0:
        return data[1:]
    seed = SEEDS[data[1] % len(SEEDS)] if len(data) > 1 else SEEDS[0]
    return forge.mutate(seed, Choices(data[2:]))


def read(path: Path, rep: capsule.VerifyReport | None) -> None:
    with capsule.open(path) as cap:
        n = len(cap)
        assert isinstance(cap.state_root, str)
        ids = [r.id for r in itertools.islice(cap.records(), MAX_RECORDS)]
        for rid in {*ids[:3], *ids[-3:]}:
            assert cap.get(rid).id == rid
        if rep is not None and rep.ok and len(ids) < MAX_RECORDS:
            assert n == rep.records == len(ids), f"verify counted {rep.records}, open {n}, records() {len(ids)}"
        vec = cap.index_info().get("vectors")
        if vec:
            cap.search(vector=[0.5] * int(vec["dim"]), k=3, mode="vector")
        cap.summary().to_dict()
        cap.state()  # the fold (decisions, reverts, approvals ...)
        cap.checkpoints()
        cap.actions()
        log = cap.log()
        if rep is not None and rep.ok:
            assert len(log) == rep.commits
        if len(log) >= 2:
            with cap.view(1) as old:
                assert len(old) <= n and isinstance(old.state_root, str)


def write(path: Path, rep: capsule.VerifyReport | None) -> None:
    """A writer either refuses the file, leaving it as it was, or commits one more
    record; on a file that verified, it must commit, and the result verify (8.3)."""
    before = path.read_bytes()
    try:
        cap = capsule.open(path, "a")
    except CapsuleError as e:
        assert path.read_bytes() == before, "a writer that refused the file changed it (8.2)"
        if rep is not None and rep.ok:
            raise AssertionError(f"verify passed but the writer refused the file: {e!r}") from e
        return
    try:
        with cap, cap.commit() as tx:
            tx.remember("appended by the fuzzer", time=1)
    except CapsuleError as e:
        if rep is not None and rep.ok:
            raise AssertionError(f"verify passed but a commit failed: {e!r}") from e
        return
    if rep is not None and rep.ok:
        after = capsule.verify(path)
        assert after.ok, f"a commit on a verified file broke it: {after.first_error}"
        assert after.records in (rep.records, rep.records + 1)


#: 10: the encrypted golden vector (and its mutants) open with k1, whose seed the vectors name
K1 = capsule.PrivateKey.from_seed(bytes([1]) * 32)


def exercise(path: Path, writer: bool = False) -> None:
    with capsule.unlocking(identity=K1):
        _exercise(path, writer)


def _exercise(path: Path, writer: bool) -> None:
    try:
        rep: capsule.VerifyReport | None = capsule.verify(path)
    except CapsuleError:
        rep = None
    try:
        read(path, rep)
    except CapsuleError as e:
        if rep is not None and rep.ok:
            raise AssertionError(f"verify passed but reading failed: {e!r}") from e
    if writer:
        write(path, rep)


def check(data: bytes) -> None:
    file = materialize(data)
    if file is None:
        return
    path = scratch()
    path.write_bytes(file)
    try:
        exercise(path, writer=bool(data[0] & 2))
    finally:
        path.unlink(missing_ok=True)


def seeds() -> list[tuple[str, bytes]]:
    out = []
    for i, p in enumerate(vector_files()):
        name = f"{p.parent.name}-{p.stem}"
        out.append((f"{name}-file", b"\0" + p.read_bytes()))
        out.append((f"{name}-recipe", bytes([1, i, 0])))  # every fix-up, one value edit
        out.append((f"{name}-writer", bytes([2]) + p.read_bytes()))
    return out


if __name__ == "__main__":
    atheris_main(NAME, check, seeds)
