"""The examples in the library's docstrings run, and the public API has one in each main docstring.

Every module under ``capsule/`` is imported here by name, so the lazy imports of
``capsule/__init__.py`` (PEP 562) hide none of them, and each docstring with examples is one
test case. Each runs in an empty temporary folder, with three names beside the module's own:
``capsule`` (the package), ``cap`` (``capsule.create("example.capsule")``, open for writing) and
``key`` (``capsule.generate_key()``), as the :class:`capsule.Capsule` docstring says. So an
example reads as a user would type it, with relative file names and without set-up lines.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import capsule


def _modules() -> list[str]:
    names = ["capsule"]
    names += sorted(m.name for m in pkgutil.walk_packages(capsule.__path__, "capsule."))
    return names


def _doctests() -> dict[str, doctest.DocTest]:
    finder = doctest.DocTestFinder()
    found: dict[str, doctest.DocTest] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for t in finder.find(module):
            if t.examples:
                found[t.name] = t
    return found


TESTS = _doctests()

#: The top-level API: each of these docstrings carries a runnable example.
MUST_HAVE_EXAMPLES = [
    "create", "open", "fork", "pack", "verify",
    "Capsule", "Capsule.get", "Capsule.records", "Capsule.state", "Capsule.log", "Capsule.summary",
    "Capsule.checkpoint", "Capsule.checkpoints", "Capsule.find_checkpoint", "Capsule.rollback",
    "Capsule.run_once", "Capsule.actions", "Capsule.view", "Capsule.commit", "Capsule.search", "Capsule.tasks",
    "Transaction", "Transaction.remember", "Transaction.decide", "Transaction.note", "Transaction.put",
    "Transaction.put_many", "Transaction.checkpoint",
    "CheckpointFrame",
]


@pytest.mark.parametrize("dotted", MUST_HAVE_EXAMPLES)
def test_the_public_api_has_an_example(dotted: str) -> None:
    head, _, attr = dotted.partition(".")
    obj = getattr(capsule, head)
    if attr:
        obj = getattr(obj, attr)
        obj = obj.fget if isinstance(obj, property) else obj
    examples = doctest.DocTestParser().get_examples(obj.__doc__ or "")
    assert [e for e in examples if not e.options.get(doctest.SKIP)], \
        f"capsule.{dotted} has no runnable example in its docstring"


def test_the_examples_are_found() -> None:
    # the modules of the public API are collected, not hidden behind capsule/__init__'s lazy names
    want = ["capsule", "capsule.handle.entry", "capsule.handle.capsule", "capsule.handle.transaction",
            "capsule.ingest.pack", "capsule.verifier.check", "capsule.run.tasks"]
    assert [m for m in want if not any(n == m or n.startswith(m + ".") for n in TESTS)] == []
    assert len(TESTS) >= 30


@pytest.mark.parametrize("name", sorted(TESTS))
def test_docstring_example(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = TESTS[name]
    test = doctest.DocTest(found.examples, dict(found.globs), found.name, found.filename, found.lineno,
                           found.docstring)
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    with capsule.create("example.capsule") as cap:
        test.globs.update(capsule=capsule, cap=cap, key=capsule.generate_key())
        try:
            runner.run(test, out=report.append, clear_globs=False)
        finally:
            test.globs.clear()
    assert runner.failures == 0, "".join(report)
