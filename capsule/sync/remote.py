"""The one module that talks to object stores (style rule 2): a small layer over fsspec.

A :class:`Remote` is one remote capsule: a URL prefix (``s3://bucket/fleet/agent``,
``file:///srv/caps/agent``, ``memory://agent``) holding the objects of spec 19.
It needs five operations of a store, each with the guarantee 19.4 relies on:

- ``write``: an object appears whole or not at all (S3 PUT and multipart completion,
  fsspec's memory store on close; on a local disk a temporary file, fsync, rename);
- ``create``: the same, and it fails when the object exists (S3 ``If-None-Match: *``;
  local ``link()``, which never replaces; memory under a process lock). Other fsspec
  stores get fsspec's own ``mode="create"``, whose check may race (19.4 says so);
- ``read``/``read_range``/``listdir``.

Credentials come only from the store's own environment and configuration (or
``storage_options`` the caller passes); none is ever written to an object, a log
or an error: every message from a store passes :func:`scrub` first.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from ..core.errors import UsageError
from ._errors import RemoteCorrupt, RemoteError

_MEM_LOCK = threading.Lock()  # memory:// is one process's dict: create-only under a lock
_USERINFO = re.compile(r"(?<=://)[^/\s]*@")  # greedy: a password may hold an unescaped `@`
#: ``--as NAME``: one plain path component, letters (any script), digits and ``._-``, not hidden
_PLAIN_NAME = re.compile(r"[^\W_][\w.-]{0,199}")
_SECRET_ENV = re.compile(r"SECRET|TOKEN|PASSW|ACCESS_KEY|CREDENTIAL|SESSION|_KEY$", re.IGNORECASE)


def scrub(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` without credentials: userinfo in URLs, and the value of any environment
    variable or option that names a secret, however the store's message quoted it."""
    text = _USERINFO.sub("***@", text)
    values = [v for k, v in os.environ.items() if _SECRET_ENV.search(k)] + list(extra)
    for v in sorted({v for v in values if len(v) >= 4}, key=len, reverse=True):
        text = text.replace(v, "***")
    return text


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg[:300]


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):(//)?(.*)", re.DOTALL)


def _check_url(url: str) -> None:
    """Refuse what a store would take as another place than the user meant: a scheme
    without ``//`` (``s3:/fleet/x`` would be the local folder ``s3:``), a scheme with
    nothing after it (``s3://``, ``file://``: the current folder), and an empty path
    segment (``s3://fleet//agent``: S3 keys under ``/agent``, which its listing never
    finds, so a pull would not see what the push wrote). A plain path has no scheme."""
    m = _SCHEME.fullmatch(url)
    if m is None:
        return  # a local path (relative or absolute): the file system makes `a//b` `a/b`
    scheme, slashes, rest = m.group(1), m.group(2), m.group(3)
    shown = scrub(url)
    if slashes is None and scheme.lower() == "file" and rest.startswith("/"):
        return  # file:/srv/x, RFC 8089's short form of file:///srv/x: a local path
    if slashes is None:
        raise UsageError(f"{shown}: not a remote URL: after `{scheme}:` comes `//` ({scheme}://bucket/prefix/name); "
                         "a local folder is a path or file:///path")
    if scheme.lower() in ("file", "local"):
        rest = rest.removeprefix("/")  # file:///srv/x: the third slash starts the absolute path
    rest = rest.rstrip("/")
    if not rest:
        raise UsageError(f"{shown}: the URL names no bucket or folder after `{scheme}://`")
    if scheme.lower() not in ("file", "local") and "" in rest.split("/"):  # a local path makes `a//b` `a/b`
        raise UsageError(f"{shown}: the URL has an empty path segment (`//`); a store keeps such keys apart from "
                         "the ones without it, so a pull would not find what a push wrote there")


class Remote:
    """One remote capsule under ``url``, through fsspec (19.1)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        try:
            import fsspec
        except ImportError:
            raise UsageError("push and pull need fsspec: pip install 'agent-capsule[sync]'") from None
        self._secrets = [str(v) for k, v in (storage_options or {}).items()
                         if isinstance(v, str) and re.search(r"secret|key|token|pass", k, re.IGNORECASE)]
        if not isinstance(url, str) or not url.strip("/"):
            raise UsageError(f"not a remote URL: {url!r}")
        _check_url(url)
        self.url = url.rstrip("/")
        # A store quotes the URL's parts in its own words (botocore: `Invalid bucket name
        # "user:pass@bucket"`), without the `://` scrub() keys on: drop the user-info itself too.
        if (ui := _USERINFO.search(self.url)) is not None and len(ui.group()) > 1:
            info = ui.group()[:-1]
            self._secrets += [info, *info.split(":", 1)[1:]]
        self.shown = scrub(self.url, self._secrets)
        self._options = dict(storage_options or {})
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **self._options)
        except ImportError as e:
            raise UsageError(f"{self.shown}: this store needs a package fsspec could not import "
                             f"({_one_line(e)}); for s3:// pip install 'agent-capsule[sync]'") from None
        except (ValueError, TypeError) as e:
            raise UsageError(f"{self.shown}: not a URL fsspec can open: {scrub(_one_line(e), self._secrets)}") from None
        except OSError as e:  # a store that connects when built (ftp, sftp, smb): its own failure (19.8)
            raise RemoteError(f"{self.shown}: connect: {scrub(_one_line(e), self._secrets)}") from None
        self.fs = fs
        #: the mode of the files a local store gets (push: the capsule's own, so a private capsule
        #: is not published readable by all on a shared folder)
        self.file_mode = 0o644
        self.root = str(root).rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.kind = "local" if protocol in ("file", "local") else "memory" if protocol == "memory" else protocol
        if self.kind == "local":
            self.root = os.path.abspath(self.root)

    def sibling(self, name: str) -> Remote:
        """The remote capsule ``name`` beside this one (``push --as NAME``)."""
        if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name.endswith("."):
            raise UsageError(f"--as {name!r}: a plain name is needed (letters, digits and `._-`, no slash, "
                             "not starting with `.`, at most 200 characters)")
        if self.kind not in ("local", "memory") and "/" not in self.root.strip("/"):
            raise UsageError(f"--as {name}: {self.shown} is a whole bucket, so its sibling would be another "
                             "bucket; push to a prefix inside one (s3://bucket/agents/name)")
        if "/" not in self.url:  # a bare relative folder (`rem`): its sibling is `name` beside it
            other = Remote(name, self._options)
        else:
            other = Remote(self.url.rsplit("/", 1)[0] + "/" + name, self._options)
        other.file_mode = self.file_mode
        return other

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    @contextlib.contextmanager
    def _io(self, what: str, name: str) -> Iterator[None]:
        try:
            yield
        except (RemoteCorrupt, RemoteError, UsageError, FileExistsError):
            raise
        except FileNotFoundError as e:
            if what == "read":
                raise RemoteCorrupt(f"{self.shown}/{name}: missing (a manifest names it; a copy holding its bytes "
                                    "mends the remote with `capsule push FILE URL --check`)",
                                    check="remote-segment") from None
            raise RemoteError(f"{self.shown}: {what} {name}: no such bucket or folder "
                              f"({scrub(_one_line(e), self._secrets)})") from None
        except Exception as e:  # a store's own errors are not OSError alone (botocore, aiohttp)
            raise RemoteError(f"{self.shown}: {what} {name}: {scrub(_one_line(e), self._secrets)}") from None

    # --- reading -----------------------------------------------------------------------
    def listdir(self, folder: str) -> list[str]:
        """Base names under ``folder`` (none if it does not exist), fresh from the store."""
        try:
            entries = self.fs.ls(self._path(folder), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        except Exception as e:
            raise RemoteError(f"{self.shown}: list {folder}: {scrub(_one_line(e), self._secrets)}") from None
        return [str(p).rstrip("/").rsplit("/", 1)[-1] for p in entries]

    def _regular(self, name: str) -> None:
        """On a local store, an object is a regular file: a device (/dev/zero) or a FIFO in
        its place would be read without end or wait for ever (a shared folder is writable
        by others, 19.8); its size says nothing of either."""
        if self.kind == "local":
            try:
                mode = os.stat(self._path(name)).st_mode
            except FileNotFoundError:
                return  # the read says it is missing
            if not stat.S_ISREG(mode):
                raise RemoteCorrupt(f"{self.shown}/{name}: not a regular file", check="remote-object")

    def read(self, name: str, limit: int | None = None) -> bytes:
        """The whole object, refused beyond ``limit`` bytes (checked before reading it, and
        by reading no more than one byte past it whatever the size said)."""
        with self._io("read", name):
            self._regular(name)
            if limit is None:
                return bytes(self.fs.cat_file(self._path(name)))
            size = self.fs.size(self._path(name))
            if size is not None and size > limit:
                raise RemoteCorrupt(f"{self.shown}/{name}: {size} bytes, over the {limit} allowed",
                                    check="remote-manifest")
            with self.fs.open(self._path(name), "rb") as f:
                data = bytes(f.read(limit + 1))
            if len(data) > limit:
                raise RemoteCorrupt(f"{self.shown}/{name}: over the {limit} bytes allowed", check="remote-manifest")
            return data

    def read_range(self, name: str, start: int, end: int) -> bytes:
        with self._io("read", name):
            self._regular(name)
            return bytes(self.fs.cat_file(self._path(name), start=start, end=end))

    def chunks(self, name: str, size: int, chunk: int = 8 << 20) -> Iterator[bytes]:
        """The object in chunks, at most ``size`` bytes (the manifest's word)."""
        self._regular(name)
        with self._io("read", name), self.fs.open(self._path(name), "rb", block_size=chunk) as f:
            left = size + 1  # one byte more, so an object longer than its entry is seen
            while left > 0:
                b = f.read(min(chunk, left))
                if not b:
                    break
                left -= len(b)
                yield bytes(b)

    # --- writing -----------------------------------------------------------------------
    def write(self, name: str, chunks: Iterable[bytes]) -> None:
        """Write an object whole or not at all (replacing one of the same name)."""
        with self._io("write", name):
            if self.kind == "local":
                tmp = self._local_tmp(name, chunks)
                try:
                    os.replace(tmp, self._path(name))
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                self._fsync_dir(name)
            elif self.kind == "memory":
                self.fs.pipe_file(self._path(name), b"".join(chunks))
            else:
                with self.fs.open(self._path(name), "wb") as f:
                    for c in chunks:
                        f.write(c)

    def create(self, name: str, data: bytes) -> None:
        """Create an object that must not exist yet; FileExistsError if it does (19.4)."""
        with self._io("create", name):
            if self.kind == "local":
                tmp = self._local_tmp(name, [data])
                try:
                    os.link(tmp, self._path(name))  # never replaces
                finally:
                    os.unlink(tmp)
                self._fsync_dir(name)
            elif self.kind == "memory":
                with _MEM_LOCK:
                    self.fs.pipe_file(self._path(name), data, mode="create")
            else:
                self.fs.pipe_file(self._path(name), data, mode="create")

    def _local_tmp(self, name: str, chunks: Iterable[bytes]) -> str:
        folder = os.path.dirname(self._path(name))
        try:
            os.makedirs(folder, exist_ok=True)
        except FileExistsError:  # a file stands where the folder goes: the store's failure, not a lost race
            raise RemoteError(f"{self.shown}: write {name}: cannot create the folder {os.path.basename(folder)}: "
                              "a file of that name is in the way") from None
        tmp = os.path.join(folder, f".tmp-{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), self.file_mode)
        try:
            for c in chunks:
                view = memoryview(c)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def _fsync_dir(self, name: str) -> None:
        fd = os.open(os.path.dirname(self._path(name)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
