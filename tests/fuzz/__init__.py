"""Fuzz targets (atheris, coverage-guided) and the helpers they share.

Each ``fuzz_*.py`` is a program (``python tests/fuzz/fuzz_X.py -atheris_runs=N DIR``)
and a module whose ``check(data)`` is the property, importable without atheris;
``tests/test_fuzz_smoke.py`` runs every target briefly and replays ``crashes/``.
"""
