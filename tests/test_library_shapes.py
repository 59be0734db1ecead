"""One shape per concept (issue #17): what one call returns, the next one takes.

- ``cap.tasks.due()`` returns :class:`capsule.TaskState` objects, and every call that names a
  task (``claim``, ``heartbeat``, ``complete``, ``fail``, ``cancel``) takes one, or an id.
- A checkpoint's label (and the rest of what it signs) is a public property of the
  :class:`capsule.CheckpointFrame` that ``checkpoints()`` returns, not only ``c.body.label``.
- ``cap.state()`` holds the JSON document's dicts; each names its record by id, and
  ``cap.get(id).to_dict()`` is the same dict with the time as an int.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import capsule
from capsule.core.clock import iso
from capsule.run.events import InvalidTaskEvent


def test_claim_takes_what_due_returns(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "t.capsule") as cap:
        cap.tasks.add("fetch", now=0)
        cap.tasks.add("parse", now=0)
        cap.tasks.add("ship", now=0)
        fetch, parse, ship = cap.tasks.due(now=1)
        assert all(isinstance(t, capsule.TaskState) for t in (fetch, parse, ship))
        held = cap.tasks.claim(fetch, "w1", lease=100, now=1)
        assert isinstance(held, capsule.TaskState) and (held.id, held.status, held.worker) == ("fetch", "claimed", "w1")
        cap.tasks.heartbeat(held, "w1", lease=100, now=2)
        cap.tasks.complete(held, "w1", result={"rows": 3}, now=3)
        cap.tasks.claim(parse, "w1", now=4)
        cap.tasks.fail(parse, "w1", "timeout", now=5)
        cap.tasks.cancel(ship, "not needed", now=6)
        cap.tasks.claim("parse", "w2", now=10**12)  # an id still works
        tasks = cap.tasks.queue().tasks
        assert [tasks[t].status for t in ("fetch", "parse", "ship")] == ["done", "claimed", "cancelled"]
        with pytest.raises(InvalidTaskEvent, match="task"):
            cap.tasks.claim(42, "w1")  # type: ignore[arg-type]


def test_a_checkpoint_label_is_public(tmp_path: Path) -> None:
    key = capsule.generate_key()
    with capsule.create(tmp_path / "c.capsule") as cap:
        with cap.commit() as tx:
            tx.remember("x")
        made = cap.checkpoint("day-1", key=key, runtime_state=b"cursor=7")
        [c] = cap.checkpoints()
        assert isinstance(c, capsule.CheckpointFrame) and c == made == cap.find_checkpoint("day-1")
        assert (c.label, c.state_root, c.root, c.signers, c.runtime) == (
            "day-1", cap.state_root, c.body.root.hex(), (key.key_id,), b"cursor=7")
        assert c.time == c.body.time and c.seq == c.body.tree_size
        d = c.to_dict()
        assert (d["label"], d["seq"], d["state_root"], d["root"], d["signers"], d["time"]) == (
            c.label, c.seq, c.state_root, c.root, list(c.signers), iso(c.time))
        [ks] = cap.keysets()
        assert isinstance(ks, capsule.KeysetFrame) and cap.keyset == ks.keyset


def test_state_documents_lead_to_their_records_by_id(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "s.capsule") as cap:
        with cap.commit() as tx:
            m = tx.remember("deploys freeze on Fridays", tags=["ops"], meta={"n": 5}, time=5)
            tx.decide("ship on Thursday", rationale="the freeze", evidence=[m], time=6)
            tx.note("shipped", time=7)
        st = cap.state()
        assert isinstance(st, capsule.State)
        docs = [*st.memories["working"], *st.decisions, *st.notes]
        assert [d["kind"] for d in docs] == ["memory", "decision", "note"]
        for d in docs:
            rec = cap.get(d["id"])
            assert rec.id == d["id"] and d["time"] == iso(rec.time)
            assert {**rec.to_dict(), "time": iso(rec.time)} == d
        assert cap.get(st.decisions[0]["evidence"][0]).text == "deploys freeze on Fridays"
        assert st.to_dict()["decisions"][0]["id"] == st.decisions[0]["id"]
