"""LangGraph on a capsule: a checkpointer and a long-term store (extra ``agent-capsule[langgraph]``).

- ``CapsuleSaver(path)``: a ``BaseCheckpointSaver``; every checkpoint is a capsule commit.
- ``CapsuleStore(path)``: a ``BaseStore``; a graph's long-term memory is the capsule's memories.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .saver import CapsuleSaver
    from .store import CapsuleStore

__all__ = ["CapsuleSaver", "CapsuleStore"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package must not import both halves (or langgraph) before use.
    if name == "CapsuleSaver":
        from .saver import CapsuleSaver

        return CapsuleSaver
    if name == "CapsuleStore":
        from .store import CapsuleStore

        return CapsuleStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
