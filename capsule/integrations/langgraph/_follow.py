"""Whether a read-only handle still holds the file its path names.

``capsule compact`` (spec 15.1) writes a new file and renames it over the old one, so a
reader that opened the old file keeps reading the old inode: ``refresh()`` then never sees
another commit. The saver and the store (read-only) compare the inode their handle holds with
the one the path names now, and reopen when they differ.
"""

from __future__ import annotations

import os

from ...handle.capsule import Capsule


def replaced(cap: Capsule) -> bool:
    """True when ``cap.path`` now names another file than the one ``cap`` has open."""
    try:
        held = os.fstat(cap._store.h.fd)
        now = os.stat(cap.path)
    except (OSError, AttributeError):  # the path is gone (or the handle closed): keep the snapshot
        return False
    return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)


__all__ = ["replaced"]
