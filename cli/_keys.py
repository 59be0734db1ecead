"""``--identity`` and ``--passphrase-env``: the keys of an encrypted capsule (spec 10), on every
command that reads or writes contents.

:func:`with_keys` adds both options to a command (typer reads the signature), keeps what
was given for the run, and the command runs inside
``capsule.unlocking(...)``, so every file the library opens by path reads with them. A key file is read only when a command asks for it; the passphrase
comes from the environment variable named, never from the command line (it would show
in ``ps`` and the shell history). ``CAPSULE_IDENTITY`` names a default key file.
"""

from __future__ import annotations

import functools
import inspect
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from . import _errors
from ._errors import EXIT_USAGE, fail

F = TypeVar("F", bound=Callable[..., Any])

IdentityOpt = Annotated[
    Path | None,
    typer.Option("--identity", "-i", metavar="KEY", show_default=False,
                 help="Private key of a recipient, to open an encrypted capsule (default: $CAPSULE_IDENTITY; "
                 "a sealed key file takes its passphrase from $CAPSULE_KEY_PASSPHRASE)."),
]
PassphraseEnvOpt = Annotated[
    str | None,
    typer.Option("--passphrase-env", metavar="VAR", show_default=False,
                 help="Open an encrypted capsule with the passphrase in this environment variable."),
]
#: on commands whose --passphrase-env already unlocks a signing key file
CapsulePassphraseEnvOpt = Annotated[
    str | None,
    typer.Option("--capsule-passphrase-env", metavar="VAR", show_default=False,
                 help="Open an encrypted capsule with the passphrase in this environment variable "
                 "(--passphrase-env is the signing key's)."),
]

EncryptOpt = Annotated[bool, typer.Option("--encrypt", help="Seal the new capsule's contents at rest (spec 10) "
                                          "for --recipient keys and/or the passphrase in --passphrase-env.")]
RecipientOpt = Annotated[
    list[Path] | None,
    typer.Option("--recipient", "-r", metavar="KEY.pub", show_default=False,
                 help="With --encrypt: a capsule public key that can open it (repeat for more)."),
]

_given: dict[str, Any] = {}


def with_keys(fn: F) -> F:
    """The command ``fn`` with ``--identity`` and ``--passphrase-env`` added."""
    sig = inspect.signature(fn)
    # where --passphrase-env already unlocks a signing key, the capsule's is --capsule-passphrase-env
    own = "capsule_passphrase_env" if "passphrase_env" in sig.parameters else "passphrase_env"
    extra = [inspect.Parameter("identity", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=IdentityOpt),
             inspect.Parameter(own, inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=CapsulePassphraseEnvOpt if own != "passphrase_env" else PassphraseEnvOpt)]

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        _given["identity"] = kwargs.pop("identity", None)
        _given["passphrase_env"] = kwargs.pop(own, None)
        _errors.CAPSULE_PASSPHRASE_OPTION = "--" + own.replace("_", "-")
        if not (_given["identity"] or _given["passphrase_env"] or os.environ.get("CAPSULE_IDENTITY")):
            return fn(*args, **kwargs)  # nothing to load: no cryptography import (start-up)
        import capsule

        from ._errors import call

        with capsule.unlocking(**call(keys)):  # a missing or bad key file: one line, exit 2
            return fn(*args, **kwargs)

    # typer reads the annotations of the wrapper in this module's globals: hand it the
    # command's own, resolved where the command was written
    hints = typing.get_type_hints(fn, include_extras=True)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()]
    run.__signature__ = sig.replace(parameters=params + extra,  # type: ignore[attr-defined]
                                    return_annotation=hints.get("return", sig.return_annotation))
    run.__annotations__ = {**hints, **{p.name: p.annotation for p in extra}}
    del run.__wrapped__  # type: ignore[attr-defined]
    return run  # type: ignore[return-value]


def env_bytes(name: str) -> bytes | None:
    """Environment variable ``name`` as the bytes it holds (spec 10: a passphrase is its bytes
    as given), so a value that is not UTF-8 is taken as it is rather than failing to encode."""
    if os.supports_bytes_environ:
        return os.environb.get(os.fsencode(name))
    value = os.environ.get(name)
    return None if value is None else value.encode("utf-8", "surrogateescape")


def passphrase_from(var: str | None, opt: str | None = None) -> bytes | None:
    """The passphrase in environment variable ``var`` (one line error when unset or empty),
    given with ``opt`` (default: the option that names the capsule's passphrase here)."""
    if var is None:
        return None
    value = env_bytes(var)
    if not value:
        fail(f"{opt or _errors.CAPSULE_PASSPHRASE_OPTION} {var}: the environment variable is "
             f"{'empty' if value == b'' else 'not set'}", EXIT_USAGE)
    return value


def identity_from(path: Path | str | None) -> Any:
    """The private key in ``path`` (its own passphrase, if sealed, from $CAPSULE_KEY_PASSPHRASE)."""
    if path is None:
        return None
    import capsule
    from capsule.format.keys import KeyFileError, PassphraseRequired

    p = Path(path)
    if p.is_dir():
        fail(f"--identity {p}: is a directory, not a private key", EXIT_USAGE)
    kp = env_bytes("CAPSULE_KEY_PASSPHRASE")
    try:
        try:  # $CAPSULE_KEY_PASSPHRASE is for a sealed key only: a plain one beside it loads as it is
            return capsule.load_private_key(p)
        except PassphraseRequired:
            if not kp:
                raise
            return capsule.load_private_key(p, kp)
    except PassphraseRequired:
        fail(f"--identity {p}: the key file is sealed: put its passphrase in $CAPSULE_KEY_PASSPHRASE", EXIT_USAGE)
    except KeyFileError as e:  # a .pub file, another format: the user named the wrong file
        fail(f"--identity {p}: {e}", EXIT_USAGE)


def encryption(encrypt: bool, recipients: list[Path] | None) -> dict[str, Any]:
    """``recipients=`` / ``passphrase=`` / ``identity=`` for a new capsule (``{}``: not encrypted)."""
    if not encrypt:
        if recipients:
            fail("--recipient needs --encrypt", EXIT_USAGE)
        return {}
    import capsule

    k = keys()
    pubs = [capsule.load_public_key(r) for r in recipients or []]
    if not pubs and k["passphrase"] is None:
        fail("--encrypt needs --recipient KEY.pub and/or --passphrase-env VAR", EXIT_USAGE)
    return {"recipients": pubs, **k}


def keys() -> dict[str, Any]:
    """``identity=`` and ``passphrase=`` for the library call, from the options (or $CAPSULE_IDENTITY)."""
    ident = _given.get("identity") or os.environ.get("CAPSULE_IDENTITY") or None
    return {"identity": identity_from(ident), "passphrase": passphrase_from(_given.get("passphrase_env"))}


__all__ = ["EncryptOpt", "env_bytes", "IdentityOpt", "PassphraseEnvOpt", "RecipientOpt", "encryption", "identity_from", "keys", "passphrase_from", "with_keys"]


def trust_key(p: Path) -> Any:
    """A ``--trust`` KEY.pub: a file that is no key is the wrong file named, a usage error (exit
    2), as ``--key`` and ``-i`` say."""
    import capsule
    from capsule.format.keys import KeyFileError

    try:
        return capsule.load_public_key(p)
    except KeyFileError as e:
        raise capsule.UsageError(f"--trust {p}: {e}") from None
