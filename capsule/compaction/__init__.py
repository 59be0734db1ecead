"""Layer 4½, compaction: ``capsule.compact`` (spec 15.1).

It writes the compacted file through a ``Capsule``, so it may import every layer up to
the handle; the verifier (layer 5) imports its plan to check a compacted file against
its parent, and the handle reaches it only by name, at call time (``Capsule.compact``).
"""

from .plan import POLICIES, Plan, make_plan
from .rekey import rekey
from .rewrite import compact, compact_handle

__all__ = ["POLICIES", "Plan", "compact", "compact_handle", "make_plan", "rekey"]
