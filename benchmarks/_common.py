"""What the four benchmarks share: one copy of the run record, the table and the plumbing.

Each script (``store.py``, ``checkpoints.py``, ``actions.py``, ``search.py``)
measures its own thing; everything here is about running and reporting a
measurement, never about what is measured:

* the command line every script takes (``--quick``, ``--out``, ``--tmpdir``)
  and its scratch folder, removed even when a run fails;
* the environment record (machine, library versions, load averages, git
  revision, a digest of the library sources) and the JSON envelope around the
  results (``schema``, ``mode``, ``started``, ``duration_s``);
* the interleaving that feeds two (or more) systems in turns, so a noisy
  patch of the disk or a busy neighbour hits each of them alike;
* fresh child processes, cProfile summaries, file sizes on disk;
* the table printer (rich when installed, plain text otherwise) and the
  results writer (JSON into ``benchmarks/results/``, a git-ignored folder).

The scripts run as programs with ``benchmarks/`` on ``sys.path``, so they
``import _common``; so do the fresh child processes some of them start.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import importlib.metadata
import json
import os
import platform
import pstats
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import capsule

ROOT = Path(__file__).resolve().parent  # benchmarks/
RESULTS = ROOT / "results"  # git-ignored
MB = 1_000_000  # throughput is in 10^6 bytes per second
T0_NS = 1_700_000_000_000_000_000  # record times are fixed so runs are comparable

T = TypeVar("T")


def log(msg: str) -> None:
    """A progress line on stderr: stdout is the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- command line and scratch space ----------------------------------------------------------


def arg_parser(doc: str | None, default_out: Path, quick_help: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes; a script adds its own to the parser."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0] if doc else None)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", type=Path, default=default_out, help=f"JSON results (default {default_out})")
    ap.add_argument("--tmpdir", type=Path, default=None, help="where to build the files (default: system temp)")
    return ap


@contextmanager
def scratch_dir(prefix: str, base: Path | None) -> Iterator[Path]:
    """A fresh folder for the files a run builds; every one goes, even on failure."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- the environment record and the JSON envelope ------------------------------------------------


def dist_version(dist: str) -> str | None:
    """An installed distribution's version, or None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state() -> dict[str, Any] | None:
    """Which library code was measured: HEAD plus whether capsule/ had local edits."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "capsule"], cwd=ROOT.parent,
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"head": head, "capsule_modified_files": sorted(ln[3:] for ln in dirty if ln.strip())}


def sources_digest() -> str:
    """SHA-256 over every library source file: the library may carry uncommitted
    edits, and this names the exact sources measured."""
    top = Path(capsule.__file__).parent
    h = hashlib.sha256()
    for f in sorted(top.rglob("*.py")):
        h.update(str(f.relative_to(top)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def environment(tmp: Path, extra: Mapping[str, Any] | None = None, *, sources: bool = False) -> dict[str, Any]:
    """The machine and the code a run measured. ``extra`` adds a script's own
    entries (peer versions); ``sources`` adds :func:`sources_digest`, which
    :func:`finish` checks again at the end of the run."""
    import msgpack
    import numpy
    import zstandard

    du_work = shutil.disk_usage(ROOT)
    du_tmp = shutil.disk_usage(tmp)
    env = {
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "disk_free_bytes": {"repo": du_work.free, "tmpdir": du_tmp.free}, "tmpdir": str(tmp),
        "capsule": capsule.__version__, "sqlite": sqlite3.sqlite_version, "zstandard": zstandard.__version__,
        "msgpack": ".".join(map(str, msgpack.version)), "numpy": numpy.__version__,
        "page_cache": "warm (files just written; caches are not dropped)",
        "loadavg_start": list(os.getloadavg()),
        "git": git_state(),
        **(extra or {}),
    }
    if sources:
        env["capsule_sources_sha256"] = sources_digest()
    return env


def header(quick: bool, started: float, env: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The start of a results document; ``fields`` go between ``started`` and ``environment``."""
    return {"schema": 1, "mode": "quick" if quick else "full",
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), **fields,
            "environment": env}


def finish(res: dict[str, Any], started: float) -> None:
    """Close a results document: how long it took and how busy the machine was
    (other work on it skews every figure). When the record holds a sources
    digest, also whether capsule/ changed during the run: fresh processes
    import the library anew, so an edit would mix two versions in one table."""
    res["duration_s"] = round(time.time() - started, 1)
    env = res["environment"]
    env["loadavg_end"] = list(os.getloadavg())
    if "capsule_sources_sha256" in env:
        env["capsule_sources_changed_during_run"] = sources_digest() != env["capsule_sources_sha256"]


