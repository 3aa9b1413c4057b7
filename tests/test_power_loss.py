"""Power loss, not only kills (issue #10).

The crash suite SIGKILLs processes, but a kill keeps the page cache.  Here the
backup directory is on an ext4 filesystem whose "device" is a loop device over
an image file, and the image file lives on an XFS filesystem (itself a loop
mount of a file made for the test) so that `cp --reflink=always` clones it
atomically.  A clone holds exactly what the ext4 filesystem had submitted to its
device at that instant: what sat only in ext4's page cache is lost, as on power
loss.  (It is a conservative model: every write that reached the device
survives, as with a device without a volatile write cache.)

Clones are taken at random moments while a worker process creates backups,
purges old ones and restores, each with `sync=True`.  Each clone is then
e2fsck'ed (journal replay), mounted, and checked: nothing is corrupt, every
listed backup verifies with checksums and restores exactly its data, the newest
backup whose create had returned before the clone began is listed, and garbage
collection and a new create work on it.

Needs root, loop devices, mkfs.xfs (Debian's xfsprogs, installed by the README's set-up 2) and
e2fsprogs; skipped with the reason elsewhere.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import threading
import time

import pytest
import rocksdict

from rbackup import BackupableDBOptions, BackupEngine

from .db_fixtures import fill, read_all

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
KEYS_PER_STEP = 1500

_WORKER = """
import sys
sys.path.insert(0, sys.argv[1])
import rocksdict
from rbackup import BackupableDBOptions, BackupEngine
from tests.db_fixtures import fill
db_path, backup_dir, restore_root = sys.argv[2:5]
steps, keys = int(sys.argv[5]), int(sys.argv[6])
db = rocksdict.Rdict(db_path)
with BackupEngine.open(BackupableDBOptions(backup_dir)) as eng:
    for k in range(1, steps + 1):
        fill(db, keys, prefix=f"s{k}-", seed=k, value_size=1000)
        backup_id = eng.create_new_backup(db)
        print("created", backup_id, k, flush=True)
        if k % 3 == 0:
            eng.purge_old_backups(2)
            print("purged", flush=True)
        eng.restore_db_from_latest_backup(f"{restore_root}/r{k}")
        print("restored", k, flush=True)
