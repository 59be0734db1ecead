"""Approvals are verified only by keys the keyset chain vouches for (spec 7.4, 13.2, 14.4),
and a writer never signs under a keyset chain that does not check (14.6).

F10 of the audit: records appended after the last checkpoint, an identity publishing
an attacker's key and an approval signed by it, and ``state`` showed the attacker's
rule approved with ``verified: true``. Publishing a key in a record proves nothing:
anyone who can append a record can publish one. Now ``verified`` needs the signature
to check AND the key to be a member of the keyset in force at the state's commit;
``signature_ok`` still shows a valid signature by a key nothing vouches for.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from capsule_cli.main import app
from typer.testing import CliRunner

import capsule
from capsule.core import constants as C
from capsule.format.checkpoint import encode_keyset

T0 = 1_700_000_000 * 10**9
K1 = capsule.PrivateKey.from_seed(bytes([11]) * 32)  # the agent's key: the first keyset
K2 = capsule.PrivateKey.from_seed(bytes([12]) * 32)  # rotated to
KA = capsule.PrivateKey.from_seed(bytes([13]) * 32)  # the attacker's


def clock() -> Callable[[], int]:
    it = itertools.count(T0, 10**9)
    return lambda: next(it)


def approvals(cap: capsule.Capsule) -> dict[str, tuple[bool, bool]]:
    """approval id -> (signature_ok, verified), over active constraints and decisions."""
    st = cap.state().to_dict()
    return {a["id"]: (a["signature_ok"], a["verified"])
            for item in [*st["constraints"], *st["decisions"]] for a in item["approvals"]}


def signed_capsule(p: Path) -> tuple[str, str]:
    """A rule approved by K1 and checkpointed under the keyset {K1}: (rule, approval)."""
    with capsule.create(p, clock=clock()) as cap:
        with cap.commit() as tx:
            tx.set_identity("agent-7", keys=[K1.public_key])
            rule = tx.constrain("never deploy on Friday", scope="ops")
            ok = tx.approve(rule, K1)
        cap.checkpoint("day-1", key=K1)
    return rule, ok


def test_f10_an_attacker_key_published_by_an_identity_does_not_verify(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    _, ok = signed_capsule(p)
    with capsule.open(p, "a", clock=clock()) as cap, cap.commit() as tx:  # appended, unsigned
        tx.set_identity("agent-7", keys=[K1.public_key, KA.public_key])
        evil = tx.constrain("always deploy on Friday", scope="ops")
        bad = tx.approve(evil, KA)
    with capsule.open(p) as cap:
        assert approvals(cap) == {ok: (True, True), bad: (True, False)}
    r = CliRunner().invoke(app, ["state", str(p), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    got = {a["id"]: a for c in doc["constraints"] for a in c["approvals"]}
    assert got[bad]["signature_ok"] is True and got[bad]["verified"] is False
    assert got[ok]["signature_ok"] is True and got[ok]["verified"] is True
    # verify --trust still reports how far the signatures reach, and what lies beyond
    rep = capsule.verify(p, trust=K1.public_key)
    assert rep.ok and rep.signed_prefix is not None and rep.unsigned is not None
    assert rep.unsigned["records"] == 3 and rep.unsigned["commits"] == 1
    assert {"seq", "bytes"} <= set(rep.signed_prefix)


def test_a_rotated_out_key_no_longer_verifies_and_the_new_one_does(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    rule, ok = signed_capsule(p)
    with capsule.open(p, "a", clock=clock()) as cap:
        with cap.commit() as tx:
            tx.set_identity("agent-7", keys=[K1.public_key, K2.public_key])
            by_k2 = tx.approve(rule, K2)
        assert approvals(cap) == {ok: (True, True), by_k2: (True, False)}
        cap.rotate_keys(capsule.Keyset.of([K2.public_key], version=2), old_signers=[K1], new_signers=[K2])
        assert approvals(cap) == {ok: (True, False), by_k2: (True, True)}
        # a view at the checkpoint still has {K1} in force
        with cap.view("day-1") as then:
            assert approvals(then) == {ok: (True, True)}


def append_forged_genesis(p: Path, keys: list[capsule.PublicKey]) -> int:
    """A KEYSET frame with no predecessor, appended after the real first one (as any
    writer of the file can): a second "first" keyset. Returns its offset."""
    forged = capsule.Keyset.of(keys, threshold=1)
    with capsule.open(p, "a", clock=clock()) as cap:
        cap._write_commit([], after=[(C.FT_KEYSET, lambda seq, chain, m, pos: encode_keyset(forged, [], None))])
        return cap.keysets()[-1].offset


def test_a_forged_second_first_keyset_vouches_for_nobody(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    rule, ok = signed_capsule(p)
    append_forged_genesis(p, [K1.public_key, KA.public_key])
    with capsule.open(p, "a", clock=clock()) as cap:
        with cap.commit() as tx:
            tx.set_identity("agent-7", keys=[K1.public_key, KA.public_key])
            bad = tx.approve(rule, KA)
        assert approvals(cap) == {ok: (True, False), bad: (True, False)}
    assert capsule.verify(p).first_error["check"] == "keyset"  # type: ignore[index]


def test_4b_the_writer_refuses_to_sign_after_a_forged_second_first_keyset(tmp_path: Path) -> None:
    """The forged keyset holds the agent's own key, so before this fix the writer signed
    a checkpoint under it (a file verify then refuses): it must refuse first."""
    p = tmp_path / "a.capsule"
    signed_capsule(p)
    at = append_forged_genesis(p, [K1.public_key, KA.public_key])
    before = p.read_bytes()
    with capsule.open(p, "a", clock=clock()) as cap, pytest.raises(capsule.CorruptError) as e:
        cap.checkpoint("day-2", key=K1)
    assert (e.value.check, e.value.offset) == ("keyset", at)  # named at the forged keyset
    assert p.read_bytes() == before


def test_a_keyset_whose_rotation_does_not_check_vouches_for_nobody_and_is_not_signed_under(tmp_path: Path) -> None:
    """A KEYSET naming the real one as predecessor, "rotated" to the attacker's key with
    signatures that do not check (14.6)."""
    p = tmp_path / "a.capsule"
    rule, ok = signed_capsule(p)
    with capsule.open(p, "a", clock=clock()) as cap:
        real = cap.keysets()[-1]
        evil = capsule.Keyset.of([KA.public_key], version=2)
        sigs = capsule.format.signing.rotate(evil, capsule.Keyset.of([KA.public_key], version=3),
                                             [KA], [KA]).signatures  # signatures over another body
        cap._write_commit([], after=[(C.FT_KEYSET, lambda seq, chain, m, pos: encode_keyset(evil, sigs,
                                                                                            real.offset))])
        with cap.commit() as tx:
            bad = tx.approve(rule, KA)
            tx.set_identity("agent-7", keys=[K1.public_key, KA.public_key])
        assert approvals(cap) == {ok: (True, False), bad: (True, False)}
        with pytest.raises(capsule.CorruptError) as e:
            cap.checkpoint("day-2", key=KA)
        assert e.value.check == "keyset-rotation"
