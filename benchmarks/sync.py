"""Push and pull (spec 19) at fleet shape: many small capsules, and one large one.

Measures, through one fsspec store (moto's S3 server on loopback when moto is installed,
else ``file://``): pushing and pulling N small capsules (50 records each) to one bucket;
the initial push and pull of a large capsule; then the case that matters, a one-commit
tail on the large capsule: bytes moved and time for push, and for pull onto an existing
copy (which checks the tail from the copy's last commit on, 19.7). The peer is what a tool
without incremental sync does: upload or download the whole file through the same store
(fsspec ``put_file`` / ``get_file``).

Bytes on the wire are counted by a TCP relay between s3fs and the S3 server (requests
and responses, HTTP headers included), beside the capsule bytes the library reports.

    python benchmarks/sync.py --quick        # 50 capsules, ~50 MB
    python benchmarks/sync.py                # 1,000 capsules, ~1 GB
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    arg_parser,
    environment,
    finish,
    header,
    log,
    print_table,
    run_summary,
    scratch_dir,
    write_results,
)

import capsule
import capsule.sync as sync

OUT = Path(__file__).parent / "results" / "sync.json"


class Relay:
    """A TCP relay on loopback that counts the bytes each way (client -> server is ``up``)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, "down"), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, way: str) -> None:
        try:
            while data := a.recv(1 << 20):
                b.sendall(data)
                with self._lock:
                    setattr(self, way, getattr(self, way) + len(data))
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def close(self) -> None:
        self.sock.close()


