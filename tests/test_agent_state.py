"""Agent state: record kinds, the state fold, time travel, rollback, forks and signing keys.

What is promised (capsule/_kinds.py, _state.py, _capsule.py, spec 7, 13-15):

* every kind (memory, decision, constraint, approval, identity, note) has ONE
  stored encoding: unknown fields are refused on the way in, and a stored
  record that spells out a default is refused by ``verify``;
* ``cap.state()`` is a pure fold over the live records, so the same bytes give
  byte-identical ``capsule state --json`` output on every host, whatever its
  hash seed, time zone or locale;
* a checkpoint freezes the state: a view of it (label, commit seq, root prefix,
  ISO time) shows exactly what was live when it was signed, and a rollback
  makes the live state equal to it again (also after an earlier rollback);
* a fork proves its parent (``verify --parent``);
* only a threshold of the keyset in force may sign a checkpoint.

Two ways into the CLI, as in test_cli.py: ``CliRunner`` in-process (fast) and
real subprocesses of the console script where the process environment itself
is under test (hash seed, TZ, locale).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from capsule_cli.main import app
from typer.testing import CliRunner, Result

import capsule
from capsule.core import constants as C
from capsule.format import canonical as canon
from capsule.format.records import record_id
from capsule.state.kinds import approval_message

CAPSULE_BIN = Path(sys.executable).with_name("capsule")
T0 = 1_700_000_000 * 1_000_000_000  # 2023-11-14T22:13:20Z
SEC = 1_000_000_000
K1 = capsule.PrivateKey.from_seed(bytes([1]) * 32)
K2 = capsule.PrivateKey.from_seed(bytes([2]) * 32)
K3 = capsule.PrivateKey.from_seed(bytes([3]) * 32)
KINDS = ("memory", "decision", "constraint", "approval", "identity", "note")

runner = CliRunner()


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # SOURCE_DATE_EPOCH fixes file ids and clocks; colour forcing changes output bytes.
    for var in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)


class Tick:
    """A clock that advances a fixed step per reading.

    Every record and commit then has its own whole-second time, so ISO-time
    views resolve exactly and a test can name "a moment between two commits".
    """

    def __init__(self, start: int = T0, step: int = SEC) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


def iso(ns: int) -> str:
    from capsule.core.clock import iso as _iso

    return _iso(ns)


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})


def ok(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    r = invoke(*args, env=env)
    assert r.exit_code == 0, f"capsule {' '.join(map(str, args))} -> {r.exit_code}\n{r.output}"
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def one_line_error(r: Result, code: int) -> str:
    """Failed as promised: the exit code, one stderr line, no traceback."""
    assert r.exit_code == code, f"expected exit {code}, got {r.exit_code}\n{r.output}"
    assert r.exception is None or isinstance(r.exception, SystemExit), f"uncaught {r.exception!r}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsule: error:"), r.stderr
    return lines[0]


def key_file(tmp: Path, key: capsule.PrivateKey, name: str, passphrase: bytes | None = None) -> Path:
    path = tmp / name
    capsule.save_private_key(path, key, passphrase=passphrase)
    return path


def pub_file(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".pub")


def live_texts(cap: capsule.Capsule, tier: str = "working") -> list[str]:
    return [m["text"] for m in cap.state().memories[tier]]


# --- 1. kinds round-trip; one encoding each -----------------------------------------------


def make_every_kind(path: Path) -> dict[str, str]:
    """One record of each kind through the library API; returns kind -> id."""
    ids: dict[str, str] = {}
    with capsule.create(path, clock=Tick()) as cap, cap.commit() as tx:
        ids["memory"] = tx.remember("café ☕ notes", tags=["b", "a"], meta={"k": "v", "n": 2}, tier="validated",
                                    embedding=[0.5, -1.25, 3.0], ttl=5 * SEC, source="chat")
        ids["decision"] = tx.decide("ship the canary", rationale="tests pass", evidence=[ids["memory"]],
                                    inputs={"risk": "low", "n": 3}, alternatives=["wait", "abort"])
        ids["constraint"] = tx.constrain("no deploys on Friday", scope="ops")
        ids["approval"] = tx.approve(ids["decision"], K1)
        ids["identity"] = tx.set_identity("agent-7", name="Ada", model="m-1", config={"temperature": 0},
                                          keys=[K1.public_key, K2.public_key.raw])
        ids["note"] = tx.note("halfway through the migration")
    return ids


def test_library_kinds_keep_their_fields(tmp_path: Path) -> None:
    ids = make_every_kind(tmp_path / "a.capsule")
    with capsule.open(tmp_path / "a.capsule") as cap:
        assert sorted(r.kind for r in cap.records()) == sorted(KINDS)
        d = cap.get(ids["decision"])
        assert isinstance(d, capsule.Decision)
        assert (d.summary, d.rationale, d.evidence, dict(d.inputs), d.alternatives) == (
            "ship the canary", "tests pass", (bytes.fromhex(ids["memory"]),), {"n": 3, "risk": "low"},
            ("wait", "abort"))
        c = cap.get(ids["constraint"])
        assert isinstance(c, capsule.Constraint) and (c.text, c.scope, c.status) == (
            "no deploys on Friday", "ops", "active")
        a = cap.get(ids["approval"])
        assert isinstance(a, capsule.Approval)
        assert a.subject == bytes.fromhex(ids["decision"]) and a.approver == K1.key_id
        assert K1.public_key.verify(approval_message(a.subject), a.signature)
        i = cap.get(ids["identity"])
        assert isinstance(i, capsule.Identity)
        assert (i.agent_id, i.name, i.model, dict(i.config)) == ("agent-7", "Ada", "m-1", {"temperature": 0})
        assert i.keys == tuple(sorted([K1.public_key.raw, K2.public_key.raw]))  # stored sorted, one spelling
        n = cap.get(ids["note"])
        assert isinstance(n, capsule.Note) and n.text == "halfway through the migration"
        m = cap.get(ids["memory"])
        assert m.tags == ("a", "b") and m.tier == "validated" and m.ttl == 5 * SEC and m.source == "chat"
        for kind, rid in ids.items():
            assert [r.id for r in cap.records(kind=kind)] == [rid]
    assert capsule.verify(tmp_path / "a.capsule").ok


def test_every_kind_round_trips_through_json_and_the_cli(tmp_path: Path) -> None:
    """library record -> to_dict() JSON -> CLI put -> the very same content id and fields.

    Equal ids mean equal stored bytes, so this proves the JSON form carries
    everything and the CLI stores it in the one canonical encoding.
    """
    src = tmp_path / "lib.capsule"
    ids = make_every_kind(src)
    with capsule.open(src) as cap:
        dicts = {k: cap.get(rid).to_dict() for k, rid in ids.items()}
    one = tmp_path / "one-by-one.capsule"
    batch = tmp_path / "batch.capsule"
    ok("init", one)
    ok("init", batch)
    lines = []
    for kind in KINDS:
        body = {k: v for k, v in dicts[kind].items() if k not in ("id", "kind")}
        r = ok("put", one, "--kind", kind, "--json-body", json.dumps(body), "--json")
        assert json.loads(r.stdout)["ids"] == [ids[kind]], kind
        lines.append(json.dumps({**body, "kind": kind}))
    (tmp_path / "all.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    commits_before = len(json.loads(ok("log", batch, "--json").stdout))
    r = ok("put", batch, "--jsonl", tmp_path / "all.jsonl", "--json")
    out = json.loads(r.stdout)
    assert out["ids"] == [ids[k] for k in KINDS] and out["count"] == out["new"] == len(KINDS)
    assert len(json.loads(ok("log", batch, "--json").stdout)) == commits_before + 1  # one commit for the file
    for path in (one, batch):
        with capsule.open(path) as cap:
            assert {k: cap.get(rid).to_dict() for k, rid in ids.items()} == dicts
        assert capsule.verify(path).ok
    # The CLI's state document is the library's.
    with capsule.open(batch) as cap:
        assert json.loads(ok("state", batch, "--json").stdout) == cap.state().to_dict()


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_fields_are_refused_and_nothing_is_written(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "a.capsule"
    ok("init", path)
    good = {"memory": {"text": "t"}, "decision": {"summary": "s"}, "constraint": {"text": "t"},
            "approval": {"subject": "ab" * 32, "approver": K1.key_id, "signature": "cd" * 64},
            "identity": {"agent_id": "a"}, "note": {"text": "t"}}[kind]
    bad = {**good, "colour": "blue"}
    before = path.read_bytes()
    msg = one_line_error(invoke("put", path, "--kind", kind, "--json-body", json.dumps(bad)), 1)
    assert "colour" in msg
    (tmp_path / "in.jsonl").write_text(json.dumps({"kind": "note", "text": "fine"}) + "\n"
                                       + json.dumps({**bad, "kind": kind}) + "\n")
    msg = one_line_error(invoke("put", path, "--jsonl", tmp_path / "in.jsonl"), 1)
    assert "line 2" in msg and "colour" in msg  # the good first line was not committed either
    assert path.read_bytes() == before
    with capsule.open(path, "a") as cap, pytest.raises(capsule.InvalidRecordError), cap.commit() as tx:
        tx.put_value({**bad, "kind": kind})
    assert path.read_bytes() == before
    # Control: the same body without the stray field is accepted.
    ok("put", path, "--kind", kind, "--json-body", json.dumps(good))


def test_kind_flag_and_body_kind_must_agree(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    ok("init", path)
    before = path.read_bytes()
    one_line_error(invoke("put", path, "--kind", "note", "--json-body", '{"kind": "decision", "summary": "s"}'), 2)
    one_line_error(invoke("put", path, "--kind", "plan", "--json-body", '{"text": "t"}'), 1)  # unknown kind
    assert path.read_bytes() == before


def commit_raw(path: Path, value: dict[str, Any]) -> str:
    """Commit a record map as given, bypassing validation (what a buggy or hostile
    writer could store). ``_write_commit`` is the writer's internal append."""
    data = canon.encode(value)
    rid = record_id(value["kind"], data)
    with capsule.open(path, "a") as cap:
        cap._write_commit([(rid, value["kind"], data)])
    return rid.hex()


