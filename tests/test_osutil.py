"""osutil.writing_back: a restored or backed-up file's bytes all land, and the cache is dropped only behind
writeback."""
from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest

from rbackup import osutil
from rbackup.env.local import LocalEnv

STEP = 64 * 1024


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """The writeback requests and cache drops made, with a WRITEBACK_STEP of STEP."""
    if osutil._sync_file_range is None:
        pytest.skip("no sync_file_range here (not Linux)")
    made: list[tuple[str, int, int]] = []
    real_sync, real_fadvise = osutil._sync_file_range, os.posix_fadvise

    def sync(fd: int, offset: int, nbytes: int, flags: int) -> int:
        made.append(("writeback", offset, offset + nbytes))
        return real_sync(fd, offset, nbytes, flags)

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_DONTNEED:
            made.append(("drop", offset, offset + length))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(osutil, "WRITEBACK_STEP", STEP)
    monkeypatch.setattr(osutil, "_sync_file_range", sync)
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    return made


def test_writing_back_writes_every_byte_and_drops_only_what_it_sent_to_writeback(
        tmp_path: Path, calls: list[tuple[str, int, int]]) -> None:
    rng = random.Random(5)
    data = rng.randbytes(40 * STEP + 123)
    path = tmp_path / "restored.sst"
    with io.FileIO(path, "wb") as out:
        write = osutil.writing_back(out.fileno())
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


@pytest.mark.parametrize("sync", [True, False])
def test_a_local_backup_file_is_written_back_as_it_goes_only_when_synced(
        tmp_path: Path, calls: list[tuple[str, int, int]], sync: bool) -> None:
    """A backup to local disk fsyncs each file at its commit: written back and dropped as it goes,
    as a restore does; one written without sync is left to the kernel."""
    data = random.Random(6).randbytes(10 * STEP)
    env = LocalEnv(str(tmp_path / "backups"))
    with env.open_write("shared_checksum/big.sst", sync=sync) as out:
        for pos in range(0, len(data), STEP // 2):
            out.write(memoryview(data)[pos:pos + STEP // 2])
    assert (tmp_path / "backups" / "shared_checksum" / "big.sst").read_bytes() == data
    if sync:
        assert [c for c in calls if c[0] == "writeback"][-1][2] >= 9 * STEP
        assert any(kind == "drop" for kind, _, _ in calls)
    else:
        assert calls == []
