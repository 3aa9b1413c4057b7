"""Scale benchmark: opening a backup directory of many backups x many files, rbackup beside RocksDB's engine.

    python examples/bench_scale.py [--reps 3] [--shapes 100x20000,1000x2000] [--churn 0.01] [--s3-shape 100x2000]
                                   [--incremental-ssts 10000] [--keep 20] [--profile] [--workdir DIR]

Two generated directory shapes (issue 15): 100 backups of a DB of 20,000 SSTs of 64 MB (a 1.3 TB DB with
100 versions kept: 2 million meta-file lines) and 1,000 backups of a DB of 2,000 SSTs.  Each backup shares
all but `--churn` of its SSTs with the one before (the oldest go, as many new ones come), so the directory
holds `ssts + (backups - 1) * churn * ssts` distinct SSTs.  SSTs are sparse files (they cost inodes, no
disk); meta files are real RocksDB schema-1 meta files with `shared_checksum/<n>_s<session>_<size>.sst`
names, and each backup has a private CURRENT / MANIFEST / OPTIONS, as RocksDB writes them.

On each shape, in fresh processes (so peak RSS is the operation's own), interleaved in rounds:

* read-only open + list: `BackupEngineReadOnly` + `get_backup_info()` vs `rbpeer list` (RocksDB's
  `BackupEngineReadOnly::Open` + `GetBackupInfo` with file details, JSON to /dev/null);
* read-only open + verify of the newest backup: `verify_backup(N)` vs `rbpeer verify DIR N`;
* read-write open + `garbage_collect()` vs `rbpeer gc` (nothing to collect: the open is the work);
* read-only open of the newest 5 only (`max_valid_backups_to_open=5`).

On S3 (a moto server this script starts; `--s3-shape`, SSTs uploaded as empty objects since nothing reads
them at load): the engine's open + list, whose meta files are fetched concurrently and parsed as they
arrive, beside `load_state` fetching them one by one.

Then a no-change incremental of a real 10,000-SST DB (rocksdict, block-based format_version 5) with 20 backups
kept. The case the issue names, a service (measured after the others): one Rdict and one engine kept open
across backups, `create_new_backup(rdict)` timed (CPU and wall), each new backup deleted again by the same
engine. Then rbackup's engine work (open the engine + `create_new_backup(rdict)`, the Rdict already open) vs
`rbpeer backup DB DIR` of the same DB closed, by path (RocksDB's own `CreateNewBackup` time, which excludes
its open). Each new backup is deleted again, untimed, so every repetition sees 20 backups. rbackup is timed
twice: in this process, after an untimed backup that fills its naming cache (it knows every SST, as in a
service that backs up on a schedule), and in fresh processes (cold cache: every SST's properties block is
read, as in each `rbackup create`); the three runs are interleaved in each repetition. With --workdir the DB
and the 20 backups are kept and reused.

Peak RSS: rbackup children report VmHWM from /proc/self/status (the mm's own high-water mark); rbpeer runs
under a small Python launcher that reports the child's `ru_maxrss` from wait4 (Linux folds the launcher's
~10 MB into it at exec, below rbpeer's own figure).  --profile also runs cProfile and tracemalloc over one
read-only open + list of the first shape in this process, and cProfile over one more (untimed) service
`create_new_backup`, and prints the top entries.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark import DUMMY_AWS_ENV, MOTO_CHILD, say

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_DIR = os.environ.get("RBPEER_DIR") or next(
    (d for d in (os.path.join(_REPO, "..", "shared", "tools", "rocksdb11"), "/work/shared/tools/rocksdb11")
     if os.path.exists(os.path.join(d, "rbpeer"))), os.path.join(_REPO, "..", "shared", "tools", "rocksdb11"))
"""rbpeer's directory: $RBPEER_DIR, else ../shared/tools/rocksdb11 beside the repository."""
SST_SIZE = 64 << 20
SESSION_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MiB = 1 << 20