BASE = {
    "memory": {"kind": "memory", "text": "x", "time": T0},
    "decision": {"kind": "decision", "summary": "s", "time": T0},
    "constraint": {"kind": "constraint", "text": "t", "time": T0},
    "identity": {"kind": "identity", "agent_id": "a", "time": T0},
    "note": {"kind": "note", "text": "n", "time": T0},
}
SPELLED_OUT = [
    ("memory", "tier", "working"), ("memory", "tags", []), ("memory", "meta", {}),
    ("decision", "rationale", ""), ("decision", "evidence", []), ("decision", "inputs", {}),
    ("decision", "alternatives", []),
    ("constraint", "scope", "global"), ("constraint", "status", "active"),
    ("identity", "name", ""), ("identity", "model", ""), ("identity", "config", {}), ("identity", "keys", []),
    ("note", "colour", "blue"),  # not a default: an unknown field in stored bytes
]


@pytest.mark.parametrize(("kind", "name", "value"), SPELLED_OUT)
def test_stored_default_or_unknown_field_fails_verify(tmp_path: Path, kind: str, name: str, value: object) -> None:
    path = tmp_path / "a.capsule"
    capsule.create(path).close()
    commit_raw(path, BASE[kind])  # control: the canonical form verifies
    assert capsule.verify(path).ok
    commit_raw(path, {**BASE[kind], "time": T0 + 1, name: value})
    rep = capsule.verify(path)
    assert not rep.ok and rep.first_error is not None
    assert rep.first_error["check"] == "record-schema", rep.first_error
    assert ("canonical" in rep.first_error["message"]) or (name in rep.first_error["message"])
    r = invoke("verify", path)
    assert r.exit_code == 1 and "record-schema" in r.stderr
    with capsule.open(path) as cap, pytest.raises(capsule.DataError):
        cap.state()  # the fold never interprets a second spelling


