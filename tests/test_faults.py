"""Faults of the store: transient ones are survived, permanent ones fail fast and cleanly.

S3 faults come from the `s3_faulty` proxy (a WSGI middleware in front of the
moto server that returns 500/503 SlowDown, resets connections before or
after the request is applied, truncates bodies and delays responses).  Disk
faults are a FaultInjectionEnv filling up after N bytes, a real tmpfs that
runs out of space, and a read-only file system.  After each failure the
backup directory is checked as a new process would see it
(`crash_worker.check_backup_dir`).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rbackup import BackupEngine, BackupEngineReadOnly, BackupError, NotFound, PermissionDenied, StorageError
from rbackup.env.local import LocalEnv
from rbackup.testing.doubles import FaultInjectionEnv
from tests.s3_fixtures import Fault, FaultyS3

from .crash_worker import (
    World,
    backup_files,
    check_backup_dir,
    engine_options,
    fingerprint,
    make_env,
    orphans,
    read_db,
)


def restore_and_compare(eng: BackupEngine, backup_id: int, expected: dict[str, bytes], scratch: Path) -> None:
    target = scratch / f"r{backup_id}-{uuid.uuid4().hex[:6]}"
    eng.restore_db_from_backup(backup_id, str(target))
    assert read_db(str(target)) == expected
    shutil.rmtree(target)


# -- transient S3 faults --------------------------------------------------------------------------
def test_backup_restore_delete_survive_random_s3_faults(world: World, scratch: Path, s3_faulty: FaultyS3) -> None:
    """Every engine operation through a proxy failing ~12% of requests in every way it knows
    (plus one of each kind aimed at the critical requests: meta reads, the meta commit,
    the lease, listings, batch deletes): every byte comes back, nothing is corrupt."""
    url = f"{s3_faulty.url}/db"
    inj = s3_faulty.injector
    inj.reset(seed=11)
    for fault in (
        Fault("error", method="GET", path=r"/meta/\d+$", times=2),
        Fault("truncate", method="GET", path=r"/meta/\d+$", times=1),
        Fault("reset_before", method="GET", path=r"/meta/\d+$", times=1),
        Fault("reset_after", method="PUT", path=r"/meta/2$", times=1),  # lost reply to the commit
        Fault("reset_after", method="PUT", path=r"/rbackup\.lock\.d/", times=1),  # ... to the lease
        Fault("error", method="GET", query="list-type", times=2, status=500, code="InternalError"),
        Fault("reset_after", method="POST", query="delete", times=1),
    ):
        inj.add(fault)
    inj.chaos(0.12)
    so = s3_faulty.storage_options
    with BackupEngine(engine_options(url, so)) as eng:
        assert eng.create_new_backup(world.dbs["A"]) == 1
        assert eng.create_new_backup(world.dbs["B"]) == 2
        assert eng.create_new_backup(world.dbs["C"]) == 3
        assert [i.backup_id for i in eng.get_backup_info()] == [1, 2, 3]
        assert eng.get_corrupted_backups() == []
        for backup_id, name in ((1, "A"), (2, "B"), (3, "C")):
            eng.verify_backup(backup_id, True)
            restore_and_compare(eng, backup_id, world.data[name], scratch)
        eng.delete_backup(1)
        eng.purge_old_backups(1)
    with BackupEngineReadOnly(engine_options(url, so)) as ro:
        assert [i.backup_id for i in ro.get_backup_info()] == [3] and ro.get_corrupted_backups() == []
        restore_and_compare(ro, 3, world.data["C"], scratch)
    injected = dict(inj.injected)
    print(f"[faults] S3 faults injected and survived: {sum(injected.values())} {injected} "
          f"of {inj.requests} requests")
    inj.reset()
    clean = s3_faulty.clean_storage_options
    assert orphans(make_env(url, clean)) == []
    assert sum(injected.values()) >= 30 and len(injected) == 5, injected


def test_transient_meta_read_fault_never_makes_a_backup_corrupt(world: World, scratch: Path,
                                                                s3_faulty: FaultyS3) -> None:
    """A meta file read that fails for good while an engine opens must fail the open, never
    mark the backup corrupt: a corrupt backup's files are garbage to the next GC."""
    url = f"{s3_faulty.url}/db"
    with BackupEngine(engine_options(url, s3_faulty.clean_storage_options)) as eng:
        eng.create_new_backup(world.dbs["A"])
    for kind in ("truncate", "error"):  # a short body must not parse as a (bad) meta file
        s3_faulty.injector.reset()
        s3_faulty.injector.add(Fault(kind, method="GET", path=r"/meta/1$", status=500, code="InternalError"))
        with pytest.raises(BackupError) as info:
            BackupEngine(engine_options(url, {**s3_faulty.storage_options, "max_attempts": 2}))
        assert "meta/1" in str(info.value)
        s3_faulty.injector.reset()
        with BackupEngineReadOnly(engine_options(url, s3_faulty.clean_storage_options)) as ro:
            assert [i.backup_id for i in ro.get_backup_info()] == [1] and ro.get_corrupted_backups() == []
            ro.verify_backup(1, True)