# -- the generated directory --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    backups: int
    ssts: int
    churn: float

    @property
    def name(self) -> str:
        return f"{self.backups} backups x {self.ssts:,} SSTs"

    @property
    def new_per_backup(self) -> int:
        return max(1, round(self.ssts * self.churn))

    @property
    def distinct_ssts(self) -> int:
        return self.ssts + (self.backups - 1) * self.new_per_backup


def _session(rng: random.Random) -> str:
    return "".join(rng.choice(SESSION_CHARS) for _ in range(20))


def generate(root: str, shape: Shape, seed: int = 15) -> None:
    """Write the backup directory `shape` describes under `root` (which must not exist).

    Backup k (1-based) holds SSTs k*new .. k*new+ssts-1 in file-number terms: each backup drops the
    `new_per_backup` oldest SSTs of the one before and adds as many new ones, written by a new DB session.
    """
    rng = random.Random(seed)
    os.makedirs(os.path.join(root, "meta"))
    os.makedirs(os.path.join(root, "shared_checksum"))
    os.makedirs(os.path.join(root, "private"))
    new = shape.new_per_backup
    names: dict[int, tuple[str, int]] = {}  # file number -> (shared_checksum name, crc)

    def sst(number: int, session: str) -> tuple[str, int]:
        name = f"{number:06d}_s{session}_{SST_SIZE}.sst"
        with open(os.path.join(root, "shared_checksum", name), "wb") as fh:
            fh.truncate(SST_SIZE)
        return name, rng.getrandbits(32)

    session = _session(rng)
    for number in range(10, 10 + shape.ssts):
        names[number] = sst(number, session)
    manifest_no = 5
    for backup_id in range(1, shape.backups + 1):
        if backup_id > 1:
            session = _session(rng)
            first_old = 10 + (backup_id - 2) * new
            for number in range(first_old, first_old + new):
                del names[number]
            top = 10 + (backup_id - 2) * new + shape.ssts
            for number in range(top, top + new):
                names[number] = sst(number, session)
            manifest_no += new + 3
        private = os.path.join(root, "private", str(backup_id))
        os.makedirs(private)
        side = {"CURRENT": f"MANIFEST-{manifest_no:06d}\n".encode(),
                f"MANIFEST-{manifest_no:06d}": os.urandom(4096),
                f"OPTIONS-{manifest_no + 2:06d}": b"# RocksDB options file (generated)\n" + os.urandom(6000)}
        lines = []
        for number in sorted(names):
            name, crc = names[number]
            lines.append(f"shared_checksum/{name} crc32 {crc}\n")
        for fname in sorted(side, key=lambda n: (n != f"MANIFEST-{manifest_no:06d}", n)):
            data = side[fname]
            with open(os.path.join(private, fname), "wb") as fh:
                fh.write(data)
            lines.append(f"private/{backup_id}/{fname} crc32 {rng.getrandbits(32)}\n")
        header = f"{1_700_000_000 + backup_id * 3600}\n{backup_id * 1_000_000}\n{len(lines)}\n"
        with open(os.path.join(root, "meta", str(backup_id)), "w") as fh:
            fh.write(header + "".join(lines))