# --- 2. the state fold -----------------------------------------------------------------------


def test_live_memories_by_tier_and_state_root(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, clock=Tick()) as cap:
        assert cap.state().to_dict()["memories"] == {"scratch": [], "working": [], "validated": []}
        with cap.commit() as tx:
            s = tx.remember("scratch one", tier="scratch")
            w1 = tx.remember("working one")
            v = tx.remember("validated one", tier="validated", embedding=[1.0, 2.0])
        with cap.commit() as tx:
            w2 = tx.remember("working two")
            tx.note("not a memory")
        st = cap.state().to_dict()
        assert [m["id"] for m in st["memories"]["scratch"]] == [s]
        assert [m["id"] for m in st["memories"]["working"]] == [w1, w2]  # commit order
        assert [m["id"] for m in st["memories"]["validated"]] == [v]
        assert st["memories"]["validated"][0]["embedding_dim"] == 2
        assert st["records"] == 5 == len(cap)
        assert st["state_root"] == cap.state().root == cap.state_root
        # 13.1 spelled out: SHA-256(tag || count u64le || sorted ids)

        ids = sorted(bytes.fromhex(r.id) for r in cap.records())
        from tests.spec_ref import state_root

        want = state_root(ids)
        assert cap.state_root == want


def test_constraints_latest_record_per_scope_and_text_decides(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    clock = Tick()
    with capsule.create(path, clock=clock) as cap:
        with cap.commit() as tx:
            ops = tx.constrain("no deploys on Friday", scope="ops")
            glob = tx.constrain("no deploys on Friday")  # same text, other scope: another rule
            other = tx.constrain("always run tests", scope="ops")

        def active() -> list[tuple[str, str, str]]:
            return [(c["scope"], c["text"], c["id"]) for c in cap.state().to_dict()["constraints"]]

        assert active() == [("global", "no deploys on Friday", glob), ("ops", "always run tests", other),
                            ("ops", "no deploys on Friday", ops)]  # sorted by (scope, text)
        with cap.commit() as tx:
            tx.constrain("no deploys on Friday", scope="ops", status="revoked")
            tx.constrain("never existed", scope="ops", status="revoked")  # revoking nothing is harmless
        assert active() == [("global", "no deploys on Friday", glob), ("ops", "always run tests", other)]
        with cap.commit() as tx:
            again = tx.constrain("no deploys on Friday", scope="ops")  # re-activated by a newer record
        st = cap.state().to_dict()
        assert ("ops", "no deploys on Friday", again) in active() and again != ops
        since = {c["id"]: c["since"] for c in st["constraints"]}
        assert since[again] == iso(cap.get(again).time)
        # Revoked and re-activated constraints are still live records (history is state).
        assert st["records"] == 6


def test_approvals_are_verified_only_by_keys_the_keyset_in_force_vouches_for(tmp_path: Path) -> None:
    # 7.4 as amended for issue 16 (F10): this test used to expect `verified: true` for any
    # key an identity record published. Now `verified` needs a key of the keyset in force
    # (14.4) and `signature_ok` says whether the signature checks at all.
    path = tmp_path / "a.capsule"
    with capsule.create(path, clock=Tick()) as cap:
        with cap.commit() as tx:
            c = tx.constrain("keep PII out of logs")
            d = tx.decide("adopt canary deploys")
            tx.set_identity("agent-7", keys=[K1.public_key])
        with cap.commit() as tx:
            a1 = tx.approve(c, K1)  # published key
            a2 = tx.approve(d, K2)  # not (yet) published
            # Forged: claims K1 as the approver, signed by K2.
            forged = tx.put_value({"kind": "approval", "subject": c, "approver": K1.key_id,
                                   "signature": K2.sign(approval_message(bytes.fromhex(c))).hex()})
            # K1's genuine signature, but over another subject: not an approval of c.
            replayed = tx.put_value({"kind": "approval", "subject": c, "approver": K1.key_id,
                                     "signature": K1.sign(approval_message(bytes.fromhex(d))).hex()})

        def verdicts() -> dict[str, tuple[bool, bool]]:
            st = cap.state().to_dict()
            out = {}
            for item in [*st["constraints"], *st["decisions"]]:
                for a in item["approvals"]:
                    assert a["approver"] in (K1.key_id, K2.key_id)
                    out[a["id"]] = (a["signature_ok"], a["verified"])
            return out

        # No keyset yet: a published key's signature checks, but nothing vouches for the key.
        assert verdicts() == {a1: (True, False), forged: (False, False), replayed: (False, False),
                              a2: (False, False)}
        st = cap.state().to_dict()
        assert [a["id"] for a in st["constraints"][0]["approvals"]] == [a1, forged, replayed]  # attach to subject
        assert [a["id"] for a in st["decisions"][0]["approvals"]] == [a2]
        cap.checkpoint("k1", key=K1)  # the first keyset: {K1}
        assert verdicts() == {a1: (True, True), forged: (False, False), replayed: (False, False),
                              a2: (False, False)}
        # Publishing K2 in an identity shows its signature checks; it is still not vouched for.
        with cap.commit() as tx:
            tx.set_identity("agent-7", keys=[K2.public_key])
        assert verdicts()[a2] == (True, False)
        # A rotation to {K2} revokes K1 (14.6): its approval stops being verified, K2's starts.
        cap.rotate_keys(capsule.Keyset.of([K2.public_key], version=2), old_signers=[K1], new_signers=[K2])
        assert verdicts() == {a1: (True, False), forged: (False, False), replayed: (False, False),
                              a2: (True, True)}


def test_identity_is_the_latest_record_and_history_lists_all(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, clock=Tick()) as cap:
        assert cap.state().to_dict()["identity"] is None
        ids = []
        for model in ("m-1", "m-2", "m-3"):
            with cap.commit() as tx:
                ids.append(tx.set_identity("agent-7", name="Ada", model=model))
        st = cap.state().to_dict()
        assert st["identity"]["id"] == ids[-1] and st["identity"]["model"] == "m-3"
        assert st["identity"]["time"] == iso(cap.get(ids[-1]).time)
        assert st["identity_history"] == ids


# --- 3. determinism across environments ----------------------------------------------------


def build_rich_capsule(path: Path) -> None:
    """Every kind, non-ASCII text, revoked constraints, a checkpoint and later changes."""
    with capsule.create(path, clock=Tick()) as cap:
        with cap.commit() as tx:
            m = tx.remember("नमस्ते, café — ☕ 𝄞", tags=["ü", "a"], meta={"ß": "Straße", "n": -1},
                            tier="validated", embedding=[0.1, 0.2])
            tx.remember("scratch: Ωmega", tier="scratch")
            c = tx.constrain("ne pas déployer le vendredi", scope="opérations")
            tx.constrain("zzz last", scope="aaa")
            d = tx.decide("選択: カナリア", evidence=[m], inputs={"é": 1.5}, alternatives=["β"])
            tx.set_identity("agent-ü", name="Zoë", keys=[K1.public_key])
            tx.note("progrès 50%")
        with cap.commit() as tx:
            tx.approve(c, K1)
            tx.approve(d, K2)
        cap.checkpoint("c1", key=K1)
        with cap.commit() as tx:
            tx.constrain("ne pas déployer le vendredi", scope="opérations", status="revoked")
            tx.remember("after the checkpoint", tags=["later"])
            tx.set_identity("agent-ü", name="Zoë 2")


ENVS = [
    {"PYTHONHASHSEED": "0", "TZ": "UTC", "LC_ALL": "C"},
    {"PYTHONHASHSEED": "12345", "TZ": "Asia/Kolkata", "LC_ALL": "C.UTF-8"},
    {"PYTHONHASHSEED": "random", "TZ": "America/St_Johns", "LC_ALL": "C.UTF-8"},
]
ROOTS_SCRIPT = """
import sys, capsule
p = sys.argv[1]
with capsule.open(p) as cap:
    print(cap.state_root, cap.state().root)
with capsule.open(p, at="c1") as cap:
    print(cap.state_root, cap.state().root)
"""


def child_env(extra: dict[str, str]) -> dict[str, str]:
    drop = ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE", "PYTHONUTF8", "PYTHONIOENCODING", "LANG",
            "LANGUAGE")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LC_")}
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def run_child(argv: list[str], env: dict[str, str], cwd: Path) -> bytes:
    r = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=120, check=False)
    assert r.returncode == 0, f"{argv} with {env.get('TZ')}/{env.get('LC_ALL')}: {r.stderr.decode(errors='replace')}"
    return r.stdout