def test_lost_reply_to_the_meta_commit_is_a_committed_backup_s3(world: World, scratch: Path,
                                                                s3_faulty: FaultyS3) -> None:
    """The commit PUT is applied but every reply is lost, and so are the replies to reading
    it back: the create fails (it cannot know), yet no file of the backup is deleted, so
    the backup that did get committed is whole and valid."""
    url = f"{s3_faulty.url}/db"
    s3_faulty.injector.add(Fault("reset_after", method="PUT", path=r"/meta/1$"))
    s3_faulty.injector.add(Fault("reset_before", method="HEAD", path=r"/meta/1$"))
    s3_faulty.injector.add(Fault("reset_before", method="GET", path=r"/meta/1$"))
    with pytest.raises(BackupError):
        with BackupEngine(engine_options(url, {**s3_faulty.storage_options, "max_attempts": 2})) as eng:
            eng.create_new_backup(world.dbs["A"])
    s3_faulty.injector.reset()
    check_backup_dir(url, s3_faulty.clean_storage_options, expected={1: world.data["A"], 2: world.data["B"]},
                     must_list={1}, untouched={}, scratch=scratch, next_db=world.dbs["B"])


# -- permanent S3 errors ----------------------------------------------------------------------------
def test_access_denied_fails_fast_and_leaves_nothing_half_made(world: World, scratch: Path,
                                                              s3_faulty: FaultyS3) -> None:
    """Uploads start being refused (403) mid-backup: the create fails within seconds with
    PermissionDenied naming the store, no backup 2 appears, and backup 1 is untouched."""
    url = f"{s3_faulty.url}/db"
    clean = s3_faulty.clean_storage_options
    with BackupEngine(engine_options(url, clean)) as eng:
        eng.create_new_backup(world.dbs["A"])
    env = make_env(url, clean)
    before = fingerprint(env, backup_files(env, [1]))
    s3_faulty.injector.add(Fault("error", method="PUT", path=r"/shared_checksum/", status=403,
                                 code="AccessDenied", message="Access Denied"))
    started = time.monotonic()
    with BackupEngine(engine_options(url, s3_faulty.storage_options)) as eng:
        with pytest.raises(PermissionDenied) as info:
            eng.create_new_backup(world.dbs["B"])
    assert time.monotonic() - started < 10
    assert url in str(info.value) and "AccessDenied" in str(info.value)
    s3_faulty.injector.reset()
    listing = {f.path for f in env.list("")}
    assert "meta/2" not in listing and not any(p.startswith("private/2/") for p in listing)
    assert fingerprint(env, sorted(before)) == before
    check_backup_dir(url, clean, expected={1: world.data["A"], 2: world.data["B"]}, must_list={1},
                     untouched=before, scratch=scratch, next_db=world.dbs["B"])


def test_everything_denied_fails_fast(s3_faulty: FaultyS3) -> None:
    s3_faulty.injector.add(Fault("error", status=403, code="AccessDenied", message="Access Denied"))
    url = f"{s3_faulty.url}/db"
    started = time.monotonic()
    with pytest.raises(PermissionDenied) as info:
        BackupEngine(engine_options(url, s3_faulty.storage_options))
    assert time.monotonic() - started < 10 and url in str(info.value)


def test_missing_bucket_fails_fast(moto_server: str, s3_bucket_url: tuple[str, dict[str, Any]]) -> None:
    _, so = s3_bucket_url
    started = time.monotonic()
    for engine_class in (BackupEngine, BackupEngineReadOnly):
        with pytest.raises(NotFound) as info:
            engine_class(engine_options("s3://rbk-no-such-bucket-x/db", so))
        assert "rbk-no-such-bucket-x" in str(info.value) and "does not exist" in str(info.value)
    assert time.monotonic() - started < 10


def test_persistent_slowdown_gives_up_in_bounded_time(world: World, s3_faulty: FaultyS3) -> None:
    """A store that answers 503 SlowDown to every upload: retried with backoff a bounded
    number of times, then a clear StorageError, and no backup appears."""
    url = f"{s3_faulty.url}/db"
    s3_faulty.injector.add(Fault("error", method="PUT"))
    started = time.monotonic()
    with BackupEngine(engine_options(url, {**s3_faulty.storage_options, "max_attempts": 3})) as eng:
        with pytest.raises(StorageError) as info:
            eng.create_new_backup(world.dbs["A"])
    elapsed = time.monotonic() - started
    assert "SlowDown" in str(info.value) and url in str(info.value)
    assert elapsed < 30, elapsed
    assert s3_faulty.injector.injected["error"] >= 3  # it did retry
    s3_faulty.injector.reset()
    assert [f.path for f in make_env(url, s3_faulty.clean_storage_options).list("meta")] == []


