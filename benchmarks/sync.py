"""Push and pull (spec 19) at fleet shape: many small capsules, and one large one.

Measures, through one fsspec store (moto's S3 server on loopback when moto is installed,
else ``file://``): pushing and pulling N small capsules; the initial push of a large
capsule; then the case that matters, a one-commit tail on the large capsule: bytes moved
and time for push, and for pull onto an existing copy (which verifies the whole result
locally). The peer is what a tool without incremental sync does: upload or download the
whole file through the same store (fsspec ``put_file`` / ``get_file``).

    python benchmarks/sync.py --quick        # 50 capsules, ~50 MB
    python benchmarks/sync.py                # 1,000 capsules, ~1 GB
"""

from __future__ import annotations

import os
import sys
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


def _store(tmp: Path) -> tuple[str, Any]:
    """An S3 server on loopback (moto) when installed, else a folder; and a stop function."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return f"file://{tmp}/remote", lambda: None
    import logging
    import socket

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench")
    return "s3://bench", srv.stop


def _small(path: Path, i: int) -> None:
    with capsule.create(path) as cap:
        for c in range(3):
            with cap.commit() as tx:
                tx.remember(f"agent {i} learned fact {c}", tags=["fleet"])


def _large(path: Path, size: int) -> None:
    """About ``size`` bytes of memories (random hex text, 64 KiB each), 512 per commit."""
    rec = 64 << 10
    left = max(1, size // rec)
    with capsule.create(path) as cap:
        while left > 0:
            k = min(512, left)
            with cap.commit() as tx:
                tx.put_many([{"text": os.urandom(rec // 2).hex()} for _ in range(k)])
            left -= k


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
        base, stop = _store(tmp)
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
            t_push, pushed = _timed(lambda: [sync.push(p, f"{base}/fleet/{p.stem}") for p in small])
            t_pull, pulled = _timed(lambda: [sync.pull(f"{base}/fleet/{p.stem}", tmp / f"copy-{p.name}")
                                             for p in small])
            t_peer_up, _ = _timed(lambda: [fs.put_file(str(p), f"{remote.root}/plain/{p.name}") for p in small])
            t_peer_down, _ = _timed(lambda: [fs.get_file(f"{remote.root}/plain/{p.name}", str(tmp / f"plain-{p.name}"))
                                             for p in small])
            up = sum(r.bytes for r in pushed)
            down = sum(r.bytes for r in pulled)
            res["fleet"] = {"push_s": t_push, "pull_s": t_pull, "push_bytes": up, "pull_bytes": down,
                            "peer_put_s": t_peer_up, "peer_get_s": t_peer_down}
            rows += [[f"push {n} small capsules", f"{t_push:.2f} s", f"{up:,}", f"put_file: {t_peer_up:.2f} s"],
                     [f"pull {n} small capsules (verified)", f"{t_pull:.2f} s", f"{down:,}",
                      f"get_file: {t_peer_down:.2f} s"]]

            log(f"building a ~{large_mb} MB capsule")
            big = tmp / "big.capsule"
            _large(big, large_mb << 20)
            url = f"{base}/fleet/big"
            t0, r0 = _timed(lambda: sync.push(big, url))
            copy = tmp / "big-copy.capsule"
            t1, r1 = _timed(lambda: sync.pull(url, copy))
            with capsule.open(big, "a") as cap, cap.commit() as tx:
                tx.remember("one more fact")
            t2, r2 = _timed(lambda: sync.push(big, url))
            t3, r3 = _timed(lambda: sync.pull(url, copy))
            t_peer, _ = _timed(lambda: fs.put_file(str(big), f"{remote.root}/plain/big.capsule"))
            t_peer_get, _ = _timed(lambda: fs.get_file(f"{remote.root}/plain/big.capsule", str(tmp / "plain-big")))
            size = big.stat().st_size
            res["large"] = {"bytes": size, "push_s": t0, "push_bytes": r0.bytes, "pull_s": t1, "pull_bytes": r1.bytes,
                            "tail_push_s": t2, "tail_push_bytes": r2.bytes, "tail_bytes": r2.tail_bytes,
                            "tail_merged_bytes": r2.merged_bytes, "tail_pull_s": t3, "tail_pull_bytes": r3.bytes,
                            "peer_put_s": t_peer, "peer_get_s": t_peer_get}
            rows += [[f"push {size / 2**20:.0f} MB capsule", f"{t0:.2f} s", f"{r0.bytes:,}", f"put_file: {t_peer:.2f} s"],
                     [f"pull {size / 2**20:.0f} MB capsule (verified)", f"{t1:.2f} s", f"{r1.bytes:,}",
                      f"get_file: {t_peer_get:.2f} s"],
                     ["push a 1-commit tail", f"{t2:.3f} s", f"{r2.bytes:,} ({r2.tail_bytes:,} tail)",
                      f"re-upload: {t_peer:.2f} s, {size:,} B"],
                     ["pull a 1-commit tail (verifies all)", f"{t3:.2f} s", f"{r3.bytes:,}",
                      f"re-download: {t_peer_get:.2f} s, {size:,} B"]]
        finally:
            stop()
        finish(res, started)
    print_table(f"capsule push/pull ({res['store']}; {run_summary(res)})", ["operation", "time", "bytes moved",
                "whole-file peer"], rows, left=("operation",))
    write_results(res, args.out)


if __name__ == "__main__":
    sys.exit(main())
