"""Backing up an open read-write Rdict by pinning its live files in place (issue 15), not through a
hard-link checkpoint: every write acknowledged before the backup is in it, the file set is the one of
a single version whatever flushes and compactions run meanwhile, and where the files cannot be pinned
the checkpoint is taken instead.  Also the MANIFEST progress cache the pinning decodes through."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine, BackupError, StorageError, create, sidecar, source
from rbackup import engine as engine_module
from rbackup.checkpointdir import LOCK_SUFFIX, PREFIX
from rbackup.format.logformat import LogReader, encode_records
from rbackup.format.manifest import read_manifest

from .db_fixtures import fill, read_all


def restored(eng: BackupEngine, tmp_path, backup_id: int | None = None, **kw) -> dict:
    target = str(tmp_path / f"restored-{uuid.uuid4().hex[:6]}")
    if backup_id is None:
        eng.restore_db_from_latest_backup(target)
    else:
        eng.restore_db_from_backup(backup_id, target)
    return read_all(target, **kw)


@pytest.fixture
def checkpoints(monkeypatch) -> list[str]:
    """The DB paths checkpointed during the test (the fallback): a test of pinning asserts none."""
    taken: list[str] = []
    real = source._checkpoint

    def spy(handle, db_path, backup_log_files):
        taken.append(db_path)
        return real(handle, db_path, backup_log_files)

    monkeypatch.setattr(source, "_checkpoint", spy)
    return taken


def test_unflushed_and_wal_less_writes_are_in_the_backup(tmp_path, checkpoints):
    """Writes in the memtable only (WAL disabled): the flush before pinning puts them in an SST."""
    db = rocksdict.Rdict(str(tmp_path / "db"))
    written = fill(db, 300)
    no_wal = rocksdict.WriteOptions()
    no_wal.disable_wal = True
    for i in range(50):
        db.put(f"nowal{i:04d}", b"x" * 64, write_opt=no_wal)
        written[f"nowal{i:04d}"] = b"x" * 64
    try:
        with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"))) as eng:
            eng.create_new_backup(db)
            assert restored(eng, tmp_path) == written
    finally:
        db.close()
    assert checkpoints == []


def test_the_meta_file_records_the_sequence_number_from_before_the_backup(tmp_path, checkpoints):
    db = rocksdict.Rdict(str(tmp_path / "db"))
    fill(db, 100)
    try:
        seq = db.latest_sequence_number()
        with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"))) as eng:
            backup_id = eng.create_new_backup(db)
        with open(tmp_path / "bk" / "meta" / str(backup_id)) as fh:
            assert int(fh.read().splitlines()[1]) == seq == 100
    finally:
        db.close()
    assert checkpoints == []


def _blob_cf_db(path: str) -> tuple[rocksdict.Rdict, rocksdict.Rdict]:
    opts = rocksdict.Options()
    opts.create_if_missing(True)
    opts.set_enable_blob_files(True)
    opts.set_min_blob_size(64)
    db = rocksdict.Rdict(path, opts)
    return db, db.create_column_family("other", opts)


def test_column_families_and_blob_files_are_pinned(tmp_path, checkpoints):
    db, other = _blob_cf_db(str(tmp_path / "db"))
    try:
        main = fill(db, 200, value_size=500)
        db.flush()
        main.update(fill(db, 20, prefix="mem", value_size=500))  # memtable + WAL only
        side = fill(other, 150, prefix="o", value_size=500)  # never flushed by the test
        assert any(n.endswith(".blob") for n in os.listdir(tmp_path / "db"))
        with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"))) as eng:
            backup_id = eng.create_new_backup(db)
            files = [f.relative_filename for f in eng.get_backup_info(True)[0].files]
            assert any(f.endswith(".blob") for f in files)
            target = str(tmp_path / "restored")
            eng.restore_db_from_backup(backup_id, target)
        back = rocksdict.Rdict(target)
        try:
            assert dict(back.items()) == main
            assert dict(back.get_column_family("other").items()) == side
        finally:
            back.close()
    finally:
        db.close()
    assert checkpoints == []


def test_several_column_families_without_wals_are_checkpointed(tmp_path, checkpoints):
    """With backup_log_files=False the SSTs alone must hold each cross-family batch whole, which
    only RocksDB's own all-family flush promises: the checkpoint."""
    db, other = _blob_cf_db(str(tmp_path / "db"))
    try:
        main, side = fill(db, 50), fill(other, 50, prefix="o")
        with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"), backup_log_files=False)) as eng:
            eng.create_new_backup(db)
            target = str(tmp_path / "restored")
            eng.restore_db_from_latest_backup(target)
        back = rocksdict.Rdict(target)
        try:
            assert dict(back.items()) == main and dict(back.get_column_family("other").items()) == side
        finally:
            back.close()
    finally:
        db.close()
    assert checkpoints == [str(tmp_path / "db")]


