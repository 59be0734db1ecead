"""The questions side of the :class:`~capsule.handle.capsule.Capsule` handle (spec 13.5).

A mixin, so the handle stays a facade under the module size limit: each method
delegates to ``capsule.questions``, imported on first use (opening loads none of it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..questions.audit import Audit
    from ..questions.beliefs import Beliefs
    from ..questions.diff import Diff
    from ..questions.timeline import Timeline
    from ..questions.why import Why


class QuestionMethods:
    """``beliefs``, ``why``, ``diff``, ``timeline`` and ``audit``: read-only, each with ``to_dict()``."""

    def beliefs(self, *, limit: int = 10) -> Beliefs:
        """What the agent holds: live memories by tier (counts, newest first), decisions,
        active constraints, identity, open tasks, in-doubt actions.

        >>> with cap.commit() as tx: _ = tx.remember("the build server is ci-7")
        >>> cap.beliefs().to_dict()["memories"]["working"]["count"]
        1
        """
        from ..questions.beliefs import beliefs

        return beliefs(self, limit=limit)

    def why(self, record_id: str | bytes, *, trust: Any = None) -> Why:
        """The lineage of a record: evidence recursively, approvals, constraints active when it
        was committed, the first checkpoint covering it, and later marks.

        >>> with cap.commit() as tx: d = tx.decide("ship", evidence=[tx.remember("tests pass")])
        >>> [e["summary"] for e in cap.why(d[:8]).to_dict()["root"]["evidence"]]
        ['tests pass']
        """
        from ..questions.why import why

        return why(self, record_id, trust=trust)  # type: ignore[arg-type]

    def diff(self, a: Any, b: Any = None, *, limit: int = 20) -> Diff:
        """What changed between two points (labels, seqs, commit-root prefixes, times; without
        ``b``, from ``a`` to the newest commit), or from this capsule to ``a``, another open
        capsule sharing its lineage (a fork, its parent, a copy).

        >>> _ = cap.checkpoint("a", key=key)
        >>> with cap.commit() as tx: _ = tx.remember("later")
        >>> _ = cap.checkpoint("b", key=key)
        >>> cap.diff("a", "b").to_dict()["added"]["by_kind"]
        {'memory': 1}
        """
        from ..questions.diff import diff

        return diff(self, a, b, limit=limit)  # type: ignore[arg-type]

    def timeline(self, *, since: int | None = None, until: int | None = None, kinds: Any = None,
                 limit: int | None = None) -> Timeline:
        """Commits, checkpoints, actions and task events in order, each with a one-line summary.

        >>> with cap.commit() as tx: _ = tx.remember("x")
        >>> [e["summary"] for e in cap.timeline(kinds=["commit"]).to_dict()["events"]][-1]
        'commit #2: 1 record (memory 1)'
        """
        from ..questions.timeline import timeline

        return timeline(self, since=since, until=until, kinds=kinds, limit=limit)  # type: ignore[arg-type]

    def is_live(self, record_id: str | bytes) -> bool:
        """Is this record stored and live (13.1): not an event, not forgotten, superseded,
        redacted or rolled back? Answered from the revert fold, kept per snapshot (no scan).

        >>> with cap.commit() as tx: a = tx.remember("old")
        >>> with cap.commit() as tx: _ = tx.forget(a)
        >>> cap.is_live(a)
        False
        """
        from ..questions._lifecycle import dead_ids
        from ..state.fold import EVENT_KINDS
        from ..state.kinds import parse_id

        store = self._store  # type: ignore[attr-defined]
        rid = parse_id(record_id) if isinstance(record_id, str) else bytes(record_id)
        loc = store.locate(rid)
        if loc is None or rid in dead_ids(store):
            return False
        return store.get(rid).kind not in EVENT_KINDS

    def live(self, kind: str | Iterable[str]) -> Iterator[Any]:
        """The live records of one kind (or several, interleaved), in commit order: what
        :meth:`records` gives minus the dead ones (13.1). For an application kind (12.3) this
        is its live state. Frames that hold none of the kinds are not read (9.2 ``kinds``).

        >>> with cap.commit() as tx: kept, dropped = tx.note("kept"), tx.note("dropped")
        >>> with cap.commit() as tx: _ = tx.forget(dropped)
        >>> [n.text for n in cap.live("note")]
        ['kept']
        """
        from ..format.kindwalk import walk
        from ..questions._lifecycle import dead_ids

        store = self._store  # type: ignore[attr-defined]
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        dead = dead_ids(store)
        for _off, _seq, rec in walk(store, kinds):
            if bytes.fromhex(rec.id) not in dead:
                yield rec

    def audit(self, key: str, *, trust: Any = None) -> Audit:
        """An action's intent and result, the state root at the intent, the decisions and
        approvals that led to it, the constraints then active and the checkpoint covering it.

        >>> _ = cap.run_once("email:42", lambda: "sent")
        >>> cap.audit("email:42").to_dict()["status"]
        'done'
        """
        from ..questions.audit import audit

        return audit(self, key, trust=trust)  # type: ignore[arg-type]
