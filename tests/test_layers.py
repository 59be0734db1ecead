"""The package tree is the architecture (ARCHITECTURE.md): keep it true.

Every import between capsule's modules is read with ``ast`` (top-level, inside
functions and under ``TYPE_CHECKING`` alike) and checked against the layer table:
a module may import its own package and packages of lower layers only, never a
higher layer or a sibling of its own layer, and no chain of imports that run may
lead back to where it started (an import under ``TYPE_CHECKING`` never runs, so
it may point back inside its own package, as Transaction's annotation of Capsule
does; it still may not point up).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "capsule"

#: package -> layer; a package imports only from lower layers (and itself).
LAYERS = {
    "core": 0,
    "format": 1,
    "state": 2,
    "search": 3,
    "run": 3,
    "questions": 3.5,  # above search and run, below the handle that delegates to it
    "handle": 4,
    "compaction": 4.5,  # above the handle it writes through, below the verifier that recomputes its plan
    "merging": 4.6,  # compaction of two parents (spec 20): above compaction, whose walk and writer it reuses
    "verifier": 5,
    "ingest": 5,
    "report": 5,
    "sync": 6,
    "integrations": 6,
}
TOP = 7  # capsule/__init__.py: the public API re-exports everything


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([root.name, *parts])] = p
    return out


def _type_only(tree: ast.AST) -> set[ast.AST]:
    """Import nodes under ``if TYPE_CHECKING:``."""
    out: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                out.update(n for n in ast.walk(stmt) if isinstance(n, ast.Import | ast.ImportFrom))
    return out


def imports_of(name: str, path: Path, known: set[str], *, runtime_only: bool = False) -> set[str]:
    """The capsule modules ``name`` imports, resolved to module names."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                found.add(sub if sub in known else mod)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in known and m != name}


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) == 1:
        return "", TOP
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module}: package capsule.{parts[1]} has no layer in LAYERS (add it, and to "
                             "ARCHITECTURE.md)")
    return parts[1], LAYERS[parts[1]]


def violations(root: Path) -> list[str]:
    mods = modules(root)
    graph = {m: imports_of(m, p, set(mods)) for m, p in mods.items()}
    runs = {m: imports_of(m, p, set(mods), runtime_only=True) for m, p in mods.items()}
    bad = []
    for m, deps in sorted(graph.items()):
        pkg, rank = layer_of(m)
        for d in sorted(deps):
            dpkg, drank = layer_of(d)
            if dpkg == pkg or drank < rank:
                continue
            why = "a higher layer" if drank > rank else "a sibling layer"
            bad.append(f"{m} imports {d} ({why}: {pkg or 'capsule'} is {rank}, {dpkg} is {drank})")
    # Cycles, whatever the layers: depth-first search for a back edge.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(runs[m]):
            if state.get(d) == 1:
                bad.append("import cycle: " + " -> ".join([*stack[stack.index(d):], d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(runs):
        if m not in state:
            visit(m)
    return bad


def test_layers_hold_and_there_are_no_cycles() -> None:
    assert not violations(ROOT), "\n".join(violations(ROOT))


def test_every_package_has_a_layer_and_says_what_it_owns() -> None:
    pkgs = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert set(pkgs) == set(LAYERS), f"packages {pkgs} vs layers {sorted(LAYERS)}"
    for name in pkgs:
        doc = ast.get_docstring(ast.parse((ROOT / name / "__init__.py").read_text()))
        assert doc and "import" in doc.lower(), f"capsule/{name}/__init__.py must say what it may import"
    flat = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert not flat, f"modules outside the layer packages: {flat}"


def test_no_module_grows_past_600_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"split these by responsibility: {long}"


@pytest.mark.parametrize("planted, expect", [
    ({"core/a.py": "from ..format import b\n", "format/b.py": ""}, "a higher layer"),
    ({"search/a.py": "def f():\n    from ..run import b\n", "run/b.py": ""}, "a sibling layer"),
    ({"format/a.py": "from . import b\n", "format/b.py": "from .a import x\n"}, "import cycle"),
    ({"state/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..handle import b\n",
      "handle/b.py": ""}, "a higher layer"),
])
def test_the_checker_sees_planted_violations(tmp_path: Path, planted: dict[str, str], expect: str) -> None:
    """Control: the walk finds upward, sibling, lazy, type-only and cyclic imports."""
    root = tmp_path / "capsule"
    for pkg in LAYERS:
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    for rel, text in planted.items():
        (root / rel).write_text(text)
    got = violations(root)
    assert any(expect in v for v in got), got
