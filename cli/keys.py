"""Key commands beyond keygen: rotate the keyset that signs a capsule's checkpoints (spec 14.6)."""

from __future__ import annotations

import sys
import unicodedata
from pathlib import Path
from typing import Annotated, Any

import typer

from ._errors import EXIT_USAGE, call, fail
from ._params import FileArg, JsonOpt, WaitOpt
from ._render import emit_json, out, warn
from .compact import warn_not_carried
from .state import PassOpt, _load_keys


def rotate_keys(
    path: FileArg,
    key: Annotated[list[Path], typer.Option("--key", metavar="KEY", help="A private key of the keyset in force; "
                                            "repeat until its threshold is met.")],
    new: Annotated[list[Path], typer.Option("--new", metavar="KEY", help="A private key of the new keyset; it "
                                            "signs the rotation too (repeat; a key may be old and new).")],
    new_pub: Annotated[list[Path] | None, typer.Option("--new-pub", metavar="KEY.pub", help="A public key to put "
                                                       "in the new keyset without signing with it (repeatable).")]
    = None,
    threshold: Annotated[int | None, typer.Option("--threshold", min=1, help="Signatures the new keyset needs "
                                                  "(default: the old keyset's, at most its number of keys).")]
    = None,
    passphrase_env: PassOpt = None,
    new_passphrase_env: Annotated[str | None, typer.Option(
        "--new-passphrase-env", metavar="VAR", help="The passphrase of the --new key files, when it is not "
        "--passphrase-env's (a plain old key and a sealed new one, or two passphrases).")] = None,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Replace the keyset that signs checkpoints; keys left out are revoked.

    Accepted only when a threshold of the old keys and a threshold of the new
    keys sign the rotation (spec 14.6): a checkpoint refused with "rotate keys
    first" is signed again after this.

    Example: capsule rotate-keys agent.capsule --key old.key --new new.key
    """
    import capsule

    def go() -> dict[str, Any]:
        old_keys = _load_keys(key, passphrase_env)
        new_keys = _load_keys(new, new_passphrase_env if new_passphrase_env is not None else passphrase_env, "--new")
        pubs = []
        for p in new_pub or []:
            from capsule.ingest.source import check_regular

            check_regular(p, "--new-pub ")
            pubs.append(capsule.load_public_key(p))
        with capsule.open(path, "a", timeout=wait or None) as cap:
            old = cap.keyset
            if old is None:
                raise capsule.UsageError(f"{path}: no keyset yet: the first checkpoint sets it (capsule checkpoint)")
            members = {k.key_id: k.public_key for k in new_keys} | {k.key_id: k for k in pubs}
            if threshold is not None and threshold > len(members):
                raise capsule.UsageError(f"--threshold {threshold}: the new keyset has {len(members)} key(s) "
                                         "(--new and --new-pub)")
            t = threshold if threshold is not None else min(old.threshold, len(members))
            ks = capsule.Keyset.of(members.values(), threshold=t, version=old.version + 1)
            frame = cap.rotate_keys(ks, old_signers=old_keys, new_signers=new_keys)
            revoked = sorted(k.key_id for k in old.keys if frame.keyset.get(k.key_id) is None)
            return {"version": frame.keyset.version, "threshold": frame.keyset.threshold,
                    "keys": [k.key_id for k in frame.keyset.keys], "revoked": revoked, "offset": frame.offset}

    info = call(go)
    if json_out:
        emit_json(info)
        return
    gone = f"; revoked {', '.join(info['revoked'])}" if info["revoked"] else ""
    out.print(f"keyset v{info['version']}: {info['threshold']} of {', '.join(info['keys'])}{gone}")


def approve(
    path: FileArg,
    subject: Annotated[str | None, typer.Argument(metavar="ID", show_default=False,
                                                  help="The record to approve: an id or a unique prefix of at "
                                                  "least 4 hex digits (a decision an action names).")] = None,
    action: Annotated[str | None, typer.Option("--action", metavar="KEY", show_default=False,
                                               help="Approve every run of this action key instead (spec 7.3.1).")]
    = None,
    key: Annotated[list[Path] | None, typer.Option("--key", metavar="KEY", show_default=False,
                                                   help="The approver's private key file; repeat for one approval "
                                                   "per key, in one commit.")] = None,
    passphrase_env: PassOpt = None,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Sign an approval of a record or of an action key with an approver's key (spec 7.4).

    A rule (capsule put --kind constraint with a rule) lets a gated action run once
    enough keys of the keyset in force have approved its key (--action) or the decision
    its intent names (ID). An approval by a key outside that keyset is kept, and
    counts for no rule: the command says so.

    Examples:
      capsule approve agent.capsule --action email.send --key alice.key
      capsule approve agent.capsule 3f2a9c1e --key alice.key --key bob.key
    """
    import capsule

    if (subject is None) == (action is None):
        fail("approve what? give a record ID or --action KEY (one of them)", EXIT_USAGE)
    if not key:
        fail("an approval is signed: give --key KEY (the approver's private key; repeat for more approvers)",
             EXIT_USAGE)

    def go() -> dict[str, Any]:
        keys = _load_keys(key, passphrase_env)
        if len({k.key_id for k in keys}) < len(keys):
            raise capsule.UsageError("the same key given twice: an approval counts once per key")
        with capsule.open(path, "a", timeout=wait or None) as cap:
            if action is not None:
                from capsule.run.actions import MAX_KEY

                if not action:
                    raise capsule.UsageError("--action: an action key is never empty")
                if len(unicodedata.normalize("NFC", action)) > MAX_KEY:  # as run_once refuses it
                    raise capsule.UsageError(f"--action: an action key is at most {MAX_KEY} characters")
                sid, what = capsule.action_subject(action).hex(), {"action": action}
            else:
                rec = cap.get(subject)
                sid, what = rec.id, {"record": rec.id, "kind": rec.kind, "live": cap.is_live(rec.id)}
            ks = cap.keyset
            members = set() if ks is None else {k.key_id for k in ks.keys}
            with cap.commit() as tx:
                ids = [tx.approve(bytes.fromhex(sid), k) for k in keys]
            return {"subject": sid, **what,
                    "approvals": [{"id": i, "approver": k.key_id, "in_keyset": k.key_id in members}
                                  for i, k in zip(ids, keys, strict=True)],
                    "keyset": None if ks is None else {"version": ks.version, "threshold": ks.threshold}}

    info = call(go)
    if "record" in info and (info["kind"] != "decision" or not info["live"]):  # 7.3.1: what a rule reads
        what = "not live (forgotten or rolled back)" if not info["live"] else f"a {info['kind']}"
        sys.stderr.write(f"capsule: warning: {info['record'][:12]} is {what}: a rule counts approvals of an "
                         "action key (--action) or of a live decision an intent names, not of this\n")
    for a in info["approvals"]:  # on stderr, with --json too (where in_keyset says it)
        if not a["in_keyset"]:
            why = ("the capsule has no keyset yet: a rule counts this approval only once a checkpoint signed "
                   "with this key sets one" if info["keyset"] is None else
                   f"it is not in the keyset in force (v{info['keyset']['version']}): a rule counts this approval "
                   "only once it is (capsule rotate-keys)")
            sys.stderr.write(f"capsule: warning: key {a['approver']}: {why}\n")
    if json_out:
        emit_json(info)
        return
    what = f"action {info['action']!r}" if "action" in info else f"{info['kind']} {info['record'][:12]}"
    for a in info["approvals"]:
        out.print(f"approval {a['id']} of {what} by key {a['approver']}", markup=False)


def rekey(
    path: FileArg,
    add: Annotated[list[Path] | None, typer.Option("--add-recipient", metavar="KEY.pub", show_default=False,
                                                   help="A public key that may open the capsule from now on "
                                                   "(repeat; appends a key slot).")] = None,
    remove: Annotated[list[Path] | None, typer.Option("--remove-recipient", metavar="KEY.pub", show_default=False,
                                                      help="A public key that may no longer open it (repeat; "
                                                      "rewrites the file under a new file key).")] = None,
    new_passphrase_env: Annotated[str | None, typer.Option("--new-passphrase-env", metavar="VAR",
                                                           show_default=False,
                                                           help="Set the passphrase to the one in this environment "
                                                           "variable (replaces any; rewrites the file).")] = None,
    drop_passphrase: Annotated[bool, typer.Option("--drop-passphrase", help="The passphrase no longer opens it "
                                                  "(rewrites the file).")] = False,
    out_path: Annotated[Path | None, typer.Option("-o", "--out", help="With a rewrite: write this new file instead "
                                                  "of replacing FILE in place.")] = None,
    key: Annotated[list[Path] | None, typer.Option("--key", help="With a rewrite: sign a checkpoint of the new head "
                                                   "with this private key file (repeat for a threshold); a sealed key "
                                                   "takes $CAPSULE_KEY_PASSPHRASE.")] = None,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Change who can open an encrypted capsule (spec 10.3).

    Adding a recipient appends a key slot for the same file key. Removing one (or
    changing the passphrase) compacts the capsule (policy history) under a new file
    key the removed key never sees, in place or to --out; the rewrite carries the signed
    checkpoints spec 15.2 allows and names the others (--key signs the new state).
    Open it with --identity KEY or --passphrase-env VAR.

    Examples:
      capsule rekey agent.capsule -i me.key --add-recipient colleague.key.pub
      capsule rekey agent.capsule -i me.key --remove-recipient colleague.key.pub
    """
    import capsule

    from ._keys import passphrase_from

    def go() -> dict[str, Any]:
        from capsule.ingest.source import check_regular

        for p in [*(add or []), *(remove or [])]:
            check_regular(p, "--add-recipient " if p in (add or []) else "--remove-recipient ")
        return capsule.rekey(path, add=[capsule.load_public_key(p) for p in add or []],
                             remove=[capsule.load_public_key(p) for p in remove or []],
                             new_passphrase=passphrase_from(new_passphrase_env, "--new-passphrase-env"), drop_passphrase=drop_passphrase,
                             out=out_path, timeout=wait or None, key=_load_keys(key, None) if key else None)

    info = call(go)
    if json_out:
        emit_json(info)
        return
    if "compaction" in info:
        warn_not_carried(info["compaction"], "rewritten")
    if info.get("redacted_unpurged"):
        warn(f"the file still holds the bytes of {info['redacted_unpurged']} redacted record(s), which the added "
             "key can decrypt; `capsule compact` purges them")
    who = ", ".join(info["recipients"]) or "no recipient"
    out.print(f"{info['path']}: {'key slot appended' if info['how'] == 'appended' else 'rewritten under a new file key'}"
              f"; opens with {who}{' and the passphrase' if info['passphrase'] else ''}", markup=False)
