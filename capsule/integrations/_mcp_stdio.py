"""The stdio transport of the MCP server: JSON-RPC lines on fds 0 and 1, without blocking threads.

The SDK's ``stdio_server`` reads stdin with a blocking ``readline`` in a worker thread.
A cancelled server (SIGTERM, Ctrl-C) then waits for that read to return, which it does
only when the client writes or closes the pipe: the process hangs. Here both pipes are
asyncio pipe transports, so cancelling the server ends it at once (after a write in
flight, which runs in its own thread and is never cut short). A stdin or stdout that
is a regular file (``< requests.jsonl``) cannot block, and is read or written directly.

The protocol gets its own copies of fds 0 and 1: closing them leaves ``sys.stdin`` and
``sys.stdout`` usable, and a stray ``print()`` meanwhile goes to stderr instead of into
the JSON-RPC stream.

Three things the SDK's transport gets wrong, done here instead:

- Every request gets an answer. A line the SDK cannot take (not JSON, invalid UTF-8, a lone
  surrogate, nesting beyond its parser's limit, longer than :data:`MAX_LINE`) is answered
  with a JSON-RPC error for the request's id when the id can be read; the SDK would only
  log it, and the client would wait for ever.
- NaN, Infinity and numbers beyond a float (``1e400``) are refused (``INVALID_PARAMS``):
  the SDK re-encodes a request's params as JSON, which turns them into ``null``, so a
  ``meta`` value would silently be stored as null.
- End of input is not the end of the answers: the requests read before stdin closed are
  answered first (``capsule serve < requests.jsonl``), unless stdout is gone too. The SDK
  cancels them at end of input; their writes landed, their answers were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import mcp.types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from ..core.stdio import claim_std_fds

#: the longest JSON-RPC line read (a remember with a 65,536-float embedding is ~1.5 MB)
MAX_LINE = 16 * 1024 * 1024
#: how much of an over-long line is kept, to find the id of the request it was
_HEAD = 4096


class _TooLong:
    """An over-long line, dropped but for its first and last bytes (a client may put the
    request's id first or last)."""

    def __init__(self, head: bytes, tail: bytes = b"") -> None:
        self.head = head
        self.tail = tail


def claim_stdio() -> None:
    """Put ``/dev/null`` on fd 0 or 1 if it is closed (``capsule serve ... <&-``), before any
    file is opened: a closed stdin then reads as an empty input, a closed stdout drops answers."""
    claim_std_fds((0, 1))


def _is_pipe(f: Any) -> bool:
    mode = os.fstat(f.fileno()).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def _lines(fd: int) -> AsyncIterator[bytes | _TooLong]:
    """Lines of ``fd`` (each without its newline) until end of file; one longer than
    :data:`MAX_LINE` comes as a :class:`_TooLong`, never in pieces."""
    loop = asyncio.get_running_loop()
    f = os.fdopen(os.dup(fd), "rb")
    reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
    transport: asyncio.BaseTransport | None = None
    try:
        if not _is_pipe(f):  # a file, /dev/null or a terminal: epoll takes no regular file
            while line := await anyio.to_thread.run_sync(f.readline, MAX_LINE + 1, abandon_on_cancel=True):
                if len(line) > MAX_LINE and not line.endswith(b"\n"):  # its rest follows: skip it
                    rest, tail = line, line[-_HEAD:]
                    while rest and not rest.endswith(b"\n"):
                        rest = await anyio.to_thread.run_sync(f.readline, MAX_LINE, abandon_on_cancel=True)
                        tail = (tail + rest)[-_HEAD:]
                    yield _TooLong(line[:_HEAD], tail.rstrip(b"\r\n"))
                    continue
                yield line.rstrip(b"\r\n")
            return
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), f)
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:  # end of file: the last line has no newline
                if e.partial.strip():
                    yield e.partial
                return
            except asyncio.LimitOverrunError as e:
                first = await reader.readexactly(e.consumed)  # drop the long line, then its rest
                tail = first[-_HEAD:]
                while True:
                    try:
                        tail = (tail + await reader.readuntil(b"\n"))[-_HEAD:]
                        break
                    except asyncio.LimitOverrunError as again:
                        tail = (tail + await reader.readexactly(again.consumed))[-_HEAD:]
                    except asyncio.IncompleteReadError as end:  # it ran to the end of input
                        tail = (tail + end.partial)[-_HEAD:]
                        break
                yield _TooLong(first[:_HEAD], tail.rstrip(b"\r\n"))
                continue
            yield line.rstrip(b"\r\n")
    finally:
        if transport is not None:
            transport.close()
        f.close()


# A request's id as clients write it, before its params: {"jsonrpc": "2.0", "id": 5, "method": ...}
_ID = re.compile(rb'"id"\s*:\s*(-?\d{1,19}|"(?:[^"\\]|\\.){0,256}")\s*[,}]')


def _request_id(data: bytes) -> int | str | None:
    """The id of the request ``data`` was meant to be, when it can be read; else None."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        rid = obj.get("id")
        ok = "method" in obj and (isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool)))
        return rid if ok else None
    end = data.find(b'"params"')
    before = data[: end if end >= 0 else len(data)]
    m = _ID.search(before)
    if m is None or b'"method"' not in data:
        return None
    try:
        rid = json.loads(m.group(1))
    except ValueError:
        return None
    return rid if isinstance(rid, int | str) else None


#: the top-level object's last member, when it is the id: `, "id": 7}` at the very end (an
#: inner object ending so is followed by more than one closing brace)
_LAST_ID = re.compile(rb',\s*"id"\s*:\s*(-?\d{1,19}|"(?:[^"\\]|\\.){0,256}")\s*}\s*$')


def _last_id(tail: bytes) -> int | str | None:
    """The id of an over-long request whose id is its last member (as the ``mcp`` client writes
    it), from the line's last bytes; else None."""
    m = _LAST_ID.search(tail)
    if m is None:
        return None
    try:
        rid = json.loads(m.group(1))
    except ValueError:
        return None
    return rid if isinstance(rid, int | str) and not isinstance(rid, bool) else None