def test_a_db_with_data_files_in_db_paths_goes_to_the_checkpoint_which_refuses_it(tmp_path, checkpoints):
    """Its SSTs are not in the DB directory (and its OPTIONS file does not say where they are): not
    pinned (a clear NotSupported, at the first look), but checkpointed, and RocksDB's Checkpoint
    refuses db_paths as its BackupEngine does: no backup, an error that says why."""
    opts = rocksdict.Options()
    opts.create_if_missing(True)
    opts.set_db_paths([rocksdict.DBPath(str(tmp_path / "data"), 1 << 30)])
    db = rocksdict.Rdict(str(tmp_path / "db"), opts)
    try:
        fill(db, 200)
        db.flush()
        assert any(n.endswith(".sst") for n in os.listdir(tmp_path / "data"))
        with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"))) as eng:
            with pytest.raises(StorageError, match="db_paths / cf_paths not supported"):
                eng.create_new_backup(db)
            assert eng.get_backup_info() == []
    finally:
        db.close()
    assert checkpoints == [str(tmp_path / "db")]


def test_a_db_that_keeps_changing_its_files_while_pinned_is_checkpointed(tmp_path, checkpoints, monkeypatch):
    """Each look at the files races a real flush (a new SST and a MANIFEST edit): the pinned set never
    holds still, and after PINNING_ATTEMPTS the checkpoint is taken; every write is in it."""
    db = rocksdict.Rdict(str(tmp_path / "db"))
    written = fill(db, 100)
    real_open_all = sidecar._open_all
    moves = []

    def open_all_racing_a_flush(db_path, fds, names):
        moves.append(len(moves))
        written.update(fill(db, 5, prefix=f"race{len(moves):03d}-"))
        db.flush()
        return real_open_all(db_path, fds, names)

    monkeypatch.setattr(sidecar, "_open_all", open_all_racing_a_flush)
    try:
        with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"))) as eng:
            eng.create_new_backup(db)
            monkeypatch.setattr(sidecar, "_open_all", real_open_all)
            assert restored(eng, tmp_path) == written
    finally:
        db.close()
    assert len(moves) == source.PINNING_ATTEMPTS and checkpoints == [str(tmp_path / "db")]


