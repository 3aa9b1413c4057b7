"""Backup and restore throughput of rbackup on a real HDFS, beside pyarrow's plain `copy_files`.

    python examples/bench_hdfs.py [--size-mb 256] [--reps 3] [--datanodes 2]

Starts the test MiniDFSCluster of tests/hdfs_fixtures.py (built with Maven and a libhdfs compiled
from the hdfs-sys crate on first use; needs a JDK 17, mvn, cargo and a C compiler), writes a real
RocksDB of about --size-mb MiB of incompressible values in 16 SSTs, then per repetition, interleaved:

* rbackup: a full backup into a fresh HDFS directory, then a restore of it to local disk, and a
  restore of it without fsync (`sync=False`, "restore nosync"): copy_files does not fsync, so that
  row is the like-for-like one;
* copy_files: `pyarrow.fs.copy_files` of the same DB directory to HDFS and back (no checksums, no
  temp names, no commit: the floor for moving these bytes through libhdfs), once with Hadoop's client
  defaults ("copy_files") and once with the client settings rbackup tunes ("copy_files tuned",
  `rbackup_hdfs.clientconf.TUNED`: a close retried after 25 ms, not 400), the fair floor.

The JVM inside this process writes one small file before the first timed round, so that no round
pays its start-up.

The cluster's NameNode, DataNodes and this client share the machine, so the figures measure the
client-side cost against the same floor, not what a real cluster would do.  Medians with min-max.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import rocksdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.db_fixtures import fill
from tests.hdfs_fixtures import (
    MiniHdfs,
    build_launcher,
    build_libhdfs,
    client_environment,
    find_java_home,
)


def make_db(path: Path, size_mb: int) -> int:
    """A closed RocksDB of ~size_mb MiB in 16 SSTs; returns the bytes of its SSTs."""
    db = rocksdict.Rdict(str(path))
    per_sst = max(1, size_mb * 1024 // 16 // 4)
    for part in range(16):
        fill(db, per_sst, prefix=f"p{part:02d}", value_size=4096, seed=part)
        db.flush()
    db.close()
    return sum(p.stat().st_size for p in path.glob("*.sst"))


def timed(action: Callable[[], None]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--datanodes", type=int, default=2)
    args = parser.parse_args()

    java_home = find_java_home()
    launcher = build_launcher(java_home)
    libhdfs_dir = build_libhdfs(java_home)
    work = Path(tempfile.mkdtemp(prefix="bench-hdfs-"))
    (work / "cluster").mkdir()
    cluster = MiniHdfs.start(java_home, launcher, work / "cluster", args.datanodes)
    try:
        os.environ.update(client_environment(java_home, libhdfs_dir, cluster.conf_dir, launcher.client_jars()))
        import pyarrow.fs  # after the environment: libhdfs reads it once per process

        from rbackup import BackupableDBOptions, BackupEngine

        db_dir = work / "db"
        total = make_db(db_dir, args.size_mb)
        from rbackup_hdfs.clientconf import TUNED

        hdfs = pyarrow.fs.HadoopFileSystem("127.0.0.1", cluster.namenode_port)
        tuned = pyarrow.fs.HadoopFileSystem("127.0.0.1", cluster.namenode_port, extra_conf=dict(TUNED))
        local = pyarrow.fs.LocalFileSystem()
        with hdfs.open_output_stream("/bench/warm-up") as out:
            out.write(b"warm-up")
        results: dict[str, list[float]] = {k: [] for k in (
            "rbackup backup", "copy_files up", "c_f tuned up", "rbackup restore", "restore nosync",
            "copy_files down", "c_f tuned down")}

        def rbackup_round() -> None:
            url = f"{cluster.url}/bench/{uuid.uuid4().hex}"
            engine = BackupEngine.open(BackupableDBOptions(url))
            db = rocksdict.Rdict(str(db_dir))
            try:
                results["rbackup backup"].append(timed(lambda: engine.create_new_backup(db)))
            finally:
                db.close()
            target = work / "restored"
            shutil.rmtree(target, ignore_errors=True)
            results["rbackup restore"].append(timed(lambda: engine.restore_db_from_latest_backup(target, target)))
            engine.close()
            shutil.rmtree(target, ignore_errors=True)
            with BackupEngine.open(BackupableDBOptions(url, sync=False)) as unsynced:
                results["restore nosync"].append(timed(lambda: unsynced.restore_db_from_latest_backup(target, target)))

        def copy_round(fs: pyarrow.fs.FileSystem, name: str) -> Callable[[], None]:
            def run() -> None:
                remote = f"/bench/{uuid.uuid4().hex}"
                results[f"{name} up"].append(timed(lambda: pyarrow.fs.copy_files(
                    str(db_dir), remote, source_filesystem=local, destination_filesystem=fs)))
                target = work / "copied"
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir()  # pyarrow's local filesystem does not create the destination directory
                results[f"{name} down"].append(timed(lambda: pyarrow.fs.copy_files(
                    remote, str(target), source_filesystem=fs, destination_filesystem=local)))
            return run

        rounds = [rbackup_round, copy_round(hdfs, "copy_files"), copy_round(tuned, "c_f tuned")]
        for rep in range(args.reps):
            for run in rounds[rep % len(rounds):] + rounds[:rep % len(rounds)]:
                run()
            hdfs.delete_dir_contents("/bench")

        print(f"{total / 2**20:.0f} MiB of SSTs, {args.datanodes} DataNodes on this machine, {args.reps} reps")
        print(f"{'what':<18}{'MiB/s median':>14}{'min-max':>16}")
        for name, times in results.items():
            rates = sorted(total / 2**20 / t for t in times)
            print(f"{name:<18}{statistics.median(rates):>14.0f}{f'{rates[0]:.0f}-{rates[-1]:.0f}':>16}")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