def _non_finite(value: Any) -> str | None:
    """The path of the first NaN or infinity in ``value`` (e.g. ``arguments.meta.n``), or None."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        v, path = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return path.lstrip(".") or "(top)"
        if isinstance(v, dict):
            stack.extend((x, f"{path}.{k}") for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, f"{path}[{i}]") for i, x in enumerate(v))
    return None


@functools.cache
def _methods() -> frozenset[str]:
    """The request methods the SDK's server knows (``ClientRequest``'s ``method`` literals)."""
    import typing

    return frozenset(m for c in typing.get_args(types.ClientRequest.model_fields["root"].annotation)
                     for m in typing.get_args(c.model_fields["method"].annotation))


def _error(rid: int | str, code: int, message: str) -> SessionMessage:
    err = types.JSONRPCError(jsonrpc="2.0", id=rid, error=types.ErrorData(code=code, message=message))
    return SessionMessage(types.JSONRPCMessage(err))


def _key(rid: int | str) -> tuple[str, int | str]:
    return (type(rid).__name__, rid)  # 1 and "1" are two ids


class _Out:
    """Writes whole lines to ``fd``: through an asyncio pipe transport, or directly to a file."""

    def __init__(self, fd: int) -> None:
        self.f = os.fdopen(os.dup(fd), "wb", buffering=0)
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        if not _is_pipe(self.f):  # a file, /dev/null or a terminal: written directly
            return
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, self.f)
        self.writer = asyncio.StreamWriter(transport, protocol, None, loop)

    async def write(self, data: bytes) -> None:
        if self.writer is None:
            self.f.write(data)
            return
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        with contextlib.suppress(OSError):  # a client that left: nothing more to flush
            self.f.close()


@contextlib.asynccontextmanager
async def stdio_streams(*, drain: float = 60.0) -> AsyncIterator[
        tuple[MemoryObjectReceiveStream[Any], MemoryObjectSendStream[Any]]]:
    """``(read, write)`` streams of JSON-RPC messages over stdin and stdout, as the SDK's
    ``stdio_server`` gives them, ending when stdin does and the requests read before it
    are answered (waiting for them at most ``drain`` seconds)."""
    read_in: MemoryObjectSendStream[SessionMessage | Exception]
    read: MemoryObjectReceiveStream[SessionMessage | Exception]
    write: MemoryObjectSendStream[SessionMessage]
    write_out: MemoryObjectReceiveStream[SessionMessage]
    read_in, read = anyio.create_memory_object_stream(0)
    write, write_out = anyio.create_memory_object_stream(0)
    answers = write.clone()  # the errors this transport answers itself
    pending: Counter[tuple[str, int | str]] = Counter()  # requests passed on and not yet answered
    out = _Out(1)
    await out.open()

    async def refuse(data: bytes, code: int, message: str, exc: Exception | None = None) -> None:
        rid = _request_id(data)
        if rid is None:  # no id to answer: the SDK logs it (and tells the client)
            await read_in.send(exc or ValueError(message))
        else:
            await answers.send(_error(rid, code, message))

    async def stdin_reader() -> None:
        async with read_in, answers:
            async for line in _lines(0):
                if isinstance(line, _TooLong):
                    msg = f"a message longer than {MAX_LINE} bytes was dropped"
                    rid = None
                    if b'"method"' in line.head:  # a request (a client's answer or a notification is not)
                        rid = _request_id(line.head)
                        rid = _last_id(line.tail) if rid is None else rid
                    if rid is None:
                        await refuse(line.head, types.INVALID_REQUEST, msg)
                    else:
                        await answers.send(_error(rid, types.INVALID_REQUEST, msg))
                    continue
                if not line.strip():
                    continue
                try:
                    message = types.JSONRPCMessage.model_validate_json(line)
                except Exception as exc:  # the SDK answers a line that is not JSON-RPC
                    why = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
                    await refuse(line, types.PARSE_ERROR, f"not a JSON-RPC message: {why}"[:300], exc)
                    continue
                root = message.root
                if isinstance(root, types.JSONRPCRequest):
                    if root.method not in _methods():  # the SDK answers -32602 and logs an internal error
                        await answers.send(_error(root.id, types.METHOD_NOT_FOUND,
                                                  f"no method {root.method[:200]!r}"))
                        continue
                    where = _non_finite(root.params)
                    if where is not None:
                        await answers.send(_error(root.id, types.INVALID_PARAMS, f"{where}: NaN, Infinity and "
                                                  "numbers beyond a 64-bit float are not finite JSON numbers"))
                        continue
                    pending[_key(root.id)] += 1
                await read_in.send(SessionMessage(message))
            # End of input: answer what was asked before it (the writes land either way).
            with anyio.move_on_after(drain):
                while +pending:
                    await anyio.sleep(0.01)

    async def stdout_writer() -> None:
        async with write_out:
            async for m in write_out:
                root = m.message.root
                if isinstance(root, types.JSONRPCResponse | types.JSONRPCError) and pending[_key(root.id)] > 0:
                    pending[_key(root.id)] -= 1
                data = m.message.model_dump_json(by_alias=True, exclude_none=True) + "\n"
                await out.write(data.encode("utf-8"))

    try:
        with contextlib.redirect_stdout(sys.stderr):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stdin_reader)
                tg.start_soon(stdout_writer)
                yield read, write
    finally:
        out.close()


__all__ = ["MAX_LINE", "claim_stdio", "stdio_streams"]
