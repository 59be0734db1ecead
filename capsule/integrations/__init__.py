"""Layer 6, integrations (room reserved): LangGraph, MCP, Letta agent files, Parquet.

Adapters behind optional extras. May import every layer below; nothing in the
library imports them, so the core install stays small.
"""
