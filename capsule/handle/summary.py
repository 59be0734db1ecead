"""What ``capsule open`` prints about a capsule: :class:`Summary` (:meth:`Capsule.summary`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Summary:
    """What ``capsule open`` prints."""

    path: str
    file_id: str
    format_version: str
    commits: int
    records: int
    kinds: dict[str, int]
    bytes: int
    state_root: str
    last_commit_time: str | None
    torn_tail_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "file_id": self.file_id, "format_version": self.format_version,
                "commits": self.commits, "records": self.records, "records_by_kind": dict(self.kinds),
                "bytes": self.bytes, "state_root": self.state_root, "last_commit_time": self.last_commit_time,
                "torn_tail_bytes": self.torn_tail_bytes}


__all__ = ["Summary"]
