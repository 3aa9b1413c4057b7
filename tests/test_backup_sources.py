"""Every way into a backup captures every acknowledged write, or refuses (issue #10):
Rdict handles by access mode, and the hard-link checkpoint of an open Rdict
(where it goes, and which leftover checkpoints may be removed)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine, NotSupported, source
from rbackup.checkpointdir import LOCK_SUFFIX, PREFIX, remove_dead_checkpoints

from .db_fixtures import fill, read_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def engine(backup_dir: str) -> BackupEngine:
    return BackupEngine.open(BackupableDBOptions(backup_dir))


def restored(eng: BackupEngine, tmp_path) -> dict:
    target = str(tmp_path / f"restored-{uuid.uuid4().hex[:6]}")
    eng.restore_db_from_latest_backup(target)
    return read_all(target)


def primary_with_unflushed_writes(tmp_path) -> tuple[rocksdict.Rdict, str, dict]:
    path = str(tmp_path / "db")
    db = rocksdict.Rdict(path)
    written = fill(db, 200)
    db.flush()
    written.update(fill(db, 50, prefix="mem", seed=4))  # in the memtable and WAL only
    db.flush_wal(True)
    return db, path, written


@pytest.mark.parametrize("mode", ["read_only", "secondary"])
def test_read_only_or_secondary_rdict_is_refused_naming_the_mode(tmp_path, backup_dir, mode):
    """Before: the backup restored only the flushed keys, silently (the handle saw all)."""
    primary, path, written = primary_with_unflushed_writes(tmp_path)
    access = (rocksdict.AccessType.read_only() if mode == "read_only"
              else rocksdict.AccessType.secondary(str(tmp_path / "secondary")))
    handle = rocksdict.Rdict(path, access_type=access)
    try:
        assert dict(handle.items()) == written  # what the handle sees
        with engine(backup_dir) as eng:
            expected = {"read_only": r"read-only \(AccessType.read_only\(\)\)",
                        "secondary": r"as a secondary \(AccessType.secondary"}[mode]
            with pytest.raises(NotSupported, match=expected):
                eng.create_new_backup(handle)
            assert eng.get_backup_info() == []
            # the read-write handle of the same DB backs up every write
            eng.create_new_backup(primary)
            assert restored(eng, tmp_path) == written
    finally:
        handle.close()
        primary.close()


def test_read_write_rdict_with_a_separate_wal_dir_backs_up_every_write(tmp_path, backup_dir):
    path, wal = str(tmp_path / "db"), str(tmp_path / "wal")
    opts = rocksdict.Options()
    opts.create_if_missing(True)
    opts.set_wal_dir(wal)
    db = rocksdict.Rdict(path, opts)
    written = fill(db, 200)
    db.flush()
    written.update(fill(db, 50, prefix="mem", seed=4))
    db.flush_wal(True)
    assert [n for n in os.listdir(wal) if n.endswith(".log")]
    try:
        with engine(backup_dir) as eng:
            eng.create_new_backup(db)
            assert restored(eng, tmp_path) == written
    finally:
        db.close()


# --- leftover checkpoints -------------------------------------------------------------

def test_dead_checkpoint_is_removed_live_and_unprovable_ones_stay(tmp_path):
    dead = tmp_path / f"{PREFIX}1-dead"
    (dead / "sub").mkdir(parents=True)
    (tmp_path / f"{PREFIX}1-dead{LOCK_SUFFIX}").write_bytes(b"")
    (tmp_path / f"{PREFIX}1-dead.tmp").mkdir()  # RocksDB's half-built checkpoint
    live = tmp_path / f"{PREFIX}2-live"
    live.mkdir()
    (tmp_path / f"{PREFIX}2-live{LOCK_SUFFIX}").write_bytes(b"")
    legacy = tmp_path / f"{PREFIX}3-nolock"  # an older rbackup's: no lock file
    legacy.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import fcntl, os, struct, sys
        fh = open(sys.argv[1], "r+")
        fcntl.fcntl(fh, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        print("held", flush=True)
        sys.stdin.readline()
        """), str(live) + LOCK_SUFFIX], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        remove_dead_checkpoints(str(tmp_path))
        assert sorted(os.listdir(tmp_path)) == sorted([live.name, live.name + LOCK_SUFFIX, legacy.name])
    finally:
        holder.communicate("\n", timeout=30)
    remove_dead_checkpoints(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [legacy.name]


def test_checkpoint_of_another_thread_of_this_process_is_alive(tmp_path):
    """A lock of this very process still counts as held (OFD locks belong to the open
    file, not the process), and the cleanup drops no lock of ours."""
    from rbackup.checkpointdir import checkpoint_dir

    db = tmp_path / "db"
    db.mkdir()
    with checkpoint_dir(str(db)) as path:
        os.mkdir(path)
        remove_dead_checkpoints(str(tmp_path))
        assert os.path.isdir(path)
        remove_dead_checkpoints(str(tmp_path))  # the first cleanup closed its descriptor: still held
        assert os.path.isdir(path)
    assert sorted(os.listdir(tmp_path)) == ["db"]


_NAMESPACED_BACKUP = """
import os, subprocess, sys
want = int(sys.argv[1])
try:  # the next pid handed out in this fresh namespace (root in it may set the counter)
    with open("/proc/sys/kernel/ns_last_pid", "w") as fh:
        fh.write(str(want - 1))
except OSError:  # else use pids up, one short-lived child at a time
    child = subprocess.Popen(["true"])
    while child.wait() is not None and child.pid < want - 1:
        child = subprocess.Popen(["true"])
worker = subprocess.run([sys.executable, "-c", sys.argv[2]] + sys.argv[3:])
sys.exit(worker.returncode)
"""

_WORKER = """
import os, sys
sys.path.insert(0, sys.argv[1])
import rocksdict
from rbackup import BackupableDBOptions, BackupEngine
from tests.db_fixtures import fill
print("pid", os.getpid(), flush=True)
db = rocksdict.Rdict(sys.argv[2])
fill(db, 300, value_size=1000)
# too few descriptors to pin the DB's files in place: this backup must take a checkpoint
import resource
spare = len(os.listdir("/proc/self/fd")) + 40
resource.setrlimit(resource.RLIMIT_NOFILE, (spare, spare))
told = []
def wait_once(progress):
    if not told:
        told.append(1)
        print("copying", flush=True)
        sys.stdin.readline()
with BackupEngine.open(BackupableDBOptions(sys.argv[3], callback_trigger_interval_size=4096)) as eng:
    eng.create_new_backup(db, progress_callback=wait_once)
db.close()
print("done", flush=True)
"""


def _unused_pid_not_handed_out_soon() -> int:
    """A pid no process has here, below the last one handed out: the kernel gives out
    pids upwards, so it stays unused until the counter wraps around."""
    with open("/proc/sys/kernel/ns_last_pid") as fh:
        last = int(fh.read())
    for pid in range(last - 200, 299, -1):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    pytest.skip("no unused pid below the pid counter")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="a pid namespace needs root and unshare(1)")
