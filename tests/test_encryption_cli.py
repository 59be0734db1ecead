"""Encryption at rest through the CLI, each command a fresh `capsule` process (spec 10).

Keys come from `capsule keygen`; a missing, wrong or unset key is a one-line usage
error (exit 2) that leaves every byte of the capsule as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
from tests.test_encryption import frames, revealed, sha

SECRET = "SECRET-CLI-4b1d the launch code is in the blue folder"
TAG = "SECRET-CLI-TAG"


def _bin() -> list[str]:
    script = Path(sys.executable).with_name("capsule")
    return [str(script)] if script.exists() else [sys.executable, "-m", "capsule_cli.main"]


def run(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("CAPSULE_IDENTITY", "SOURCE_DATE_EPOCH")}
    return subprocess.run([*_bin(), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env={**base, "CAPSULE_SCRYPT_LOG_N": "10", "PW": "pass phrase", **env})


def ok(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    p = run(*args, **env)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def usage_error(p: subprocess.CompletedProcess[str], *words: str) -> None:
    assert p.returncode == 2, (p.args, p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsule: error:"), p.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    for name in ("me", "you", "stranger"):
        ok("keygen", "-o", d / f"{name}.key")
    return d


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> tuple[Path, str]:
    """An encrypted capsule for `me` and a passphrase, with one memory; its id."""
    path = tmp_path_factory.mktemp("sealed") / "a.capsule"
    ok("init", path, "--encrypt", "--recipient", keys / "me.key.pub", "--passphrase-env", "PW")
    p = ok("put", path, "--text", SECRET, "--tag", TAG, "-i", keys / "me.key", "--json")
    return path, json.loads(p.stdout)["ids"][0]


def test_init_put_and_read_back(tmp_path: Path, keys: Path) -> None:
    path = tmp_path / "a.capsule"
    me = keys / "me.key"
    out = json.loads(ok("init", path, "--encrypt", "-r", keys / "me.key.pub", "--json").stdout)
    assert out["encrypted"] is True
    rid = json.loads(ok("put", path, "--text", SECRET, "--tag", TAG, "-i", me, "--json").stdout)["ids"][0]
    data = path.read_bytes()
    assert SECRET.encode() not in revealed(data) and TAG.encode() not in revealed(data)
    got = json.loads(ok("get", path, rid[:12], "-i", me, "--json").stdout)
    assert got["text"] == SECRET and got["tags"] == [TAG]
    listed = json.loads(ok("list", path, "-i", me, "--json").stdout)
    assert [r["id"] for r in listed] == [rid]
    hits = json.loads(ok("search", path, "launch code", "-i", me, "--json").stdout)
    assert hits[0]["id"] == rid
    state = json.loads(ok("state", path, "-i", me, "--json").stdout)
    assert [m["id"] for m in state["memories"]["working"]] == [rid]
    # $CAPSULE_IDENTITY is the default key
    assert json.loads(ok("get", path, rid, "--json", CAPSULE_IDENTITY=str(me)).stdout)["text"] == SECRET


def test_checkpoint_log_verify_export(tmp_path: Path, keys: Path, sealed: tuple[Path, str]) -> None:
    src, rid = sealed
    path = tmp_path / "a.capsule"
    path.write_bytes(src.read_bytes())
    me = keys / "me.key"
    # the signing key's --passphrase-env is taken: the capsule's passphrase has its own option
    ck = json.loads(ok("checkpoint", path, "--label", "day-1", "--key", me, "--capsule-passphrase-env", "PW",
                       "--json").stdout)
    assert ck["label"] == "day-1"
    log = json.loads(ok("log", path, "-i", me, "--json").stdout)
    assert len(log) >= 3 and log[-1]["commit"] == len(log)
    keyless = json.loads(ok("verify", path, "--json").stdout)
    assert keyless["ok"] and keyless["encrypted"] and keyless["contents_checked"] is False
    full = json.loads(ok("verify", path, "-i", me, "--json").stdout)
    assert full["ok"] and full["contents_checked"] is True and full["records"] == 1
    trusted = json.loads(ok("verify", path, "--trust", keys / "me.key.pub", "--json").stdout)
    assert trusted["ok"] and trusted["trusted_checkpoints"] == 1 and trusted["contents_checked"] is False
    p = run("verify", path, "--trust", keys / "you.key.pub", "--json")
    assert p.returncode != 0 or not json.loads(p.stdout)["trusted_checkpoints"]
    out = tmp_path / "out.jsonl"
    ok("export", path, "-o", out, "--passphrase-env", "PW")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows if r["kind"] == "memory"] == [SECRET]


KEYLESS_CASES = {
    "no key": [],
    "wrong identity": ["-i", "{keys}/stranger.key"],
    "wrong passphrase": ["--passphrase-env", "WRONG"],
    "unset variable": ["--passphrase-env", "NOT_SET_ANYWHERE"],
}


COMMANDS = {"list": ["list"], "put": ["put", "--text", "x"], "search": ["search", "code"], "state": ["state"],
            "get": ["get", "ID"], "export": ["export", "-o", "OUT"]}
ERROR_CASES = [(c, k) for c in ("list", "put") for k in sorted(KEYLESS_CASES)] + [
    (c, "no key") for c in ("search", "state", "get", "export")] + [("export", "wrong passphrase")]


@pytest.mark.parametrize(("name", "case"), ERROR_CASES)
def test_key_errors_are_one_line_exit_2_and_change_nothing(tmp_path: Path, keys: Path, sealed: tuple[Path, str],
                                                           name: str, case: str) -> None:
    command = COMMANDS[name]
    path, rid = sealed
    before = sha(path)
    args = [a.replace("ID", rid).replace("OUT", str(tmp_path / "out.jsonl")) for a in command]
    extra = [a.format(keys=keys) for a in KEYLESS_CASES[case]]
    p = run(args[0], path, *args[1:], *extra, WRONG="not the pass phrase")
    usage_error(p, {"no key": "--identity", "wrong identity": "no key slot", "wrong passphrase": "no key slot",
                    "unset variable": "NOT_SET_ANYWHERE"}[case])
    assert sha(path) == before
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_identity_file_is_a_usage_error(tmp_path: Path, sealed: tuple[Path, str]) -> None:
    path, _ = sealed
    before = sha(path)
    usage_error(run("list", path, "-i", tmp_path / "nope.key"), "nope.key")
    assert sha(path) == before


def test_init_encrypt_needs_a_recipient_or_passphrase(tmp_path: Path, keys: Path) -> None:
    path = tmp_path / "a.capsule"
    usage_error(run("init", path, "--encrypt"))
    usage_error(run("init", path, "--recipient", keys / "me.key.pub"), "--encrypt")
    usage_error(run("init", path, "--encrypt", "--passphrase-env", "NOT_SET_ANYWHERE"), "NOT_SET_ANYWHERE")
    assert not path.exists()


def test_passphrase_only_capsule(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    ok("init", path, "--encrypt", "--passphrase-env", "PW")
    ok("put", path, "--text", SECRET, "--passphrase-env", "PW")
    assert SECRET.encode() not in revealed(path.read_bytes())
    assert [r["text"] for r in json.loads(ok("list", path, "--passphrase-env", "PW", "--json").stdout)] == [SECRET]


def test_pack_encrypt(tmp_path: Path, keys: Path) -> None:
    src = tmp_path / "notes"
    src.mkdir()
    (src / "a.md").write_text(f"{SECRET}\n" + "a compressible line of notes\n" * 300)
    out = tmp_path / "p.capsule"
    ok("pack", src, "-o", out, "--encrypt", "--recipient", keys / "me.key.pub")
    assert SECRET.encode() not in revealed(out.read_bytes())
    hits = json.loads(ok("search", out, "launch code", "-i", keys / "me.key", "--json").stdout)
    assert SECRET in hits[0]["text"]
    usage_error(run("search", out, "launch"), "--identity")


def test_rekey(tmp_path: Path, keys: Path, sealed: tuple[Path, str]) -> None:
    path, new = tmp_path / "a.capsule", tmp_path / "b.capsule"
    path.write_bytes(sealed[0].read_bytes())
    me, you = keys / "me.key", keys / "you.key"
    usage_error(run("list", path, "-i", you))
    rep = json.loads(ok("rekey", path, "-i", me, "--add-recipient", keys / "you.key.pub", "--json").stdout)
    assert rep["how"] == "appended"
    assert json.loads(ok("list", path, "-i", you, "--json").stdout)[0]["text"] == SECRET
    ok("list", path, "-i", me)
    # removing needs the passphrase too (the new file keeps it)
    usage_error(run("rekey", path, "-i", me, "--remove-recipient", keys / "you.key.pub", "-o", new), "passphrase")
    assert not new.exists()
    ok("rekey", path, "-i", me, "--passphrase-env", "PW", "--remove-recipient", keys / "you.key.pub", "-o", new)
    usage_error(run("list", new, "-i", you), "no key slot")
    assert json.loads(ok("verify", new, "--parent", path, "-i", me, "--json").stdout)["ok"]
    ok("list", path, "-i", you)  # -o: the old file still opens for it
    # passphrase: replace, then drop
    ok("rekey", new, "-i", me, "--passphrase-env", "PW", "--new-passphrase-env", "NEWPW", NEWPW="new phrase")
    usage_error(run("list", new, "--passphrase-env", "PW"), "no key slot")
    ok("list", new, "--passphrase-env", "NEWPW", NEWPW="new phrase")
    ok("rekey", new, "-i", me, "--drop-passphrase")
    usage_error(run("list", new, "--passphrase-env", "NEWPW", NEWPW="new phrase"), "no key slot")
    assert json.loads(ok("list", new, "-i", me, "--json").stdout)[0]["text"] == SECRET
    before = sha(new)
    usage_error(run("rekey", new, "-i", me, "--remove-recipient", keys / "me.key.pub"))
    usage_error(run("rekey", new, "-i", me))  # nothing to change
    assert sha(new) == before


def test_reproducible_mode(tmp_path: Path, keys: Path) -> None:
    me = keys / "me.key"
    made = []
    for name in ("one", "two"):
        d = tmp_path / name
        d.mkdir()
        path = d / f"{name}.capsule"
        ok("init", path, "--encrypt", "-r", keys / "me.key.pub", "-i", me, SOURCE_DATE_EPOCH="1700000000")
        ok("put", path, "--text", SECRET, "-i", me, SOURCE_DATE_EPOCH="1700000000")
        made.append(path.read_bytes())
    assert made[0] == made[1]
    assert SECRET.encode() not in revealed(made[0])
    path = tmp_path / "no-secret.capsule"
    usage_error(run("init", path, "--encrypt", "-r", keys / "me.key.pub", SOURCE_DATE_EPOCH="1700000000"),
                "SOURCE_DATE_EPOCH")
    assert not path.exists()


def test_tampered_sealed_frame_cli(tmp_path: Path, keys: Path) -> None:
    """A flipped ciphertext byte in an earlier commit: keyless verify sees the chain break,
    verify and reads with the key fail in one line, exit 1; nothing is rewritten."""
    path = tmp_path / "a.capsule"
    ok("init", path, "--encrypt", "-r", keys / "me.key.pub")
    ok("put", path, "--text", SECRET, "-i", keys / "me.key")
    ok("put", path, "--text", "a later commit", "-i", keys / "me.key")
    data = bytearray(path.read_bytes())
    off = next(o for o, t, fl, _ in frames(bytes(data)) if t == 0x81)
    data[off + 32 + 20] ^= 0x40
    path.write_bytes(bytes(data))
    before = sha(path)
    cases: list[list[str | Path]] = [["verify", path], ["verify", path, "-i", keys / "me.key"],
                                     ["list", path, "-i", keys / "me.key"]]
    for args in cases:
        p = run(*args)
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert sha(path) == before


@pytest.mark.parametrize("command", ["put", "get", "list", "search", "state", "log", "verify", "export",
                                     "checkpoint", "fork", "compact", "merge", "rollback"])
def test_help_names_the_key_options(command: str) -> None:
    from capsule_cli.main import app
    from typer.testing import CliRunner

    text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    assert "--identity" in text, command
    assert "--passphrase-env" in text, command


def test_library_and_cli_agree(tmp_path: Path, keys: Path) -> None:
    """A capsule the CLI sealed opens with the key file through the library, and the reverse."""
    path = tmp_path / "a.capsule"
    ok("init", path, "--encrypt", "-r", keys / "me.key.pub")
    me = capsule.load_private_key(keys / "me.key")
    with capsule.open(path, "a", identity=me) as cap, cap.commit() as tx:
        rid = tx.remember(SECRET)
    assert json.loads(ok("get", path, rid, "-i", keys / "me.key", "--json").stdout)["text"] == SECRET


def test_a_pull_with_the_wrong_key_names_the_file_not_its_temporary(tmp_path: Path, keys: Path,
                                                                     sealed: tuple[Path, str]) -> None:
    # the fleet review: "error: .k3.capsule.pull-a9e7247b5684: no key slot opens..."
    src, _ = sealed
    remote = tmp_path / "remote"
    ok("push", src, f"file://{remote}", "-i", keys / "me.key")
    dest = tmp_path / "my d'ir \\1" / "k3.capsule"  # a space, a quote, a backslash: named whole
    dest.parent.mkdir()
    p = run("pull", f"file://{remote}", dest, "-i", keys / "stranger.key")
    assert p.returncode == 2 and ".pull-" not in p.stderr and f"{dest}:" in p.stderr, p.stderr
    assert p.stderr.count(str(dest)) == 1 and not dest.exists() and not list(dest.parent.glob(".k3*"))