# -- children: one operation per fresh process ----------------------------------------------------------------
def child(spec: dict) -> None:
    """Run one rbackup operation here and print {seconds, peak_mb, result} as JSON."""
    from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly

    def hwm_mb() -> float:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024

    baseline = hwm_mb()
    op, root = spec["op"], spec["root"]
    cpu0 = time.process_time()
    start = time.perf_counter()
    if op == "list":
        with BackupEngineReadOnly(BackupableDBOptions(root)) as engine:
            result = len(engine.get_backup_info())
    elif op == "list-newest":
        with BackupEngineReadOnly(BackupableDBOptions(root, max_valid_backups_to_open=spec["n"])) as engine:
            result = len(engine.get_backup_info())
    elif op in ("s3-list", "s3-sequential"):
        import rbackup_s3  # noqa: F401  (before the clock: the S3 libraries are not the load's)

        from rbackup.env.registry import open_env
        from rbackup.state import load_state

        cpu0, start = time.process_time(), time.perf_counter()
        if op == "s3-list":
            with BackupEngineReadOnly(BackupableDBOptions(root, storage_options=spec["options"])) as engine:
                result = len(engine.get_backup_info())
        else:
            env = open_env(root, storage_options=spec["options"])
            try:
                result = len(load_state(env, workers=1).valid)
            finally:
                env.close()
    elif op == "verify":
        with BackupEngineReadOnly(BackupableDBOptions(root)) as engine:
            engine.verify_backup(spec["id"])
            result = spec["id"]
    elif op == "gc":
        with BackupEngine(BackupableDBOptions(root)) as engine:
            result = len(engine.get_backup_info())  # the open's view: no reload
            engine.garbage_collect()
    elif op == "incremental":  # a fresh process: the naming cache is cold, as for every `rbackup create`
        import rocksdict

        db = rocksdict.Rdict(spec["db"], db_options())
        try:
            cpu0, start = time.process_time(), time.perf_counter()
            with BackupEngine(BackupableDBOptions(root)) as engine:
                result = engine.create_new_backup(db)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
            with BackupEngine(BackupableDBOptions(root)) as engine:
                engine.delete_backup(result)
        finally:
            db.close()
        print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mb": hwm_mb(), "baseline_mb": baseline,
                          "result": result}))
        return
    else:
        raise SystemExit(f"unknown op {op}")
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "cpu": time.process_time() - cpu0, "peak_mb": hwm_mb(),
                      "baseline_mb": baseline, "result": result}))


