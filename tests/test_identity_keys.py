"""Small-order or non-canonical keys in identity records are refused when written and
reported by verify (spec 14.1, 11; second audit F2): before, they were stored, passed
verify, and then made `capsule state` fail for the whole capsule."""

from __future__ import annotations

from pathlib import Path

import pytest

import capsule
from capsule.format import canonical as canon

from .test_audit_low import small_order_encodings
from .test_hostile import append_frames, build_base, record_payload, records_frame


@pytest.mark.parametrize("raw", small_order_encodings()[:4] + [(2**255 - 19 + 1).to_bytes(32, "little")])
def test_the_writer_refuses_a_forbidden_identity_key(tmp_path: Path, raw: bytes) -> None:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        before = p.read_bytes()
        with pytest.raises(capsule.DataError), cap.commit() as tx:
            tx.set_identity("agent", keys=[raw])
        assert p.read_bytes() == before


def test_verify_reports_a_forged_identity_key(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    build_base(p)
    rec = {"agent_id": "agent", "keys": [(1).to_bytes(32, "little")], "kind": "identity", "time": 5}
    canon.encode(rec)
    append_frames(p, [records_frame(record_payload(rec))], new_records=1)
    rep = capsule.verify(p)
    assert not rep.ok and rep.first_error["check"] == "record-schema", rep.first_error
