"""Frames decompressed from many threads at once (3.3): each thread its own zstd context.

python-zstandard's decompressor is one native context that releases the GIL while it works;
shared between threads, one of them failed a good frame ('Destination buffer is too small'),
which a reader saw as a CorruptError while the writer redacted (found by CI)."""

from __future__ import annotations

import os
import threading

from capsule.core import constants as C
from capsule.format import frames


def test_threads_decompress_frames_at_once() -> None:
    rng = __import__("random").Random(7)
    raws = [os.urandom(16) * rng.randrange(64, 40_000) for _ in range(24)]  # compressible, sizes differ
    encoded = []
    for raw in raws:
        ef = frames.encode_frame(C.FT_RECORDS, 1, raw, b"\0" * 32, compress=True)
        fh = frames.parse_frame_header(ef.data, 0, expect_seq=1, max_frame_len=1 << 30)
        assert fh.flags & C.FFLAG_ZSTD
        encoded.append((fh, ef.data[C.FRAME_HEADER_SIZE : C.FRAME_HEADER_SIZE + fh.payload_len], raw))
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(k: int) -> None:
        try:
            start.wait()
            for i in range(600):
                fh, payload, raw = encoded[(i * 7 + k) % len(encoded)]
                assert frames.raw_payload(fh, payload) == raw
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
