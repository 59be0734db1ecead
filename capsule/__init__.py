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
from typing import TYPE_CHECKING, Any

from .core import constants as _C
from .core.errors import (
    AlreadyExists,
    CapsuleError,
    CapsuleNotFound,
    CorruptError,
    DataError,
    FileReplaced,
    InvalidRecordError,
    Locked,
    NonCanonicalError,
    NotFound,
    PolicyViolation,
    ReadOnlyError,
    Redacted,
    UnsupportedError,
    UsageError,
    WriterPoisoned,
)

if TYPE_CHECKING:
    from .compaction import compact, rekey
    from .format.checkpoint import CheckpointFrame, KeysetFrame
    from .format.crypto import KeyRequired, WrongKey
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
    from .handle.entry import create, fork, open, unlocking
    from .handle.transaction import Transaction
    from .ingest.pack import PackReport, pack
    from .merging.write import MergeReport, merge
    from .run.actions import NOT_DONE, Action, ActionFailed, ActionState, InDoubt
    from .run.loop import AgentLoop, LoopResult, Step
    from .run.scheduler import TaskState
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
    from .state.fold import State
    from .state.kinds import Approval, Constraint, Decision, Identity, Note
    from .state.rules import action_subject
    from .verifier.check import VerifyReport, verify
    from .verifier.merge import verify_merge

#: Where each public name lives. The API is imported on first use (PEP 562), so
#: ``import capsule`` (and ``capsule --version``) loads no numpy, hnswlib,
#: cryptography or rich; ``capsule.open`` loads the reader and what it needs.
_HOME = {
    "PrivateKey": "format.keys", "PublicKey": "format.keys", "generate_key": "format.keys",
    "load_private_key": "format.keys", "load_public_key": "format.keys", "save_private_key": "format.keys",
    "GenericRecord": "format.records", "Memory": "format.records", "kinds": "format.records",
    "register_kind": "format.records",
    "Keyset": "format.signing",
    "CheckpointFrame": "format.checkpoint", "KeysetFrame": "format.checkpoint",
    "CommitRow": "format.store",
    "Capsule": "handle.capsule", "Summary": "handle.capsule",
    "create": "handle.entry", "fork": "handle.entry", "open": "handle.entry", "unlocking": "handle.entry",
    "compact": "compaction", "rekey": "compaction",
    "merge": "merging.write", "MergeReport": "merging.write", "verify_merge": "verifier.merge",
    "KeyRequired": "format.crypto", "WrongKey": "format.crypto",
    "Transaction": "handle.transaction",
    "PackReport": "ingest.pack", "pack": "ingest.pack",
    "NOT_DONE": "run.actions", "Action": "run.actions", "ActionFailed": "run.actions",
    "ActionState": "run.actions", "InDoubt": "run.actions",
    "AgentLoop": "run.loop", "LoopResult": "run.loop", "Step": "run.loop",
    "TaskState": "run.scheduler",
    "State": "state.fold",
    "Embedder": "search.embed", "HashEmbedder": "search.embed",
    "SentenceTransformerEmbedder": "search.embed", "embedders": "search.embed",
    "get_embedder": "search.embed", "register_embedder": "search.embed",
    "Filter": "search.engine", "Hit": "search.engine",
    "VectorParams": "search.vindex",
    "Approval": "state.kinds", "Constraint": "state.kinds", "Decision": "state.kinds",
    "Identity": "state.kinds", "Note": "state.kinds",
    "action_subject": "state.rules",
    "VerifyReport": "verifier.check", "verify": "verifier.check",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'capsule' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # the next read is a plain global
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


_logging.getLogger("capsule").addHandler(_logging.NullHandler())  # the application decides what to show

__version__ = "0.1.0"
FORMAT_VERSION = f"{_C.FORMAT_MAJOR}.{_C.FORMAT_MINOR}"

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
    "TaskState",
    "State",
    "CheckpointFrame",
    "KeysetFrame",
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
    "FileReplaced",
    "PolicyViolation",
    "ReadOnlyError",
    "Redacted",
    "Summary",
    "Transaction",
    "UnsupportedError",
    "UsageError",
    "KeyRequired",
    "MergeReport",
    "WrongKey",
    "VerifyReport",
    "WriterPoisoned",
    "action_subject",
    "compact",
    "create",
    "merge",
    "verify_merge",
    "rekey",
    "fork",
    "kinds",
    "open",
    "register_kind",
    "unlocking",
    "verify",
]
