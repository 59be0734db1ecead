"""The serve command: a capsule as an MCP server on stdio (``capsule serve FILE --mcp``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ._errors import EXIT_DATA, EXIT_USAGE, Interrupted, call, fail
from ._params import FileArg
from ._render import ClosedStdout
from .state import PassOpt, _load_keys


def serve(
    path: FileArg,
    mcp: Annotated[bool, typer.Option("--mcp", help="Speak the Model Context Protocol on stdin/stdout (the only "
                                      "protocol so far; required).")] = False,
    read_only: Annotated[bool, typer.Option("--read-only", help="Share without write access: remember, decide "
                                            "and checkpoint are not offered and the file is never written.")]
    = False,
    key: Annotated[list[Path] | None, typer.Option("--key", metavar="KEYFILE", help="Private key the checkpoint "
                                                   "tool signs with (repeat for a threshold). Read once at start; "
                                                   "clients never supply keys. Without it checkpoint is refused.")]
    = None,
    passphrase_env: PassOpt = None,
    wait: Annotated[float, typer.Option("--wait", metavar="SECONDS", min=0, help="How long a write tool waits "
                                        "for another writer (another server, a `capsule put`) before it "
                                        "returns a 'locked' error.")] = 5.0,
) -> None:
    """Serve a capsule to an AI agent over MCP (stdio): remember, search, get, decide, beliefs, why,
    timeline and checkpoint tools; capsule://summary and capsule://state resources.

    Concurrency: the server reads lock-free, refreshing to the newest commit before every read, and
    opens the capsule for writing only for the length of one write call, waiting up to --wait seconds
    for another writer. So several servers (and CLI commands) can share one file: writes take turns,
    and a write that cannot get the lock in time is an error result beginning 'locked:' that leaves
    the file as it was. It runs until the client closes stdin. docs/mcp.md has the details.

    A missing or corrupt capsule, or a bad key, stops it at start with one line on stderr.

    Examples:
      capsule serve agent.capsule --mcp --key agent.key
      capsule serve agent.capsule --mcp --read-only

    An MCP client config (e.g. Claude Desktop):
      {"mcpServers": {"memory": {"command": "capsule", "args": ["serve", "/path/agent.capsule", "--mcp"]}}}
    """
    if not mcp:
        fail("serve needs --mcp (the only protocol it speaks so far)", EXIT_USAGE)
    if read_only and key:
        fail("--key signs checkpoints, which --read-only does not offer: give one or the other", EXIT_USAGE)
    if path.is_dir():
        fail(f"{path}: is a directory, not a capsule", EXIT_USAGE)
    if not path.is_file():
        fail(f"{path}: no such capsule (create it with `capsule init`)", EXIT_USAGE)
    if isinstance(sys.stdout, ClosedStdout):  # `>&-`: no answer could reach the client, yet writes would land
        fail("cannot serve: standard output is closed, so no answer could reach the client", EXIT_DATA)
    try:
        from capsule.integrations._mcp_stdio import claim_stdio
        from capsule.integrations.mcp import build_server
    except ImportError as e:
        fail(f"the MCP server needs the mcp package: pip install 'agent-capsule[mcp]' ({e})", EXIT_USAGE)
    claim_stdio()  # a closed stdin or stdout (`<&-`) must not be the capsule's fd

    keys = call(lambda: _load_keys(key or [], passphrase_env))
    server = call(lambda: build_server(path, read_only=read_only, keys=keys, wait=wait))
    try:
        signum = call(server.run_stdio)
    finally:
        server.close()
    if signum is not None:
        raise Interrupted(signum)  # the one way out of a signal: "capsule: interrupted", 128 + signum
