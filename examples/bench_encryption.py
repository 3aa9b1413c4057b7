"""Encrypted against plain backup and restore throughput (target: encrypted >= 0.8x plain).

    python examples/bench_encryption.py [--size-mb 512] [--reps 3] [--threads 1 [2 ...]] [--json]

One real RocksDB (rocksdict, random incompressible values, ~16 SSTs) is
backed up again and again into fresh local backup directories, once plainly
and once through `EncryptedEnv` (AES-256-GCM, 1 MiB chunks), and each backup
is restored; both with sync=True, for each thread count given
(max_background_operations; the engine copies at least the store's
transfer_width files at once, 1 on local disk and 2 through EncryptedEnv, and
the output says how many each mode used).  Repetitions alternate between the
two modes and cycle through the thread counts so that drift on a shared, noisy
machine hits all alike; the medians, the ratios (with the range of the ratios
of the back-to-back pairs, the machine's noise) and the load average before
and after are printed.  Local disk is where encryption shows most: on S3 the
network, not the cipher, is the bottleneck.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import rocksdict

from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly
from rbackup.env import EncryptedEnv, LocalEnv

MiB = 1 << 20


def make_db(path: str, size_mb: int) -> int:
    """A closed DB of about size_mb MiB in ~16 SSTs; returns its size on disk."""
    db = rocksdict.Rdict(path)
    value = 4096
    per_sst = max(1, size_mb * MiB // value // 16)
    for sst in range(16):
        for i in range(per_sst):
            db[f"k{sst:02d}{i:09d}"] = os.urandom(value)
        db.flush()
    db.close()
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_once(db: str, work: str, encrypted: bool, threads: int, key: bytes) -> tuple[float, float]:
    backup_dir, target = os.path.join(work, "backup"), os.path.join(work, "restored")
    shutil.rmtree(backup_dir, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    # Settle, untimed: deleting the previous repetition's 1 GB is committed (and, on a disk mounted
    # with `discard`, trimmed) by the kernel later, which would land inside whichever run comes next.
    os.sync()

    def options() -> BackupableDBOptions:
        env = EncryptedEnv(LocalEnv(backup_dir), key=key) if encrypted else None
        return BackupableDBOptions(backup_dir, backup_env=env, max_background_operations=threads)

    def backup() -> None:
        with BackupEngine(options()) as engine:
            engine.create_new_backup(db)

    def restore() -> None:
        with BackupEngineReadOnly(options()) as engine:
            engine.restore_db_from_latest_backup(target)

    return timed(backup), timed(restore)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1],
                        help="max_background_operations; several values are measured side by side")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    key = os.urandom(32)
    load_before = os.getloadavg()
    times: dict[tuple[int, str], dict[str, list[float]]] = {
        (t, m): {"backup": [], "restore": []} for t in args.threads for m in ("plain", "encrypted")}
    with tempfile.TemporaryDirectory(prefix="rbackup-bench-enc-") as work:
        db = os.path.join(work, "db")
        size = make_db(db, args.size_mb)
        run_once(db, work, True, args.threads[0], key)  # warm the page cache and the imports, untimed
        # What the engine does with these options: max(max_background_operations, the store's
        # transfer_width), and EncryptedEnv declares a wider minimum than local disk's.
        backup_dir = os.path.join(work, "backup")
        widths = {"plain": LocalEnv(backup_dir).capabilities.transfer_width,
                  "encrypted": EncryptedEnv(LocalEnv(backup_dir), key=key).capabilities.transfer_width}
        for rep in range(args.reps):
            for threads in args.threads:
                for mode in (("plain", "encrypted") if rep % 2 == 0 else ("encrypted", "plain")):
                    b, r = run_once(db, work, mode == "encrypted", threads, key)
                    times[threads, mode]["backup"].append(b)
                    times[threads, mode]["restore"].append(r)
    runs = []
    for threads in args.threads:
        at_once = {mode: max(threads, width) for mode, width in widths.items()}
        run: dict[str, object] = {"threads": threads, "files_at_once": at_once}
        for op in ("backup", "restore"):
            plain = statistics.median(times[threads, "plain"][op])
            enc = statistics.median(times[threads, "encrypted"][op])
            # Each repetition ran the two modes back to back: the spread of those pairs' ratios
            # shows how much of a difference between runs is the machine's, not encryption's.
            pairs = [p / e for p, e in zip(times[threads, "plain"][op], times[threads, "encrypted"][op],
                                               strict=True)]
            run[op] = {"plain_mib_s": round(size / MiB / plain, 1), "encrypted_mib_s": round(size / MiB / enc, 1),
                       "ratio": round(plain / enc, 3), "pair_ratios": [round(x, 2) for x in pairs]}
        runs.append(run)
    load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    if args.json:
        print(json.dumps({"db_bytes": size, "reps": args.reps, "load_average": load, "runs": runs}, indent=2))
        return 0
    print(f"DB {size / MiB:.0f} MiB, {args.reps} reps, medians; load average (1, 5, 15 min) before "
          f"{load['before']}, after {load['after']}:")
    for run in runs:
        for op in ("backup", "restore"):
            fig = run[op]
            assert isinstance(fig, dict)
            verdict = "ok" if fig["ratio"] >= 0.8 else "BELOW TARGET"
            pairs = fig["pair_ratios"]
            at_once = run["files_at_once"]
            assert isinstance(at_once, dict)
            print(f"  {run['threads']} thread(s) {op:8} plain {fig['plain_mib_s']:7.1f} MiB/s  encrypted "
                  f"{fig['encrypted_mib_s']:7.1f} MiB/s  ratio {fig['ratio']:.2f} (target >= 0.80: {verdict}; "
                  f"pairs {min(pairs):.2f}-{max(pairs):.2f}; files at once {at_once['plain']}/{at_once['encrypted']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