# -- local disk: full, read-only ----------------------------------------------------------------------
def assert_no_partial_files(backup_dir: str) -> None:
    """Every file under a final name is whole: shared_checksum names carry their size, and
    private/ files exist only for committed backups (checked by check_backup_dir)."""
    for dirpath, _, names in os.walk(backup_dir):
        for name in names:
            m = re.fullmatch(r"\d+_s[0-9A-Z]+_(\d+)\.(sst|blob)", name)
            if m and os.path.basename(dirpath) == "shared_checksum":
                assert os.path.getsize(os.path.join(dirpath, name)) == int(m.group(1)), name


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_disk_full_mid_backup(world: World, scratch: Path, fraction: float) -> None:
    """The disk fills up after `fraction` of what backup 2 writes: the create fails with a
    StorageError saying so, no file under a final name is partial, backup 1 is intact."""
    d = str(scratch / "bk")
    shutil.copytree(world.tmpl1, d)
    probe = FaultInjectionEnv(LocalEnv(d + "-probe"))
    shutil.copytree(world.tmpl1, d + "-probe")
    with BackupEngine(engine_options(d + "-probe", None, probe)) as eng:
        eng.create_new_backup(world.dbs["B"])
    budget = int(probe.bytes_written * fraction)
    env = LocalEnv(d)
    before = fingerprint(env, backup_files(env, [1]))
    faulty = FaultInjectionEnv(env, fail_write_after_bytes=budget)
    with BackupEngine(engine_options(d, None, faulty)) as eng:
        with pytest.raises(StorageError, match="no space"):
            eng.create_new_backup(world.dbs["B"])
    assert_no_partial_files(d)
    assert not os.path.exists(os.path.join(d, "meta", "2"))
    check_backup_dir(d, None, expected={1: world.data["A"], 2: world.data["B"]}, must_list={1},
                     untouched=before, scratch=scratch, next_db=world.dbs["B"])


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                       capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=10)


def test_real_enospc_on_a_small_tmpfs(world: World, scratch: Path, tmp_path: Path) -> None:
    """A real file system that runs out of space (a 320 KiB tmpfs: backup 1 fits, backup 2
    does not): StorageError "no space left on device", nothing partial, backup 1 intact."""
    with small_tmpfs(tmp_path / "mnt", "320k") as mnt:
        d = str(mnt / "bk")
        with BackupEngine(engine_options(d, None)) as eng:
            eng.create_new_backup(world.dbs["A"])
        env = LocalEnv(d)
        before = fingerprint(env, backup_files(env, [1]))
        with BackupEngine(engine_options(d, None)) as eng:
            with pytest.raises(StorageError, match="no space left on device"):
                eng.create_new_backup(world.dbs["B"])
        assert_no_partial_files(d)
        with BackupEngineReadOnly(engine_options(d, None)) as ro:
            assert [i.backup_id for i in ro.get_backup_info()] == [1]
            ro.verify_backup(1, True)
            restore_and_compare(ro, 1, world.data["A"], scratch)
        assert fingerprint(env, sorted(before)) == before
        with BackupEngine(engine_options(d, None)) as eng:
            eng.garbage_collect()  # deleting works on a full disk
        assert orphans(env) == []


def test_read_only_backup_dir(world: World, scratch: Path, tmp_path: Path) -> None:
    """A backup directory on a read-only file system (or without write permission): writers
    fail at once with a clear error naming the directory; readers list, verify and restore."""
    with small_tmpfs(tmp_path / "ro", "2m") as mnt:
        d = str(mnt / "bk")
        with BackupEngine(engine_options(d, None)) as eng:
            eng.create_new_backup(world.dbs["A"])
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True, timeout=10)
        started = time.monotonic()
        with BackupEngine(engine_options(d, None)) as eng:
            for action in (lambda: eng.create_new_backup(world.dbs["B"]), lambda: eng.delete_backup(1),
                           eng.garbage_collect):
                with pytest.raises(StorageError) as info:
                    action()
                assert d in str(info.value) and "Read-only file system" in str(info.value)
        assert time.monotonic() - started < 5
        with BackupEngineReadOnly(engine_options(d, None)) as ro:
            assert [i.backup_id for i in ro.get_backup_info()] == [1]
            ro.verify_backup(1, True)
            restore_and_compare(ro, 1, world.data["A"], scratch)