def test_running_backup_in_another_pid_namespace_keeps_its_checkpoint(tmp_path):
    """Before: its pid, meaningless here, was judged dead and the running backup's
    checkpoint deleted under it (it then failed with a raw FileNotFoundError).  The worker
    checkpoints because its open-file limit cannot pin its DB's files; ours pins them, and
    still cleans the dead checkpoints beside the DB first."""
    free = _unused_pid_not_handed_out_soon()
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", _NAMESPACED_BACKUP,
                             str(free), _WORKER, ROOT, str(tmp_path / "theirs"), str(tmp_path / "their-backups")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        if first.split() != ["pid", str(free)]:
            pytest.skip(f"could not place the worker at a pid unused here ({first.strip()!r}, wanted {free})")
        assert not os.path.exists(f"/proc/{free}")  # its pid means nothing in our namespace
        assert proc.stdout.readline().strip() == "copying"
        theirs = [n for n in os.listdir(tmp_path) if n.startswith(PREFIX) and not n.endswith(LOCK_SUFFIX)]
        assert theirs and theirs[0].startswith(f"{PREFIX}{free}-")
        ours = rocksdict.Rdict(str(tmp_path / "ours"))
        written = fill(ours, 10)
        with engine(str(tmp_path / "our-backups")) as eng:
            eng.create_new_backup(ours)  # cleans leftover checkpoints beside the DB first
            assert restored(eng, tmp_path) == written
        ours.close()
        assert os.path.isdir(tmp_path / theirs[0])
        out, err = proc.communicate("\n", timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out.strip().endswith("done"), err
    assert not [n for n in os.listdir(tmp_path) if n.startswith(PREFIX)]


@pytest.fixture(params=["pinned", "checkpoint"])
def snapshot_way(request, monkeypatch):
    """Run a test once with the open Rdict's files pinned in place, once through its checkpoint
    (what a DB whose files cannot be pinned gets)."""
    if request.param == "checkpoint":
        def cannot_pin(db_path, *args):
            raise NotSupported(f"{db_path}: pinning disabled by the test")
        monkeypatch.setattr(source, "_pinned", cannot_pin)
    return request.param


@pytest.fixture
def small_volume(tmp_path):
    """A tmpfs mount point: the root of its own filesystem."""
    mnt = tmp_path / "vol"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                          check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield str(mnt)
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_db_at_the_root_of_its_own_volume(small_volume, tmp_path, backup_dir, snapshot_way):
    """Before: NotSupported (no writable directory on the DB's filesystem beside it)."""
    db = rocksdict.Rdict(small_volume)
    written = fill(db, 300)
    try:
        with engine(backup_dir) as eng:
            eng.create_new_backup(db)
            assert restored(eng, tmp_path) == written
        assert not [n for n in os.listdir(small_volume) if n.startswith(PREFIX)]
    finally:
        db.close()


def test_db_reached_through_a_symlink(small_volume, tmp_path, backup_dir, snapshot_way):
    """The link is on another filesystem than the DB: the checkpoint goes beside the real directory."""
    real = os.path.join(small_volume, "db")
    link = str(tmp_path / "db-link")
    os.mkdir(real)
    os.symlink(real, link)
    db = rocksdict.Rdict(link)
    written = fill(db, 300)
    try:
        with engine(backup_dir) as eng:
            eng.create_new_backup(db)
            assert restored(eng, tmp_path) == written
    finally:
        db.close()
