"""Benchmark incremental restore: a 1 GB DB restored into a target that differs by one SST.

    python examples/bench_restore.py [--size-mb 1024] [--reps 3] [--dir DIR]

RocksDB HEAD's `RestoreOptions::Mode` lets a restore keep what the target already
holds; this measures what that saves.  One real DB (16 SSTs of random values,
built by examples/benchmark.py's builder) is backed up to local disk, restored in
full once, then for each repetition one SST of the target is deleted (the
"lost three SSTs" case, scaled down to one) and the backup restored again:

* `full` (PURGE_ALL_FILES, the default): every byte copied again;
* `keep-latest`: SSTs whose DB session id and size match stay, so about one SST
  (plus MANIFEST, OPTIONS, CURRENT) is copied and almost nothing is read;
* `verify`: every SST of the right size is read for its CRC-32C, one is copied.

"copied" is the restore's own progress total (bytes written into the target);
times are wall-clock medians with the page cache warm, sync=True throughout.
The result is checked: every restore must read back as the backup's DB.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import rocksdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import SST_COUNT, build_db

from rbackup import BackupableDBOptions, BackupEngine, Progress, RestoreMode, RestoreOptions

MODES = {
    "full": RestoreMode.PURGE_ALL_FILES,
    "keep-latest": RestoreMode.KEEP_LATEST_DB_SESSION_ID_FILES,
    "verify": RestoreMode.VERIFY_CHECKSUM,
}


@dataclass
class Row:
    mode: str
    seconds: list[float]
    copied: list[int]


def restore_once(engine: BackupEngine, target: str, mode: RestoreMode) -> tuple[float, int]:
    seen: list[Progress] = []
    started = time.perf_counter()
    engine.restore_db_from_backup(1, target, options=RestoreOptions(mode=mode), progress_callback=seen.append)
    return time.perf_counter() - started, seen[-1].bytes_total


def damage(target: str, round_no: int) -> int:
    """Delete one SST of the target (a different one each round); return its size."""
    ssts = sorted(n for n in os.listdir(target) if n.endswith(".sst"))
    victim = os.path.join(target, ssts[round_no % len(ssts)])
    size = os.path.getsize(victim)
    os.unlink(victim)
    return size


def sample_keys(path: str) -> dict[bytes, bytes]:
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True), access_type=rocksdict.AccessType.read_only())
    try:
        out = {}
        for i, (k, v) in enumerate(db.items()):
            if i % 997 == 0:
                out[k] = v
        return out
    finally:
        db.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", help="Work directory (default: a temporary one, removed at the end).")
    args = ap.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="rbackup-bench-restore-")
    os.makedirs(work, exist_ok=True)
    try:
        db, backups, target = (os.path.join(work, n) for n in ("db", "backups", "target"))
        print(f"building a {args.size_mb} MiB DB of {SST_COUNT} SSTs in {db} ...", file=sys.stderr)
        build_db(db, args.size_mb)
        expected = sample_keys(db)
        shutil.rmtree(backups, ignore_errors=True)
        with BackupEngine(BackupableDBOptions(backups, max_background_operations=2)) as engine:
            engine.create_new_backup(db)
            shutil.rmtree(target, ignore_errors=True)
            restore_once(engine, target, RestoreMode.PURGE_ALL_FILES)  # the target now holds the DB; cache warm
            rows = {name: Row(name, [], []) for name in MODES}
            sst_sizes: list[int] = []
            for r in range(args.reps):
                for name, mode in MODES.items():  # interleaved, so drift hits every mode alike
                    sst_sizes.append(damage(target, r))
                    seconds, copied = restore_once(engine, target, mode)
                    rows[name].seconds.append(seconds)
                    rows[name].copied.append(copied)
                    got = sample_keys(target)
                    assert got == expected, f"{name}: the restored DB differs from the backup"
            total = engine.get_backup_info()[0].size
        sst = statistics.median(sst_sizes)
        print(f"\nDB {total / 2**20:.0f} MiB in {SST_COUNT} SSTs (one SST ~{sst / 2**20:.0f} MiB); target lacks one "
              f"SST; {args.reps} reps, medians, warm cache, sync=True\n")
        print("| restore mode | time | copied | copied / one SST |")
        print("| --- | --- | --- | --- |")
        for row in rows.values():
            copied = statistics.median(row.copied)
            print(f"| {row.mode} | {statistics.median(row.seconds):.2f} s | {copied / 2**20:.1f} MiB | "
                  f"{copied / sst:.2f}x |")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
