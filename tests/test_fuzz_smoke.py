"""Short, deterministic runs of every fuzz target, and every crash found kept as a regression.

The targets live in ``tests/fuzz/`` (see ``tests/fuzz/__init__.py``): the frame
parser, the canonical decoder, open + verify (with structure-aware mutation)
and the JSONL reader. Each has a ``check(data)`` property; here it runs on a few
thousand mutants from ``random.Random`` with a fixed seed, which needs nothing
but the library, then under atheris for a fixed number of runs when atheris is
installed (the ``dev`` extra, Linux only). ``make fuzz`` runs them for minutes.

Every file in ``tests/fuzz/crashes/<target>/`` is an input that once broke a
property, minimized and named by what it broke; it is replayed here. One whose
bug lies in a module this suite does not fix is listed in ``KNOWN`` with the bug,
and expected to fail until that fix lands (then remove it from ``KNOWN``).
"""

from __future__ import annotations

import importlib
import importlib.util
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

import capsule
from capsule.core import constants as C
from tests.fuzz import _common, forge
from tests.fuzz._common import Choices, crash_files

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["frames", "canonical", "jsonl", "open_verify"]
RUNS = {"frames": 3000, "canonical": 4000, "jsonl": 2000, "open_verify": 150}  # ~2 s each here
RECIPES = 150  # structure-aware open/verify inputs (forge), ~15 ms each
ATHERIS_MUTANTS = {"frames": 400, "canonical": 400, "jsonl": 300, "open_verify": 40}  # after the seeds
HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None

# crashes/<target>/<file> whose fix belongs to another module: the test expects the failure
KNOWN: dict[str, str] = {}


def target(name: str) -> ModuleType:
    return importlib.import_module(f"tests.fuzz.fuzz_{name}")


@pytest.mark.parametrize("name", TARGETS)
def test_seeds_pass(name: str) -> None:
    """Positive control: the seeds (golden vectors, committed corpus) satisfy the property."""
    m = target(name)
    for fname, data in [*m.seeds(), *_common.committed_seeds(name)]:
        try:
            m.check(data)
        except BaseException as e:
            e.add_note(f"seed {fname}")
            raise


@pytest.mark.parametrize("name", TARGETS)
def test_random_mutants(name: str) -> None:
    m = target(name)
    assert _common.run(name, m.seeds, RUNS[name], random.Random(f"capsule-fuzz-{name}"), m.check) == RUNS[name]


def test_forged_open_verify_recipes() -> None:
    """Structure-aware: edits behind recomputed CRCs, chains, roots and indexes (tests/fuzz/forge.py)."""
    m = target("open_verify")
    rnd = random.Random("capsule-fuzz-recipes")
    for _ in range(RECIPES):
        data = bytes([1, rnd.randrange(len(m.SEEDS))]) + rnd.randbytes(rnd.randrange(4, 48))
        try:
            m.check(data)
        except BaseException as e:
            e.add_note(f"recipe {data.hex()} (replay: fuzz_open_verify.check(bytes.fromhex(...)))")
            raise


def test_forge_rebuilds_every_vector_byte_for_byte() -> None:
    """Positive control: with no edit, the rebuild recomputes exactly what the writer wrote."""
    for p in _common.vector_files():
        data = p.read_bytes()
        if data[10] & 1:  # 10: the forge rewrites INDEX and TABLE payloads, which are sealed here
            continue
        assert forge.build(forge.split(data)) == data, p


