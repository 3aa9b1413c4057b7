"""Loading a backup directory: each distinct file known once, compact per-backup lists,
newest-first loading that stops at max_valid_backups_to_open, and the same verdicts
(corrupt backups named with their file) as a line-by-line load."""
from __future__ import annotations

import dataclasses
import io
import os
from array import array

import pytest

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly, Corruption
from rbackup.env.base import ReadStream
from rbackup.env.local import LocalEnv
from rbackup.env.wrappers import WrapperEnv
from rbackup.errors import FileTooLarge, InvalidArgument
from rbackup.format.meta import MAX_META_FILE_SIZE, EntryList, EntryTable, parse_meta, serialize_meta
from rbackup.state import MetaCache, load_state
from rbackup.testing.doubles import CountingEnv

from .db_fixtures import fill


def make_backups(live_db, backup_dir: str, count: int) -> None:
    with BackupEngine(BackupableDBOptions(backup_dir, sync=False)) as eng:
        for i in range(count):
            if i:
                live_db.add(20, prefix=f"b{i}")
            eng.create_new_backup(live_db.db)


def meta_bytes(backup_dir: str, backup_id: int) -> bytes:
    with open(os.path.join(backup_dir, "meta", str(backup_id)), "rb") as fh:
        return fh.read()


def test_a_file_shared_by_many_backups_is_one_entry(live_db, backup_dir):
    make_backups(live_db, backup_dir, 4)
    state = load_state(LocalEnv(backup_dir), workers=1)
    metas = [b.meta for b in state.valid]
    assert all(isinstance(m.files, EntryList) and isinstance(m.files.indices, array) for m in metas)
    first_sst = next(e for e in metas[0].files if e.path.endswith(".sst"))
    holders = [next(e for e in m.files if e.path == first_sst.path) for m in metas]
    assert all(e is first_sst for e in holders)  # the same object, not four equal ones
    # the table holds each distinct line once: the union of the backups' files, no more
    table = metas[0].files.table
    assert all(m.files.table is table for m in metas)
    assert len(table) == len({(e.path, e.crc32c) for m in metas for e in m.files})
    # and what the engine reports is what a line-by-line parse says
    for backup in state.valid:
        plain = parse_meta(meta_bytes(backup_dir, backup.backup_id), backup.backup_id)
        assert backup.meta == plain and list(backup.meta.files) == plain.files
        assert dict(backup.sizes) == {e.path: os.path.getsize(os.path.join(backup_dir, e.path)) for e in plain.files}
        assert backup.live_bytes == sum(backup.sizes.values()) and len(backup.sizes) == len(plain.files)


def test_max_valid_backups_to_open_reads_only_the_newest_meta_files(live_db, backup_dir):
    make_backups(live_db, backup_dir, 6)
    os.unlink(os.path.join(backup_dir, "private/5/CURRENT"))  # 5 is corrupt: 6 and 4 are the newest valid

    def meta_reads(env: CountingEnv) -> list[str]:
        return sorted(p for p in env.reads if p.startswith("meta/"))

    env = CountingEnv(LocalEnv(backup_dir))
    with BackupEngineReadOnly(BackupableDBOptions(backup_dir, backup_env=env, max_valid_backups_to_open=2)) as ro:
        assert [b.backup_id for b in ro.get_backup_info()] == [4, 6]
        assert ro.get_corrupted_backups() == [5]
    assert meta_reads(env) == ["meta/4", "meta/5", "meta/6"]

    # reading ahead concurrently (an object store) reads at most `workers` more, and keeps the same cut
    env = CountingEnv(LocalEnv(backup_dir))
    state = load_state(env, max_valid=2, workers=2)
    assert sorted(state.backups) == [4, 5, 6] and [b.backup_id for b in state.valid] == [4, 6]
    assert len(meta_reads(env)) <= 3 + 2
    full = load_state(LocalEnv(backup_dir), workers=4)
    assert [b.backup_id for b in full.valid] == [1, 2, 3, 4, 6] and full.corrupt_ids == [5]


def test_a_missing_shared_file_names_each_backup_that_uses_it(live_db, backup_dir):
    make_backups(live_db, backup_dir, 3)
    state = load_state(LocalEnv(backup_dir), workers=1)
    shared = set.intersection(*({e.path for e in b.meta.files if e.path.startswith("shared")} for b in state.valid))
    victim = sorted(shared)[0]
    os.unlink(os.path.join(backup_dir, victim))
    state = load_state(LocalEnv(backup_dir), workers=1)
    assert state.corrupt_ids == [1, 2, 3]
    for backup_id in (1, 2, 3):
        message = str(state.backups[backup_id].error)
        assert message == f"backup {backup_id}: {victim} is named in the meta file but not found"


