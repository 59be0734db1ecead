"""Layer 3, search: finding memories (spec 16).

The vector index (hnswlib, persisted as verified BLOB snapshots), the lexical
index (BM25), embedders and their registry, filters, exact re-ranking and fusion.
Works on a ``format.store.Store``; imports ``core``, ``format`` and ``state``,
never ``run`` or anything above.
"""
