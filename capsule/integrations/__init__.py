"""Layer 6, integrations: LangGraph, MCP, Letta agent files, JSONL/Parquet export (issue 13).

- ``langgraph``: ``CapsuleSaver`` (checkpointer) and ``CapsuleStore`` (long-term store);
  docs/langgraph-saver.md, docs/langgraph-store.md.
- ``mcp``: ``build_server`` / ``run_stdio``, the server of ``capsule serve FILE --mcp``; docs/mcp.md.
- ``letta``: ``import_af`` / ``export_af`` for Letta ``.af`` files; docs/letta.md.
- ``export``: ``export`` / ``rows``, one row per record as JSONL or Parquet; docs/export.md.

Adapters behind optional extras (``agent-capsule[langgraph]``, ``[mcp]``, ``[parquet]``,
``[all]``). May import every layer below; nothing in the library imports them, so the core
install stays small.
"""
