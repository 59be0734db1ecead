"""Layer 5, report: the report (``capsule report``), one page and its ``--json`` figures.

It reads a capsule through the handle (layer 4) and the layers below it, never writes
one, and is imported by nothing in the library but the CLI. It may import every layer up
to the handle (the questions of ``capsule.questions`` it reaches through the handle).
"""
