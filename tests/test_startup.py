"""Start-up: what ``import capsule`` and each fast command load (issue 14).

Agents and shell scripts call ``capsule`` in loops, so a command pays only for
what it uses: ``import capsule`` and ``capsule --version`` load no numpy,
hnswlib, cryptography, rich or pydantic (typer's coercion), and ``capsule
open --json`` loads no hnswlib, cryptography, rich or pydantic either. Each
check runs in a fresh interpreter and reads ``sys.modules``, so a regression
shows up without timing anything (timings are in benchmarks and the issue).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import capsule

HEAVY = ("numpy", "hnswlib", "cryptography", "rich", "pydantic")


def _loaded(code: str) -> tuple[set[str], str]:
    """Run ``code`` in a fresh interpreter; the top-level packages it left loaded, and its stdout."""
    probe = code + textwrap.dedent("""
        import sys as _s
        _s.stderr.write("\\nLOADED " + " ".join(sorted({m.split(".")[0] for m in _s.modules})) + "\\n")
    """)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("LOADED ")][-1]
    return set(line.split()[1:]), r.stdout


def _cli(*argv: str) -> str:
    return textwrap.dedent(f"""
        import sys
        sys.argv = ["capsule", *{list(argv)!r}]
        from capsule_cli.main import main
        try:
            main()
        except SystemExit as e:
            assert not e.code, e.code
    """)


def test_import_capsule_loads_nothing_heavy() -> None:
    loaded, _ = _loaded("import capsule\nassert capsule.__version__\n")
    assert not loaded & {*HEAVY, "zstandard", "msgpack"}, loaded & {*HEAVY, "zstandard", "msgpack"}


def test_version_loads_nothing_heavy() -> None:
    loaded, out = _loaded(_cli("--version"))
    assert out.startswith(f"capsule {capsule.__version__} (format {capsule.FORMAT_VERSION})")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert not loaded & {"zstandard", "msgpack", "msgspec"}, loaded


def test_version_loads_no_command_library() -> None:
    """Registering the commands loads none of the library behind them: ``cli/merge.py``
    importing ``capsule.merging`` at module level pulled in the handle, compaction and the
    codecs, and ``capsule --version`` went from 0.13 s to 0.32 s."""
    probe = _cli("--version") + textwrap.dedent("""
        sys.stderr.write("\\nCAPSULE " + " ".join(sorted(m for m in sys.modules if m.startswith("capsule."))) + "\\n")
    """)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    mods = [ln for ln in r.stderr.splitlines() if ln.startswith("CAPSULE")][-1].split()[1:]
    assert {m.split(".")[1] for m in mods} <= {"core", "ingest"}, mods


def test_open_small_loads_nothing_heavy(tmp_path: Path) -> None:
    """A capsule too small for an index table: its state root is hashed without numpy."""
    path = tmp_path / "small.capsule"
    with capsule.create(path) as cap, cap.commit() as tx:
        for i in range(10):
            tx.remember(f"memory {i}", tags=["t"])
    loaded, out = _loaded(_cli("open", "--json", str(path)))
    doc = json.loads(out)
    assert doc["records"] == 10 and doc["state_root"] == capsule.open(path).state_root
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    loaded, out = _loaded(_cli("open", str(path)))
    assert "state_root" in out
    assert not loaded & {"numpy", "hnswlib", "cryptography", "pydantic"}, loaded  # rich prints it


def test_open_json_loads_no_graph_keys_or_console(tmp_path: Path) -> None:
    path = tmp_path / "indexed.capsule"
    with capsule.create(path) as cap, cap.commit() as tx:
        tx.put_many([{"text": f"memory {i}", "time": i} for i in range(5_000)])  # an INDEX and tables
    loaded, out = _loaded(_cli("open", "--json", str(path)))
    assert json.loads(out)["records"] == 5_000
    assert not loaded & {"hnswlib", "cryptography", "rich", "pydantic"}, loaded


def test_small_state_root_is_the_state_root() -> None:
    import hashlib

    from capsule.state.stateroot import small_root, state_root_of

    for n in (0, 1, 2, 300, 5_000):
        ids = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]
        assert small_root(ids) == state_root_of(ids), n


def test_public_api_resolves_lazily() -> None:
    """Every name of ``capsule.__all__`` is there on first use, and listed by dir()."""
    for name in capsule.__all__:
        assert getattr(capsule, name) is not None, name
    assert set(capsule.__all__) <= set(dir(capsule))
    with pytest.raises(AttributeError):
        capsule.no_such_name  # noqa: B018
    ns: dict[str, object] = {}
    exec("from capsule import *", ns)
    assert set(capsule.__all__) <= set(ns)


def test_lazy_module_imports_on_first_use() -> None:
    loaded, out = _loaded(textwrap.dedent("""
        import sys
        from capsule.core.lazy import lazy
        zs = lazy("zstandard")
        before = "zstandard" in sys.modules
        level = zs.ZstdCompressor(level=3).compress(b"x" * 100)
        print(before, "zstandard" in sys.modules, len(level) > 0)
    """))
    assert out.split() == ["False", "True", "True"]


def test_plain_option_values_keep_typer_checks(tmp_path: Path) -> None:
    """Values typer coerces without pydantic (paths, text) and the ones it still checks
    through its adapters (a range) behave as typer's own coercion does."""
    from capsule_cli.main import app
    from typer.testing import CliRunner

    path = tmp_path / "a.capsule"
    with capsule.create(path) as cap, cap.commit() as tx:
        tx.remember("x")
    r = CliRunner().invoke(app, ["log", str(path), "--limit", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert [row["commit"] for row in json.loads(r.stdout)] == [2]
    for bad in ("0", "x", "1.5"):
        r = CliRunner().invoke(app, ["log", str(path), "--limit", bad])
        assert r.exit_code == 2 and "--limit" in r.output, (bad, r.output)
    r = CliRunner().invoke(app, ["open", str(tmp_path / "missing.capsule")])
    assert r.exit_code == 2
