"""osutil.writing_back: a restored file's bytes all land, and the cache is dropped only behind writeback."""
from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from rbackup import osutil

STEP = 64 * 1024


def test_writing_back_writes_every_byte_and_drops_only_what_it_sent_to_writeback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if osutil._sync_file_range is None:
        pytest.skip("no sync_file_range here (not Linux)")
    calls: list[tuple[str, int, int]] = []
    real_sync, real_fadvise = osutil._sync_file_range, os.posix_fadvise

    def sync(fd: int, offset: int, nbytes: int, flags: int) -> int:
        calls.append(("writeback", offset, offset + nbytes))
        return real_sync(fd, offset, nbytes, flags)

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        calls.append(("drop", offset, offset + length))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(osutil, "WRITEBACK_STEP", STEP)
    monkeypatch.setattr(osutil, "_sync_file_range", sync)
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    rng = random.Random(5)
    data = rng.randbytes(40 * STEP + 123)
    path = tmp_path / "restored.sst"
    with io.FileIO(path, "wb") as out:
        write = osutil.writing_back(out)
        pos = 0
        while pos < len(data):
            n = rng.randrange(1, 3 * STEP)
            write(memoryview(data)[pos:pos + n])
            pos += n
    assert path.read_bytes() == data

    sent = 0  # everything below it has been handed to writeback
    for kind, start, end in calls:
        if kind == "writeback":
            assert start == sent and end - start >= STEP  # contiguous steps, never overlapping
            sent = end
        else:  # a drop never reaches bytes that were not sent to writeback first
            assert start == 0 and end <= sent
    assert sent > 30 * STEP and any(kind == "drop" for kind, _, _ in calls)