def test_state_is_identical_across_hosts_names_and_environments(tmp_path: Path) -> None:
    original = tmp_path / "origin" / "agent.capsule"
    original.parent.mkdir()
    build_rich_capsule(original)
    copy = tmp_path / "elsewhere" / "deeper" / "renamed-copy.cap"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(original, copy)
    views = (["state", "--json"], ["state", "--json", "--at", "c1"],
             # An ISO time without a zone means UTC, never the host's TZ.
             ["state", "--json", "--at", iso(T0 + 9 * SEC).removesuffix("Z")])
    seen: dict[tuple[str, ...], set[bytes]] = {tuple(v): set() for v in views}
    roots: set[bytes] = set()
    for extra, path in zip(ENVS, (original, copy, copy), strict=True):
        env = child_env(extra)
        for v in views:
            seen[tuple(v)].add(run_child([str(CAPSULE_BIN), v[0], str(path), *v[1:]], env, tmp_path))
        roots.add(run_child([sys.executable, "-c", ROOTS_SCRIPT, str(path)], env, tmp_path))
    for view, outs in seen.items():
        assert len(outs) == 1, f"`capsule {' '.join(view)}` differs between environments"
    assert len(roots) == 1
    now_root, now_fold, at_root, at_fold = roots.pop().split()
    assert now_root == now_fold and at_root == at_fold and now_root != at_root
    with capsule.open(original) as cap:
        assert seen[("state", "--json")] == {(cap.state().to_json() + "\n").encode()}
        assert now_root.decode() == cap.state_root
        assert at_root.decode() == cap.find_checkpoint("c1").body.state_root.hex()  # type: ignore[union-attr]
    doc = json.loads(seen[("state", "--json")].pop())
    assert "नमस्ते, café — ☕ 𝄞" in [m["text"] for m in doc["memories"]["validated"]]  # not escaped or mangled


