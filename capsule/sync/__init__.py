"""Layer 6, sync: push and pull capsules through fsspec (spec 19).

May import every layer below; nothing in the library imports it except the CLI.
Importing it does not import fsspec (that happens when a :class:`Remote` is made).

>>> import capsule.sync
>>> capsule.sync.push("example.capsule", "memory://doctest/init").status
'pushed'
"""

from __future__ import annotations

from ._errors import Diverged, RemoteCorrupt, RemoteError, RemoteMoved, RemoteNotFound, SyncError
from .manifest import Manifest, Segment
from .pull import PullResult, RemoteUntrusted, pull
from .push import PushResult, push
from .remote import Remote

__all__ = [
    "Diverged",
    "Manifest",
    "PullResult",
    "PushResult",
    "Remote",
    "RemoteCorrupt",
    "RemoteError",
    "RemoteMoved",
    "RemoteNotFound",
    "RemoteUntrusted",
    "Segment",
    "SyncError",
    "pull",
    "push",
]
