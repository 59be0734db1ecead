"""Errors of push and pull (spec 19), under the library's one root (style rule 3).

A remote that fails its checks is bad data (:class:`RemoteCorrupt`, a
``CorruptError`` naming the object); a diverged remote, a push that lost a race
and a store that refused a request are :class:`SyncError` (exit 1 in the CLI);
a missing remote or the missing ``sync`` extra are the caller's (exit 2).
"""

from __future__ import annotations

from ..core.errors import CapsuleError, CorruptError, UsageError


class SyncError(CapsuleError):
    """Push or pull could not complete; nothing was lost (the message says why)."""


class Diverged(SyncError):
    """The local file and the remote went their own ways after a common commit (a fork).

    ``local`` and ``remote`` are dicts {commits, seq, root} of each side's last commit;
    ``common`` the same for the last commit both hold, or None."""

    def __init__(self, message: str, *, local: dict[str, object], remote: dict[str, object],
                 common: dict[str, object] | None) -> None:
        super().__init__(message)
        self.local, self.remote, self.common = local, remote, common


class RemoteMoved(SyncError):
    """Another push published the generation this push meant to create (19.4)."""


class RemoteError(SyncError, OSError):
    """The store refused or failed a request (network, permissions, a missing bucket)."""


class RemoteNotFound(UsageError, FileNotFoundError):
    """No capsule was ever pushed to that URL."""


class RemoteCorrupt(CorruptError):
    """A remote object fails its checks (19.3): a manifest, or a segment's SHA-256 or chain."""