db.close()
print("done", flush=True)
"""


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, timeout=300)


def expected(step: int) -> dict:
    out: dict = {}
    for k in range(1, step + 1):
        out.update(fill({}, KEYS_PER_STEP, prefix=f"s{k}-", seed=k, value_size=1000))
    return out


@pytest.fixture
def xfs_host(tmp_path):
    """An XFS filesystem (reflinks) mounted from an image file; skips where impossible."""
    missing = [t for t in ("mount", "umount", "losetup", "mkfs.xfs", "mkfs.ext4", "e2fsck") if not shutil.which(t)]
    if os.geteuid() != 0 or missing:
        pytest.skip(f"needs root and {', '.join(missing) or 'loop devices'} (Debian: xfsprogs, e2fsprogs)")
    image, host = tmp_path / "host.img", tmp_path / "host"
    host.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(1536 << 20)
    run("mkfs.xfs", "-q", "-m", "reflink=1", str(image))
    proc = run("mount", "-o", "loop", str(image), str(host), check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot loop-mount a filesystem image here: {proc.stderr.strip()}")
    mounts = [str(host)]
    yield str(host), mounts
    for mnt in reversed(mounts):
        run("umount", mnt, check=False)


def mount_ext4(image: str, mnt: str, mounts: list[str]) -> None:
    os.makedirs(mnt, exist_ok=True)
    run("mount", "-o", "loop", image, mnt)
    mounts.append(mnt)


def umount(mnt: str, mounts: list[str]) -> None:
    run("umount", mnt)
    mounts.remove(mnt)


def test_block_level_clones_taken_mid_operation_hold_only_whole_backups(xfs_host, tmp_path):
    host, mounts = xfs_host
    device = os.path.join(host, "device.img")
    with open(device, "wb") as fh:
        fh.truncate(384 << 20)
    run("mkfs.ext4", "-q", "-F", device)
    live = str(tmp_path / "live")
    mount_ext4(device, live, mounts)
    backup_dir = os.path.join(live, "backups")
    os.makedirs(os.path.join(live, "restores"))

    worker = subprocess.Popen([sys.executable, "-c", _WORKER, ROOT, str(tmp_path / "db"), backup_dir,
                               os.path.join(live, "restores"), str(STEPS), str(KEYS_PER_STEP)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(worker.stdout.readline, "")), daemon=True)
    reader.start()
    rng = random.Random(int(os.environ.get("RBACKUP_POWER_SEED", time.time_ns())))
    clones: list[tuple[str, dict[int, int]]] = []  # image, {backup id: step} whose create had returned
    while worker.poll() is None and len(clones) < 40:
        time.sleep(rng.uniform(0.0, 0.25))  # dense enough for a fast machine's worker too
        returned = {int(f[1]): int(f[2]) for f in (line.split() for line in list(lines)) if f[0] == "created"}
        clone = os.path.join(host, f"clone-{len(clones)}.img")
        run("cp", "--reflink=always", device, clone)
        clones.append((clone, returned))
    _, err = worker.communicate(timeout=600)
    reader.join(timeout=10)
    assert worker.returncode == 0 and lines and lines[-1].strip() == "done", err
    umount(live, mounts)
    assert len(clones) >= 3, "the worker finished before enough clones were taken"
    with_backups = 0
    for n, (clone, returned) in enumerate(clones):
        fsck = run("e2fsck", "-f", "-y", clone, check=False)
        assert fsck.returncode in (0, 1), f"clone {n}: e2fsck exit {fsck.returncode}: {fsck.stdout}{fsck.stderr}"
        mnt = str(tmp_path / f"clone-{n}")
        mount_ext4(clone, mnt, mounts)
        try:
            with_backups += check_clone(n, os.path.join(mnt, "backups"), returned, tmp_path)
        finally:
            umount(mnt, mounts)
    print(f"{len(clones)} clones checked, {with_backups} of them holding backups")
    assert with_backups >= 2, "too few clones were taken while backups existed to test anything"


def check_clone(n: int, backup_dir: str, returned: dict[int, int], tmp_path) -> int:
    if not os.path.isdir(backup_dir):
        assert not returned, f"clone {n}: backups {sorted(returned)} had returned but the directory is missing"
        return 0
    with BackupEngine.open(BackupableDBOptions(backup_dir)) as eng:
        assert eng.get_corrupted_backups() == [], f"clone {n}: {eng.corruption_reasons()}"
        listed = [b.backup_id for b in eng.get_backup_info()]
        if returned:
            assert max(returned) in listed, f"clone {n}: backup {max(returned)} had returned; listed {listed}"
        for backup_id in listed:
            eng.verify_backup(backup_id, True)
            step = returned.get(backup_id)
            target = str(tmp_path / f"check-{n}-{backup_id}")
            eng.restore_db_from_backup(backup_id, target)
            data = read_all(target)
            if step is None:  # committed, but its "created" line had not reached us before the clone
                step = next((k for k in range(1, STEPS + 1) if data == expected(k)), None)
                assert step is not None, f"clone {n}: backup {backup_id} restores no step's data"
            assert data == expected(step), f"clone {n}: backup {backup_id} does not restore step {step}'s data"
            shutil.rmtree(target)
        eng.garbage_collect()
        held = len(listed)
        db_path = str(tmp_path / f"fresh-{n}")
        db = rocksdict.Rdict(db_path)
        written = fill(db, 100, prefix="fresh")
        new_id = eng.create_new_backup(db)
        db.close()
        eng.verify_backup(new_id, True)
        target = str(tmp_path / f"check-{n}-new")
        eng.restore_db_from_backup(new_id, target)
        assert read_all(target) == written
        shutil.rmtree(target)
    return 1 if held else 0
