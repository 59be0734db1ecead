"""Every constant of format v1, each tagged with the spec section that defines it.

The normative text is ``spec/format.md``; if this module and the spec disagree,
that is a bug in one of them.
"""

from __future__ import annotations

import struct

# --- 2. Header ---------------------------------------------------------------
#: 2.1: high-bit byte catches 7-bit transfers, CRLF catches newline rewriting,
#: ^Z stops `type` on DOS, the final LF catches LF->CRLF.
MAGIC = b"\x89CAP\r\n\x1a\n"
FORMAT_MAJOR = 1  # 2.2
FORMAT_MINOR = 4  # 2.2, 12.4: 1.1 adds BLOB frames and the search index (16); 12.6: 1.2 INDEX `vectors`; 12.7: 1.3 lifecycles and compaction; 12.8: 1.4 tokenizer 2 and the context window (16.4.1)
HEADER_SIZE = 64  # 2.1
HEADER_STRUCT = struct.Struct("<8sBBH16sBBBBI24sI")  # 2.1 layout, CRC last
assert HEADER_STRUCT.size == HEADER_SIZE

#: 2.3: header flag bits. v1 defines only ENCRYPTED, reserved for section 10.
HFLAG_ENCRYPTED = 0x0001
HFLAGS_KNOWN = HFLAG_ENCRYPTED  # 2.3: any other set bit is refused

HASH_SHA256 = 1  # 2.1
AEAD_NONE = 0  # 2.1
AEAD_CHACHA20_POLY1305 = 1  # 2.1, 10
AEAD_AES256_GCM = 2  # 2.1 (reserved)
AEADS = frozenset({AEAD_NONE, AEAD_CHACHA20_POLY1305})  # 2.1: what this reader implements
SIG_ED25519 = 1  # 2.1
CODEC_ZSTD = 1  # 2.1

# --- 3. Frames ---------------------------------------------------------------
FRAME_HEADER_STRUCT = struct.Struct("<IBBHQIIII")  # 3.1
FRAME_HEADER_SIZE = FRAME_HEADER_STRUCT.size  # 3.1: 32 bytes
assert FRAME_HEADER_SIZE == 32
TRAILER_SIZE = 32  # 3.1: the chain value
FRAME_OVERHEAD = FRAME_HEADER_SIZE + TRAILER_SIZE

CRITICAL = 0x80  # 3.2: high bit of the type byte
FT_RECORDS = 0x81  # 3.2
FT_COMMIT = 0x82  # 3.2
FT_INDEX = 0x03  # 3.2 (non-critical: a reader may ignore it and scan)
FT_RECOVERY = 0x04  # 3.2 (non-critical, informational)
FT_CHECKPOINT = 0x85  # 3.2, 14.9
FT_KEYSET = 0x86  # 3.2, 14.9
FT_LINEAGE = 0x89  # 3.2, 15
FT_BLOB = 0x0A  # 3.2, 3.4 (non-critical): a part of a large blob (1.1)
# 3.2: reserved for later versions of this format; v1 writers MUST NOT emit them.
FT_KEYSLOT = 0x87  # 3.2, 10.3
FT_SESSION = 0x88  # reserved
FT_TABLE = 0x0B  # 3.2 (non-critical): an index table, see 9.1
FRAME_TYPE_NAMES = {
    FT_RECORDS: "RECORDS",
    FT_COMMIT: "COMMIT",
    FT_INDEX: "INDEX",
    FT_RECOVERY: "RECOVERY",
    FT_CHECKPOINT: "CHECKPOINT",
    FT_KEYSET: "KEYSET",
    FT_KEYSLOT: "KEYSLOT",
    FT_SESSION: "SESSION",
    FT_LINEAGE: "LINEAGE",
    FT_BLOB: "BLOB",
    FT_TABLE: "TABLE",
}
KNOWN_FRAME_TYPES = frozenset(
    {FT_RECORDS, FT_COMMIT, FT_INDEX, FT_RECOVERY, FT_TABLE, FT_CHECKPOINT, FT_KEYSET, FT_LINEAGE, FT_BLOB,
     FT_KEYSLOT}
)
#: 10.2: the frame types whose payloads are sealed in an encrypted file
SEALED_TYPES = frozenset({FT_RECORDS, FT_INDEX, FT_TABLE, FT_BLOB})

