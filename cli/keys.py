"""Key commands beyond keygen: rotate the keyset that signs a capsule's checkpoints (spec 14.6)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._errors import call
from ._params import FileArg, JsonOpt, WaitOpt
from ._render import emit_json, out
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
                             new_passphrase=passphrase_from(new_passphrase_env), drop_passphrase=drop_passphrase,
                             out=out_path, timeout=wait or None, key=_load_keys(key, None) if key else None)

    info = call(go)
    if json_out:
        emit_json(info)
        return
    if "compaction" in info:
        warn_not_carried(info["compaction"], "rewritten")
    who = ", ".join(info["recipients"]) or "no recipient"
    out.print(f"{info['path']}: {'key slot appended' if info['how'] == 'appended' else 'rewritten under a new file key'}"
              f"; opens with {who}{' and the passphrase' if info['passphrase'] else ''}", markup=False)
