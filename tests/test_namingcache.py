"""The naming cache: an incremental backup reads no SST it has read before, and never names a file wrongly.

Real DBs and real SSTs (rocksdict); the only instrument is a spy that counts the real properties reads.
"""
from __future__ import annotations

import os
import shutil
import time

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine, Corruption, namingcache
from rbackup.format import sstprops
from rbackup.format.meta import parse_meta
from rbackup.format.naming import FileKind
from rbackup.namingcache import PROCESS_CACHE, NamingCache, identity, identity_of, pinned_identities
from rbackup.plan import NamingFacts, SourceFile

from .db_fixtures import fill, read_all


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every SST whose properties block is read, in order (the real reader runs)."""
    seen: list[str] = []
    real = sstprops.read_session_id

    def counting(f, size):
        # a pinned DB file is read through its descriptor's /proc/self/fd/N: name the file it is
        seen.append(os.path.basename(os.readlink(f.name) if f.name.startswith("/proc/self/fd/") else f.name))
        return real(f, size)

    monkeypatch.setattr(sstprops, "read_session_id", counting)
    PROCESS_CACHE.clear()
    yield seen
    PROCESS_CACHE.clear()


def make_db(path: str, ssts: int, *, seed: int) -> rocksdict.Rdict:
    """A DB of `ssts` flushed SSTs whose sizes depend only on `ssts` (random values of fixed length)."""
    db = rocksdict.Rdict(path)
    for i in range(ssts):
        fill(db, 20, prefix=f"s{i}-", seed=seed * 1000 + i)
        db.flush()
    return db


def shared_names(backup_dir: str, backup_id: int) -> list[str]:
    with open(os.path.join(backup_dir, "meta", str(backup_id)), "rb") as fh:
        meta = parse_meta(fh.read(), backup_id)
    return sorted(e.path for e in meta.files if e.path.startswith("shared_checksum/"))


_READ_SESSION_ID = sstprops.read_session_id
"""The real reader, for the tests' own look at a file (not counted by `reads`)."""


def session_of(path: str) -> str | None:
    with open(path, "rb") as fh:
        return _READ_SESSION_ID(fh, os.path.getsize(path))


def db_ssts(path: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".sst"))


def test_a_no_change_incremental_reads_no_sst_and_a_new_sst_is_read_once(tmp_path, reads):
    db_path, backup_dir = str(tmp_path / "db"), str(tmp_path / "backups")
    db = make_db(db_path, 4, seed=1)
    try:
        with BackupEngine(BackupableDBOptions(backup_dir)) as engine:
            engine.create_new_backup(db)
        assert sorted(reads) == db_ssts(db_path)  # the first backup reads each SST once
        reads.clear()
        with BackupEngine(BackupableDBOptions(backup_dir)) as engine:  # another engine: the process's cache
            engine.create_new_backup(db)
        assert reads == []
        assert shared_names(backup_dir, 2) == shared_names(backup_dir, 1)
        before = set(db_ssts(db_path))
        fill(db, 20, prefix="new-", seed=99)
        db.flush()
        with BackupEngine(BackupableDBOptions(backup_dir)) as engine:
            engine.create_new_backup(db)
            engine.verify_backup(3, verify_with_checksum=True)
        assert reads == sorted(set(db_ssts(db_path)) - before)
        for name in db_ssts(db_path):  # every name carries the session the file itself holds
            number, size = name.split(".")[0], os.path.getsize(os.path.join(db_path, name))
            assert f"shared_checksum/{number}_s{session_of(os.path.join(db_path, name))}_{size}.sst" in \
                shared_names(backup_dir, 3)
    finally:
        db.close()


def test_another_db_with_the_same_file_names_and_sizes_is_read_and_named_by_its_own_sessions(tmp_path, reads):
    """Two DBs written alike hold SSTs of the same numbers and sizes but other sessions: the second
    one's backup must read its own files (a name-and-size cache would reuse the first one's names)."""
    backup_dir = str(tmp_path / "backups")
    names = {}
    for label in ("a", "b"):
        db_path = str(tmp_path / label)
        db = make_db(db_path, 3, seed=5)
        try:
            with BackupEngine(BackupableDBOptions(backup_dir)) as engine:
                backup_id = engine.create_new_backup(db)
        finally:
            db.close()
        names[label] = shared_names(backup_dir, backup_id)
        expected = sorted(f"shared_checksum/{n.split('.')[0]}_s{session_of(os.path.join(db_path, n))}_"
                          f"{os.path.getsize(os.path.join(db_path, n))}.sst" for n in db_ssts(db_path))
        assert names[label] == expected
    assert [n.rsplit("_", 1)[1] for n in names["a"]] == [n.rsplit("_", 1)[1] for n in names["b"]]  # same sizes
    assert set(names["a"]).isdisjoint(names["b"])  # other sessions
    assert len(reads) == 2 * len(names["a"])
    with BackupEngine(BackupableDBOptions(backup_dir)) as engine:
        engine.restore_db_from_backup(2, str(tmp_path / "restored"))
    assert read_all(str(tmp_path / "restored")) == read_all(str(tmp_path / "b"))