def test_backups_during_heavy_writes_and_compactions_each_restore_one_committed_counter(tmp_path, checkpoints):
    """A writer thread commits batches carrying a counter (in one column family) and a key per value
    (in another), with tiny memtables and SSTs so that flushes and compactions run all the time, and a
    second thread compacts the whole range over and over.  Each restore holds exactly the writes of one
    counter value c: c, and keys 1..c, and c is at least what was acknowledged before the backup began.
    Pinning that lost a write, or took SSTs of two versions, fails this."""
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_write_buffer_size(64 * 1024)
    opts.set_target_file_size_base(64 * 1024)
    opts.set_level_zero_file_num_compaction_trigger(2)
    path = str(tmp_path / "db")
    db = rocksdict.Rdict(path, opts)
    keys_cf = db.create_column_family("keys", opts)
    acknowledged = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            n = 0
            while not stop.is_set():
                n += 1
                batch = rocksdict.WriteBatch(raw_mode=True)
                batch.put(b"counter", b"%d" % n)
                batch.put(b"k%08d" % n, os.urandom(300), keys_cf.get_column_family_handle("keys"))
                db.write(batch)
                acknowledged[0] = n
                if n % 20 == 0:
                    time.sleep(0.0005)  # let the backing-up thread have the GIL now and then
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def compact() -> None:
        try:
            while not stop.wait(0.05):
                db.compact_range(None, None)
                keys_cf.compact_range(None, None)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=compact)]
    for t in threads:
        t.start()
    floors: dict[int, int] = {}
    try:
        while acknowledged[0] < 1000 and not errors:
            stop.wait(0.01)
        with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"))) as eng:
            for _ in range(6):
                floor = acknowledged[0]
                floors[eng.create_new_backup(db)] = floor
    finally:
        stop.set()
        for t in threads:
            t.join()
        db.close()
    assert not errors, errors
    # a backup whose files changed PINNING_ATTEMPTS times in a row is checkpointed; most are pinned
    assert len(checkpoints) < len(floors) / 2, f"{len(checkpoints)} of {len(floors)} backups checkpointed"
    counters = []
    with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"))) as eng:
        for backup_id, floor in floors.items():
            eng.verify_backup(backup_id, verify_with_checksum=True)
            target = str(tmp_path / f"r{backup_id}")
            eng.restore_db_from_backup(backup_id, target)
            back = rocksdict.Rdict(target, rocksdict.Options(raw_mode=True))
            try:
                counter = int(back[b"counter"])
                keys = {int(k[1:]) for k in back.get_column_family("keys").keys()}
            finally:
                back.close()
            assert counter >= floor and keys == set(range(1, counter + 1)), (backup_id, floor, counter, len(keys))
            counters.append(counter)
    assert counters == sorted(counters)


# --- the MANIFEST progress cache --------------------------------------------------------

def test_log_reader_resumed_at_any_record_end_reads_the_same_records():
    records = [os.urandom(n) for n in (10, 40000, 5, 32760, 32761, 7, 100000, 1, 32768 - 7 - 7)]
    data = encode_records(records)

    class Source:
        def __init__(self, start: int) -> None:
            self.pos = start

        def read(self, n: int) -> bytes:
            out = data[self.pos:self.pos + n]
            self.pos += len(out)
            return out

    whole = LogReader(Source(0), "log")
    ends = []
    for _ in whole:
        ends.append(whole.record_end)
    assert ends[-1] == len(data)
    for i, end in enumerate(ends):
        assert list(LogReader(Source(end), "log", start=end)) == records[i + 1:]


def test_manifest_progress_resumes_after_appends_and_rereads_a_file_rewritten_in_place(tmp_path):
    path = str(tmp_path / "db")
    db = rocksdict.Rdict(path)
    cache = sidecar._ManifestProgressCache()

    def manifest() -> str:
        with open(os.path.join(path, "CURRENT")) as fh:
            return os.path.join(path, fh.read().strip())

    def via_cache(name: str):
        fd = os.open(name, os.O_RDONLY)
        try:
            return cache.read(fd, os.fstat(fd).st_size, name)
        finally:
            os.close(fd)

    def whole(name: str):
        with open(name, "rb") as fh:
            return read_manifest(fh, name)

    try:
        for round_ in range(3):  # each flush appends an edit: the cache decodes just that
            fill(db, 20, prefix=f"r{round_}-")
            db.flush()
            name = manifest()
            assert via_cache(name).tables() == whole(name).tables() != []
    finally:
        db.close()
    # Another DB's MANIFEST written over this one in place (same inode, same name): the cached
    # progress no longer matches the file's first bytes, so it is decoded from the start.
    other = str(tmp_path / "other")
    odb = rocksdict.Rdict(other)
    fill(odb, 500)
    for _ in range(4):
        odb.flush()
        fill(odb, 10, prefix="more")
    odb.close()
    with open(os.path.join(other, "CURRENT")) as fh:
        theirs = os.path.join(other, fh.read().strip())
    name = manifest()
    inode = os.stat(name).st_ino
    with open(theirs, "rb") as src, open(name, "r+b") as dst:
        dst.write(src.read())
    assert os.stat(name).st_ino == inode
    assert via_cache(name).tables() == whole(theirs).tables()


