"""One error root, split by blame (style rule 3).

``CapsuleError``
  ``DataError``  -- the bytes are bad: corrupt, tampered, unsupported, invalid input.
    ``CorruptError``  (carries offset, seq, check)
    ``UnsupportedError`` (future version, unknown critical frame, unknown flag)
    ``NonCanonicalError`` (encoding outside the canonical profile)
    ``InvalidRecordError`` (a record or input line that does not fit its kind)
  ``UsageError`` -- the caller asked for something illegal.
    ``Locked``, ``ReadOnlyError``, ``WriterPoisoned``, ``NotFound`` (``Redacted``), ``AlreadyExists``
"""

from __future__ import annotations


class CapsuleError(Exception):
    """Root of every error this library raises on purpose."""


class DataError(CapsuleError, ValueError):
    """The capsule or the input data is bad."""


class CorruptError(DataError):
    """Bytes failed an integrity check. Names where and which check."""

    def __init__(
        self,
        message: str,
        *,
        offset: int | None = None,
        seq: int | None = None,
        check: str = "corrupt",
    ) -> None:
        self.offset = offset
        self.seq = seq
        self.check = check
        where = []
        if offset is not None:
            where.append(f"offset {offset}")
        if seq is not None:
            where.append(f"seq {seq}")
        prefix = f"{check} at {', '.join(where)}: " if where else f"{check}: "
        super().__init__(prefix + message)
        self.message = message


class UnsupportedError(CorruptError):
    """A future or unknown format feature this reader must refuse (spec 12)."""


class NonCanonicalError(DataError):
    """Encoded bytes fall outside the canonical msgpack profile (spec 5)."""


class InvalidRecordError(DataError):
    """A record (or an input line) does not fit its kind's schema."""


class UsageError(CapsuleError):
    """The caller asked for something illegal."""


class Locked(UsageError, BlockingIOError):
    """Another writer holds the capsule."""

    def __init__(self, message: str, *, pid: int | None = None, host: str | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.host = host


class FileReplaced(UsageError):
    """A reader's path now names another file (an in-place compaction, rekey or pull replaced
    it): the handle keeps reading the file it opened; open the path again for the new one."""


class ReadOnlyError(UsageError, PermissionError):
    """A write was attempted through a read-only handle."""


class WriterPoisoned(UsageError, OSError):
    """An I/O error left the writer in an unknown state; reopen to recover."""


class NotFound(UsageError, KeyError):
    """No record (or file) with that name."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a sentence.
        return str(self.args[0]) if self.args else "not found"


class Redacted(NotFound):
    """The record was redacted (spec 7.7.1): its payload is never returned. The message says
    when, by whom and why; ``event`` is the redact event's id (hex)."""

    def __init__(self, message: str, *, event: str = "") -> None:
        super().__init__(message)
        self.event = event


class CapsuleNotFound(NotFound, FileNotFoundError):
    """The capsule file does not exist."""


class AlreadyExists(UsageError, FileExistsError):
    """create() refuses to overwrite an existing file."""


class PolicyViolation(UsageError, PermissionError):
    """An action that a constraint's rule covers lacks the approvals it needs (spec 7.3.1).

    ``violations`` holds one dict per unmet rule (constraint, rule, key, approvals, need)."""

    def __init__(self, message: str, violations: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []
