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
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import mcp.types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

#: the longest JSON-RPC line read (a remember with a 65,536-float embedding is ~1.5 MB)
MAX_LINE = 16 * 1024 * 1024


class _LineTooLong(ValueError):
    pass


def _is_pipe(f: Any) -> bool:
    mode = os.fstat(f.fileno()).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def _lines(fd: int) -> AsyncIterator[bytes]:
    """Lines of ``fd`` (each without its newline) until end of file."""
    loop = asyncio.get_running_loop()
    f = os.fdopen(os.dup(fd), "rb")
    reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
    transport: asyncio.BaseTransport | None = None
    try:
        if not _is_pipe(f):  # a file, /dev/null or a terminal: epoll takes no regular file
            while line := await anyio.to_thread.run_sync(f.readline, MAX_LINE, abandon_on_cancel=True):
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
                await reader.readexactly(e.consumed)  # drop the long line, then its rest
                while True:
                    try:
                        await reader.readuntil(b"\n")
                        break
                    except asyncio.LimitOverrunError as again:
                        await reader.readexactly(again.consumed)
                yield b"\0too long"
                continue
            yield line.rstrip(b"\r\n")
    finally:
        if transport is not None:
            transport.close()
        f.close()


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
async def stdio_streams() -> AsyncIterator[tuple[MemoryObjectReceiveStream[Any], MemoryObjectSendStream[Any]]]:
    """``(read, write)`` streams of JSON-RPC messages over stdin and stdout, as the SDK's
    ``stdio_server`` gives them, ending when stdin does."""
    read_in: MemoryObjectSendStream[SessionMessage | Exception]
    read: MemoryObjectReceiveStream[SessionMessage | Exception]
    write: MemoryObjectSendStream[SessionMessage]
    write_out: MemoryObjectReceiveStream[SessionMessage]
    read_in, read = anyio.create_memory_object_stream(0)
    write, write_out = anyio.create_memory_object_stream(0)
    out = _Out(1)
    await out.open()

    async def stdin_reader() -> None:
        async with read_in:
            async for line in _lines(0):
                if not line.strip():
                    continue
                if line == b"\0too long":
                    await read_in.send(_LineTooLong(f"a message longer than {MAX_LINE} bytes was dropped"))
                    continue
                try:
                    message = types.JSONRPCMessage.model_validate_json(line)
                except Exception as exc:  # the SDK answers a line that is not JSON-RPC
                    await read_in.send(exc)
                    continue
                await read_in.send(SessionMessage(message))

    async def stdout_writer() -> None:
        async with write_out:
            async for m in write_out:
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


__all__ = ["MAX_LINE", "stdio_streams"]
