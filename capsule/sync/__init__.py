"""Layer 6, sync (room reserved): encryption at rest, remotes through fsspec, merge.

May import every layer below; nothing in the library imports it except the
public ``capsule`` namespace and the CLI.
"""
