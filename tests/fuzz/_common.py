"""What the fuzz targets share: seeds, a byte-recipe reader, a plain mutator, the atheris entry.

A target is a module with ``NAME``, ``check(data: bytes) -> None`` (the property:
it returns, or raises only what the library may raise on bad input, which
``check`` swallows itself) and ``seeds()`` (name, bytes) pairs built at run time
from ``spec/vectors``. Everything here imports without atheris, so pytest can
run the same properties with :func:`mutate` when atheris is not installed.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent.parent
VECTORS = ROOT / "spec" / "vectors"
CORPUS = Path(__file__).resolve().parent / "corpus"  # small hand-made seeds, one folder per target
CRASHES = Path(__file__).resolve().parent / "crashes"  # every crash found, minimized, per target
WORK = ROOT / "build" / "fuzz"  # libFuzzer's writable corpus and artifacts (git-ignored)

Seeds = Callable[[], Iterable[tuple[str, bytes]]]
T = TypeVar("T")


def vector_files() -> list[Path]:
    """The golden vectors (spec/vectors, 1.1 then 1.0), referenced in place, never copied."""
    return sorted(VECTORS.glob("*.capsule")) + sorted((VECTORS / "v1.0").glob("*.capsule"))


def vector_frames() -> list[tuple[str, int, bytes]]:
    """(vector name, frame type, payload with the codec undone) of every frame of every vector."""
    import struct

    import zstandard

    out = []
    for p in vector_files():
        data = p.read_bytes()
        off = 64
        while off + 64 <= len(data):
            total, ftype, flags, _, _, plen, rlen = struct.unpack_from("<IBBHQII", data, off)
            payload = data[off + 32 : off + 32 + plen]
            if flags & 2:  # 10.2: sealed, not a payload in the clear
                off += total
                continue
            if flags & 1:
                payload = zstandard.ZstdDecompressor().decompress(payload, max_output_size=rlen)
            out.append((f"{p.parent.name}-{p.stem}-{off}", ftype, payload))
            off += total
    return out


def committed_seeds(name: str) -> list[tuple[str, bytes]]:
    d = CORPUS / name
    return [(p.name, p.read_bytes()) for p in sorted(d.iterdir()) if p.is_file() and p.name != "README.md"] \
        if d.is_dir() else []


def crash_files(name: str) -> list[Path]:
    d = CRASHES / name
    return sorted(p for p in d.iterdir() if p.is_file() and p.name != "README.md") if d.is_dir() else []


class Choices:
    """Reads decisions from fuzz bytes, one at a time; zeros once the bytes run out.

    Used for recipes (structure-aware mutation): libFuzzer mutating a recipe's bytes
    changes one decision at a time, so coverage guidance keeps its locality, and
    ``Choices(rnd.randbytes(n))`` replays the same code from plain random bytes.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n: int) -> int:
        """An int in [0, n) (0 when n <= 1)."""
        if n <= 1:
            return 0
        width = 1 if n <= 1 << 8 else 2 if n <= 1 << 16 else 4
        return int.from_bytes(self.take(width), "little") % n

    def take(self, k: int) -> bytes:
        got = self.data[self.pos : self.pos + k]
        self.pos += len(got)
        return got + bytes(k - len(got))

    def pick(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)


_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 30, 1 << 28, 64, 65]


def mutate(data: bytes, rnd: random.Random, *, max_len: int = 1 << 16, tokens: tuple[bytes, ...] = ()) -> bytes:
    """A small libFuzzer-like mutator (bit flips, interesting values, insert, delete,
    copy, truncate, tokens) for the runs that do not have atheris."""
    b = bytearray(data)
    for _ in range(1 + rnd.randrange(4)):
        op = rnd.randrange(9) if b else 4
        pos = rnd.randrange(len(b)) if b else 0
        if op == 0:
            b[pos] ^= 1 << rnd.randrange(8)
        elif op == 1:
            b[pos] = rnd.choice(_INTERESTING) & 0xFF
        elif op == 2:
            width = rnd.choice((2, 4, 8))
            v = rnd.choice(_INTERESTING) + rnd.choice((-1, 0, 0, 1))
            b[pos : pos + width] = (v % (1 << (8 * width))).to_bytes(width, rnd.choice(("little", "big")))
        elif op == 3:
            del b[pos : pos + 1 + rnd.randrange(min(64, len(b)))]
        elif op == 4:
            ins = rnd.choice(tokens) if tokens and rnd.random() < 0.5 else rnd.randbytes(1 + rnd.randrange(8))
            b[pos:pos] = ins
        elif op == 5:
            src = rnd.randrange(len(b))
            b[pos:pos] = b[src : src + 1 + rnd.randrange(32)]
        elif op == 6:
            del b[pos:]
        elif op == 7:
            b[pos] = rnd.randrange(256)
        else:
            src = rnd.randrange(len(b))
            chunk = b[src : src + 1 + rnd.randrange(16)]
            b[pos : pos + len(chunk)] = chunk
    return bytes(b[:max_len])


def run(name: str, seeds: Seeds, n: int, rnd: random.Random, check: Callable[[bytes], None],
        *, tokens: tuple[bytes, ...] = (), max_len: int = 1 << 16) -> int:
    """``n`` plain random mutants of the seeds through ``check`` (pytest's run without atheris).

    Each mutant's parent is a seed or an earlier mutant, so mutations stack. An
    exception propagates with the input attached, to be saved under ``crashes/``.
    """
    pool = [d for _, d in seeds()] + [d for _, d in committed_seeds(name)]
    for _ in range(n):
        parent = rnd.choice(pool)
        data = mutate(parent, rnd, max_len=max_len, tokens=tokens)
        try:
            check(data)
        except BaseException as e:
            e.add_note(f"fuzz input ({len(data)} bytes): {data[:512]!r}")
            raise
        if len(pool) < 512 and rnd.random() < 0.1:
            pool.append(data)
    return n


def atheris_main(name: str, check: Callable[[bytes], None], seeds: Seeds) -> None:
    """``python tests/fuzz/fuzz_NAME.py [libFuzzer flags] [WORK_DIR [MORE_DIRS]] | [FILE ...]``.

    With no folder, libFuzzer's writable corpus is ``build/fuzz/corpus/NAME``. The
    seeds built from ``spec/vectors`` are written into the first folder and the
    committed seeds of ``tests/fuzz/corpus/NAME`` are read too (never written: pass a
    work folder first). Files instead of folders are replayed once each.
    """
    import atheris

    argv = list(sys.argv)
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not dirs or not os.path.isfile(dirs[0]):
        if not dirs:
            work = WORK / "corpus" / name
            argv.append(str(work))
            dirs = [str(work)]
        os.makedirs(dirs[0], exist_ok=True)
        for fname, data in seeds():
            p = Path(dirs[0]) / f"seed-{fname}"
            if not p.exists():
                p.write_bytes(data)
        mine = CORPUS / name
        if mine.is_dir() and all(Path(d).resolve() != mine.resolve() for d in dirs):
            argv.append(str(mine))
    atheris.Setup(argv, check)
    atheris.Fuzz()