def test_forge_keeps_a_length_changing_edit_valid(tmp_path: Path) -> None:
    """Positive control: a longer record moves every later frame, and the rebuilt
    file (offsets, TABLE rows and ids, INDEX, COMMITs) still verifies and reads."""
    from capsule.format import canonical as canon
    from capsule.search.lexsnap import BLOB_TYPE as LEX

    cap = forge.split((_common.VECTORS / "indexed.capsule").read_bytes())
    # A lexical snapshot names record ids, so an edited record makes it stale (verify: `lexical`);
    # the forge rebuilds structure, not snapshots: drop them, frames and INDEX entries alike.
    lex_blobs = {id(f) for f in cap.frames if f.ftype == C.FT_BLOB and _blob_type(f.raw) == LEX}
    assert lex_blobs, "the golden indexed capsule carries lexical snapshots"
    cap.frames = [f for f in cap.frames if id(f) not in lex_blobs]
    for f in cap.frames:
        if f.ftype == C.FT_INDEX:
            v = canon.decode(f.raw)
            if isinstance(v.get("blobs"), list):
                v["blobs"] = [b for b in v["blobs"] if b[0] != LEX]
                if not v["blobs"]:
                    del v["blobs"]  # 9.2: omitted when no blob is named
            f.raw = canon.encode(v)
    frame = next(f for f in cap.frames if f.ftype == 0x81)
    recs = canon.decode(frame.raw)
    recs[0]["text"] += " made longer by the forge"
    frame.raw = canon.encode(recs)
    path = tmp_path / "forged.capsule"
    path.write_bytes(forge.build(cap))
    rep = capsule.verify(path)
    assert rep.ok, rep.first_error
    with capsule.open(path) as c:
        assert sum(r.text.endswith("made longer by the forge") for r in c.records()) == 1


def test_forge_recipes_reach_deep_checks() -> None:
    """The recipes get past the checksums: verify fails on payload-level checks, not only on CRCs."""
    m = target("open_verify")
    rnd = random.Random("capsule-fuzz-depth")
    checks = set()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.capsule"
        for _ in range(120):
            data = bytes([1, rnd.randrange(len(m.SEEDS))]) + rnd.randbytes(rnd.randrange(8, 48))
            path.write_bytes(m.materialize(data))  # type: ignore[arg-type]
            rep = capsule.verify(path)
            checks.add("ok" if rep.ok else rep.first_error["check"])  # type: ignore[index]
    shallow = {"header-magic", "header-crc", "frame-header-crc", "chain", "no-commit"}
    assert "ok" in checks and len(checks - shallow) >= 8, checks


def _crash_cases() -> list[object]:
    out: list[object] = []
    for name in TARGETS:
        for p in crash_files(name):
            key = f"{name}/{p.name}"
            marks = [pytest.mark.xfail(reason=KNOWN[key], strict=True)] if key in KNOWN else []
            out.append(pytest.param(name, p, id=key, marks=marks))
    return out


@pytest.mark.parametrize(("name", "path"), _crash_cases())
def test_crash_regressions(name: str, path: Path) -> None:
    target(name).check(path.read_bytes())


def test_known_crashes_exist() -> None:
    for key in KNOWN:
        assert (_common.CRASHES / key).is_file(), key


@pytest.mark.skipif(not HAVE_ATHERIS, reason="atheris is not installed (the dev extra, Linux only): the "
                                             "coverage-guided runs are skipped; the random runs above still ran")
def test_atheris_short_runs(tmp_path: Path) -> None:
    """Every atheris entry point works: a fixed-seed, fixed-length run over the seeds ends
    clean. The four run side by side: most of each is atheris instrumenting the library."""
    procs = {}
    for name in TARGETS:
        m = target(name)
        runs = len(m.seeds()) + len(_common.committed_seeds(name)) + 1 + ATHERIS_MUTANTS[name]  # atheris counts every input
        d = tmp_path / name
        d.mkdir()
        procs[name] = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "fuzz" / f"fuzz_{name}.py"), str(d / "corpus"),
             f"-atheris_runs={runs}", "-seed=1", f"-artifact_prefix={d}/", "-timeout=60"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=240)
        finally:
            proc.kill()
        assert proc.returncode == 0, f"{name}: {err[-4000:]}"
        d = tmp_path / name
        assert not list(d.glob("crash-*")) and not list(d.glob("timeout-*")), name
        assert any(p.name.startswith("seed-") for p in (d / "corpus").iterdir()), name


def test_choices_read_zeros_once_exhausted() -> None:
    c = Choices(b"\x05\x01")
    assert c.below(10) == 5 and c.byte() == 1 and c.below(7) == 0 and c.take(3) == b"\0\0\0" and c.exhausted


def _blob_type(raw: bytes) -> object:
    from capsule.format import canonical as canon

    n = int.from_bytes(raw[:2], "little")
    try:
        return canon.decode(raw[2 : 2 + n]).get("type")
    except Exception:
        return None