def run_summary(res: dict[str, Any]) -> str:
    """"quick run, 12.3 s, Python 3.11.7, 2 CPUs": the tail of a table title."""
    env = res["environment"]
    return f"{res['mode']} run, {res['duration_s']} s, Python {env['python']}, {env['cpu_count']} CPUs"


def write_results(res: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"results: {out}")


# --- interleaving ------------------------------------------------------------------------------


def rotated(sides: Sequence[T], k: int) -> list[T]:
    """``sides`` rotated ``k`` places: turn ``k`` of a round-robin, so each side
    goes first in its turn (with two sides: alternately)."""
    k %= len(sides)
    return [*sides[k:], *sides[:k]]


def interleave(n: int, blocks: int, sides: Sequence[T]) -> Iterator[tuple[range, list[T]]]:
    """Split ``range(n)`` into about ``blocks`` consecutive blocks and yield each
    with ``sides`` in the order they take it (:func:`rotated` by the block's
    number). Feeding every side every block, in turn, spreads a slow patch of
    the disk or a noisy neighbour over all of them instead of whichever
    happened to run then."""
    per = max(1, -(-n // blocks))
    for b, start in enumerate(range(0, n, per)):
        yield range(start, min(start + per, n)), rotated(sides, b)


# --- measuring helpers ---------------------------------------------------------------------------


def file_bytes(path: Path) -> int:
    """A store's bytes on disk, side files included (SQLite: db plus any -wal/-shm
    left behind); lock files excluded."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if not p.name.endswith(".lock"))


# Runs one function of a benchmark module in a fresh interpreter, the import
# timed apart from the work: argv is benchmarks/, module, function, JSON kwargs.
# The last stdout line is the function's JSON result plus ``import_s``.
_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.dont_write_bytecode = True  # leave no __pycache__ in benchmarks/
sys.path.insert(0, sys.argv[1])
mod = __import__(sys.argv[2])
t1 = time.perf_counter()
res = getattr(mod, sys.argv[3])(**json.loads(sys.argv[4]))
res["import_s"] = t1 - t0
print(json.dumps(res), flush=True)
"""


def child_cmd(module: str, fn: str, kwargs: dict[str, Any]) -> list[str]:
    """The command that runs ``module.fn(**kwargs)`` in a fresh interpreter."""
    return [sys.executable, "-c", _CHILD, str(ROOT), module, fn, json.dumps(kwargs)]


def child_json(cmd: list[str], **kwargs: Any) -> dict[str, Any]:
    """Run a child process; its last stdout line is its JSON result (it may
    print progress lines before it). ``kwargs`` go to :func:`subprocess.run`."""
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def top_entries(prof: cProfile.Profile, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` entries of a profile with the most time of their own."""
    st = pstats.Stats(prof)
    rows = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        short = file if file.startswith("~") else "/".join(Path(file).parts[-2:])
        rows.append({"function": f"{short}:{line}({name})", "ncalls": nc,
                     "tottime_ms": round(tt * 1000, 2), "cumtime_ms": round(ct * 1000, 2)})
    rows.sort(key=lambda r: r["tottime_ms"], reverse=True)
    return rows[:limit]


def print_top(rows: list[dict[str, Any]], limit: int) -> None:
    for r in rows[:limit]:
        print(f"  {r['tottime_ms']:9.2f} ms self {r['cumtime_ms']:9.2f} ms cum {r['ncalls']:>8}  {r['function']}")


# --- the table -----------------------------------------------------------------------------------


def met(ok: bool | None) -> str:
    """A "met?" cell: no target, met, or not met."""
    return "—" if ok is None else ("yes" if ok else "NO")


def fmt_ms(v: float) -> str:
    return f"{v:,.1f} ms" if v >= 10 else f"{v:,.2f} ms"


def print_table(title: str, heads: Sequence[str], rows: Iterable[Sequence[str] | Mapping[str, str]],
                *, cols: Sequence[str] | None = None, left: Container[str] = (), width: int = 120) -> None:
    """One table on stdout. ``rows`` are lists of cells, or mappings read in the
    order of ``cols`` (default: their own). Columns whose head is in ``left``
    are left-aligned (the labels), the others right-aligned (the figures); a
    "met?" column is coloured. Plain text when rich is not installed."""
    cells = [[r[c] for c in (cols or r)] if isinstance(r, Mapping) else list(r) for r in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text when rich is not there
        widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]
        print(title)
        print(" | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)))
        print("-+-".join("-" * w for w in widths))
        for r in cells:
            print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        return
    t = Table(title=title)
    for h in heads:
        t.add_column(h, justify="left" if h in left else "right")
    for r in cells:
        t.add_row(*(f"[{'green' if c == 'yes' else 'bold red'}]{c}[/]" if h == "met?" and c in ("yes", "NO") else c
                    for h, c in zip(heads, r, strict=True)))
    Console(width=max(width, shutil.get_terminal_size().columns)).print(t)
