"""The main job, on local disk: make a real DB, back it up twice, list, verify,
restore, and read every key back.  Run: python examples/quickstart.py [WORKDIR]"""
from __future__ import annotations

import logging
import os
import random
import sys
import tempfile
import time

import rocksdict

from rbackup import BackupableDB, BackupableDBOptions, RestoreBackupableDB


def main(workdir: str) -> None:
    db_path = os.path.join(workdir, "rocksdb")
    backup_dir = os.path.join(workdir, "rocksdb_backup")
    restore_path = os.path.join(workdir, "rocksdb_restored")
    rng = random.Random(42)
    expected: dict[str, bytes] = {}

    db = BackupableDB(rocksdict.Rdict(db_path), BackupableDBOptions(backup_dir, max_background_operations=2))
    for i in range(20_000):
        expected[f"user:{i:06d}"] = rng.randbytes(512)
    for key, value in expected.items():
        db[key] = value
    db.put(b"key", b"value")
    expected["key"] = b"value"  # rocksdict stores bytes keys and values as given

    t = time.perf_counter()
    first = db.create_new_backup(app_metadata=b"first")
    print(f"backup {first}: full, {time.perf_counter() - t:.2f}s")

    for i in range(1_000):  # 5% new data
        expected[f"order:{i:06d}"] = rng.randbytes(512)
        db[f"order:{i:06d}"] = expected[f"order:{i:06d}"]
    t = time.perf_counter()
    second = db.create_new_backup(app_metadata=b"second")
    print(f"backup {second}: incremental, {time.perf_counter() - t:.2f}s")

    print(f"{'id':>3}  {'time':19}  {'size':>10}  files  metadata")
    for info in db.get_backup_info():
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.timestamp))
        print(f"{info.backup_id:>3}  {when}  {info.size:>10}  {info.number_files:>5}  {info.app_metadata.decode()}")
    for info in db.get_backup_info():
        db.verify_backup(info.backup_id, verify_with_checksum=True)
    print("verified every backup with checksums")
    db.close()

    restore = RestoreBackupableDB(BackupableDBOptions(backup_dir))
    restore.restore_db_from_latest_backup(restore_path, restore_path)
    restore.close()

    restored = rocksdict.Rdict(restore_path)
    got = {(k.decode() if isinstance(k, bytes) else k): v for k, v in restored.items()}
    restored.close()
    if got != expected:
        missing = set(expected) - set(got)
        raise SystemExit(f"restore mismatch: {len(missing)} keys missing, {len(got)} read back")
    print(f"restored backup {second} into {restore_path}: all {len(got)} keys read back intact")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    if len(sys.argv) > 1:
        os.makedirs(sys.argv[1], exist_ok=True)
        main(sys.argv[1])
    else:
        with tempfile.TemporaryDirectory(prefix="rbackup-quickstart-") as tmp:
            main(tmp)
