"""Packaging: what ``pip install agent-capsule`` really puts on a machine.

The repo keeps the CLI in a folder named ``cli/`` but installs it as
``capsule_cli`` (a top-level ``cli`` module would collide with every other
project that has one). The package list in pyproject.toml is explicit, so a new
subpackage that is not added there is silently left out of the wheel; these
tests catch both traps.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
DIST = "agent-capsule"
# The folders whose Python code ships, and the import name each installs under.
SOURCE_TREES = {"capsule": "capsule", "cli": "capsule_cli"}
# Folders that are never part of a package (build debris, caches).
NOT_CODE = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis"}


def pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def clean_env() -> dict[str, str]:
    # PYTHONPATH could put the repo root (and so its cli/ folder) on sys.path.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def probe(code: str, cwd: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


# --- (a) the installed distribution -------------------------------------------------------


def test_distribution_is_agent_capsule() -> None:
    dist = md.distribution(DIST)
    assert dist.metadata["Name"] == DIST
    assert dist.version == pyproject()["project"]["version"]
    import capsule

    assert capsule.__version__ == dist.version, "capsule.__version__ drifted from pyproject"


def test_console_script_capsule_points_at_capsule_cli() -> None:
    eps = [ep for ep in md.distribution(DIST).entry_points if ep.group == "console_scripts"]
    by_name = {ep.name: ep for ep in eps}
    assert set(by_name) == {"capsule"}
    ep = by_name["capsule"]
    assert ep.value == "capsule_cli.main:main"
    import capsule_cli.main

    assert ep.load() is capsule_cli.main.main
    # pip wrote the launcher next to the interpreter, and it runs.
    script = Path(sys.executable).with_name("capsule")
    assert script.is_file()
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120,
                          env=clean_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


def test_pyproject_declares_the_script() -> None:
    assert pyproject()["project"]["scripts"] == {"capsule": "capsule_cli.main:main"}


# --- (b) no top-level `cli` ---------------------------------------------------------------

FIND_CLI = (
    "import importlib.util, json\n"
    "spec = importlib.util.find_spec('cli')\n"
    "print(json.dumps(None if spec is None else str(spec.origin)))\n"
)


def test_no_top_level_cli_module_is_installed(tmp_path: Path) -> None:
    # From a directory that is not the repo root, the only way to import `cli`
    # would be through what was installed into site-packages.
    proc = probe(FIND_CLI, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "null", f"a top-level `cli` is importable: {proc.stdout}"
    # ...while the real packages are.
    ok = probe("import capsule, capsule_cli.main; print(capsule_cli.main.__name__)", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "capsule_cli.main"


def test_the_cli_probe_can_see_a_cli_folder(tmp_path: Path) -> None:
    """Control for the test above: the same probe does find `cli` when the repo root is on
    sys.path, so its "null" is a real answer and not a broken probe."""
    proc = probe(FIND_CLI, cwd=tmp_path, extra_path=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() != "null"


def test_installed_metadata_names_no_top_level_cli() -> None:
    dist = md.distribution(DIST)
    top = (dist.read_text("top_level.txt") or "").split()
    if top:  # setuptools writes it; other backends may not
        assert "cli" not in top
        assert {"capsule", "capsule_cli"} <= set(top)
    assert "cli" not in md.packages_distributions() or DIST not in md.packages_distributions()["cli"]


# --- (c) the explicit package list covers every package folder ----------------------------


def package_dirs(repo: Path = REPO) -> dict[str, Path]:
    """Every folder under the shipped trees that holds Python code, by import name.

    Any folder with a .py file counts, not only those with __init__.py: an
    implicit namespace subpackage is dropped from an explicit list just the same.
    """
    found: dict[str, Path] = {}
    for folder, import_name in SOURCE_TREES.items():
        root = repo / folder
        assert (root / "__init__.py").is_file(), f"{root} is not a package"
        for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
            rel = d.relative_to(root)
            if any(part in NOT_CODE or part.startswith(".") for part in rel.parts):
                continue
            if any(d.glob("*.py")):
                found[".".join([import_name, *rel.parts])] = d
    return found


def test_every_package_folder_is_in_the_package_list() -> None:
    cfg = pyproject()["tool"]["setuptools"]
    packages = cfg["packages"]
    assert isinstance(packages, list), "expected an explicit package list (see the comment in pyproject)"
    dirs = package_dirs()
    assert {"capsule", "capsule_cli"} <= set(dirs)
    missing = sorted(set(dirs) - set(packages))
    assert not missing, f"package folders missing from [tool.setuptools] packages: {missing}"
    assert "cli" not in packages and not any(p.startswith("cli.") for p in packages)


def test_package_scan_sees_nested_and_namespace_folders(tmp_path: Path) -> None:
    """Control for the test above: the scan really finds subpackages, with or without
    __init__.py, and skips caches, so an empty answer would not hide a missing package."""
    files = ["capsule/__init__.py", "capsule/sub/__init__.py", "capsule/sub/deep/mod.py",
             "capsule/__pycache__/x.py", "capsule/data/readme.txt", "cli/__init__.py", "cli/ext/tool.py"]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("")
    assert set(package_dirs(tmp_path)) == {"capsule", "capsule.sub", "capsule.sub.deep",
                                           "capsule_cli", "capsule_cli.ext"}


def test_cli_folder_is_mapped_to_capsule_cli() -> None:
    cfg = pyproject()["tool"]["setuptools"]
    assert cfg["package-dir"] == {"capsule_cli": "cli"}
    assert "py.typed" in cfg["package-data"]["capsule"]
    assert (REPO / "capsule" / "py.typed").is_file()


# --- (d) the wheel --------------------------------------------------------------------------


def copy_source(dst: Path) -> Path:
    """Build from a copy: an in-tree build writes build/ and *.egg-info into the repo."""
    ignore = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "*.capsule",
                                    *NOT_CODE)
    shutil.copytree(REPO, dst, ignore=ignore)
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # ~3 s here: pip fetches the build backend from the package index into an
    # isolated build env (the venv's own setuptools is older than pyproject needs).
    base = tmp_path_factory.mktemp("wheel")
    src = copy_source(base / "src")
    out = base / "out"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(out)],
                          cwd=base, env=clean_env(), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    wheels = list(out.glob("agent_capsule-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    return wheels[0]


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert "capsule" in tops and "capsule_cli" in tops
    assert "cli" not in tops, "cli/ must install as capsule_cli, never as a top-level cli"
    assert not any(n.startswith("cli/") or n == "cli.py" for n in names)
    assert "capsule/py.typed" in names
    assert "capsule/__init__.py" in names and "capsule_cli/main.py" in names
    # Every module in the source trees made it into the wheel (the explicit-list trap, end to end).
    for import_name, d in package_dirs().items():
        prefix = import_name.replace(".", "/")
        for py in d.glob("*.py"):
            assert f"{prefix}/{py.name}" in names, f"{prefix}/{py.name} missing from the wheel"
    # Nothing else at top level but the dist-info.
    extra = {t for t in tops if not t.endswith(".dist-info")} - {"capsule", "capsule_cli"}
    assert not extra, f"unexpected top-level entries in the wheel: {extra}"


def test_wheel_metadata(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        info = next(n.split("/", 1)[0] for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = z.read(f"{info}/METADATA").decode()
        eps = z.read(f"{info}/entry_points.txt").decode()
    assert "Name: agent-capsule" in meta.splitlines()
    assert "capsule = capsule_cli.main:main" in eps


def test_unpacked_wheel_runs_on_its_own(wheel: Path, tmp_path: Path) -> None:
    """The wheel's code alone (no repo on the path) imports and runs the CLI end to end."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    where = probe("import capsule, capsule_cli.main; print(capsule.__file__); print(capsule_cli.main.__file__)",
                  cwd=work, extra_path=site)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.split():
        assert Path(line).is_relative_to(site), f"imported from outside the wheel: {line}"
    run = probe(
        "import sys\n"
        "from capsule_cli.main import main\n"
        "sys.argv = ['capsule', 'init', 'w.capsule']\n"
        "main()\n",
        cwd=work, extra_path=site,
    )
    assert run.returncode == 0, run.stderr
    check = probe("import capsule; r = capsule.verify('w.capsule'); print(r.ok)", cwd=work, extra_path=site)
    assert check.stdout.strip() == "True", check.stderr
