"""Layer 5, verifier: ``capsule.verify`` (spec 13.3).

Verify checks every layer below it (frames, chain, Merkle tree, index tables,
snapshot blobs, state roots, signatures), so it sits above them all and is
imported by nothing in the library but the public ``capsule`` namespace. It may
import every layer up to the handle (to open a parent for comparison).
"""
