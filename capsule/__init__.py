"""capsule: a single-file, append-only, content-addressed memory capsule for agents.

>>> import capsule, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "agent.capsule")
>>> with capsule.create(path) as cap:
...     with cap.commit() as tx:
...         rid = tx.remember("user prefers metric units", tags=["prefs"])
>>> with capsule.open(path) as cap:
...     cap.get(rid).tags
('prefs',)
"""

from __future__ import annotations

import logging as _logging

from .core.errors import (
    AlreadyExists,
    CapsuleError,
    CapsuleNotFound,
    CorruptError,
    DataError,
    InvalidRecordError,
    Locked,
    NonCanonicalError,
    NotFound,
    ReadOnlyError,
    UnsupportedError,
    UsageError,
    WriterPoisoned,
)
from .format.keys import (
    PrivateKey,
    PublicKey,
    generate_key,
    load_private_key,
    load_public_key,
    save_private_key,
)
from .format.records import GenericRecord, Memory, kinds, register_kind
from .format.signing import Keyset
from .format.store import CommitRow
from .handle.capsule import Capsule, Summary
from .handle.entry import create, fork, open
from .handle.transaction import Transaction
from .ingest.pack import PackReport, pack
from .run.actions import NOT_DONE, Action, ActionFailed, ActionState, InDoubt
from .run.loop import AgentLoop, LoopResult, Step
from .search.embed import (
    Embedder,
    HashEmbedder,
    SentenceTransformerEmbedder,
    embedders,
    get_embedder,
    register_embedder,
)
from .search.engine import Filter, Hit
from .search.vindex import VectorParams
from .state.kinds import Approval, Constraint, Decision, Identity, Note
from .verifier.check import VerifyReport, verify

_logging.getLogger("capsule").addHandler(_logging.NullHandler())  # the application decides what to show

__version__ = "0.1.0"
FORMAT_VERSION = "1.1"

__all__ = [
    "Embedder",
    "HashEmbedder",
    "SentenceTransformerEmbedder",
    "embedders",
    "get_embedder",
    "register_embedder",
    "Filter",
    "Hit",
    "PackReport",
    "pack",
    "VectorParams",
    "AgentLoop",
    "LoopResult",
    "Step",
    "NOT_DONE",
    "Action",
    "ActionFailed",
    "ActionState",
    "InDoubt",
    "Approval",
    "Constraint",
    "Decision",
    "Identity",
    "Keyset",
    "Note",
    "PrivateKey",
    "PublicKey",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "save_private_key",
    "AlreadyExists",
    "Capsule",
    "CapsuleError",
    "CapsuleNotFound",
    "CommitRow",
    "CorruptError",
    "DataError",
    "GenericRecord",
    "InvalidRecordError",
    "Locked",
    "Memory",
    "NonCanonicalError",
    "NotFound",
    "ReadOnlyError",
    "Summary",
    "Transaction",
    "UnsupportedError",
    "UsageError",
    "VerifyReport",
    "WriterPoisoned",
    "create",
    "fork",
    "kinds",
    "open",
    "register_kind",
    "verify",
]
