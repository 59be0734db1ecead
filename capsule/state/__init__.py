"""Layer 2, state: what the records mean (spec 7, 13-15).

Record kinds beyond memory, the deterministic state fold and state root, keys,
keysets and signed checkpoints, views of older commits, rollback and lineage (and
next: lifecycle and compaction). Pure functions over records where it can be.
Imports ``core`` and ``format``.
"""