def sst(path: str, *, seed: int) -> SourceFile:
    """A real SST written by SstFileWriter (its own session id), of a size that depends only on its shape."""
    writer = rocksdict.SstFileWriter(rocksdict.Options(raw_mode=True))
    writer.open(path)
    for k in range(10):
        writer[b"key%04d" % k] = os.urandom(50) if seed else bytes(50)
    writer.finish()
    return SourceFile("000042.sst", path, os.path.getsize(path), FileKind.TABLE, os.stat(path))


def read_facts(files: list[SourceFile]) -> list[NamingFacts]:
    return [NamingFacts(session_of(f.path)) for f in files]


def test_a_file_rewritten_in_place_with_another_session_is_read_again(tmp_path):
    path = str(tmp_path / "000042.sst")
    cache = NamingCache()
    first = sst(path, seed=1)
    assert cache.facts([first], read_facts) == {"000042.sst": NamingFacts(session_of(path))}
    other = sst(str(tmp_path / "other.sst"), seed=2)
    assert other.size == first.size and session_of(other.path) != session_of(path)
    time.sleep(0.05)  # a later write: the coarse mtime clock has moved on
    with open(path, "r+b") as fh, open(other.path, "rb") as src:  # same inode, same size, other content
        fh.write(src.read())
    again = SourceFile("000042.sst", path, os.path.getsize(path), FileKind.TABLE, os.stat(path))
    assert again.stat is not None and first.stat is not None and again.stat.st_ino == first.stat.st_ino
    assert cache.facts([again], read_facts) == {"000042.sst": NamingFacts(session_of(other.path))}
    assert cache.stats.misses == 2 and cache.stats.hits == 0


def test_a_new_file_in_a_freed_inode_or_under_another_name_is_read_again(tmp_path):
    path = str(tmp_path / "000042.sst")
    cache = NamingCache()
    first = sst(path, seed=1)
    cache.facts([first], read_facts)
    # The same inode under another DB file name (an ingestion's hard link) is another file to the cache.
    linked = str(tmp_path / "000043.sst")
    os.link(path, linked)
    renamed = SourceFile("000043.sst", linked, first.size, FileKind.TABLE, os.stat(linked))
    cache.facts([renamed], read_facts)
    assert cache.stats.misses == 2
    # Deleted, and a new SST written at the same path, usually into the freed inode.
    os.unlink(linked)
    os.unlink(path)
    time.sleep(0.05)
    second = sst(path, seed=2)
    assert cache.facts([second], read_facts) == {"000042.sst": NamingFacts(session_of(path))}
    assert cache.stats.misses == 3 and cache.stats.hits == 0


def test_a_read_that_fails_is_not_remembered_and_the_cache_stays_bounded(tmp_path):
    cache = NamingCache(max_entries=2)
    path = str(tmp_path / "000042.sst")
    good = sst(path, seed=1)
    with open(path, "rb") as fh:
        data = fh.read()
    bad_path = str(tmp_path / "000050.sst")
    with open(bad_path, "wb") as fh:
        fh.write(data[:-8] + bytes(8))  # no SST magic
    bad = SourceFile("000050.sst", bad_path, len(data), FileKind.TABLE, os.stat(bad_path))
    for _ in range(2):
        with pytest.raises(Corruption):
            cache.facts([good, bad], read_facts)
    assert len(cache) == 0  # nothing of a failed batch is kept
    others = []
    for i in range(3):
        p = str(tmp_path / f"{i}.sst")
        shutil.copyfile(path, p)
        others.append(SourceFile(f"00010{i}.sst", p, good.size, FileKind.TABLE, os.stat(p)))
    cache.facts(others[:2], read_facts)
    cache.facts(others[2:], read_facts)
    assert len(cache) == 2
    cache.facts(others[1:], read_facts)
    assert cache.stats.hits == 2  # the least recently used one went first


