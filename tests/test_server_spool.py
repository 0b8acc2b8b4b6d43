"""The encrypted spool: a seekable file whose bytes on disk reveal nothing and resist tampering."""

from __future__ import annotations

import os
import random

import pytest

from veil.server.spool import CHUNK, NONCE, RECORD, SpoolCorrupt, SpoolDir

#: A recognisable plaintext: if any 16-byte window of it reached the disk, the scan finds it.
PATTERN = b"VEIL-PLAINTEXT-PATTERN-0123456789"


def _payload(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(n))


def _raw(f) -> bytes:
    f.flush()
    return f.path.read_bytes()


def test_round_trip_and_file_protocol(tmp_path):
    spool = SpoolDir(tmp_path / "spool")
    data = _payload(3 * CHUNK + 1234)
    f = spool.create()
    assert f.readable() and f.writable() and f.seekable()
    for i in range(0, len(data), 7000):  # small writes, as a muxer makes them
        assert f.write(data[i : i + 7000]) == len(data[i : i + 7000])
    assert f.tell() == len(data) == f.size
    assert f.seek(0) == 0 and f.read() == data
    assert f.read(10) == b""  # at the end
    assert f.seek(-100, os.SEEK_END) == len(data) - 100 and f.read(1000) == data[-100:]
    f.seek(CHUNK - 5)
    assert f.read(10) == data[CHUNK - 5 : CHUNK + 5]  # across a chunk boundary
    buf = bytearray(20)
    f.seek(5)
    assert f.readinto(buf) == 20 and bytes(buf) == data[5:25]
    assert f.pread(2 * CHUNK, 3) == data[2 * CHUNK : 2 * CHUNK + 3] and f.tell() == 25
    # on disk: one nonce + tag per chunk, nothing else, and none of the plaintext
    raw = _raw(f)
    assert len(raw) == len(data) + 4 * (NONCE + 16)
    assert data[:64] not in raw and data[CHUNK : CHUNK + 64] not in raw
    assert spool.bytes_on_disk == len(data)
    path = f.path
    f.close()
    assert f.shredded and not path.exists() and spool.bytes_on_disk == 0
    with pytest.raises(ValueError):
        f.read()


def test_random_access_rewrite_and_gaps(tmp_path):
    spool = SpoolDir(tmp_path / "spool")
    f = spool.create()
    model = bytearray(_payload(2 * CHUNK + 10, seed=2))
    f.write(model)
    rng = random.Random(3)
    for _ in range(40):  # rewrites anywhere, some across boundaries, some growing the file
        at = rng.randrange(0, len(model) + 100)
        piece = _payload(rng.randrange(1, 3 * CHUNK // 2), seed=rng.randrange(1 << 30))
        if at > len(model):
            model += bytes(at - len(model))
        model[at : at + len(piece)] = piece
        f.seek(at)
        f.write(piece)
        assert f.size == len(model)
    f.seek(0)
    assert f.read() == bytes(model)
    # a write past the end leaves zeros in the gap, as a file does
    f.seek(len(model) + CHUNK + 3)
    f.write(b"end")
    assert f.pread(len(model), CHUNK + 6) == bytes(CHUNK + 3) + b"end"
    f.shred()


def test_every_write_gets_a_fresh_nonce(tmp_path):
    spool = SpoolDir(tmp_path / "spool")
    f = spool.create()
    f.write(b"A" * 100)
    first = _raw(f)
    f.seek(0)
    f.write(b"A" * 100)  # the same plaintext again
    second = _raw(f)
    assert first[:NONCE] != second[:NONCE] and first[NONCE:] != second[NONCE:]
    f.shred()


def test_tampering_is_detected(tmp_path):
    spool = SpoolDir(tmp_path / "spool")
    f = spool.create()
    f.write(_payload(2 * CHUNK + 50))
    f.flush()
    f.pread(0, 1)  # chunk 0 is in memory now; the flip below hits chunk 1 on disk
    with open(f.path, "r+b") as fh:
        fh.seek(RECORD + NONCE + 100)
        b = fh.read(1)
        fh.seek(RECORD + NONCE + 100)
        fh.write(bytes([b[0] ^ 1]))
    with pytest.raises(SpoolCorrupt, match="chunk 1"):
        f.pread(CHUNK, 10)
    f.shred()


def test_swapped_and_replayed_chunks_are_detected(tmp_path):
    spool = SpoolDir(tmp_path / "spool")
    a, b = spool.create(), spool.create()
    a.write(_payload(2 * CHUNK, seed=4))
    b.write(_payload(2 * CHUNK, seed=5))
    raw_a, raw_b = _raw(a), _raw(b)
    a.pread(CHUNK, 1)  # leave chunk 0 to be read from disk
    # swap chunks 0 and 1 within a file
    with open(a.path, "r+b") as fh:
        fh.write(raw_a[RECORD:] + raw_a[:RECORD])
    with pytest.raises(SpoolCorrupt, match="chunk 0"):
        a.pread(0, 10)
    # replay another file's chunk 0 (same key, same index, other file id)
    b.pread(CHUNK, 1)
    with open(b.path, "r+b") as fh:
        fh.write(raw_a[:RECORD])
    with pytest.raises(SpoolCorrupt, match="chunk 0"):
        b.pread(0, 10)
    # an earlier version of a chunk of the same file (a rollback: same id, same index)
    c = spool.create()
    c.write(b"o" * CHUNK + b"1")
    old = _raw(c)[:RECORD]
    c.seek(0)
    c.write(b"n" * CHUNK)
    c.pread(CHUNK, 1)  # chunk 0 written back with a new nonce, chunk 1 in memory
    with open(c.path, "r+b") as fh:
        fh.write(old)
    with pytest.raises(SpoolCorrupt, match="chunk 0"):
        c.pread(0, 3)
    c.shred()
    # a file cut short on disk is noticed (the size is known from memory, not the disk)
    with open(b.path, "r+b") as fh:
        fh.truncate(RECORD + 10)
    with pytest.raises(SpoolCorrupt, match="cut short"):
        b.pread(CHUNK + 5, 10)
    a.shred()
    b.shred()
    assert len(raw_b) == len(raw_a) == 2 * RECORD


def test_a_new_process_key_cannot_read_and_removes_leftovers(tmp_path):
    first = SpoolDir(tmp_path / "spool")
    f = first.create()
    f.write(PATTERN * 1000)
    f.flush()
    leftover = f.path.read_bytes()
    os.close(os.open(tmp_path / "spool" / "unrelated.txt", os.O_CREAT | os.O_WRONLY, 0o600))
    # "kill -9": the object and its key are gone, the file stays (copied back in place)
    path = f.path
    f.shred()
    path.write_bytes(leftover)
    second = SpoolDir(tmp_path / "spool")
    assert second.removed_at_start == 1 and not path.exists()
    assert (tmp_path / "spool" / "unrelated.txt").exists()  # only spool files are touched
    mine = second.create()
    mine.write(b"x")
    assert second.remove_leftovers() == 0 and mine.path.exists()  # never its own files
    mine.shred()


def test_no_plaintext_on_disk(tmp_path):
    spool = SpoolDir(tmp_path / "spool")
    f = spool.create()
    for _ in range(3000):  # ~100 KB of a known pattern, in muxer-sized writes
        f.write(PATTERN)
    f.flush()
    raw = f.path.read_bytes()
    for i in range(0, len(PATTERN) - 16):
        assert PATTERN[i : i + 16] not in raw
    assert os.stat(f.path).st_mode & 0o077 == 0  # 0600
    assert os.stat(tmp_path / "spool").st_mode & 0o077 == 0  # 0700
    f.shred()
