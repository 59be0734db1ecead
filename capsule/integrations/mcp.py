"""An MCP server for one capsule, on the official ``mcp`` SDK (1.x, the low-level ``Server``).

``capsule serve FILE --mcp`` runs :func:`run_stdio`; :func:`build_server` gives the
server to run on another transport or in-process. Tools: remember, search, get,
decide, beliefs, why, timeline, checkpoint; resources ``capsule://summary`` and
``capsule://state``. Every answer is the JSON document the matching CLI command prints
with ``--json``. docs/mcp.md has the tools, the read-only mode and the concurrency rules
(``_mcp_service`` has the theory of operation).

- A tool's arguments are checked against its JSON schema by the SDK; a call the
  schema or the capsule refuses is an error result (``isError``) naming why, with
  ``structuredContent = {"error": {"type", "message"}}``; the capsule is unchanged.
- ``read_only=True``: the write tools (remember, decide, checkpoint) are not listed and
  a call to one is refused; the file is only ever opened for reading.
- Checkpoints are signed with ``keys`` given here (never by the client); without
  keys ``checkpoint`` is an error result.

>>> from capsule.integrations.mcp import build_server
>>> server = build_server("example.capsule", read_only=True)
>>> server.name, [t.name for t in server.tools]
('capsule', ['search', 'get', 'beliefs', 'why', 'timeline'])
>>> server.close()
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.shared.exceptions import McpError

from ..core.errors import (
    CapsuleError,
    DataError,
    InvalidRecordError,
    Locked,
    NotFound,
    PolicyViolation,
    ReadOnlyError,
    Redacted,
)
from ..format.keys import PrivateKey, load_private_key
from ._mcp_service import DEFAULT_WAIT, Service
from ._mcp_tools import TOOLS, ToolSpec

KeyLike = PrivateKey | str | os.PathLike[str]

_INSTRUCTIONS = (
    "A capsule: the agent's durable memory in one append-only file. remember and decide write one commit "
    "each; search, get, beliefs, why and timeline read the newest commit. A write waits for another writer "
    "up to the server's wait, then fails with a 'locked' error: retry it later. Resources: capsule://summary "
    "(counts, state root) and capsule://state (the whole state document)."
)

#: (uri, name, description) of each resource; both are application/json
RESOURCES = (
    ("capsule://summary", "summary", "The capsule's summary (`capsule open --json`): file id, commits, records "
     "by kind, size, state root, vector index."),
    ("capsule://state", "state", "The agent's state (`capsule state --json`, canonical): memories by tier, "
     "decisions, constraints with approvals, identity."),
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agent-capsule")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def _error_type(e: BaseException) -> str:
    """A short name for what went wrong, first in the error text ("locked: ...")."""
    for cls, name in ((Locked, "locked"), (ReadOnlyError, "read-only"), (Redacted, "redacted"),
                      (NotFound, "not found"), (PolicyViolation, "policy"), (InvalidRecordError, "invalid record"),
                      (DataError, "bad data"), (CapsuleError, "refused"), (OSError, "i/o error")):
        if isinstance(e, cls):
            return name
    return "error"


def _error_result(kind: str, message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"{kind}: {message}")],
                                structuredContent={"error": {"type": kind, "message": message}}, isError=True)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, CapsuleError):
        return f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")
    return " ".join(str(e).split())


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [x for sub in e.exceptions for x in _leaves(sub)]
    return [e]


#: what a client that went away (closed its end of the pipes) looks like from here
_GONE = (BrokenPipeError, ConnectionResetError, anyio.BrokenResourceError, anyio.ClosedResourceError)


async def _in_thread(fn: Callable[..., dict[str, Any]], arguments: dict[str, Any], *, writes: bool) -> dict[str, Any]:
    """``fn(arguments)`` in a worker thread, so a write waiting for the lock stalls no other call.

    Cancelled (the client's ``notifications/cancelled``, a signal), a read is abandoned at
    once; a write is told to stop waiting for the lock (then it writes nothing) and awaited,
    so a commit is never cut short. Either way the cancellation is raised, never a late
    answer: the SDK has answered the call already and a second answer would crash it."""
    if not writes:
        return await anyio.to_thread.run_sync(fn, arguments, abandon_on_cancel=True)
    cancel, finished, guard = threading.Event(), threading.Event(), threading.Lock()
    state = ["queued"]  # -> "running" (the job took it) or "dropped" (cancelled first: it never runs)

    def job() -> dict[str, Any]:
        with guard:
            if state[0] == "dropped":
                raise anyio.get_cancelled_exc_class()()  # nobody waits for it: write nothing
            state[0] = "running"
        try:
            return fn(arguments, cancel)
        finally:
            finished.set()

    try:
        return await anyio.to_thread.run_sync(job, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        cancel.set()
        with guard:
            # a call cancelled while it waited for a worker thread (anyio's limiter: calls queued
            # behind 40 others) never starts, and waiting for it to finish hung the server for ever
            if state[0] == "queued":
                state[0] = "dropped"
        if state[0] == "running":
            with anyio.CancelScope(shield=True):
                while not finished.is_set():
                    await anyio.sleep(0.005)
        raise


def _guard_cancel_race() -> None:
    """The SDK (1.30) answers a request twice when a client's ``notifications/cancelled`` lands
    between the handler's return and its answer: ``cancel()`` answers "Request cancelled", then
    ``respond()`` asserts "Request already responded to" and the server dies (python-sdk issue
    2416, fixes proposed in its PRs 2418 and 3088). Whichever answer comes first stands; the other
    is dropped, as those PRs do. Applied once, to the class: the server makes the responders."""
    from mcp.shared.session import RequestResponder

    if getattr(RequestResponder, "_capsule_guarded", False):
        return
    respond, cancel = RequestResponder.respond, RequestResponder.cancel

    async def guarded_respond(self: Any, response: Any) -> None:
        if self._completed:  # cancelled meanwhile: the client has its answer
            return
        await respond(self, response)

    async def guarded_cancel(self: Any) -> None:
        # answered meanwhile: the result stands; not started yet: the cancel is not seen (docs/mcp.md),
        # where the SDK raised and logged a warning for each ("must be used as a context manager")
        if self._completed or not self._entered:
            return
        await cancel(self)

    RequestResponder.respond = guarded_respond  # type: ignore[method-assign]
    RequestResponder.cancel = guarded_cancel  # type: ignore[method-assign]
    RequestResponder._capsule_guarded = True  # type: ignore[attr-defined]


class CapsuleServer(Server[Any, Any]):
    """The MCP server of one capsule: :attr:`tools` are the tools it lists, :meth:`close`
    releases the capsule's reader."""

    def __init__(self, service: Service) -> None:
        super().__init__("capsule", version=_version(), instructions=_INSTRUCTIONS)
        _guard_cancel_race()
        self.service = service
        self.tools: tuple[ToolSpec, ...] = tuple(t for t in TOOLS if not (service.read_only and t.writes))
        self._by_name = {t.name: t for t in self.tools}
        self.list_tools()(self._list_tools)  # type: ignore[no-untyped-call]
        self.call_tool()(self._call_tool)  # validate_input: the SDK checks each schema first
        self.list_resources()(self._list_resources)  # type: ignore[no-untyped-call]
        self.read_resource()(self._read_resource)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.service.close()

    async def _list_tools(self) -> list[types.Tool]:
        return [types.Tool(name=t.name, title=t.title, description=t.description, inputSchema=t.schema(),
                           outputSchema=t.output_schema(),
                           annotations=types.ToolAnnotations(title=t.title, readOnlyHint=not t.writes,
                                                             destructiveHint=False, idempotentHint=not t.writes,
                                                             openWorldHint=False))
                for t in self.tools]

    async def _call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any] | types.CallToolResult:
        spec = self._by_name.get(name)
        if spec is None:
            if self.service.read_only and name in {"remember", "decide", "checkpoint"}:  # a write tool, not listed
                return _error_result("read-only", f"{name!r} writes, and this server is read-only (--read-only)")
            return _error_result("unknown tool", f"no tool {name!r}")
        try:
            result = await _in_thread(getattr(self.service, name), arguments, writes=spec.writes)
        except (CapsuleError, OSError) as e:
            return _error_result(_error_type(e), _message(e))
        return result

    async def _list_resources(self) -> list[types.Resource]:
        return [types.Resource(uri=uri, name=name, description=desc, mimeType="application/json")  # type: ignore[arg-type]
                for uri, name, desc in RESOURCES]

    async def _read_resource(self, uri: Any) -> list[ReadResourceContents]:
        u = str(uri)
        try:
            if u == "capsule://summary":
                import json

                text = json.dumps(await anyio.to_thread.run_sync(self.service.summary, abandon_on_cancel=True),
                                  sort_keys=True)
            elif u == "capsule://state":
                text = await anyio.to_thread.run_sync(self.service.state_json, abandon_on_cancel=True)
            else:
                raise McpError(types.ErrorData(code=types.INVALID_PARAMS, message=f"no resource {u!r}"))
        except (CapsuleError, OSError) as e:
            raise McpError(types.ErrorData(code=types.INTERNAL_ERROR, message=f"{_error_type(e)}: {_message(e)}")) from None
        return [ReadResourceContents(content=text, mime_type="application/json")]

    async def serve_stdio(self, *, stop_signals: Sequence[signal.Signals] = ()) -> int | None:
        """Serve on this process's stdin and stdout until the client closes stdin, or one of
        ``stop_signals`` arrives (main thread only): then the number of that signal."""
        from ._mcp_stdio import stdio_streams

        stopped: list[int] = []
        async with anyio.create_task_group() as tg:
            if stop_signals:

                async def watch() -> None:
                    # In the loop, not a Python signal handler raising mid-callback: asyncio
                    # would swallow or misplace that. A write in flight still finishes.
                    with anyio.open_signal_receiver(*stop_signals) as signals:
                        async for signum in signals:
                            stopped.append(int(signum))
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch)
            # At end of input the calls in flight are answered first: a write may wait
            # --wait seconds for the lock, then take a while to commit.
            async with stdio_streams(drain=self.service.wait + 60.0) as (read, write):
                await self.run(read, write, self.create_initialization_options())
            tg.cancel_scope.cancel()
        return stopped[0] if stopped else None

    def run_stdio(self, *, handle_signals: bool = True) -> int | None:
        """Run :meth:`serve_stdio` to its end; returns None when the client went away, or
        the number of the signal (SIGINT, SIGTERM) that stopped it when ``handle_signals``.

        A client that disconnects (stdin closed, stdout gone) ends it normally: a write in
        flight finishes first (or, refused, leaves nothing), and the writer's lock is
        released with it. So does a signal."""
        sigs = (signal.SIGINT, signal.SIGTERM) if handle_signals and threading.current_thread() is \
            threading.main_thread() else ()
        try:
            return anyio.run(lambda: self.serve_stdio(stop_signals=sigs))
        except BaseException as e:
            # The task groups wrap what ended the server; raise the first real cause bare (a
            # bug), so the caller sees one exception, not a group.
            real = [x for x in _leaves(e) if not isinstance(x, _GONE)]
            if not real:
                return None
            if real[0] is e:
                raise
            raise real[0] from None