# --- 4. time travel, rollback, fork ---------------------------------------------------------


def build_history(path: Path, clock: Tick | None = None) -> dict[str, tuple[str, str]]:
    """Three checkpoints with state changes between them.

    Returns label -> (state JSON, state root) captured right before checkpoint().
    """
    frozen: dict[str, tuple[str, str]] = {}

    def ck(cap: capsule.Capsule, label: str) -> None:
        frozen[label] = (cap.state().to_json(), cap.state_root)
        cap.checkpoint(label, key=K1)

    with capsule.create(path, clock=clock or Tick()) as cap:
        with cap.commit() as tx:
            tx.remember("alpha")
            c = tx.constrain("no deploys on Friday", scope="ops")
            tx.set_identity("agent-7", keys=[K1.public_key])
        with cap.commit() as tx:
            tx.approve(c, K1)
        ck(cap, "c1")
        with cap.commit() as tx:
            tx.remember("beta", tier="validated")
            tx.constrain("no deploys on Friday", scope="ops", status="revoked")
            tx.decide("deploy on Friday after all")
        ck(cap, "c2")
        with cap.commit() as tx:
            tx.remember("gamma", tier="scratch")
            tx.set_identity("agent-7", name="renamed", keys=[K1.public_key])
            tx.note("later")
        ck(cap, "c3")
        with cap.commit() as tx:
            tx.remember("delta")
    return frozen