def test_stable_sizes_are_the_shared_checksum_files_found_as_their_lines_say(live_db, backup_dir):
    """What the engine's next listing may take as known (`BackupEnv.list_sizes`): the shared_checksum
    files the meta files name, at the size found, except a file missing or at another size than a
    line says (it is measured again, so a copy that replaces it is seen at its own size)."""
    make_backups(live_db, backup_dir, 3)
    metas = {i: parse_meta(meta_bytes(backup_dir, i), i) for i in (1, 2, 3)}
    shared = {i: [e for e in m.files if e.path.startswith("shared_checksum/")] for i, m in metas.items()}
    first = {e.path for e in shared[1]}
    gone = shared[1][0]
    misfit = next(e for e in shared[2] if e.path not in first)  # named by meta/2 and, sizeless, by meta/3
    os.unlink(os.path.join(backup_dir, gone.path))
    true_size = os.path.getsize(os.path.join(backup_dir, misfit.path))
    files = [dataclasses.replace(e, size=true_size + 1) if e.path == misfit.path else e for e in metas[2].files]
    with open(os.path.join(backup_dir, "meta", "2"), "wb") as fh:
        fh.write(serialize_meta(dataclasses.replace(metas[2], files=files), 2))
    assert load_state(LocalEnv(backup_dir), workers=1).stable_sizes == {}  # kept for writers only
    state = load_state(LocalEnv(backup_dir), workers=1, keep_sizes=True)
    assert state.corrupt_ids == [1, 2, 3]
    named = {e.path for m in metas.values() for e in m.files if e.path.startswith("shared_checksum/")}
    assert state.stable_sizes == {p: os.path.getsize(os.path.join(backup_dir, p))
                                  for p in named - {gone.path, misfit.path}}
    # a load given them lists what a load measuring every file lists
    again = load_state(LocalEnv(backup_dir), workers=1, known_sizes=state.stable_sizes, keep_sizes=True)
    assert again.listing == state.listing and again.stable_sizes == state.stable_sizes


def test_a_private_line_never_stands_for_another_backups_file(live_db, backup_dir):
    """The table is shared across meta files, but `private/1/...` is valid only in meta/1:
    copying backup 1's private lines into meta/2 is caught even after meta/1 was parsed."""
    make_backups(live_db, backup_dir, 2)
    table = EntryTable()
    one = meta_bytes(backup_dir, 1)
    parse_meta(one, 1, table=table)
    private_one = [line for line in one.decode().splitlines() if line.startswith("private/1/")]
    two = meta_bytes(backup_dir, 2).decode().splitlines()
    forged = [line for line in two if not line.startswith("private/2/")] + private_one
    with pytest.raises(Corruption, match=r"backup 2: meta file line \d+: invalid path 'private/1/.*another backup"):
        parse_meta(("\n".join(forged) + "\n").encode(), 2, table=table)
    # and the table did not learn anything from the rejected file that a later parse could trust
    parse_meta(meta_bytes(backup_dir, 2), 2, table=table)


def test_known_lines_are_still_checked_for_duplicates(live_db, backup_dir):
    make_backups(live_db, backup_dir, 1)
    table = EntryTable()
    data = meta_bytes(backup_dir, 1)
    parse_meta(data, 1, table=table)
    lines = data.decode().splitlines()
    sst = next(i for i, line in enumerate(lines) if line.startswith("shared_checksum/"))
    doubled = [*lines[:3], str(int(lines[2]) + 1), *lines[3:], lines[sst]]
    doubled.pop(2)
    with pytest.raises(Corruption, match=rf"line {len(doubled)}: invalid path .*listed twice"):
        parse_meta(("\n".join(doubled) + "\n").encode(), 1, table=table)
    # a new entry restoring to the DB file of a known one
    name = lines[sst].split(" ")[0].split("/")[1].split("_")[0] + ".sst"
    clash = [*lines[:2], str(int(lines[2]) + 1), *lines[3:], f"shared/{name} crc32 7"]
    with pytest.raises(Corruption, match=f"restores to the same DB file '{name}'"):
        parse_meta(("\n".join(clash) + "\n").encode(), 1, table=table)


def test_the_meta_cache_forgets_deleted_backups(live_db, backup_dir, monkeypatch):
    """Entries only deleted backups used are dropped once the table has doubled:
    a long-lived engine's memory follows the directory, not its history."""
    monkeypatch.setattr(MetaCache, "_MIN_COMPACT", 1)
    cache = MetaCache()
    env = LocalEnv(backup_dir)
    ever: set[tuple[str, int | None]] = set()
    most = 0
    with BackupEngine(BackupableDBOptions(backup_dir, sync=False)) as eng:
        for i in range(8):
            fill(live_db.db, 30, prefix=f"c{i}", seed=i)
            live_db.db.flush()
            eng.create_new_backup(live_db.db)
            eng.purge_old_backups(2)
            state = load_state(env, workers=1, cache=cache)
            assert sorted(cache.metas) == [b.backup_id for b in state.valid] == list(range(max(1, i), i + 2))
            fresh = load_state(env, workers=1)
            assert [(b.backup_id, b.meta, dict(b.sizes)) for b in state.valid] == \
                   [(b.backup_id, b.meta, dict(b.sizes)) for b in fresh.valid]
            live = {(e.path, e.crc32c) for b in state.valid for e in b.meta.files}
            ever |= live
            most = max(most, len(live))
            assert len(cache.table) <= 2 * most
    assert len(cache.table) < len(ever)