def _keys(keys: Sequence[KeyLike], passphrase: bytes | None) -> list[PrivateKey]:
    return [k if isinstance(k, PrivateKey) else load_private_key(Path(k), passphrase) for k in keys]


def build_server(path: str | os.PathLike[str], *, read_only: bool = False, keys: Sequence[KeyLike] = (),
                 passphrase: bytes | None = None, wait: float = DEFAULT_WAIT) -> CapsuleServer:
    """The MCP server of the capsule at ``path``; the capsule is opened (and checked) now.

    ``keys``: signing keys for ``checkpoint`` (:class:`capsule.PrivateKey` objects or key
    files, read with ``passphrase``). ``wait``: seconds a write waits for another writer
    before it fails as locked. Raises :class:`capsule.CapsuleNotFound` for a missing file
    and :class:`capsule.DataError` for one that is not a sound capsule.
    """
    return CapsuleServer(Service(path, read_only=read_only, keys=_keys(keys, passphrase), wait=wait))




def run_stdio(path: str | os.PathLike[str], *, read_only: bool = False, keys: Sequence[KeyLike] = (),
              passphrase: bytes | None = None, wait: float = DEFAULT_WAIT) -> int | None:
    """Serve the capsule at ``path`` over stdio until the client closes the connection
    (None) or SIGINT/SIGTERM arrives (its number): :func:`build_server`, then
    :meth:`CapsuleServer.run_stdio`."""
    from ._mcp_stdio import claim_stdio

    claim_stdio()  # before the capsule is opened: it must not become stdin or stdout
    server = build_server(path, read_only=read_only, keys=keys, passphrase=passphrase, wait=wait)
    try:
        return server.run_stdio()
    finally:
        server.close()


__all__ = ["RESOURCES", "CapsuleServer", "build_server", "run_stdio"]