def peer_launcher(argv: list[str]) -> None:
    """Run rbpeer.bin (env already set) and print its wall time and ru_maxrss as JSON."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL if "--keep-stdout" not in os.environ.get(
        "RBSCALE_FLAGS", "") else None)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"rbpeer failed: {argv}")
    print(json.dumps({"seconds": seconds, "cpu": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}))


def run_json(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


class Peer:
    """rbpeer.bin with the library path its wrapper would set (found once, via the wrapper's own venv)."""

    def __init__(self) -> None:
        wrapper = os.path.join(PEER_DIR, "rbpeer")
        subprocess.run([wrapper, "version"], check=True, capture_output=True)  # installs the wheel once
        cache = os.environ.get("RBPEER_CACHE") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rbpeer-amulet")
        libs = subprocess.run([os.path.join(cache, "bin", "python"), "-c", (
            "import glob, importlib.util, os, sysconfig\n"
            "spec = importlib.util.find_spec('rocksdb')\n"
            "so = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], '_rocksdb*.so')))[0]\n"
            "print(os.path.dirname(so) + ':' + (sysconfig.get_config_var('LIBDIR') or ''))")],
            check=True, capture_output=True, text=True).stdout.strip()
        self.env = dict(os.environ, LD_LIBRARY_PATH=libs + (":" + os.environ["LD_LIBRARY_PATH"]
                                                            if os.environ.get("LD_LIBRARY_PATH") else ""))
        self.bin = os.path.join(PEER_DIR, "rbpeer.bin")

    def measured(self, *args: str) -> dict:
        return run_json([sys.executable, __file__, "--peer-launch", self.bin, *args], env=self.env)

    def json(self, *args: str) -> dict:
        return run_json([self.bin, *args], env=self.env)


def rb(spec: dict) -> dict:
    return run_json([sys.executable, __file__, "--child", json.dumps(spec)])


# -- measuring ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    shape: str
    what: str
    ours: dict[str, float]
    """Medians: seconds (wall), cpu (user + system seconds), peak_mb (NaN: not measured)."""
    peer_what: str
    theirs: dict[str, float] | None

    def cells(self) -> str:
        def known(x: float) -> bool:
            return x == x  # NaN: not measured

        def side(m: dict[str, float]) -> str:
            cpu = f" (cpu {m['cpu']:.2f} s)" if known(m["cpu"]) else ""
            mb = f"{m['peak_mb']:.0f} MB" if known(m["peak_mb"]) else "-"
            return f"{m['seconds']:.2f} s{cpu} / {mb}"

        if self.theirs is None:
            return f"| {self.shape} | {self.what} | {side(self.ours)} | - | - |"
        o, t = self.ours, self.theirs
        cpu = f" (cpu {o['cpu'] / t['cpu']:.2f}x)" if known(o["cpu"]) and known(t["cpu"]) else ""
        rss = f"{o['peak_mb'] / t['peak_mb']:.2f}x" if known(o["peak_mb"]) and known(t["peak_mb"]) else "-"
        return (f"| {self.shape} | {self.what} | {side(o)} | {self.peer_what}: {side(t)} | "
                f"{o['seconds'] / t['seconds']:.2f}x{cpu} / {rss} |")


def med(runs: list[dict]) -> dict[str, float]:
    return {k: statistics.median(r.get(k, float("nan")) for r in runs) for k in ("seconds", "cpu", "peak_mb")}


def measure_shape(root: str, shape: Shape, peer: Peer, reps: int) -> list[Row]:
    latest = str(shape.backups)
    cases = {
        "list": (lambda: rb({"op": "list", "root": root}), lambda: peer.measured("list", root)),
        "verify": (lambda: rb({"op": "verify", "root": root, "id": shape.backups}),
                   lambda: peer.measured("verify", root, latest)),
        "gc": (lambda: rb({"op": "gc", "root": root}), lambda: peer.measured("gc", root)),
        "newest": (lambda: rb({"op": "list-newest", "root": root, "n": 5}), None),
    }
    results: dict[str, tuple[list[dict], list[dict]]] = {k: ([], []) for k in cases}
    for rep in range(reps):
        order = list(cases) if rep % 2 == 0 else list(reversed(cases))
        for key in order:
            ours, theirs = cases[key]
            pair = [("rb", ours), ("peer", theirs)] if rep % 2 == 0 else [("peer", theirs), ("rb", ours)]
            for who, fn in pair:
                if fn is None:
                    continue
                r = fn()
                results[key][0 if who == "rb" else 1].append(r)
                say(f"{shape.name} {key} {who}: {r['seconds']:.2f} s (cpu {r['cpu']:.2f} s), {r['peak_mb']:.0f} MB")
    for r in results["list"][0] + results["gc"][0]:
        if r["result"] != shape.backups:
            raise RuntimeError(f"rbackup saw {r['result']} valid backups, expected {shape.backups}")
    labels = {"list": ("read-only open + `get_backup_info()`", "`rbpeer list`"),
              "verify": (f"read-only open + `verify_backup({latest})`", f"`rbpeer verify DIR {latest}`"),
              "gc": ("read-write open + `garbage_collect()`", "`rbpeer gc`"),
              "newest": ("read-only open, `max_valid_backups_to_open=5`, + list", "")}
    rows = []
    for key, (ours, theirs) in results.items():
        rows.append(Row(shape.name, labels[key][0], med(ours), labels[key][1], med(theirs) if theirs else None))
    return rows


# -- S3 -------------------------------------------------------------------------------------------------------


def measure_s3(root: str, shape: Shape, reps: int) -> list[Row]:
    """The same directory shape in a moto server (SSTs as empty objects: nothing reads them at load;
    meta and private files as they are): open + list with the engine's concurrent meta reads, beside
    `load_state` reading them one by one."""
    import boto3

    from rbackup.lock import is_lock_file

    os.environ.update(DUMMY_AWS_ENV)
    server = subprocess.Popen([sys.executable, "-c", MOTO_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        endpoint = server.stdout.readline().strip()
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="scale")
        say(f"S3: uploading {shape.name} to moto at {endpoint}")
        for d, _, names in os.walk(root):
            for n in names:
                path = os.path.join(d, n)
                key = os.path.relpath(path, root)
                if is_lock_file(key):
                    continue
                body = b"" if key.startswith("shared_checksum/") else open(path, "rb").read()
                client.put_object(Bucket="scale", Key=f"dir/{key}", Body=body)
        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        runs: dict[str, list[dict]] = {"s3-list": [], "s3-sequential": []}
        for rep in range(reps):
            for op in (list(runs) if rep % 2 == 0 else list(reversed(runs))):
                r = rb({"op": op, "root": "s3://scale/dir", "options": options})
                if r["result"] != shape.backups:
                    raise RuntimeError(f"{op}: {r['result']} valid backups, expected {shape.backups}")
                runs[op].append(r)
                say(f"S3 {shape.name} {op}: {r['seconds']:.2f} s (cpu {r['cpu']:.2f} s), {r['peak_mb']:.0f} MB")
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)
    return [Row(f"{shape.name}, S3 (moto)", "read-only open + `get_backup_info()` (meta files fetched "
                "concurrently, parsed as they arrive)", med(runs["s3-list"]),
                "reference: `load_state` reading them one by one", med(runs["s3-sequential"]))]


# -- the no-change incremental ---------------------------------------------------------------------------------
def build_real_db(path: str, ssts: int) -> None:
    """A real DB of exactly `ssts` small SSTs, written as external files and ingested (no compaction runs),
    in block-based format_version 5 so that rocksdict's RocksDB and RocksDB 11 both read it."""
    import rocksdict

    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_disable_auto_compactions(True)
    table = rocksdict.BlockBasedOptions()
    table.set_format_version(5)
    opts.set_block_based_table_factory(table)
    db = rocksdict.Rdict(path, opts)
    staging = path + ".ingest"
    os.makedirs(staging, exist_ok=True)
    batch = 500
    try:
        for start in range(0, ssts, batch):
            files = []
            for n in range(start, min(ssts, start + batch)):
                f = os.path.join(staging, f"{n}.sst")
                w = rocksdict.SstFileWriter(opts)
                w.open(f)
                for k in range(4):
                    w[b"k%08d-%d" % (n, k)] = os.urandom(100)
                w.finish()
                files.append(f)
            db.ingest_external_file(files)
            for f in files:
                if os.path.exists(f):
                    os.unlink(f)
        db.flush()
    finally:
        db.close()
        shutil.rmtree(staging, ignore_errors=True)


def db_options():
    import rocksdict

    opts = rocksdict.Options(raw_mode=True)
    opts.set_disable_auto_compactions(True)
    opts.set_max_open_files(4096)
    table = rocksdict.BlockBasedOptions()
    table.set_format_version(5)
    opts.set_block_based_table_factory(table)
    return opts


def measure_incremental(work: str, peer: Peer, ssts: int, keep: int, reps: int,
                        profiles: list[str] | None = None) -> list[Row]:
    import rocksdict

    from rbackup import BackupableDBOptions, BackupEngine

    db_path, root = os.path.join(work, f"db-{ssts}"), os.path.join(work, f"inc-{ssts}")
    if not os.path.exists(db_path):
        say(f"building a real DB of {ssts:,} SSTs")
        build_real_db(db_path, ssts)
    db = rocksdict.Rdict(db_path, db_options())
    try:
        if _backup_count(root) != keep:  # else reuse them: each making adds keep - 1 SSTs to the DB
            shutil.rmtree(root, ignore_errors=True)
            say(f"making {keep} backups of it")
            with BackupEngine(BackupableDBOptions(root, sync=False)) as engine:
                for i in range(keep):
                    if i:
                        db[b"z%06d" % i] = os.urandom(100)
                        db.flush()
                    engine.create_new_backup(db)
    finally:
        db.close()

    def warm() -> dict:
        """In this process, whose naming cache knows the DB's files (it outlives the Rdict: inodes stay)."""
        db = rocksdict.Rdict(db_path, db_options())
        try:
            cpu0, start = time.process_time(), time.perf_counter()
            with BackupEngine(BackupableDBOptions(root)) as engine:
                cpu1, opened = time.process_time(), time.perf_counter()
                new_id = engine.create_new_backup(db)
                create = {"seconds": time.perf_counter() - opened, "cpu": time.process_time() - cpu1}
            r = {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu0, "create": create}
            with BackupEngine(BackupableDBOptions(root)) as engine:
                engine.delete_backup(new_id)
        finally:
            db.close()
        return r

    def peer_backup() -> dict:
        r = peer.json("backup", db_path, root)
        with BackupEngine(BackupableDBOptions(root)) as engine:
            engine.delete_backup(r["backup_id"])
        return r

    warm()  # fills this process's naming cache (when --workdir reused the backups) and the page cache
    peer_backup()
    ours: list[dict] = []
    cold: list[dict] = []
    theirs: list[dict] = []
    for rep in range(reps):  # interleaved, so that the machine's load falls on all three alike
        order = [(ours, warm), (cold, lambda: rb({"op": "incremental", "root": root, "db": db_path})),
                 (theirs, peer_backup)]
        for runs, fn in (order if rep % 2 == 0 else order[::-1]):
            runs.append(fn())
        say(f"no-change incremental: rbackup {ours[-1]['seconds']:.3f} s (cpu {ours[-1]['cpu']:.3f} s; create alone "
            f"{ours[-1]['create']['seconds']:.3f} s, cpu {ours[-1]['create']['cpu']:.3f} s), "
            f"in a fresh process {cold[-1]['seconds']:.3f} s (cpu {cold[-1]['cpu']:.3f} s), "
            f"rbpeer {theirs[-1]['seconds']:.3f} s (+ open {theirs[-1]['open_seconds']:.3f} s)")
    service = measure_service(db_path, root, reps, profiles)
    # rbpeer reports CreateNewBackup's wall time only
    peer = med([{"seconds": r["seconds"]} for r in theirs])
    shape = f"real DB of {ssts:,} SSTs, {keep} backups kept"
    return [Row(shape, "no-change incremental of a service: `create_new_backup(rdict)`, the Rdict and the engine "
                "kept open across backups", med(service), "`rbpeer backup DB DIR`, `CreateNewBackup` only", peer),
            Row(shape, "no-change incremental: engine open + `create_new_backup(rdict)`, in a process that "
                "backed it up before (naming cache warm)", med(ours), "`rbpeer backup DB DIR`, `CreateNewBackup` "
                "only", peer),
            Row(shape, "of which `create_new_backup(rdict)` alone (the engine already open)",
                med([r["create"] for r in ours]), "`rbpeer backup DB DIR`, `CreateNewBackup` only", peer),
            Row(shape, "the same in a fresh process (naming cache cold, as each `rbackup create`)", med(cold),
                "`rbpeer backup DB DIR`, `CreateNewBackup` only", peer)]


def measure_service(db_path: str, root: str, reps: int, profiles: list[str] | None = None) -> list[dict]:
    """The case issue 15 names: a service that keeps its Rdict and its engine open and backs up every few
    minutes.  Its own block, not interleaved with the others: they open the DB themselves, and RocksDB lets
    one handle at a time have it.  Each new backup is deleted again by the same engine (untimed), so the
    next create reloads a directory this engine changed, as after a retention purge.  With `profiles`, one
    more create runs under cProfile (untimed) and its profile is added there."""
    import rocksdict

    from rbackup import BackupableDBOptions, BackupEngine

    runs: list[dict] = []
    db = rocksdict.Rdict(db_path, db_options())
    try:
        with BackupEngine(BackupableDBOptions(root)) as engine:
            engine.delete_backup(engine.create_new_backup(db))  # untimed: naming cache and page cache
            for _ in range(reps):
                cpu0, start = time.process_time(), time.perf_counter()
                new_id = engine.create_new_backup(db)
                runs.append({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu0})
                engine.delete_backup(new_id)
                say(f"service (Rdict and engine kept open): create_new_backup {runs[-1]['seconds']:.3f} s "
                    f"(cpu {runs[-1]['cpu']:.3f} s)")
            if profiles is not None:
                prof = cProfile.Profile()
                prof.enable()
                new_id = engine.create_new_backup(db)
                prof.disable()
                engine.delete_backup(new_id)
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
                profiles.append(f"### profile: service `create_new_backup`, {os.path.basename(db_path)}\n\n"
                                f"```\n{out.getvalue()}```\n")
    finally:
        db.close()
    return runs


def _backup_count(root: str) -> int:
    from rbackup import BackupableDBOptions, BackupEngineReadOnly

    if not os.path.isdir(os.path.join(root, "meta")):
        return 0
    with BackupEngineReadOnly(BackupableDBOptions(root)) as engine:
        return len(engine.get_backup_info())


# -- profiling --------------------------------------------------------------------------------------------------
def profile_open(root: str) -> str:
    from rbackup import BackupableDBOptions, BackupEngineReadOnly

    out = io.StringIO()
    prof = cProfile.Profile()
    prof.enable()
    with BackupEngineReadOnly(BackupableDBOptions(root)) as engine:
        engine.get_backup_info()
    prof.disable()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
    tracemalloc.start(5)
    with BackupEngineReadOnly(BackupableDBOptions(root)) as engine:
        engine.get_backup_info()
        snap = tracemalloc.take_snapshot()
        current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out.write(f"\ntracemalloc: {current / MiB:.1f} MiB held with the engine open, peak {peak / MiB:.1f} MiB\n")
    for stat in snap.statistics("lineno")[:10]:
        out.write(f"  {stat}\n")
    return out.getvalue()


# -- entry point -------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--shapes", default="100x20000,1000x2000", help="BACKUPSxSSTS, comma separated; empty: none")
    ap.add_argument("--churn", type=float, default=0.01, help="share of SSTs new in each backup")
    ap.add_argument("--incremental-ssts", type=int, default=10000, help="0 to skip the incremental")
    ap.add_argument("--keep", type=int, default=20)
    ap.add_argument("--s3-shape", default="100x2000", help="BACKUPSxSSTS in moto; empty to skip")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--workdir", help="keep generated data here (reused when present); default: a temp dir")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--peer-launch", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    if args.peer_launch:
        return peer_launcher(args.peer_launch)

    work = args.workdir or tempfile.mkdtemp(prefix="rbackup-scale-")
    os.makedirs(work, exist_ok=True)
    peer = Peer()
    rows: list[Row] = []
    profiles: list[str] = []
    for spec in filter(None, args.shapes.split(",")):
        b, s = (int(x) for x in spec.split("x"))
        shape = Shape(b, s, args.churn)
        root = os.path.join(work, f"dir-{b}x{s}-{args.churn}")
        if not os.path.exists(os.path.join(root, "meta", str(b))):
            shutil.rmtree(root, ignore_errors=True)
            say(f"generating {shape.name} ({shape.distinct_ssts:,} distinct SSTs)")
            generate(root, shape)
        if args.profile and not profiles:
            profiles.append(f"### profile: read-only open + list, {shape.name}\n\n```\n{profile_open(root)}```\n")
        rows += measure_shape(root, shape, peer, args.reps)
    if args.s3_shape:
        b, s = (int(x) for x in args.s3_shape.split("x"))
        shape = Shape(b, s, args.churn)
        root = os.path.join(work, f"dir-{b}x{s}-{args.churn}")
        if not os.path.exists(os.path.join(root, "meta", str(b))):
            shutil.rmtree(root, ignore_errors=True)
            say(f"generating {shape.name} ({shape.distinct_ssts:,} distinct SSTs)")
            generate(root, shape)
        rows += measure_s3(root, shape, args.reps)
    if args.incremental_ssts:
        rows += measure_incremental(work, peer, args.incremental_ssts, args.keep, args.reps,
                                    profiles if args.profile else None)

    print(f"\nbench_scale: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}, medians of {args.reps}, churn {args.churn:.0%} per backup\n")
    print("| directory | operation | rbackup (time / peak RSS) | RocksDB 11.1.2 (time / peak RSS) | ratio |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(row.cells())
    for p in profiles:
        print("\n" + p)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
