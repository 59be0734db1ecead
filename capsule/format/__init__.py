"""Layer 1, format: the bytes of a capsule (spec 2-12).

Header, frames, canonical msgpack, record encoding and content ids, the hash
chain and Merkle tree, COMMIT / INDEX / TABLE / BLOB frames, torn-tail scanning,
the record store (reads and the commit writer) and the one module that touches
files (``file``). Frame and record codecs are sans-IO: they take and return bytes.
Imports only ``core``.
"""
