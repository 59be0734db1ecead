"""Letta agent files (.af) in and out of a capsule.

``import_af("agent.af", "agent.capsule")`` makes a new capsule from an agent file (schema v1
or v2, plain or encoded twice); ``export_af("agent.capsule", "agent.af")`` writes the agent
file back. Memory blocks become memories (so ``capsule state`` shows them and ``capsule
search`` finds their text), messages notes, the first agent the identity, and everything else
application records (spec 12.3) that keep every field, known or not. docs/letta.md has the
mapping table. Nothing here imports Letta: an agent file is JSON.

>>> import json, capsule
>>> from pathlib import Path
>>> from capsule.integrations import letta
>>> af = {"agents": [{"id": "agent-0", "name": "helper", "messages": [{"role": "user",
...       "content": [{"type": "text", "text": "my name is Chad"}], "created_at": "2025-01-01T00:00:00Z"}]}],
...       "blocks": [{"id": "block-0", "label": "human", "value": "Name: Chad"}], "tools": []}
>>> _ = Path("helper.af").write_text(json.dumps(af))
>>> rep = letta.import_af("helper.af", "helper.capsule")
>>> rep.blocks, rep.messages
(1, 1)
>>> with capsule.open("helper.capsule") as cap:
...     sorted(h.text for h in cap.search("Chad", mode="lexical"))
['Name: Chad', 'user: my name is Chad']
>>> letta.export_agent("helper.capsule").document == af
True
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.errors import AlreadyExists, Redacted, UsageError
from ..format import canonical as canon
from ..format.file import fsync_dir
from ..format.records import GenericRecord
from ..handle.entry import create
from ..handle.entry import open as open_capsule
from ..ingest.source import check_output, check_regular, read_regular
from ._export_read import entries
from ._letta_map import APP_KINDS, af_from_records, af_to_records
from ._letta_parse import MAX_AF_BYTES, AgentFile, AgentFileError, dump_af, parse_af


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :func:`import_af` wrote."""

    af: str
    capsule: str
    schema: str
    encoded_twice: bool
    agents: int
    blocks: int
    messages: int
    tools: int
    records: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What :func:`export_af` wrote."""

    capsule: str
    af: str
    schema: str
    encoded_twice: bool
    agents: int
    blocks: int
    messages: int
    tools: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counts(af: AgentFile) -> dict[str, int]:
    agents = af.agents()
    if af.schema == "v1":
        blocks, tools = agents[0].get("core_memory") or [], agents[0].get("tools") or []
    else:
        blocks, tools = af.document.get("blocks") or [], af.document.get("tools") or []
    return {"agents": len(agents), "blocks": len(blocks), "tools": len(tools),
            "messages": sum(len(a.get("messages") or []) for a in agents)}


def read_af(src: str | Path) -> AgentFile:
    """Read and check an agent file; an :class:`AgentFileError` names the file and the JSON path."""
    p = Path(src)
    check_regular(p)
    if p.is_dir():
        raise UsageError(f"{p}: is a directory, not an agent file")
    if not p.is_file():
        raise UsageError(f"{p}: no such file")
    raw = read_regular(p, MAX_AF_BYTES, "an agent file")
    try:
        return parse_af(raw)
    except AgentFileError as e:
        e.args = (f"{p}: {e}",)  # which file (path and reason stay as they were)
        raise


def import_agent(af: AgentFile, dst: str | Path, *, source: str = "") -> ImportReport:
    """Write ``af`` into a new capsule ``dst`` (one commit); an existing ``dst`` is refused.

    Every record is built and checked before the file is created, and a failure while
    writing removes it: no partial capsule is left. Record times come from the agent file,
    so two imports of one file hold the same records; with ``SOURCE_DATE_EPOCH`` set (the
    library's reproducible mode) they are byte-identical files.
    """
    p = Path(dst)
    records = af_to_records(af)  # a file that dates nothing: time 0, so its ids still depend on it alone
    if not str(dst):
        raise UsageError("the output path is empty")
    if p.exists() or p.is_symlink():
        raise AlreadyExists(f"{p}: already exists")
    if not (p.parent if str(p.parent) else Path(".")).is_dir():  # named, not the hidden name below
        raise UsageError(f"{p}: no such folder {p.parent}")
    # Built under a hidden name and linked into place once committed: a kill -9 mid-import
    # leaves no empty capsule at ``dst`` (one that would block the retry), and the link
    # never replaces a file (or follows a symlink) that appeared meanwhile.
    fd, name = tempfile.mkstemp(prefix=f".{p.name[:100]}.", suffix=".importing", dir=p.parent if str(p.parent) else ".")
    os.close(fd)
    tmp = Path(name)
    tmp.unlink()
    try:
        cap = create(tmp)
        try:
            with cap.commit() as tx:
                for rec in records:
                    if rec["kind"] in APP_KINDS:
                        tx.put(GenericRecord(rec["kind"], canon.normalize(rec)))
                    else:
                        tx.put_value(rec)
            n = len(cap)
        finally:
            cap.close()
        _place(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    c = _counts(af)
    return ImportReport(source, str(p), af.schema, af.encoded_twice, c["agents"], c["blocks"], c["messages"],
                        c["tools"], n, p.stat().st_size)


def _place(tmp: Path, dst: Path) -> None:
    """Move the finished capsule ``tmp`` to ``dst`` without replacing anything there."""
    try:
        os.link(tmp, dst)  # atomic and no-clobber
    except FileExistsError:
        raise AlreadyExists(f"{dst}: already exists") from None
    except OSError:  # a file system without hard links: rename, after one last look
        if dst.exists() or dst.is_symlink():
            raise AlreadyExists(f"{dst}: already exists") from None
        os.replace(tmp, dst)
    fsync_dir(dst)


def import_af(src: str | Path, dst: str | Path) -> ImportReport:
    """Import the agent file ``src`` into a new capsule ``dst``; see :func:`import_agent`."""
    af = read_af(src)
    try:
        return import_agent(af, dst, source=str(src))
    except AgentFileError as e:  # a value no record can hold: which file (path and reason stay)
        e.args = (f"{src}: {e}",)
        raise


def export_agent(capsule_path: str | Path, *, at: str | int | None = None) -> AgentFile:
    """The agent file a capsule holds (as of ``at``: a checkpoint label, seq or time).

    Blocks are the live block memories (a superseded block exports its new text, a
    forgotten one is left out); the first agent's system prompt and configs are the
    current identity's. Raises :class:`AgentFileError` when the capsule holds no agent
    file or only part of one."""
    with open_capsule(capsule_path, at=at) as cap:
        app, gone = [], []
        for e in entries(cap, frozenset(APP_KINDS), history=True):
            if e.live and not e.redacted:
                app.append((e.rid.hex(), e.rec.value))
            else:  # forgotten or redacted (7.7.1): its payload never reaches the file
                gone.append((e.rid.hex(), e.rec.kind))
        state = cap.state()
        blocks = []
        for tier in state.memories.values():
            for d in tier:
                try:
                    m = cap.get(d["id"])
                except Redacted:  # a view before the redaction: live then, but its text is withheld
                    continue
                if m.meta:
                    blocks.append((m.id, m.text, m.meta))
        ident = cap.get(state.identity["id"]) if state.identity else None
        identity = {"agent_id": ident.agent_id, "config": ident.config} if ident is not None else None
    try:
        return af_from_records(app, blocks, identity, gone)
    except AgentFileError as e:
        e.args = (f"{capsule_path}: {e}",)
        raise


def export_af(capsule_path: str | Path, dst: str | Path, *, at: str | int | None = None,
              overwrite: bool = False) -> ExportReport:
    """Write the agent file a capsule holds to ``dst`` (see :func:`export_agent`).

    The file is written to a temporary name beside ``dst``, synced and renamed, so ``dst``
    is either the whole file or untouched; an existing ``dst`` is refused unless
    ``overwrite``. The capsule is opened read-only and never written."""
    p = Path(dst)
    # as `capsule export`: never the capsule (even with --force), a folder, a device or a FIFO
    check_output(dst, capsule_path, force=overwrite, what="the capsule being exported")
    af = export_agent(capsule_path, at=at)
    data = dump_af(af)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name[:100]}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is for the temporary name, not the file (as `capsule export`)
        os.replace(tmp, p)
        fsync_dir(p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    c = _counts(af)
    return ExportReport(str(capsule_path), str(p), af.schema, af.encoded_twice, c["agents"], c["blocks"],
                        c["messages"], c["tools"], len(data))


__all__ = ["AgentFile", "AgentFileError", "ExportReport", "ImportReport", "dump_af", "export_af", "export_agent",
           "import_af", "import_agent", "parse_af", "read_af"]
