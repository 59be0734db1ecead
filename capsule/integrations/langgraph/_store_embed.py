"""The store's embedder and the text of an item: a capsule embedder (``hash`` by default) or
LangGraph's ``IndexConfig`` ``embed`` (a LangChain ``Embeddings``, a sync or async function).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langgraph.store.base import IndexConfig, ensure_embeddings, get_text_at_path, tokenize_path

from ...core.errors import UsageError
from ...search.embed import get_embedder
from ._store_map import value_text


class StoreEmbedder:
    """Vectors for item texts and queries, through one interface for both kinds of embedder."""

    def __init__(self, index: IndexConfig | None) -> None:
        cfg: Mapping[str, Any] = index or {}
        embed = cfg.get("embed", "hash")
        self.fields: list[str] = list(cfg.get("fields") or ["$"])
        if isinstance(embed, str) or (hasattr(embed, "embed") and hasattr(embed, "dim")):
            self._capsule: Any = get_embedder(embed)
            self._lc: Any = None
            self.name: str = self._capsule.name
            self.dim: int = int(self._capsule.dim)
        else:
            self._capsule = None
            self._lc = ensure_embeddings(embed)
            self.name = str(cfg.get("embedder_name", ""))  # unnamed: the capsule records no embedder
            dims = cfg.get("dims")
            if not isinstance(dims, int) or dims < 1:
                raise UsageError("a LangGraph index with its own embed function needs dims (an int >= 1)")
            self.dim = dims
        want = cfg.get("dims")
        if isinstance(want, int) and want != self.dim:
            raise UsageError(f"index dims is {want} but the {self.name} embedder gives {self.dim}")

    @property
    def local(self) -> bool:
        """A capsule embedder: synchronous, in process (nothing to await)."""
        return self._capsule is not None

    def text(self, value: Mapping[str, Any], fields: list[str] | None) -> tuple[str, bool]:
        """The memory text for a value and whether it is indexed (has text from the fields)."""
        texts: list[str] = []
        for f in fields if fields is not None else self.fields:
            texts.extend(get_text_at_path(value, f if f == "$" else tokenize_path(f)))
        if not texts:
            return value_text(value), False
        return "\n".join(texts), True

    def docs(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if self._capsule is not None:
            return [list(map(float, v)) for v in self._capsule.embed(list(texts))]
        return [list(v) for v in self._lc.embed_documents(list(texts))]

    async def adocs(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts or self._capsule is not None:
            return self.docs(texts)
        return [list(v) for v in await self._lc.aembed_documents(list(texts))]

    def query(self, text: str) -> list[float]:
        if self._capsule is not None:  # e5-small embeds a query apart from stored texts (16.5)
            from ...search.embed import embed_queries

            return [float(x) for x in embed_queries(self._capsule, [text])[0]]
        return list(self._lc.embed_query(text))

    async def aquery(self, text: str) -> list[float]:
        if self._capsule is not None:
            return self.query(text)
        return list(await self._lc.aembed_query(text))