def _store(tmp: Path) -> tuple[str, Any, Relay | None]:
    """An S3 server on loopback (moto) behind a counting relay when moto is installed, else a
    folder; a stop function; the relay."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return f"file://{tmp}/remote", lambda: None, None
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    relay = Relay(port)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{relay.port}")
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")

    def stop() -> None:
        relay.close()
        srv.stop()

    return "s3://bench", stop, relay


def _small(path: Path, i: int, records: int = 50) -> None:
    """``records`` memories in 5 commits, through the batch path."""
    per = max(1, records // 5)
    with capsule.create(path) as cap:
        for c in range(0, records, per):
            with cap.commit() as tx:
                tx.put_many([{"text": f"agent {i} learned fact {c + k}: " + os.urandom(16).hex(), "tags": ["fleet"]}
                             for k in range(min(per, records - c))])


def _large(path: Path, size: int) -> None:
    """At least ``size`` bytes of file through the batch path, 512 memories per commit, each a
    short text and 48 KiB of random hex in ``meta`` (zstd keeps about half of it). The bulk is
    in ``meta`` so that the lexical snapshot written on close stays small: random text would
    make every token unique and the snapshot larger than the records."""
    rec = 48 << 10
    n = 0
    with capsule.create(path) as cap:
        while path.stat().st_size < size:
            with cap.commit() as tx:
                tx.put_many([{"text": f"chunk {n + k} of the large capsule",
                              "meta": {"payload": os.urandom(rec // 2).hex()}} for k in range(512)])
            n += 512


def _moved(capsule_bytes: int, up: int, down: int) -> str:
    return f"{capsule_bytes:,} ({up:,} / {down:,})" if up or down else f"{capsule_bytes:,}"


def _timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def main() -> None:
    ap = arg_parser(__doc__, OUT, "50 small capsules and a ~50 MB one")
    ap.add_argument("--capsules", type=int, default=None)
    ap.add_argument("--large-mb", type=int, default=None)
    args = ap.parse_args()
    n = args.capsules or (50 if args.quick else 1000)
    large_mb = args.large_mb or (50 if args.quick else 1024)
    started = time.time()
    with scratch_dir("capsule-sync-", args.tmpdir) as tmp:
        base, stop, relay = _store(tmp)

        def wire(fn: Any) -> tuple[float, Any, int, int]:
            """Time ``fn`` and count the bytes it sent and received through the relay."""
            u0, d0 = relay.counts() if relay else (0, 0)
            t, r = _timed(fn)
            u1, d1 = relay.counts() if relay else (0, 0)
            return t, r, u1 - u0, d1 - d0

        res = header(args.quick, started, environment(tmp), store=base.split(":")[0], capsules=n,
                     large_mb=large_mb)
        rows: list[list[str]] = []
        try:
            remote = sync.Remote(base)
            fs = remote.fs
            log(f"building {n} small capsules")
            small = [tmp / f"agent-{i}.capsule" for i in range(n)]
            for i, p in enumerate(small):
                _small(p, i)
            t_push, pushed, push_up, push_down = wire(lambda: [sync.push(p, f"{base}/fleet/{p.stem}")
                                                               for p in small])
            t_pull, pulled, pull_up, pull_down = wire(lambda: [sync.pull(f"{base}/fleet/{p.stem}",
                                                                         tmp / f"copy-{p.name}") for p in small])
            t_peer_up, _ = _timed(lambda: [fs.put_file(str(p), f"{remote.root}/plain/{p.name}") for p in small])
            t_peer_down, _ = _timed(lambda: [fs.get_file(f"{remote.root}/plain/{p.name}", str(tmp / f"plain-{p.name}"))
                                             for p in small])
            up = sum(r.bytes for r in pushed)
            down = sum(r.bytes for r in pulled)
            total = sum(p.stat().st_size for p in small)
            res["fleet"] = {"capsules": n, "records_each": 50, "capsule_bytes": total, "push_s": t_push,
                            "pull_s": t_pull, "push_bytes": up, "pull_bytes": down,
                            "push_wire_up": push_up, "push_wire_down": push_down, "pull_wire_up": pull_up,
                            "pull_wire_down": pull_down, "peer_put_s": t_peer_up, "peer_get_s": t_peer_down}
            rows += [[f"push {n} small capsules ({total / n / 1024:.1f} KiB each)", f"{t_push:.2f} s",
                      _moved(up, push_up, push_down), f"put_file: {t_peer_up:.2f} s"],
                     [f"pull {n} small capsules (verified)", f"{t_pull:.2f} s", _moved(down, pull_up, pull_down),
                      f"get_file: {t_peer_down:.2f} s"]]
            for p in small:  # the large capsule needs the room
                (tmp / f"copy-{p.name}").unlink()
                (tmp / f"plain-{p.name}").unlink()

            log(f"building a ~{large_mb} MB capsule")
            big = tmp / "big.capsule"
            _large(big, large_mb << 20)
            url = f"{base}/fleet/big"
            t0, r0, w0u, w0d = wire(lambda: sync.push(big, url))
            copy = tmp / "big-copy.capsule"
            t1, r1, w1u, w1d = wire(lambda: sync.pull(url, copy))
            with capsule.open(big, "a") as cap, cap.commit() as tx:
                tx.remember("one more fact")
            t2, r2, w2u, w2d = wire(lambda: sync.push(big, url))
            t3, r3, w3u, w3d = wire(lambda: sync.pull(url, copy))
            assert copy.read_bytes() == big.read_bytes(), "the pulled copy differs"
            t_peer, _ = _timed(lambda: fs.put_file(str(big), f"{remote.root}/plain/big.capsule"))
            t_peer_get, _ = _timed(lambda: fs.get_file(f"{remote.root}/plain/big.capsule", str(tmp / "plain-big")))
            size = big.stat().st_size
            res["large"] = {"bytes": size, "push_s": t0, "push_bytes": r0.bytes, "pull_s": t1, "pull_bytes": r1.bytes,
                            "push_wire_up": w0u, "push_wire_down": w0d, "pull_wire_up": w1u, "pull_wire_down": w1d,
                            "tail_push_s": t2, "tail_push_bytes": r2.bytes, "tail_bytes": r2.tail_bytes,
                            "tail_merged_bytes": r2.merged_bytes, "tail_push_wire_up": w2u,
                            "tail_push_wire_down": w2d, "tail_pull_s": t3, "tail_pull_bytes": r3.bytes,
                            "tail_pull_wire_up": w3u, "tail_pull_wire_down": w3d,
                            "peer_put_s": t_peer, "peer_get_s": t_peer_get}
            rows += [[f"push {size / 2**20:.0f} MB capsule", f"{t0:.2f} s", _moved(r0.bytes, w0u, w0d),
                      f"put_file: {t_peer:.2f} s"],
                     [f"pull {size / 2**20:.0f} MB capsule (verified)", f"{t1:.2f} s", _moved(r1.bytes, w1u, w1d),
                      f"get_file: {t_peer_get:.2f} s"],
                     [f"push a 1-commit tail ({r2.tail_bytes:,} B)", f"{t2:.3f} s", _moved(r2.bytes, w2u, w2d),
                      f"re-upload: {t_peer:.2f} s, {size:,} B"],
                     ["pull a 1-commit tail onto the copy", f"{t3:.3f} s", _moved(r3.bytes, w3u, w3d),
                      f"re-download: {t_peer_get:.2f} s, {size:,} B"]]
        finally:
            stop()
        finish(res, started)
    print_table(f"capsule push/pull ({res['store']}; {run_summary(res)})",
                ["operation", "time", "capsule bytes (wire up / down)", "whole-file peer"], rows, left=("operation",))
    write_results(res, args.out)


if __name__ == "__main__":
    sys.exit(main())