_KILLED_MID_COPY = """
import sys
sys.path.insert(0, sys.argv[1])
import rocksdict
from rbackup import BackupableDBOptions, BackupEngine
from tests.db_fixtures import fill
db = rocksdict.Rdict(sys.argv[2])
fill(db, 300, value_size=1000)
def wait(progress):
    print("copying", flush=True)
    sys.stdin.readline()
with BackupEngine.open(BackupableDBOptions(sys.argv[3], callback_trigger_interval_size=4096)) as eng:
    eng.create_new_backup(db, progress_callback=wait)
"""


def test_the_staging_of_a_killed_pinned_backup_is_removed_by_the_next_backup(tmp_path, checkpoints):
    """What a pinned backup stages (MANIFEST prefix, CURRENT, OPTIONS, WALs) sits beside the DB in a
    locked checkpoint-style directory: a SIGKILL leaves it, and the next backup removes it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    db_path, backups = str(tmp_path / "db"), str(tmp_path / "bk")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_MID_COPY, root, db_path, backups],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "copying"
        left = [n for n in os.listdir(tmp_path) if n.startswith(PREFIX) and not n.endswith(LOCK_SUFFIX)]
        assert len(left) == 1 and any(n.startswith("MANIFEST-") for n in os.listdir(tmp_path / left[0]))
    finally:
        proc.kill()
        proc.wait()
    assert os.path.isdir(tmp_path / left[0])
    db = rocksdict.Rdict(db_path)
    try:
        written = dict(db.items())
        with BackupEngine(BackupableDBOptions(backups)) as eng:
            eng.create_new_backup(db)
            assert restored(eng, tmp_path) == written
    finally:
        db.close()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(PREFIX)]
    assert checkpoints == []


# --- SSTs the backup directory already holds are not pinned again ---------------------------

@pytest.fixture
def opened(monkeypatch) -> list[list[str]]:
    """The SSTs each snapshot opens (pins), one list per attempt (the real opening runs)."""
    seen: list[list[str]] = []
    real = sidecar._open_all

    def spy(db_path, fds, names):
        seen.append([n for n, _ in names if n.endswith(".sst")])
        return real(db_path, fds, names)

    monkeypatch.setattr(sidecar, "_open_all", spy)
    return seen


def _no_auto_compaction() -> rocksdict.Options:
    opts = rocksdict.Options()
    opts.create_if_missing(True)
    opts.set_disable_auto_compactions(True)
    return opts


def _flushed_db(path: str, ssts: int) -> tuple[rocksdict.Rdict, dict]:
    """`ssts` SSTs over the same keys (a compaction rewrites them into one), none compacted yet."""
    db = rocksdict.Rdict(path, _no_auto_compaction())
    written: dict = {}
    for i in range(ssts):
        written.update(fill(db, 30, seed=i))
        db.flush()
    return db, written


def test_a_no_change_backup_of_a_kept_open_rdict_opens_none_of_the_ssts_it_holds(tmp_path, opened, checkpoints):
    db, written = _flushed_db(str(tmp_path / "db"), 4)
    try:
        with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"))) as eng:
            eng.create_new_backup(db)
            assert len(opened[-1]) == 4
            eng.create_new_backup(db)
            assert opened[-1] == []  # known through the first snapshot's pins, held by backup 1
            written.update(fill(db, 30, prefix="new"))
            db.flush()
            eng.create_new_backup(db)
            assert len(opened[-1]) == 1  # only the new SST is pinned
            for backup_id in (1, 2, 3):
                eng.verify_backup(backup_id, verify_with_checksum=True)
            assert restored(eng, tmp_path) == written
    finally:
        db.close()
    assert checkpoints == []


def test_ssts_another_backup_directory_holds_are_pinned_and_survive_a_compaction(tmp_path, opened, checkpoints,
                                                                                   monkeypatch):
    """The first backup (to one directory) leaves the SSTs' stats behind; a backup of the same open
    Rdict to a second, empty directory must still pin every SST, since it copies them all: a
    compaction that deletes them all after the snapshot and before the copy must not matter."""
    db, written = _flushed_db(str(tmp_path / "db"), 4)
    real = create._gather_naming_facts
    compacted: list[int] = []

    def compact_first(*args, **kwargs):
        if not compacted:
            db.compact_range(None, None)
            compacted.append(len([n for n in os.listdir(tmp_path / "db") if n.endswith(".sst")]))
        return real(*args, **kwargs)

    try:
        with BackupEngine(BackupableDBOptions(str(tmp_path / "one"))) as eng:
            eng.create_new_backup(db)
        ssts = sorted(n for n in os.listdir(tmp_path / "db") if n.endswith(".sst"))
        monkeypatch.setattr(create, "_gather_naming_facts", compact_first)
        with BackupEngine(BackupableDBOptions(str(tmp_path / "two"))) as eng:
            eng.create_new_backup(db)
            assert sorted(opened[-1]) == ssts
            assert compacted == [1] and not set(ssts) & set(os.listdir(tmp_path / "db"))
            eng.verify_backup(1, verify_with_checksum=True)
            assert restored(eng, tmp_path) == written
    finally:
        db.close()
    assert checkpoints == []


def test_a_reopened_db_pins_every_sst_again(tmp_path, opened):
    """The stats are kept per MANIFEST: a DB closed and opened again writes a new one, so nothing
    learnt through the old one is trusted."""
    db, written = _flushed_db(str(tmp_path / "db"), 3)
    try:
        with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"))) as eng:
            eng.create_new_backup(db)
    finally:
        db.close()
    db = rocksdict.Rdict(str(tmp_path / "db"), _no_auto_compaction())
    try:
        with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"))) as eng:
            eng.create_new_backup(db)
            assert len(opened[-1]) == 3
            eng.create_new_backup(db)
            assert opened[-1] == []
            assert restored(eng, tmp_path) == written
    finally:
        db.close()


def test_the_cycle_collector_is_switched_back_on_after_a_backup_and_left_off_if_it_was(tmp_path, monkeypatch):
    """`create_new_backup` pauses Python's cycle collector while it works (issue 15): it is on again
    after a backup, also one that fails, and a collector the caller had switched off stays off."""
    import gc

    db = rocksdict.Rdict(str(tmp_path / "db"))
    fill(db, 50)
    paused: list[bool] = []
    real = create.create_backup

    def spy(*args, **kwargs):
        paused.append(not gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "create_backup", spy)
    with BackupEngine(BackupableDBOptions(str(tmp_path / "bk"))) as eng:
        assert gc.isenabled()
        eng.create_new_backup(db)
        assert gc.isenabled() and paused == [True]
        db.close()
        with pytest.raises(BackupError):
            eng.create_new_backup(db)  # closed: the create fails
        assert gc.isenabled() and paused == [True, True]
        gc.disable()
        try:
            with pytest.raises(BackupError):
                eng.create_new_backup(db)
            assert not gc.isenabled()
        finally:
            gc.enable()