def vouched_by_the_first_keyset(doc: str) -> str:
    """7.4: the first checkpoint's commit also writes the first keyset ({K1}), so a view
    at that checkpoint shows K1's approvals verified, which the state taken just before
    the checkpoint (no keyset yet) could not. Everything else is the same document."""
    d = json.loads(doc)
    for c in d["constraints"]:
        for a in c["approvals"]:
            assert not a["verified"] and a["signature_ok"]
            a["verified"] = True
    return json.dumps(d, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def test_state_at_a_checkpoint_is_the_state_when_it_was_signed(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    frozen = build_history(path)
    roots = {root for _, root in frozen.values()}
    assert len(roots) == 3  # the states really differ, so equality below means something
    with capsule.open(path) as cap:
        now_root = cap.state_root
        assert now_root not in roots
        for ck in cap.checkpoints():
            assert ck.body.state_root.hex() == frozen[ck.body.label][1]
    for label, (doc, root) in frozen.items():
        if label == "c1":
            doc = vouched_by_the_first_keyset(doc)
        with capsule.open(path, at=label) as view:
            assert view.state().to_json() == doc
            assert view.state_root == root
        with capsule.open(path) as cap, cap.view(label) as view:
            assert view.state().to_json() == doc
        r = ok("state", path, "--at", label, "--json")
        assert r.stdout == doc + "\n"
        assert json.loads(ok("open", path, "--at", label, "--json").stdout)["state_root"] == root
    assert capsule.verify(path, trust=K1.public_key).ok


def test_views_by_commit_seq_root_prefix_and_iso_time(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    build_history(path)
    rows = json.loads(ok("log", path, "--json").stdout)
    assert len(rows) >= 8
    with capsule.open(path) as cap:
        expect = {}
        for row in rows:
            with cap.view(str(row["seq"])) as v:
                expect[row["commit"]] = (v.commit_count, v.root, v.state_root, len(v))
    for row in rows:
        want = expect[row["commit"]]
        assert want[0] == row["commit"] and want[1] == row["root"]
        # Same commit by seq, by root prefix, by its ISO time and by that time in another zone.
        ns = capsule.format.records.parse_iso_time(row["time"])
        kolkata = _as_offset(ns, 5 * 3600 + 1800)
        for at in (str(row["seq"]), root_prefix(row["root"], 8), root_prefix(row["root"], 4).upper(), row["time"],
                   kolkata):
            with capsule.open(path, at=at) as v:
                assert (v.commit_count, v.root, v.state_root, len(v)) == want, at
        log = json.loads(ok("log", path, "--at", root_prefix(row["root"], 10), "--json").stdout)
        assert log == rows[: row["commit"]]
    # A moment between two commits views the earlier one; before the first, nothing.
    t_mid = capsule.format.records.parse_iso_time(rows[3]["time"]) + SEC // 2
    with capsule.open(path, at=iso(t_mid)) as v:
        assert v.commit_count == rows[3]["commit"]
    r = invoke("state", path, "--at", "2001-01-01T00:00:00Z")
    one_line_error(r, 2)
    one_line_error(invoke("state", path, "--at", "no-such-label"), 2)


def root_prefix(root: str, n: int) -> str:
    """The shortest prefix of at least ``n`` digits holding a hex letter: an all-decimal
    prefix would be read as a commit seq (seqs are tried before root prefixes)."""
    while root[:n].isdigit():
        n += 1
    return root[:n]


def _as_offset(ns: int, offset_s: int) -> str:
    """``ns`` written as a local time with a +HH:MM offset (whole seconds only)."""
    import datetime as dt

    tz = dt.timezone(dt.timedelta(seconds=offset_s))
    return dt.datetime.fromtimestamp(ns // SEC, tz).isoformat()


def test_iso_view_at_a_commit_time_with_nanoseconds_finds_that_commit(tmp_path: Path) -> None:
    """`capsule log` prints commit times to the nanosecond; `--at` that exact time must
    name that commit, not the one before (or none)."""
    path = tmp_path / "a.capsule"
    with capsule.create(path, clock=Tick(T0 + 123_456_789, SEC + 1)) as cap:
        for i in range(3):
            with cap.commit() as tx:
                tx.remember(f"m{i}")
    rows = json.loads(ok("log", path, "--json").stdout)
    assert any(len(r["time"]) > len("2023-11-14T22:13:20.123456Z") for r in rows)  # sub-microsecond digits
    for row in rows:
        r = invoke("open", path, "--at", row["time"], "--json")
        assert r.exit_code == 0, f"--at {row['time']}: {r.output}"
        assert json.loads(r.stdout)["commits"] == row["commit"], row["time"]


def test_rollback_makes_live_state_equal_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    frozen = build_history(path)
    with capsule.open(path, "a", clock=Tick(T0 + 1000 * SEC)) as cap:
        size_before, records_before = cap.size, len(cap)
        rid = cap.rollback("c2")
        assert cap.state().to_json() == frozen["c2"][0]
        assert cap.state_root == frozen["c2"][1]
        rev = cap.get(rid)
        assert rev.kind == "revert" and rev.to == cap.find_checkpoint("c2").hash  # type: ignore[union-attr]
        assert len(cap) == records_before + 1 and cap.size > size_before  # history stays; one event appended
        with cap.view("c2") as v:
            assert cap.state().to_json() == v.state().to_json()
        # Restore path: back to the oldest checkpoint, then forward again to c2 and c3.
        cap.rollback("c1")  # the records of c1 come back; the keyset {K1} stays in force (7.4)
        assert cap.state().to_json() == vouched_by_the_first_keyset(frozen["c1"][0])
        cap.rollback("c3")  # records c1 -> c3 come back
        assert cap.state().to_json() == frozen["c3"][0]
        cap.rollback("c2")
        assert cap.state().to_json() == frozen["c2"][0]
        # A checkpoint after a rollback, then a rollback to it.
        with cap.commit() as tx:
            tx.remember("after rollbacks")
        frozen["c4"] = (cap.state().to_json(), cap.state_root)
        cap.checkpoint("c4", key=K1)
        with cap.commit() as tx:
            tx.remember("to be dropped")
        cap.rollback("c1")
        cap.rollback("c4")
        assert cap.state().to_json() == frozen["c4"][0]
    rep = capsule.verify(path, trust=K1.public_key)
    assert rep.ok and rep.checkpoints == 4, rep.first_error
    with capsule.open(path, at="c4") as v:
        assert v.state().to_json() == frozen["c4"][0]


def test_rollback_through_the_cli_with_a_key(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    frozen = build_history(path)
    key = key_file(tmp_path, K1, "agent.key")
    one_line_error(invoke("rollback", path, "--to", "nope", "--key", key), 2)
    r = ok("rollback", path, "--to", "c1", "--key", key, "--json")
    assert json.loads(r.stdout)["state_root"] == frozen["c1"][1]
    now = ok("state", path, "--json").stdout
    assert now == ok("state", path, "--at", "c1", "--json").stdout == vouched_by_the_first_keyset(frozen["c1"][0]) + "\n"
    cks = json.loads(ok("checkpoints", path, "--json").stdout)
    assert [c["label"] for c in cks] == ["c1", "c2", "c3", "rollback-to-c1"]
    assert cks[-1]["state_root"] == frozen["c1"][1] and cks[-1]["signers"] == [K1.key_id]
    # The signed post-rollback checkpoint can itself be viewed and rolled back to.
    assert ok("state", path, "--at", "rollback-to-c1", "--json").stdout == now
    ok("rollback", path, "--to", "c3")
    assert ok("state", path, "--json").stdout == frozen["c3"][0] + "\n"
    # The unsigned rollback lies beyond the last signed checkpoint (spec 13.4, audit F10):
    # sound, but --strict refuses it until a checkpoint signs it.
    ok("verify", path, "--trust", pub_file(key))
    assert invoke("verify", path, "--trust", pub_file(key), "--strict").exit_code == 1
    ok("rollback", path, "--to", "rollback-to-c1", "--key", key)
    ok("verify", path, "--trust", pub_file(key), "--strict")


def test_rolling_back_twice_to_the_same_checkpoint_with_a_fixed_clock(tmp_path: Path) -> None:
    """c1 -> c2 -> c1 -> c2 -> c1 under a fixed clock (SOURCE_DATE_EPOCH mode).

    The second rollback to c1 builds the same revert record as the first
    ({to: c1, drop: [b], time: T}), so content addressing treats it as
    "already stored" and writes nothing: the capsule silently stays at c2.
    """
    path = tmp_path / "a.capsule"
    with capsule.create(path, clock=lambda: T0) as cap:
        with cap.commit() as tx:
            tx.remember("a")
        cap.checkpoint("c1", key=K1)
        with cap.commit() as tx:
            tx.remember("b")
        cap.checkpoint("c2", key=K1)
        roots = {ck.body.label: ck.body.state_root.hex() for ck in cap.checkpoints()}
        for label in ("c1", "c2", "c1"):
            cap.rollback(label)
            assert cap.state_root == roots[label], f"rollback to {label} did not take effect"
            assert live_texts(cap) == (["a"] if label == "c1" else ["a", "b"])


def test_readding_a_record_dropped_by_a_rollback_makes_it_live(tmp_path: Path) -> None:
    """After a rollback drops "b", remembering "b" again (same text and time, so the same
    content id) must make it live; dedupe says "already stored" and keeps it dead."""
    path = tmp_path / "a.capsule"
    with capsule.create(path, clock=lambda: T0) as cap:
        with cap.commit() as tx:
            tx.remember("a")
        cap.checkpoint("c1", key=K1)
        with cap.commit() as tx:
            tx.remember("b")
        cap.rollback("c1")
        assert live_texts(cap) == ["a"]
        with cap.commit() as tx:
            tx.remember("b")
        assert live_texts(cap) == ["a", "b"]


def test_fork_names_its_parent_and_starts_from_the_fork_point(tmp_path: Path) -> None:
    parent = tmp_path / "parent.capsule"
    frozen = build_history(parent)
    child = tmp_path / "child.capsule"
    with capsule.open(parent) as cap:
        parent_id = cap.file_id
        ck = cap.find_checkpoint("c2")
        assert ck is not None
        fork_commit = cap.commit_of(ck)
    with capsule.fork(parent, child, at="c2") as new:
        assert new.state_root == frozen["c2"][1]
        assert new.state().to_json() == frozen["c2"][0]  # same records, same order
        assert new.file_id != parent_id and new.checkpoints() == []
        with new.commit() as tx:
            tx.remember("only in the fork")  # a fork is a writable capsule of its own
    rep = capsule.verify(child, parent=parent)
    assert rep.ok, rep.first_error
    assert rep.lineage == {"parent": parent_id, "root": fork_commit.root.hex(), "tree_size": fork_commit.seq,
                           "chain": fork_commit.chain.hex(), "checkpoint": ck.hash.hex()}
    with open(child, "rb") as f:
        f.seek(C.HEADER_SIZE)
        assert f.read(C.FRAME_HEADER_SIZE)[4] == C.FT_LINEAGE  # the first frame
    # The parent moving on does not invalidate the fork.
    with capsule.open(parent, "a") as cap, cap.commit() as tx:
        tx.remember("parent keeps going")
    assert capsule.verify(child, parent=parent).ok
    ok("verify", child, "--parent", parent)
    # Wrong parents: an unrelated capsule, and the fork itself.
    other = tmp_path / "other.capsule"
    build_history(other)
    for wrong in (other, child):
        rep = capsule.verify(child, parent=wrong)
        assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "lineage"
        r = invoke("verify", child, "--parent", wrong)
        assert r.exit_code == 1 and "lineage" in r.stderr
    # A capsule that is not a fork has no parent to check.
    rep = capsule.verify(parent, parent=other)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "lineage"


def test_fork_through_the_cli_by_label_and_by_default(tmp_path: Path) -> None:
    parent = tmp_path / "parent.capsule"
    frozen = build_history(parent)
    ok("rollback", parent, "--to", "c1")
    r = ok("fork", parent, "--at", "c3", "-o", tmp_path / "at-c3.capsule", "--json")
    assert json.loads(r.stdout)["state_root"] == frozen["c3"][1]
    r = ok("fork", parent, "-o", tmp_path / "now.capsule", "--json")  # the live (rolled back) state
    assert json.loads(r.stdout)["state_root"] == frozen["c1"][1]
    # 15.2: the fork carries c1 and the parent's keyset {K1}, so K1's approval is verified, as in a view at c1
    assert ok("state", tmp_path / "now.capsule", "--json").stdout == vouched_by_the_first_keyset(frozen["c1"][0]) + "\n"
    for name in ("at-c3.capsule", "now.capsule"):
        out = json.loads(ok("verify", tmp_path / name, "--parent", parent, "--json").stdout)
        assert out["ok"] and out["lineage"]["parent"] == capsule.open(parent).file_id
    one_line_error(invoke("fork", parent, "-o", tmp_path / "now.capsule"), 2)  # refuses to overwrite


# --- 5. keys through the CLI -------------------------------------------------------------------


def test_keygen_writes_a_private_key_0600_and_its_pub(tmp_path: Path) -> None:
    key = tmp_path / "agent.key"
    info = json.loads(ok("keygen", "-o", key, "--json").stdout)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pub = capsule.load_public_key(pub_file(key))
    priv = capsule.load_private_key(key)
    assert pub == priv.public_key and info["key_id"] == pub.key_id and info["encrypted"] is False
    assert pub_file(key).read_text() == pub.to_text() + "\n"
    before = key.read_bytes()
    one_line_error(invoke("keygen", "-o", key), 2)  # never overwrites a key
    assert key.read_bytes() == before


def test_encrypted_key_via_passphrase_env(tmp_path: Path) -> None:
    key = tmp_path / "agent.key"
    env = {"CAPSULE_PASS": "correct horse battery staple"}
    one_line_error(invoke("keygen", "-o", key, "--passphrase-env", "UNSET_VAR_FOR_TEST"), 2)
    assert not key.exists() and not pub_file(key).exists()
    info = json.loads(ok("keygen", "-o", key, "--passphrase-env", "CAPSULE_PASS", "--json", env=env).stdout)
    assert info["encrypted"] is True and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    with pytest.raises(capsule.UsageError, match="passphrase"):
        capsule.load_private_key(key)
    with pytest.raises(capsule.UsageError, match="passphrase"):
        capsule.load_private_key(key, b"wrong")
    assert capsule.load_private_key(key, env["CAPSULE_PASS"].encode()).key_id == info["key_id"]

    path = tmp_path / "a.capsule"
    ok("init", path)
    ok("put", path, "--text", "hello")
    before = path.read_bytes()
    msg = one_line_error(invoke("checkpoint", path, "--label", "c1", "--key", key), 2)
    assert "passphrase" in msg
    one_line_error(invoke("checkpoint", path, "--label", "c1", "--key", key, "--passphrase-env", "CAPSULE_PASS",
                          env={"CAPSULE_PASS": "wrong"}), 2)
    assert path.read_bytes() == before
    r = ok("checkpoint", path, "--label", "c1", "--key", key, "--passphrase-env", "CAPSULE_PASS", "--json", env=env)
    assert json.loads(r.stdout)["signers"] == [info["key_id"]]
    out = json.loads(ok("verify", path, "--trust", pub_file(key), "--json").stdout)
    assert out["ok"] and out["signatures_anchored"] is True and out["checkpoints"] == 1


# --- 6. only the keyset in force signs ------------------------------------------------------------


def test_writer_refuses_keys_outside_the_keyset_and_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    k1f, k2f, k3f = (key_file(tmp_path, k, f"k{i}.key") for i, k in enumerate((K1, K2, K3), 1))
    with capsule.create(path, clock=Tick()) as cap:
        with cap.commit() as tx:
            tx.remember("x")
        cap.checkpoint("c1", key=K1)  # sets the keyset: {K1}, threshold 1
        assert cap.keyset == capsule.Keyset.of([K1.public_key])
        size = cap.size
        with pytest.raises(capsule.UsageError):
            cap.checkpoint("outsider", key=K2)
        assert cap.size == size == path.stat().st_size
    before = path.read_bytes()
    one_line_error(invoke("checkpoint", path, "--label", "outsider", "--key", k2f), 2)
    assert path.read_bytes() == before

    with capsule.open(path, "a", clock=Tick(T0 + 100 * SEC)) as cap:
        new = capsule.Keyset.of([K2.public_key, K3.public_key], threshold=2, version=2)
        with pytest.raises(capsule.UsageError):  # the new keys alone cannot rotate
            cap.rotate_keys(new, old_signers=[], new_signers=[K2, K3])
        cap.rotate_keys(new, old_signers=[K1], new_signers=[K2, K3])
        assert cap.keyset == new and [k.keyset.version for k in cap.keysets()] == [1, 2]
        size = cap.size
        for keys in ([K1], [K2], [K3], [K1, K2]):  # revoked key; one of two; revoked + one
            with pytest.raises(capsule.UsageError):
                cap.checkpoint("too-few", key=keys)
        assert cap.size == size
        cap.checkpoint("c2", key=[K3, K2])
    before = path.read_bytes()
    one_line_error(invoke("checkpoint", path, "--label", "x", "--key", k1f), 2)
    one_line_error(invoke("checkpoint", path, "--label", "x", "--key", k2f), 2)
    assert path.read_bytes() == before
    r = ok("checkpoint", path, "--label", "c3", "--key", k2f, "--key", k3f, "--json")
    assert json.loads(r.stdout)["signers"] == sorted([K2.key_id, K3.key_id])
    rep = capsule.verify(path, trust=K1.public_key)  # the chain of keysets starts at K1
    assert rep.ok and rep.anchored and rep.checkpoints == 3, rep.first_error
    assert rep.keyset == new.keyset_hash


def test_first_checkpoint_with_two_keys_sets_threshold_two(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, clock=Tick()) as cap:
        cap.checkpoint("c1", key=[K1, K2])
        assert cap.keyset == capsule.Keyset.of([K1, K2], threshold=2)
        with pytest.raises(capsule.UsageError):
            cap.checkpoint("c2", key=K1)
        cap.checkpoint("c2", key=[K2, K1])
    assert capsule.verify(path, trust=capsule.Keyset.of([K1, K2], threshold=2).keyset_hash).ok


def test_remember_takes_an_iso_time_as_a_jsonl_line_does(tmp_path: Path) -> None:
    # new-user trial: tx.remember(time="2023-12-01T00:00:00Z") was refused, though a JSONL line's
    # "time", valid_from and search(since=) take ISO-8601
    with capsule.create(tmp_path / "t.capsule") as cap:
        with cap.commit() as tx:
            a = tx.remember("x", time="2023-12-01T00:00:00Z")
            b = tx.put_value({"text": "x", "time": "2023-12-01T00:00:00Z"})
        assert a == b and cap.get(a).time == 1_701_388_800 * 10**9
        with cap.commit() as tx:  # and every kind's time= (the fourth attack: note, decide took int only)
            n = tx.note("n", time="2023-12-01T00:00:00Z")
            d = tx.decide("d", time="2023-12-01T00:00:00Z")
            c = tx.constrain("c", time="2023-12-01T00:00:00Z")
        assert {cap.get(x).time for x in (n, d, c)} == {1_701_388_800 * 10**9}
        with pytest.raises(capsule.InvalidRecordError, match="'nope' is not an ISO-8601 time"), cap.commit() as tx:
            tx.remember("y", time="nope")