def test_a_backup_of_more_files_than_the_bound_keeps_them_all(tmp_path):
    """Least-recently-used eviction alone would make every backup of a DB bigger than the bound miss
    every file; the files of the latest backup are kept whatever their number."""
    cache = NamingCache(max_entries=2)
    files = []
    for i in range(5):
        files.append(sst(str(tmp_path / f"{i}.sst"), seed=1))
        files[-1] = SourceFile(f"00020{i}.sst", files[-1].path, files[-1].size, FileKind.TABLE, files[-1].stat)
    cache.facts(files, read_facts)
    assert len(cache) == 5
    cache.facts(files, read_facts)
    assert (cache.stats.misses, cache.stats.hits) == (5, 5)


def test_files_without_an_inode_number_or_whose_size_moved_are_not_cached(tmp_path):
    path = str(tmp_path / "000042.sst")
    f = sst(path, seed=1)
    assert identity_of(f) is not None
    grown = SourceFile(f.name, f.path, f.size + 1, f.kind, f.stat)
    assert identity_of(grown) is None
    unstatted = SourceFile(f.name, f.path, f.size, f.kind)  # stat taken on demand
    assert identity_of(unstatted) == identity_of(f)
    gone = SourceFile(f.name, str(tmp_path / "missing.sst"), f.size, f.kind)
    assert identity_of(gone) is None


def test_a_no_change_backup_of_an_open_rdict_asks_the_cache_about_no_sst(tmp_path, reads):
    """The SSTs its snapshot left unpinned were named with the facts the snapshot found for them
    (the same key): the naming step does not look each of them up a second time."""
    db_path, backup_dir = str(tmp_path / "db"), str(tmp_path / "backups")
    db = make_db(db_path, 4, seed=3)
    try:
        with BackupEngine(BackupableDBOptions(backup_dir)) as engine:
            engine.create_new_backup(db)
            asked = (PROCESS_CACHE.stats.hits, PROCESS_CACHE.stats.misses)
            engine.create_new_backup(db)
            assert (PROCESS_CACHE.stats.hits, PROCESS_CACHE.stats.misses) == asked
            assert shared_names(backup_dir, 2) == shared_names(backup_dir, 1)
            engine.verify_backup(2, verify_with_checksum=True)
        assert sorted(reads) == db_ssts(db_path)  # each read once, by the first backup
    finally:
        db.close()


def test_facts_found_by_known_count_as_used_for_the_eviction(tmp_path):
    """A backup that finds its files' facts through `known` (the snapshot's question) keeps them as
    recently used: the least recently used entry to go is another one."""
    cache = NamingCache(max_entries=2)
    path = str(tmp_path / "000042.sst")
    good = sst(path, seed=1)
    files = []
    for i in range(3):
        p = str(tmp_path / f"{i}.sst")
        shutil.copyfile(path, p)
        files.append(SourceFile(f"00030{i}.sst", p, good.size, FileKind.TABLE, os.stat(p)))
    cache.facts(files[:2], read_facts)  # 300 is the least recently used, then 301
    assert cache.known([identity_of(files[0])]) == [NamingFacts(session_of(path))]
    cache.facts(files[2:], read_facts)  # one must go: 301, since `known` just used 300
    assert cache.known([identity_of(f) for f in files]) == [NamingFacts(session_of(path)), None,
                                                            NamingFacts(session_of(path))]


def test_pinned_identities_reuse_a_stat_objects_key_and_no_other(tmp_path, monkeypatch):
    path = str(tmp_path / "000042.sst")
    f = sst(path, seed=1)
    assert f.stat is not None
    made: list[str] = []
    real = namingcache.identity

    def counting(name, size, st):
        made.append(name)
        return real(name, size, st)

    monkeypatch.setattr(namingcache, "identity", counting)
    first = pinned_identities([(f.name, f.size, f.stat)])
    assert first == [identity(f.name, f.size, f.stat)] and first[0] is not None and made == [f.name]
    assert pinned_identities([(f.name, f.size, f.stat)]) == first and made == [f.name]  # the same stat object
    assert pinned_identities([(f.name, f.size + 1, f.stat)]) == [None]  # not the size that stat says
    time.sleep(0.05)
    os.utime(path)  # the same file touched: another stat, another key
    assert pinned_identities([(f.name, f.size, os.stat(path))]) != first and len(made) == 3
