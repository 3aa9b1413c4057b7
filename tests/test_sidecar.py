"""Backups of a DB another process has open and keeps writing to (`LiveDbPath`, the sidecar).

The writer commits batches that each carry the next value of a counter and one key named after it,
with a tiny write buffer so that flushes and compactions (files appearing and disappearing) happen
all the time while the backups run.  Every restore must hold exactly the writes of one committed
counter value: the counter c and the keys 1..c, no more, no less.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine
from rbackup.checkpointdir import LOCK_SUFFIX, PREFIX
from rbackup.sidecar import LiveDbPath

_COUNTER_WRITER = """
import os, sys, rocksdict
opts = rocksdict.Options(raw_mode=True)
opts.create_if_missing(True)
opts.set_write_buffer_size(64 * 1024)
opts.set_target_file_size_base(64 * 1024)
opts.set_level_zero_file_num_compaction_trigger(2)
db = rocksdict.Rdict(sys.argv[1], opts)
n = 0
while True:
    n += 1
    batch = rocksdict.WriteBatch(raw_mode=True)
    batch.put(b"counter", b"%d" % n)
    batch.put(b"k%08d" % n, os.urandom(300))
    db.write(batch)
    if n == 2000:
        print("committed 2000", flush=True)
"""


def committed_state(db_dir: str) -> tuple[int, set[int]]:
    db = rocksdict.Rdict(db_dir, rocksdict.Options(raw_mode=True))
    try:
        counter = int(db[b"counter"])
        names = db.keys()  # iterating an Rdict itself is not raw-mode safe
        keys = {int(k[1:]) for k in names if k.startswith(b"k")}
    finally:
        db.close()
    return counter, keys


@pytest.mark.slow
def test_backups_beside_a_running_writer_each_restore_one_committed_counter(tmp_path):
    db_dir, backup_dir = str(tmp_path / "db"), str(tmp_path / "bk")
    writer = subprocess.Popen([sys.executable, "-c", _COUNTER_WRITER, db_dir], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "committed 2000"
        with BackupEngine.open(BackupableDBOptions(backup_dir)) as eng:
            ids = [eng.create_new_backup(LiveDbPath(db_dir)) for _ in range(5)]
        assert writer.poll() is None, "the writer must have run through every backup"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    counters = []
    with BackupEngine.open(BackupableDBOptions(backup_dir)) as eng:
        for backup_id in ids:
            eng.verify_backup(backup_id, verify_with_checksum=True)
            target = str(tmp_path / f"r{backup_id}")
            eng.restore_db_from_backup(backup_id, target)
            counter, keys = committed_state(target)
            assert counter >= 2000 and keys == set(range(1, counter + 1)), (backup_id, counter, len(keys))
            counters.append(counter)
    assert counters == sorted(counters) and counters[-1] > counters[0]
    files = {f.relative_filename for b in BackupEngine.open(BackupableDBOptions(backup_dir)).get_backup_info(True)
             for f in b.files}
    assert any(f.endswith(".log") for f in files) and len([f for f in files if f.endswith(".sst")]) > 3


@pytest.mark.slow
def test_cli_live_backs_up_a_db_this_test_holds_open(tmp_path):
    """`rbackup create --live` beside an open DB (here: open in the test process, another process to
    the command): it succeeds where the plain command refuses, and holds the unflushed writes too."""
    db_dir, backup_dir = str(tmp_path / "db"), str(tmp_path / "bk")
    rbackup = os.path.join(os.path.dirname(sys.executable), "rbackup")
    db = rocksdict.Rdict(db_dir, rocksdict.Options(raw_mode=True))
    try:
        for i in range(300):
            db[b"k%04d" % i] = b"v" * 100
        db.flush()
        db[b"only-in-the-wal"] = b"yes"
        plain = subprocess.run([rbackup, "create", "--db", db_dir, "--backup-dir", backup_dir],
                               capture_output=True, text=True, check=False)
        assert plain.returncode == 1 and "LOCK" in plain.stderr
        live = subprocess.run([rbackup, "create", "--db", db_dir, "--backup-dir", backup_dir, "--live"],
                              capture_output=True, text=True, check=False)
        assert live.returncode == 0, live.stderr
        db[b"after"] = b"the backup"
    finally:
        db.close()
    with BackupEngine.open(BackupableDBOptions(backup_dir)) as eng:
        eng.restore_db_from_latest_backup(str(tmp_path / "r"))
    restored = rocksdict.Rdict(str(tmp_path / "r"), rocksdict.Options(raw_mode=True))
    try:
        keys = set(restored.keys())
    finally:
        restored.close()
    assert len(keys) == 301 and b"only-in-the-wal" in keys and b"after" not in keys


_UNDER_A_LOW_LIMIT = """
import json, resource, sys
from rbackup import BackupableDBOptions, BackupEngine, BackupError
from rbackup.checkpointdir import LOCK_SUFFIX, PREFIX
from rbackup.sidecar import LiveDbPath
soft, hard = int(sys.argv[3]), int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
try:
    with BackupEngine(BackupableDBOptions(sys.argv[2])) as eng:
        backup_id = eng.create_new_backup(LiveDbPath(sys.argv[1]))
        eng.verify_backup(backup_id, True)
    print(json.dumps({"id": backup_id, "soft": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))
except BackupError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def test_a_live_db_of_more_files_than_the_soft_open_file_limit(tmp_path):
    """The sidecar holds every file open: 150 SSTs under a soft limit of 64 raise the soft limit
    (the common 1,024 would stop a 10,000-SST DB); under a hard limit of 64, a clear error that
    names the DB and the limit, and nothing half made."""
    db_dir = str(tmp_path / "db")
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_disable_auto_compactions(True)
    db = rocksdict.Rdict(db_dir, opts)
    for i in range(150):
        db[b"k%04d" % i] = b"v" * 100
        db.flush()
    db.close()
    assert sum(n.endswith(".sst") for n in os.listdir(db_dir)) == 150

    def run(backup_dir: str, soft: int, hard: int) -> dict:
        out = subprocess.run([sys.executable, "-c", _UNDER_A_LOW_LIMIT, db_dir, backup_dir, str(soft), str(hard)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    raised = run(str(tmp_path / "raised"), 64, 4096)
    assert raised["id"] == 1 and raised["soft"] > 150
    refused = run(str(tmp_path / "refused"), 64, 64)
    assert refused["error"] == "NotSupported", refused
    assert db_dir in refused["message"] and "needs 151 open files" in refused["message"]  # 150 SSTs + OPTIONS
    assert "ulimit" in refused["message"]
    with BackupEngine(BackupableDBOptions(str(tmp_path / "refused"))) as eng:
        assert eng.get_backup_info() == []


_KILLED_LIVE_COPY = """
import sys
from rbackup import BackupableDBOptions, BackupEngine
from rbackup.checkpointdir import LOCK_SUFFIX, PREFIX
from rbackup.sidecar import LiveDbPath
def wait(progress):
    print("copying", flush=True)
    sys.stdin.readline()
with BackupEngine.open(BackupableDBOptions(sys.argv[2], callback_trigger_interval_size=4096)) as eng:
    eng.create_new_backup(LiveDbPath(sys.argv[1]), progress_callback=wait)
"""


@pytest.mark.slow
def test_the_staging_of_a_killed_live_backup_is_beside_the_db_and_removed_by_the_next(tmp_path):
    """A `LiveDbPath` backup stages the MANIFEST prefix, CURRENT, OPTIONS and WALs as an open Rdict's
    does: in a locked directory beside the DB (not in $TMPDIR, where a SIGKILL left it for good), which
    the next backup removes; nothing is created in the DB's directory."""
    db_dir, backup_dir = str(tmp_path / "db"), str(tmp_path / "bk")
    db = rocksdict.Rdict(db_dir, rocksdict.Options(raw_mode=True))
    for i in range(300):
        db[b"k%04d" % i] = os.urandom(1000)
    db.close()
    before = sorted(os.listdir(db_dir))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_LIVE_COPY, db_dir, backup_dir],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "copying"
        left = [n for n in os.listdir(tmp_path) if n.startswith(PREFIX) and not n.endswith(LOCK_SUFFIX)]
        assert len(left) == 1 and any(n.startswith("MANIFEST-") for n in os.listdir(tmp_path / left[0]))
    finally:
        proc.kill()
        proc.wait()
    assert os.path.isdir(tmp_path / left[0])
    with BackupEngine.open(BackupableDBOptions(backup_dir)) as eng:
        backup_id = eng.create_new_backup(LiveDbPath(db_dir))
        eng.verify_backup(backup_id, verify_with_checksum=True)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(PREFIX)]
    assert sorted(os.listdir(db_dir)) == before