def test_referenced_takes_the_oldest_backups_line_for_a_disputed_file(live_db, backup_dir):
    make_backups(live_db, backup_dir, 3)
    text = meta_bytes(backup_dir, 2).decode()
    line = next(line for line in text.splitlines() if line.startswith("shared_checksum/"))
    path, _, crc = line.split(" ")
    forged = text.replace(line, f"{path} crc32 {(int(crc) + 1) % (1 << 32)}")
    with open(os.path.join(backup_dir, "meta", "2"), "w") as fh:
        fh.write(forged)
    state = load_state(LocalEnv(backup_dir), workers=1)
    refs = state.referenced()
    assert refs[path] == (os.path.getsize(os.path.join(backup_dir, path)), int(crc))  # backup 1's line
    assert refs == state._referenced_in_order(state.valid, None)


def _many_backups_of_one_db(root: str, backups: int, ssts: int) -> None:
    """`backups` meta files naming the same `ssts` shared files (empty files; nothing
    reads them at load), each with its own private CURRENT: RocksDB's format, no DB."""
    os.makedirs(os.path.join(root, "shared_checksum"))
    os.makedirs(os.path.join(root, "meta"))
    shared = []
    for n in range(ssts):
        name = f"{n + 10:06d}_s{'A' * 20}_0.sst"
        open(os.path.join(root, "shared_checksum", name), "wb").close()
        shared.append(f"shared_checksum/{name} crc32 {n * 7919 % (1 << 32)}\n")
    for backup_id in range(1, backups + 1):
        os.makedirs(os.path.join(root, "private", str(backup_id)))
        with open(os.path.join(root, "private", str(backup_id), "CURRENT"), "wb") as fh:
            fh.write(b"MANIFEST-000005\n")
        lines = [*shared, f"private/{backup_id}/CURRENT crc32 1\n"]
        with open(os.path.join(root, "meta", str(backup_id)), "w") as fh:
            fh.write(f"{1700000000 + backup_id}\n{backup_id}\n{len(lines)}\n{''.join(lines)}")


@pytest.mark.slow
def test_memory_is_flat_in_the_number_of_backups(tmp_path):
    """The same 2,000 files in 10 or in 60 backups: each extra backup costs its index
    array (4 bytes a file) and a few small objects, not a copy of the file list."""
    import gc
    import tracemalloc

    held = {}
    for backups in (10, 60):
        root = str(tmp_path / f"d{backups}")
        _many_backups_of_one_db(root, backups, 2000)
        gc.collect()
        tracemalloc.start()
        state = load_state(LocalEnv(root), workers=1)
        assert len(state.valid) == backups and len(state.valid[0].meta.files.table) == 2000 + backups
        held[backups] = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del state
    per_backup = (held[60] - held[10]) / 50
    assert per_backup < 4 * 2000 * 2, f"each backup costs {per_backup:.0f} bytes of {held}"


class _MetaReadFails(WrapperEnv):
    """Reading meta/1 raises `error`; everything else passes through."""

    def __init__(self, inner: LocalEnv, error: Exception) -> None:
        super().__init__(inner)
        self.error = error

    def open_read(self, path: str) -> ReadStream:
        if path == "meta/1":
            raise self.error
        return super().open_read(path)


class _MetaGrewAfterListing(WrapperEnv):
    """meta/1 is listed at its size but reads back longer than any meta file may be."""

    def open_read(self, path: str) -> ReadStream:
        if path == "meta/1":
            return io.BytesIO(b"x" * (MAX_META_FILE_SIZE + 1))
        return super().open_read(path)


def _files(backup_dir: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), backup_dir) for d, _, fs in os.walk(backup_dir) for f in fs)


def test_only_file_too_large_marks_a_backup_corrupt_never_a_stray_invalid_argument(live_db, backup_dir):
    """A meta file that outgrew the limit is that backup's damage (FileTooLarge); any other
    InvalidArgument while reading it is a bug or a bad request: it is raised, and the backup is
    neither called corrupt nor garbage collected."""
    make_backups(live_db, backup_dir, 2)
    before = _files(backup_dir)
    grown = _MetaGrewAfterListing(LocalEnv(backup_dir))
    assert load_state(grown, workers=1).corrupt_ids == [1]
    stray = _MetaReadFails(LocalEnv(backup_dir), InvalidArgument("a bug's InvalidArgument"))
    with pytest.raises(InvalidArgument, match="a bug's") as info:
        load_state(stray, workers=1)
    assert not isinstance(info.value, FileTooLarge)
    with pytest.raises(InvalidArgument, match="a bug's"):
        with BackupEngine(BackupableDBOptions(backup_dir, backup_env=stray)) as eng:
            eng.garbage_collect()
    assert _files(backup_dir) == before
    with BackupEngineReadOnly(BackupableDBOptions(backup_dir)) as ro:
        assert [i.backup_id for i in ro.get_backup_info()] == [1, 2] and ro.get_corrupted_backups() == []