FFLAG_ZSTD = 0x01  # 3.3
FFLAG_AEAD = 0x02  # 3.3, 10.2: the payload is sealed
FFLAGS_KNOWN = FFLAG_ZSTD | FFLAG_AEAD
AEAD_OVERHEAD = 28  # 10.2: a sealed payload is nonce(12) || ciphertext || tag(16)

BLOB_PART = 32 * 1024 * 1024  # 3.4: bytes of blob content per BLOB frame (all parts but the last)

# --- 4. Hash domains -----------------------------------------------------------
CHAIN_SEED_TAG = b"capsule/v1/chain-seed\x00"  # 4.2
CHAIN_TAG = b"capsule/v1/chain\x00"  # 4.2
RECORD_ID_TAG = b"capsule/v1/record\x00"  # 5.3
LABEL_TAG = b"capsule/v1/label\x00"  # 14.9: key of a checkpoint label in a label table
STATE_ROOT_TAG = b"capsule/v1/state\x00"  # 13.1
FILE_ID_TAG = b"capsule/v1/file-id\x00"  # 2.5 reproducible file id

# --- 6. Commit ----------------------------------------------------------------
TAIL_MAGIC = b"CAPSTAIL"  # 6.2
TAIL_LOCATOR_SIZE = 16  # 6.2: magic + u64 offset of the COMMIT frame
TAIL_SIZE = TAIL_LOCATOR_SIZE + TRAILER_SIZE  # bytes from locator start to EOF

# --- Limits (section 11) --------------------------------------------------------
MAX_FRAME_LEN_DEFAULT = 64 * 1024 * 1024  # 11: header field default
MAX_FRAME_LEN_CEILING = 1 << 30  # 11: a header may not declare more
MAX_RAW_LEN = 256 * 1024 * 1024  # 11: decompressed payload
MAX_RECORD_BYTES = 16 * 1024 * 1024  # 11: one encoded record
MAX_RECORDS_PER_FRAME = 1_000_000  # 11
MAX_DEPTH = 32  # 11: nesting of maps/arrays in a record
MAX_STR = 16 * 1024 * 1024  # 11
MAX_BIN = 64 * 1024 * 1024  # 11
MAX_ARRAY = 1_000_000  # 11
MAX_MAP = 100_000  # 11
#: 11: msgpack objects (every value counts once, map keys included) in one record
#: or any other canonical value. Lengths bound bytes, not objects: the byte 0x80
#: decodes to a 64-byte dict, and a decoded payload costs up to ~100 bytes of
#: memory per object, so these caps keep the worst frame near 150 MiB.
MAX_RECORD_OBJECTS = 1 << 20
MAX_FRAME_OBJECTS = 3 << 19  # 11: msgpack objects in one RECORDS payload, its array included
MAX_INDEX_META = 1 << 20  # 11
MAX_SEGMENTS = 64  # 11

# Writer policy (not part of the format): records per RECORDS frame and when to
# write an INDEX frame.
FRAME_TARGET_RAW = 1 << 16  # 64 KiB: a read of one record decompresses at most this much
# A writer's frame is either records of at most FRAME_TARGET_RAW bytes (a value
# of N bytes holds at most N objects) or one record, so it never passes the cap.
assert max(FRAME_TARGET_RAW, MAX_RECORD_OBJECTS) < MAX_FRAME_OBJECTS
INDEX_EVERY_RECORDS = 4096
INDEX_EVERY_FRAMES = 256
INDEX_ON_CLOSE_RECORDS = 512
INDEX_ON_CLOSE_FRAMES = 16
# 9.3: an INDEX commit fsyncs twice (6.4), so indexing with every other checkpoint of a
# step loop cost half an fsync per checkpoint; at these sizes a view still replays little
INDEX_AT_CHECKPOINT_RECORDS = 512
INDEX_AT_CHECKPOINT_FRAMES = 16

# --- Input limits of the tools (section 11, informative): what a command reads before
# it builds records, refused once passed, so an endless stream ends in an error.
MAX_JSONL_LINE = MAX_RECORD_BYTES  # 11: one JSONL line (put --jsonl, pack) may hold one record
#: lines of JSONL one commit takes (put --jsonl, pack): a commit is laid out in memory (6.4), so an
#: endless stream would grow without bound; --batch commits a longer input in parts
MAX_JSONL_COMMIT_LINES = 10_000_000
MAX_RUNTIME_BYTES = 64 * 1024 * 1024  # 11: a checkpoint's runtime blob (checkpoint --runtime)
MAX_PACK_TEXT = 64 * 1024 * 1024  # 11: one text or markdown file given to pack
