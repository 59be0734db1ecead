"""Layer 5, ingest: bringing outside data into a capsule.

The JSONL reader shared by ``capsule put --jsonl`` and ``pack``, and ``pack``
itself (folders of text and markdown, JSONL files). A client of the handle: may
import every layer up to it; nothing in the library imports it but ``capsule``.
"""
