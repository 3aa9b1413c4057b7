"""`rbackup verify --checksum` on SeaweedFS: from the store's CRC-32C against reading every file back.

    .venv/bin/python examples/bench_verify_s3.py --size-mb 1024 --reps 3

Starts its own `weed server -s3` on loopback (the test fixtures' launcher), builds a DB of
random values (`bench_s3.build_db`; `--big-sst`: one SST), backs it up once with
`rbackup create`, then alternates, each as its own process (wall time, CPU time, peak RSS
from `wait4`), `rbackup verify --checksum` (the store's CRC-32C: one HeadObject a file) and
`rbackup verify --checksum --read-back` (every file downloaded and its CRC-32C recomputed),
with `rbackup verify` (sizes only: start-up, open and listing) as the floor; then times
`verify_backup` alone in one process on one open engine, the two ways alternately.
Prints the medians and what `--json` says about how the files were checked.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_s3 import MiB, build_db, run

from rbackup import BackupableDBOptions, BackupEngineReadOnly
from tests.s3_fixtures import DUMMY_AWS_ENV
from tests.s3_servers import client_for, run_seaweedfs

MODES = {"--checksum: store CRC-32C (default)": ["--checksum"], "--checksum --read-back": ["--checksum", "--read-back"],
         "sizes only (no --checksum)": []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big-sst", action="store_true", help="one SST holding the whole DB")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rbackup-bench-verify-"))
    env = {**os.environ, **DUMMY_AWS_ENV}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    os.environ.update(env)
    try:
        db = str(work / "db")
        nbytes = build_db(db, args.size_mb, args.big_sst)
        (work / "weed").mkdir()
        with run_seaweedfs(work / "weed") as endpoint:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            client_for(endpoint, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)
            url, opts = f"s3://{bucket}/rb", ["-o", f"endpoint_url={endpoint}"]
            run([sys.executable, "-m", "rbackup.cli", "create", "--db", db, "--backup-dir", url, *opts, "--quiet"],
                env)
            verify = [sys.executable, "-m", "rbackup.cli", "verify", "--backup-dir", url, *opts]
            how = {mode: json.loads(subprocess.run([*verify, *extra, "--json"], env=env, check=True,
                                                   capture_output=True, text=True).stdout)["backups"][0]
                   for mode, extra in MODES.items()}
            assert how[next(iter(MODES))]["downloaded"] == 0, how
            results: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in MODES}
            for rep in range(args.reps):
                order = list(MODES)[rep % 3:] + list(MODES)[: rep % 3]
                for mode in order:
                    results[mode].append(run([*verify, *MODES[mode], "--quiet"], env))
            calls: dict[bool, list[float]] = {False: [], True: []}
            options = BackupableDBOptions(url, storage_options={"endpoint_url": endpoint})
            with BackupEngineReadOnly(options) as engine:
                for rep in range(args.reps):
                    for read_back in ((False, True) if rep % 2 == 0 else (True, False)):
                        started = time.perf_counter()
                        engine.verify_backup(1, True, read_back=read_back)
                        calls[read_back].append(time.perf_counter() - started)
        print(f"\n{nbytes / MiB:.0f} MiB backup, {how[next(iter(MODES))]['files']} files, SeaweedFS on loopback, "
              f"{args.reps} reps, load average {os.getloadavg()[0]:.2f}\n")
        print("| `rbackup verify` (one process) | wall s (median) | CPU s | peak RSS MB | from store / read back |")
        print("|---|---|---|---|---|")
        for mode, rows in results.items():
            wall, cpu, rss = (statistics.median(r[i] for r in rows) for i in range(3))
            print(f"| {mode} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | "
                  f"{how[mode]['from_store_checksum']} / {how[mode]['downloaded']} |")
        print(f"\n`verify_backup(1, True)` alone on an open engine (median of {args.reps}): "
              f"{statistics.median(calls[False]):.3f} s from the store's CRC-32C, "
              f"{statistics.median(calls[True]):.3f} s with read_back=True")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
