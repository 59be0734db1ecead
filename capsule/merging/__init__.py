"""Layer 4½, merge: ``capsule.merge`` (spec 20), "compaction of two parents" (named
``merging`` so that the package never shadows the function ``capsule.merge``).

It reads two parents with compaction's walk and writes through compaction's writer, so
it sits beside ``capsule.compaction``; the verifier (layer 5) imports its plan to check
a merged file against its parents (``verifier/merge.py``).
"""

from .conflicts import Conflict
from .plan import MergePlan, make_plan
from .sides import Side, read_side
from .write import LABEL, MergeReport, merge

__all__ = ["LABEL", "Conflict", "MergePlan", "MergeReport", "Side", "make_plan", "merge", "read_side"]
