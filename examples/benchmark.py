"""Benchmark rbackup side by side with RocksDB's own BackupEngine (`ldb`), `cp` and plain s3fs.

    python examples/benchmark.py [--size-mb 1024] [--reps 3] [--threads 2] [--s3/--no-s3]
                                 [--cache both|warm|cold] [--output docs/benchmark.md]

Everything is measured in one run on one machine, because the machines this
runs on are shared and noisy: absolute times drift from one run to the next,
ratios between tools measured minutes apart much less.  To keep the ratios
honest:

* repetitions are interleaved in rounds (each tool once per round), so drift
  hits every tool alike, and ordered so that each tool follows each other
  tool about equally often, because here a run is slowed by what ran just
  before it (see `measure`); use --reps 6 for a 3-way comparison to be
  exactly balanced;
* every row says its page-cache state: "warm" rows follow one untimed run of
  each tool; "cold" rows drop the page cache before every repetition
  (`echo 3 > /proc/sys/vm/drop_caches`, root only; without it only warm rows
  are measured and the report says so);
* durability is equal: rbackup runs with sync=True (fsync per file, as
  RocksDB does), `cp -r` is followed by `sync`, and s3fs downloads are
  fsynced file by file as rbackup's restore does;
* medians are reported with the spread (min-max) of the repetitions.

The DB is a real RocksDB written by rocksdict with random (incompressible)
values, in the options Debian's ldb 7.8.3 can open (raw mode, block-based
format_version 5), as exactly 16 SSTs; it is closed whenever ldb or a
backup by path needs it.  S3 runs against a moto server on 127.0.0.1 that
this script starts in a child process (moto burns a core per transfer: in
our own process it would fight the client under test for the GIL).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import rocksdict

import rbackup
import rbackup.transfer
from rbackup import BackupableDBOptions, BackupEngine, BackupEngineReadOnly
from rbackup.env.base import BackupEnv, ReadStream
from rbackup.env.local import LocalEnv
from rbackup.env.wrappers import WrapperEnv
from rbackup.format.meta import parse_meta, serialize_meta
from rbackup.format.naming import PRIVATE_DIR, meta_path
from rbackup.state import load_state
from rbackup.testing.doubles import CountingEnv

MiB = 1 << 20
SST_COUNT = 16
"""The DB is written as this many SSTs whatever its size (1 GB: 64 MB each, RocksDB's default target)."""
VALUE_SIZE = 1000
S3_WIDTH = 16
"""Files in flight on S3 for both clients: rbackup's S3 default concurrency."""
S3_PART = 8 * MiB
"""Multipart part size for both clients: rbackup's S3 default."""
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/rbackup-bench-aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/rbackup-bench-aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}
"""Fake credentials and no AWS profile: nothing here can reach real AWS."""
MOTO_CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()
server.stop()
"""


def say(message: str) -> None:
    """Progress on stderr, so a long run can be followed while stdout stays the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- measuring -----------------------------------------------------------------
class PageCache:
    """Drops the page cache when allowed, so cold rows really read from disk."""

    PATH = "/proc/sys/vm/drop_caches"

    def __init__(self) -> None:
        self.can_drop = self._try_drop()

    def _try_drop(self) -> bool:
        try:
            self.drop()
        except OSError:
            return False
        return True

    def drop(self) -> None:
        os.sync()
        with open(self.PATH, "w") as fh:
            fh.write("3\n")


@dataclass
class Case:
    """One contender: `run` is timed; `prepare` (before) and `after` are not."""

    name: str
    run: Callable[[], object]
    prepare: Callable[[], None] = lambda: None
    after: Callable[[], None] = lambda: None


def measure(cases: list[Case], reps: int, state: str, cache: PageCache, *, warmup: bool = True,
            before_round: Callable[[int], None] = lambda rnd: None) -> dict[str, list[float]]:
    """Time each case `reps` times, in rounds of one run each; cold drops the cache before each run.

    The order within rounds is chosen so that every case follows every other
    case about equally often.  A run here is slowed by what ran before it:
    on the VM this was written on (ext4 with online discard), `ldb backup`
    took 1.1-2.0 s right after `cp -r` and its cleanup but 0.8-0.9 s right
    after rbackup, so a plain rotation would favour whichever tool never
    follows cp.
    """
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    prev: int | None = None
    if state == "warm" and warmup:
        for i, case in enumerate(cases):
            case.prepare()
            case.run()
            case.after()
            prev = i
    followed: Counter[tuple[int | None, int]] = Counter()
    for rnd in range(reps):
        before_round(rnd)
        todo = list(range(len(cases)))
        while todo:
            i = min(todo, key=lambda j: (j == prev and len(todo) > 1, followed[prev, j], j))
            todo.remove(i)
            followed[prev, i] += 1
            prev = i
            case = cases[i]
            case.prepare()
            os.sync()  # leftovers of prepare (deletes) must not be paid by the timed run
            if state == "cold":
                cache.drop()
            start = time.perf_counter()
            case.run()
            times[case.name].append(time.perf_counter() - start)
            case.after()
    return times


@dataclass
class Row:
    operation: str
    tool: str
    cache: str
    times: list[float]
    nbytes: int | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times)


@dataclass
class Target:
    name: str
    measured: str
    limit: str
    ok: bool | None
    """None: not measured in this run."""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: list[tuple[str, str]] = field(default_factory=list)
    command: str = ""

    def row(self, operation: str, tool: str, cache: str, times: list[float], nbytes: int | None = None,
            note: str = "") -> Row:
        r = Row(operation, tool, cache, times, nbytes, note)
        self.rows.append(r)
        say(f"{operation} / {tool} / {cache}: median {fmt_s(r.median)} ({fmt_spread(times)})")
        return r

    def ratio_target(self, name: str, ours: float, theirs: float, limit: float, *, higher_is_better: bool = False,
                     what: str = "x") -> None:
        """A ratio target; the verdict says by how much it passes or misses."""
        ratio = ours / theirs
        ok = ratio >= limit if higher_is_better else ratio <= limit
        margin = (ratio / limit - 1) * 100
        sign = ">=" if higher_is_better else "<="
        self.targets.append(Target(name, f"{ratio:.2f}{what} ({margin:+.0f}% vs limit)", f"{sign} {limit:g}{what}", ok))

    def to_markdown(self) -> str:
        out = ["# rbackup benchmark", ""]
        out += [f"Command: `{self.command}`", ""]
        out += ["| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in self.machine] + [""]
        out += ["## Targets", "", "| target | measured | limit | verdict |", "|---|---|---|---|"]
        for t in self.targets:
            verdict = "n/a" if t.ok is None else ("PASS" if t.ok else "**MISS**")
            out.append(f"| {t.name} | {t.measured} | {t.limit} | {verdict} |")
        out += ["", "## Results", "",
                "| operation | tool | cache | median | min-max | MB/s (median) | notes |",
                "|---|---|---|---|---|---|---|"]
        for r in self.rows:
            rate = f"{r.nbytes / MiB / r.median:.0f}" if r.nbytes and r.median > 0 else ""
            out.append(f"| {r.operation} | {r.tool} | {r.cache} | {fmt_s(r.median)} | {fmt_spread(r.times)} "
                       f"| {rate} | {r.note} |")
        out += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_spread(times: list[float]) -> str:
    return f"{fmt_s(min(times))}-{fmt_s(max(times))} (n={len(times)})"


def machine_info() -> list[tuple[str, str]]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    ldb = subprocess.run(["ldb", "--version"], capture_output=True, text=True).stdout.strip()
    return [
        ("rbackup source", source_revision()),
        ("date", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", f"{cpu}, nproc {os.cpu_count()}"),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("rbackup", rbackup.__version__),
        ("rocksdict", pkg("rocksdict")),
        ("ldb", ldb),
        ("crc32c / s3fs / moto", f"{pkg('crc32c')} / {pkg('s3fs')} / {pkg('moto')}"),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


def source_revision() -> str:
    """The commit measured, and whether the library had uncommitted changes (results
    are only comparable between runs of the same code)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "--short=10", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "rbackup", "backends"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}" + (" + uncommitted changes in rbackup/ or backends/" if dirty else "")


# -- the database --------------------------------------------------------------
def bench_options(write_buffer: int) -> rocksdict.Options:
    """Options ldb 7.8.3 can open (raw mode, format_version 5), with automatic
    compaction off: ldb loads the DB's OPTIONS file, so neither it nor we ever
    rewrite SSTs behind the benchmark's back."""
    opts = rocksdict.Options(raw_mode=True)
    table = rocksdict.BlockBasedOptions()
    table.set_format_version(5)
    opts.set_block_based_table_factory(table)
    opts.create_if_missing(True)
    opts.set_write_buffer_size(write_buffer)
    opts.set_disable_auto_compactions(True)
    return opts


def open_db(path: str, write_buffer: int) -> rocksdict.Rdict:
    """column_families makes rocksdict use these options rather than the saved table options."""
    opts = bench_options(write_buffer)
    db = rocksdict.Rdict(path, opts, column_families={"default": opts})
    wo = rocksdict.WriteOptions()
    wo.disable_wal = True  # bulk loads only; each load ends with a flush
    db.set_write_options(wo)
    return db


def write_values(db: rocksdict.Rdict, prefix: bytes, nbytes: int, flushes: int) -> None:
    """Random values (incompressible) under sequential keys, flushed into `flushes` SSTs."""
    count = max(1, nbytes // VALUE_SIZE)
    per_sst = -(-count // flushes)
    for start in range(0, count, per_sst):
        stop = min(count, start + per_sst)
        for batch_start in range(start, stop, 1000):
            n = min(1000, stop - batch_start)
            blob = os.urandom(n * VALUE_SIZE)
            wb = rocksdict.WriteBatch(raw_mode=True)
            for j in range(n):
                wb.put(prefix + b"%012d" % (batch_start + j), blob[j * VALUE_SIZE:(j + 1) * VALUE_SIZE])
            db.write(wb)
        db.flush()


def build_db(path: str, size_mb: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    write_buffer = 2 * size_mb * MiB // SST_COUNT + 8 * MiB  # never flushes on its own
    db = open_db(path, write_buffer)
    try:
        write_values(db, b"key", size_mb * MiB, SST_COUNT)
    finally:
        db.close()


def db_files(path: str) -> dict[str, int]:
    """What a backup of the closed DB at `path` holds: SSTs, CURRENT, the live MANIFEST,
    the latest OPTIONS, non-empty WALs and rocksdict's config, with their sizes."""
    names = os.listdir(path)
    with open(os.path.join(path, "CURRENT")) as fh:
        manifest = fh.read().strip()
    options = max((n for n in names if n.startswith("OPTIONS-")), key=lambda n: int(n.split("-")[1]))
    keep = {"CURRENT", manifest, options, "rocksdict-config.json"}
    out = {}
    for name in names:
        size = os.path.getsize(os.path.join(path, name))
        if name in keep or name.endswith(".sst") or (name.endswith(".log") and size > 0):
            out[name] = size
    return out


def tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names)


def rmtree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def run_cmd(*cmd: str) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def ldb(*args: str) -> None:
    proc = subprocess.run(["ldb", "--ignore_unknown_options", *args], capture_output=True, text=True)
    if proc.returncode != 0 or "failed" in proc.stdout.lower():
        raise RuntimeError(f"ldb {' '.join(args)} failed ({proc.returncode}): {proc.stdout} {proc.stderr}")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_note(samples: list[tuple[float, float]]) -> str:
    return (f"CPU per run: client {statistics.median(c for c, _ in samples):.2f} s, "
            f"moto {statistics.median(m for _, m in samples):.2f} s")


def proc_io() -> dict[str, int]:
    with open("/proc/self/io") as fh:
        return {k: int(v) for k, v in (line.split(": ") for line in fh)}


# -- the benchmark ---------------------------------------------------------------
class Bench:
    """One run: the DB, the backup directories later sections build on (the
    restore, verify and incremental rows reuse the full backups), and the report."""

    def __init__(self, args: argparse.Namespace, workdir: str) -> None:
        self.args = args
        self.work = workdir
        self.threads: int = args.threads
        self.reps: int = args.reps
        self.cache = PageCache()
        self.report = Report(command=" ".join(["python", "examples/benchmark.py", *sys.argv[1:]]))
        wanted = {"both": ["warm", "cold"], "warm": ["warm"], "cold": ["cold"]}[args.cache]
        self.states = [s for s in wanted if s == "warm" or self.cache.can_drop]
        if "cold" in wanted and not self.cache.can_drop:
            self.report.notes.append("Cold rows were skipped: /proc/sys/vm/drop_caches is not writable (needs root).")
            self.states = self.states or ["warm"]
        self.db = os.path.join(workdir, "db")
        self.db_bytes = 0
        self.backups = os.path.join(workdir, "full-rbackup")
        """rbackup's last full backup: the source of the restore, verify and incremental rows."""
        self.ldb_backups = os.path.join(workdir, "full-ldb")

    def p(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    def opts(self, backup_dir: str, **kw: Any) -> BackupableDBOptions:
        return BackupableDBOptions(backup_dir, max_background_operations=self.threads, sync=True, **kw)

    def rbackup_backup(self, db: Any, backup_dir: str) -> None:
        with BackupEngine(self.opts(backup_dir)) as engine:
            engine.create_new_backup(db)

    # -- sections --------------------------------------------------------------
    def full_backup(self) -> None:
        say(f"full backups, local ({self.db_bytes / MiB:.0f} MB)")
        dest = {"rbackup": self.backups, "cp": self.p("full-cp"), "ldb": self.ldb_backups}
        cases = [
            Case("rbackup", lambda: self.rbackup_backup(self.db, dest["rbackup"]), lambda: rmtree(dest["rbackup"])),
            Case("cp -r && sync", lambda: run_cmd("sh", "-c", 'cp -r "$0" "$1" && sync', self.db, dest["cp"]),
                 lambda: rmtree(dest["cp"])),
            Case("ldb backup", lambda: ldb(f"--db={self.db}", "backup", f"--backup_dir={dest['ldb']}",
                                           f"--num_threads={self.threads}"), lambda: rmtree(dest["ldb"])),
        ]
        for state in self.states:
            t = measure(cases, self.reps, state, self.cache)
            r = self.report.row("full backup, local", f"rbackup (DB by path, {self.threads} threads, sync)",
                                state, t["rbackup"], self.db_bytes)
            c = self.report.row("full backup, local", "`cp -r` then `sync`", state, t["cp -r && sync"], self.db_bytes)
            lb = self.report.row("full backup, local", f"`ldb backup --num_threads={self.threads}`", state,
                                 t["ldb backup"], self.db_bytes)
            self.report.ratio_target(f"full local backup vs ldb backup ({state})", r.median, lb.median, 1.0)
            self.report.ratio_target(f"full local backup vs cp -r && sync ({state})", r.median, c.median, 1.3)
        rmtree(dest["cp"])

    def restore(self) -> None:
        say("restores, local")
        target = {name: self.p(f"restore-{name}") for name in ("rbackup", "ldb")}

        def ours() -> None:
            with BackupEngineReadOnly(self.opts(self.backups)) as engine:
                engine.restore_db_from_latest_backup(target["rbackup"])

        cases = [
            Case("rbackup", ours, lambda: rmtree(target["rbackup"])),
            Case("ldb", lambda: ldb(f"--db={target['ldb']}", "restore", f"--backup_dir={self.backups}",
                                    f"--num_threads={self.threads}"), lambda: rmtree(target["ldb"])),
        ]
        for state in self.states:
            t = measure(cases, self.reps, state, self.cache)
            r = self.report.row("restore, local", f"rbackup ({self.threads} threads, sync)", state, t["rbackup"],
                                self.db_bytes)
            lr = self.report.row("restore, local", f"`ldb restore --num_threads={self.threads}`", state, t["ldb"],
                                 self.db_bytes)
            self.report.ratio_target(f"restore vs ldb restore ({state})", r.median, lr.median, 1.0)
        # rbackup also puts back rocksdict-config.json, which ldb's format cannot carry.
        mine, theirs = ({n: os.path.getsize(os.path.join(d, n)) for n in os.listdir(d)
                         if not n.startswith(("LOG", "LOCK", "rocksdict-config"))}
                        for d in (target["rbackup"], target["ldb"]))
        if mine != theirs:
            raise RuntimeError(f"rbackup and ldb restored different files: {sorted(set(mine) ^ set(theirs))}")
        for d in target.values():
            rmtree(d)

    def verify(self) -> None:
        say("verify with checksums")
        files = [os.path.join(d, n) for d, _, names in os.walk(self.backups) for n in names]

        def ours() -> None:
            with BackupEngineReadOnly(self.opts(self.backups)) as engine:
                engine.verify_backup(engine.get_backup_info()[-1].backup_id, verify_with_checksum=True)

        cases = [Case("rbackup", ours),
                 Case("cat", lambda: run_cmd("cat", *files))]
        for state in self.states:
            t = measure(cases, self.reps, state, self.cache)
            self.report.row("verify with checksums", f"rbackup ({self.threads} threads)", state, t["rbackup"],
                            self.db_bytes)
            self.report.row("verify with checksums", "reference: `cat` every file > /dev/null", state, t["cat"],
                            self.db_bytes, "read floor, no checksum; no target")

    def incremental_unchanged(self) -> None:
        say("incremental backups with nothing new")
        counters: list[CountingEnv] = []
        rchar: list[int] = []
        engines: list[BackupEngine] = []

        def engine_prepare() -> None:
            counting = CountingEnv(LocalEnv(self.backups))
            counters.append(counting)
            engines.append(BackupEngine(self.opts(self.backups, backup_env=counting)))
            rchar.append(proc_io()["rchar"])

        def engine_after() -> None:
            rchar[-1] = proc_io()["rchar"] - rchar[-1]
            engines.pop().close()

        by_path = Case("rbackup", lambda: engines[-1].create_new_backup(self.db), engine_prepare, engine_after)
        theirs = Case("ldb", lambda: ldb(f"--db={self.db}", "backup", f"--backup_dir={self.ldb_backups}",
                                         f"--num_threads={self.threads}"))
        rdict: list[rocksdict.Rdict] = []
        open_db_case = Case("rbackup", lambda: engines[-1].create_new_backup(rdict[0]), engine_prepare, engine_after)
        note = "engine only: `create_new_backup`, engine opened before timing"
        for state in self.states:
            first = len(counters)
            t = measure([by_path, theirs], self.reps, state, self.cache)
            self.report.row("incremental, nothing new", "rbackup (DB by path: LOCK and MANIFEST read)",
                            state, t["rbackup"], note=note)
            self.report.row("incremental, nothing new", "`ldb backup` (process, DB open, backup)", state, t["ldb"])
            rdict.append(open_db(self.db, 64 * MiB))
            try:
                t = measure([open_db_case], self.reps, state, self.cache)
            finally:
                rdict.pop().close()
            ours = self.report.row("incremental, nothing new", "rbackup (open Rdict)", state, t["rbackup"], note=note)
            shared_reads = sorted({p for c in counters[first:] for p in c.reads if not p.startswith("meta/")})
            shared_writes = sorted({p for c in counters[first:] for p in c.writes if p.startswith("shared")})
            written = max(c.bytes_written for c in counters[first:])
            read = max(rchar[first:])
            self.report.notes.append(
                f"Incremental with nothing new ({state}): backup-dir reads other than meta files: "
                f"{shared_reads or 'none'}; shared files written: {shared_writes or 'none'}; at most "
                f"{written / 1024:.0f} KiB written per backup; at most {read / MiB:.1f} MiB read by the whole "
                f"process (`rchar`: SST footers, checkpoint copies of MANIFEST/OPTIONS, RocksDB's open) "
                f"for a {self.db_bytes / MiB:.0f} MB DB.")
            ok = ours.median < 0.1 and not shared_reads and not shared_writes
            self.report.targets.append(Target(
                f"incremental, nothing new, open Rdict ({state})",
                f"{fmt_s(ours.median)}; shared files re-read: {len(shared_reads)}, "
                f"re-written: {len(shared_writes)}", "< 100 ms, 0 re-read", ok))

    def incremental_one_percent(self) -> None:
        say("incremental backups after 1% new data")
        new_bytes = max(1, self.args.size_mb * MiB // 100)
        known = {n for n in db_files(self.db) if n.endswith(".sst")}
        expected: list[int] = []
        written: list[int] = []
        counters: list[CountingEnv] = []

        def add_data(rep: int) -> None:
            db = open_db(self.db, 2 * new_bytes + 8 * MiB)
            try:
                write_values(db, b"new%02d" % rep, new_bytes, 1)
            finally:
                db.close()

        def prepare() -> None:
            files = db_files(self.db)
            new_ssts = {n: s for n, s in files.items() if n.endswith(".sst") and n not in known}
            private = {n: s for n, s in files.items() if not n.endswith(".sst")}
            expected.append(sum(new_ssts.values()) + sum(private.values()))
            known.update(new_ssts)
            counters.append(CountingEnv(LocalEnv(self.backups)))

        def after() -> None:
            counting = counters[-1]
            ids = [int(p.split("/")[1]) for p in counting.writes if p.startswith("meta/")]
            expected[-1] += os.path.getsize(os.path.join(self.backups, meta_path(max(ids))))
            written.append(counting.bytes_written)

        def ours() -> None:
            with BackupEngine(self.opts(self.backups, backup_env=counters[-1])) as engine:
                engine.create_new_backup(self.db)

        cases = [Case("rbackup", ours, prepare, after),
                 Case("ldb", lambda: ldb(f"--db={self.db}", "backup", f"--backup_dir={self.ldb_backups}",
                                         f"--num_threads={self.threads}"))]
        t = measure(cases, self.reps, "warm", self.cache, warmup=False, before_round=add_data)
        self.report.row("incremental, 1% new data", "rbackup (DB by path)", "warm (just written)", t["rbackup"],
                        note=f"written {written[-1] / MiB:.2f} MiB vs expected {expected[-1] / MiB:.2f} MiB")
        self.report.row("incremental, 1% new data", "`ldb backup`", "warm (just written)", t["ldb"])
        worst = max(abs(w / e - 1) for w, e in zip(written, expected, strict=True))
        ratios = ", ".join(f"{w / e:.4f}" for w, e in zip(written, expected, strict=True))
        self.report.targets.append(Target(
            "incremental, 1% new: bytes written vs new SSTs + private files + meta",
            f"worst {worst * 100:.2f}% off ({ratios})",
            "within 5%", worst <= 0.05))

    def checksum_cost(self) -> None:
        say("checksum cost")
        buf = memoryview(bytearray(os.urandom(rbackup.transfer.DEFAULT_BUFFER_SIZE)))
        total = 256 * buf.nbytes
        start = time.perf_counter()
        crc = 0
        for _ in range(256):
            crc = rbackup.transfer.crc32c(buf, crc)
        crc_rate = total / (time.perf_counter() - start)
        self.report.notes.append(f"CRC-32C in memory (crc32c package, 4 MiB chunks, one thread): "
                                 f"{crc_rate / 1e9:.1f} GB/s.")
        real = rbackup.transfer.crc32c
        spent = [0.0]
        lock = threading.Lock()

        def timed(data: Any, value: int = 0) -> int:
            t0 = time.perf_counter()
            out = real(data, value)
            with lock:
                spent[0] += time.perf_counter() - t0
            return out

        dest = self.p("crc-backup")
        walls: list[float] = []
        shares: list[float] = []
        rbackup.transfer.crc32c = timed
        try:
            for _ in range(self.reps + 1):
                rmtree(dest)
                os.sync()
                spent[0] = 0.0
                start = time.perf_counter()
                with BackupEngine(BackupableDBOptions(dest, max_background_operations=1)) as engine:
                    engine.create_new_backup(self.db)
                walls.append(time.perf_counter() - start)
                shares.append(spent[0] / walls[-1])
        finally:
            rbackup.transfer.crc32c = real
        walls, shares = walls[1:], shares[1:]  # the first run warms the cache
        share = statistics.median(shares)
        self.report.row("checksum share of a full backup", "rbackup, 1 thread, time inside crc32c", "warm", walls,
                        self.db_bytes, f"crc share {share * 100:.1f}% (min-max {min(shares) * 100:.1f}-"
                                       f"{max(shares) * 100:.1f}%)")
        self.report.targets.append(Target("checksums share of copy time (full backup, 1 thread, warm)",
                                          f"{share * 100:.1f}%", "< 10%", share < 0.10))
        rmtree(dest)
        self._copy_loop_ab()

    def _copy_loop_ab(self) -> None:
        """The copy loop alone, with and without the crc: every DB file through
        `rbackup.transfer.stream_copy` into a page-cache file (no fsync, one
        thread), so disk-flush noise can neither hide nor invent the difference."""
        files = [os.path.join(self.db, n) for n in db_files(self.db)]
        out = self.p("crc-ab.out")
        real = rbackup.transfer.crc32c

        def copy_all() -> None:
            buf = memoryview(bytearray(rbackup.transfer.DEFAULT_BUFFER_SIZE))
            stop = threading.Event()
            for path in files:
                with open(path, "rb", buffering=0) as src, open(out, "wb", buffering=0) as dst:
                    rbackup.transfer.stream_copy(src, dst.write, buf=buf, stop=stop)

        def without_crc() -> None:
            rbackup.transfer.crc32c = lambda data, value=0: 0
            try:
                copy_all()
            finally:
                rbackup.transfer.crc32c = real

        t = measure([Case("crc", copy_all), Case("no crc", without_crc)], 2 * self.reps, "warm", self.cache)
        with_crc, without = statistics.median(t["crc"]), statistics.median(t["no crc"])
        self.report.row("checksum A/B, copy loop only", "`stream_copy` of every DB file, 1 thread, no fsync",
                        "warm", t["crc"], self.db_bytes)
        self.report.row("checksum A/B, copy loop only", "same, crc32c replaced by a no-op", "warm", t["no crc"],
                        self.db_bytes, f"crc = {(1 - without / with_crc) * 100:.1f}% of the copy loop's time")
        os.unlink(out)

    def listing(self) -> str:
        """1,000 backups of a tiny DB: one made by the engine, the rest cloned from it
        (meta file rewritten for its id, private files copied), so the directory is
        one the engine loads as 1,000 valid backups, made in seconds not minutes."""
        count = self.args.list_backups
        say(f"open + list of {count} backups, local")
        tiny, root = self.p("tiny-db"), self.p("many-backups")
        db = open_db(tiny, 4 * MiB)
        try:
            write_values(db, b"t", 64 * 1024, 1)
        finally:
            db.close()
        with BackupEngine(BackupableDBOptions(root, sync=False)) as engine:
            first = engine.create_new_backup(tiny)
        with open(os.path.join(root, meta_path(first)), "rb") as fh:
            meta = parse_meta(fh.read(), first)
        private = os.path.join(root, PRIVATE_DIR, str(first))
        for backup_id in range(first + 1, first + count):
            shutil.copytree(private, os.path.join(root, PRIVATE_DIR, str(backup_id)))
            meta.timestamp += 1
            for entry in meta.files:
                entry.path = entry.path.replace(f"{PRIVATE_DIR}/{backup_id - 1}/", f"{PRIVATE_DIR}/{backup_id}/")
            with open(os.path.join(root, meta_path(backup_id)), "wb") as fh:
                fh.write(serialize_meta(meta))

        def open_and_list() -> None:
            with BackupEngineReadOnly(BackupableDBOptions(root)) as engine:
                infos = engine.get_backup_info()
            if len(infos) != count:
                raise RuntimeError(f"expected {count} valid backups, the engine found {len(infos)}")

        for state in self.states:
            t = measure([Case("rbackup", open_and_list)], self.reps, state, self.cache)
            r = self.report.row(f"open + list {count} backups, local", "rbackup `BackupEngineReadOnly` + "
                                "`get_backup_info()`", state, t["rbackup"])
            self.report.targets.append(Target(f"open + list {count} backups, local ({state})", fmt_s(r.median),
                                              "< 1 s", r.median < 1.0))
        return root

    def rss(self, s3: dict[str, Any] | None) -> None:
        """Peak RSS of backups of two DB sizes (memory must not grow with the DB), and
        of restores of the larger one (reported, no target)."""
        say("peak RSS of backup and restore processes")
        small_mb = max(1, self.args.size_mb // 4)
        small = self.p("db-small")
        build_db(small, small_mb)
        runs = [(f"local, {small_mb} MB DB", small, self.p("rss-small"), None),
                (f"local, {self.args.size_mb} MB DB", self.db, self.p("rss-big"), None)]
        if s3 is not None:
            runs.append((f"S3, {self.args.size_mb} MB DB", self.db, f"s3://{s3['bucket']}/rss", s3["options"]))
        peaks = []
        for label, db, dest, options in runs:
            spec = {"op": "backup", "db": db, "backup_dir": dest, "threads": self.threads, "storage_options": options}
            result = self._rss_child(spec)
            peaks.append((label, result["peak_mb"]))
            self.report.row("peak RSS of a backup process", f"rbackup, {label}", "warm", [result["seconds"]],
                            tree_bytes(db), f"peak RSS {result['peak_mb']:.0f} MB (after imports, before the "
                                            f"backup: {result['baseline_mb']:.0f} MB)")
            if db == self.db:
                target = self.p("rss-restore")
                result = self._rss_child(dict(spec, op="restore", db=target))
                self.report.row("peak RSS of a restore process", f"rbackup, {label}", "warm", [result["seconds"]],
                                tree_bytes(db), f"peak RSS {result['peak_mb']:.0f} MB; no target")
                rmtree(target)
            if options is None:
                rmtree(dest)
        rmtree(small)
        worst = max(peaks, key=lambda p: p[1])
        self.report.targets.append(Target(
            "peak RSS of a backup, any DB size",
            "; ".join(f"{label}: {mb:.0f} MB" for label, mb in peaks), "< 150 MB", worst[1] < 150))

    @staticmethod
    def _rss_child(spec: dict[str, Any]) -> dict[str, float]:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child", json.dumps(spec)],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def s3(self, listing_root: str) -> dict[str, Any]:
        """Returns the bucket and options, for the RSS run."""
        import boto3
        import s3fs

        os.environ.update(DUMMY_AWS_ENV)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            os.environ.pop(name, None)
        server = subprocess.Popen([sys.executable, "-c", MOTO_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        self._moto = server
        assert server.stdout is not None
        endpoint = server.stdout.readline().strip()
        say(f"S3: moto server at {endpoint} (pid {server.pid})")
        bucket = f"rbench-{uuid.uuid4().hex[:16]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        options = {"endpoint_url": endpoint, "key": DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
                   "secret": DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"]}

        def plain_fs() -> s3fs.S3FileSystem:
            return s3fs.S3FileSystem(**options, skip_instance_cache=True, use_listings_cache=False,
                                     config_kwargs={"max_pool_connections": S3_WIDTH})

        fs = plain_fs()
        files = db_files(self.db)
        nbytes = sum(files.values())
        prefix = {"rbackup": "", "s3fs": ""}

        def fresh(name: str) -> Callable[[], None]:
            def prepare() -> None:
                if prefix[name]:
                    fs.rm(f"{bucket}/{prefix[name]}", recursive=True)
                prefix[name] = f"{name}-{uuid.uuid4().hex[:8]}"
            return prepare

        def ours_up() -> None:
            with BackupEngine(self.opts(f"s3://{bucket}/{prefix['rbackup']}", storage_options=dict(options))) as e:
                e.create_new_backup(self.db)

        def plain_up() -> None:
            plain_fs().put([os.path.join(self.db, n) for n in files], [f"{bucket}/{prefix['s3fs']}/{n}" for n in files],
                           batch_size=S3_WIDTH, chunksize=S3_PART, max_concurrency=1)

        say("S3: backups")
        cpu: dict[str, list[tuple[float, float]]] = {"rbackup": [], "s3fs": []}
        t = measure([Case("rbackup", self.metered(ours_up, cpu["rbackup"]), fresh("rbackup")),
                     Case("s3fs", self.metered(plain_up, cpu["s3fs"]), fresh("s3fs"))], self.reps, "warm", self.cache)
        r = self.report.row("backup to S3 (moto)", f"rbackup (DB by path, {S3_WIDTH} files in flight)", "warm",
                            t["rbackup"], nbytes, cpu_note(cpu["rbackup"]))
        p = self.report.row("backup to S3 (moto)", f"s3fs `put(files)`, batch_size={S3_WIDTH}, "
                            f"chunksize={S3_PART // MiB} MiB, max_concurrency=1", "warm", t["s3fs"], nbytes,
                            cpu_note(cpu["s3fs"]))
        self.report.ratio_target("S3 backup throughput vs s3fs bulk put", p.median, r.median, 0.9,
                                 higher_is_better=True)
        source = f"{bucket}/{prefix['rbackup']}"  # the last rbackup backup stays as the restore source
        keys = [k for k in fs.find(source) if "/meta/" not in k and "rbackup.lock" not in k]
        target = {name: self.p(f"s3-restore-{name}") for name in ("rbackup", "s3fs")}

        def ours_down() -> None:
            with BackupEngineReadOnly(self.opts(f"s3://{source}", storage_options=dict(options))) as e:
                e.restore_db_from_latest_backup(target["rbackup"])

        def plain_down() -> None:
            os.makedirs(target["s3fs"])
            local = [os.path.join(target["s3fs"], k.rsplit("/", 1)[1]) for k in keys]
            plain_fs().get(keys, local, batch_size=S3_WIDTH, max_concurrency=1)
            for path in [*local, target["s3fs"]]:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

        say("S3: restores")
        cpu = {"rbackup": [], "s3fs": []}
        t = measure([Case("rbackup", self.metered(ours_down, cpu["rbackup"]), lambda: rmtree(target["rbackup"])),
                     Case("s3fs", self.metered(plain_down, cpu["s3fs"]), lambda: rmtree(target["s3fs"]))],
                    self.reps, "warm", self.cache)
        r = self.report.row("restore from S3 (moto)", f"rbackup ({S3_WIDTH} files in flight, sync)", "warm",
                            t["rbackup"], nbytes, cpu_note(cpu["rbackup"]))
        p = self.report.row("restore from S3 (moto)", f"s3fs `get(files)`, batch_size={S3_WIDTH}, max_concurrency=1, "
                            "then fsync each file", "warm", t["s3fs"], nbytes, cpu_note(cpu["s3fs"]))
        self.report.ratio_target("S3 restore throughput vs s3fs bulk get", p.median, r.median, 0.9,
                                 higher_is_better=True)
        for d in target.values():
            rmtree(d)
        fs.rm(f"{bucket}/{prefix['s3fs']}", recursive=True)
        self.s3_listing(fs, bucket, options, listing_root)
        return {"bucket": bucket, "options": options}

    def s3_listing(self, fs: Any, bucket: str, options: dict[str, Any], root: str) -> None:
        count = self.args.list_backups
        say(f"S3: uploading {count} backups for open + list")
        local = [os.path.join(d, n) for d, _, names in os.walk(root) for n in names if "rbackup.lock" not in d + n]
        fs.put(local, [f"{bucket}/many/{os.path.relpath(p, root)}" for p in local], batch_size=64)
        url = f"s3://{bucket}/many"
        probes: list[InFlight] = []

        def open_and_list() -> None:
            from rbackup_s3 import S3Env

            probe = InFlight(S3Env(url, storage_options=dict(options)))
            probes.append(probe)
            try:
                with BackupEngineReadOnly(BackupableDBOptions(url, backup_env=probe)) as engine:
                    infos = engine.get_backup_info()
            finally:
                probe.close()
            if len(infos) != count:
                raise RuntimeError(f"expected {count} valid backups on S3, the engine found {len(infos)}")

        def one_by_one() -> None:
            from rbackup_s3 import S3Env

            env = S3Env(url, storage_options=dict(options))
            try:
                load_state(env, workers=1)
            finally:
                env.close()

        cpu: dict[str, list[tuple[float, float]]] = {"engine": [], "sequential": []}
        t = measure([Case("engine", self.metered(open_and_list, cpu["engine"])),
                     Case("sequential", self.metered(one_by_one, cpu["sequential"]))], self.reps, "warm", self.cache,
                    warmup=False)
        r = self.report.row(f"open + list {count} backups, S3 (moto)", "rbackup `BackupEngineReadOnly` + "
                            "`get_backup_info()`", "n/a (HTTP)", t["engine"],
                            note=f"meta GETs in flight at once: peak {max(p.peak for p in probes)}; "
                                 + cpu_note(cpu["engine"]))
        s = self.report.row(f"open + list {count} backups, S3 (moto)", "reference: `load_state` with 1 worker "
                            "(meta files fetched one by one)", "n/a (HTTP)", t["sequential"],
                            note=cpu_note(cpu["sequential"]))
        peak = max(p.peak for p in probes)
        self.report.targets.append(Target(
            f"open + list {count} backups on S3: meta files fetched concurrently",
            f"peak {peak} GETs in flight; {fmt_s(r.median)} vs {fmt_s(s.median)} one by one "
            f"({s.median / r.median:.1f}x)", "> 1 in flight", peak > 1))

    def metered(self, fn: Callable[[], object], sink: list[tuple[float, float]]) -> Callable[[], None]:
        """`fn`, recording per run this process's CPU seconds (all threads) and the moto
        server's: against moto the server's CPU, not the network, sets the pace."""
        def run() -> None:
            client, server = time.process_time(), process_cpu(self._moto.pid)
            fn()
            sink.append((time.process_time() - client, process_cpu(self._moto.pid) - server))
        return run

    def stop_moto(self) -> None:
        server = getattr(self, "_moto", None)
        if server is None:
            return
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class InFlight(WrapperEnv):
    """Counts reads open at the same moment: proof that loading a backup directory
    fetches its meta files concurrently (each one is an HTTP round trip on S3)."""

    def __init__(self, inner: BackupEnv) -> None:
        super().__init__(inner)
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def open_read(self, path: str) -> ReadStream:
        stream = self.inner.open_read(path)
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        return _Tracked(stream, self)  # type: ignore[return-value]

    def closed_one(self) -> None:
        with self._lock:
            self.now -= 1


class _Tracked(io.RawIOBase):
    def __init__(self, inner: ReadStream, owner: InFlight) -> None:
        super().__init__()
        self._inner = inner
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._inner.readinto(buffer)

    def read(self, size: int = -1) -> bytes:
        return self._inner.read(size)

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
            self._owner.closed_one()
        super().close()


def rss_child(spec_json: str) -> None:
    """Run one backup or restore in this (fresh) process and print its peak RSS (VmHWM).

    Not `ru_maxrss`: Linux carries it across fork and exec, so a child would
    report the benchmark parent's own footprint.
    """
    spec = json.loads(spec_json)

    def hwm_mb() -> float:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024

    if spec["storage_options"]:
        importlib.import_module("rbackup_s3")  # before the baseline: the S3 libraries are not the backup's
        os.environ.update(DUMMY_AWS_ENV)
    baseline = hwm_mb()
    start = time.perf_counter()
    opts = BackupableDBOptions(spec["backup_dir"], max_background_operations=spec["threads"],
                               storage_options=spec["storage_options"])
    with BackupEngine(opts) as engine:
        if spec["op"] == "backup":
            engine.create_new_backup(spec["db"])
        else:
            engine.restore_db_from_latest_backup(spec["db"])
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_mb": hwm_mb(), "baseline_mb": baseline, "seconds": seconds}))


# -- entry point ---------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=1024, help="DB size in MiB of values (default 1024)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per row (default 3)")
    ap.add_argument("--threads", type=int, default=2,
                    help="max_background_operations for rbackup, --num_threads for ldb (default 2)")
    ap.add_argument("--s3", action=argparse.BooleanOptionalAction, default=True,
                    help="run the S3 rows against a local moto server (default: yes)")
    ap.add_argument("--cache", choices=["both", "warm", "cold"], default="both",
                    help="page-cache states to measure; cold needs root (default both)")
    ap.add_argument("--list-backups", type=int, default=1000, help="backups in the open + list test (default 1000)")
    ap.add_argument("--workdir", help="where to build the DB and backups (default: a temp dir under $TMPDIR); "
                                      "use a real disk, not tmpfs")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--output", help="also write the Markdown report to this file")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.size_mb < 16 or args.reps < 1 or args.threads < 1 or args.list_backups < 2:
        ap.error("need --size-mb >= 16, --reps >= 1, --threads >= 1, --list-backups >= 2")
    return args


@contextlib.contextmanager
def workdir(args: argparse.Namespace) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="rbackup-bench-", dir=args.workdir)
    try:
        yield path
    finally:
        if args.keep:
            say(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child)
        return
    if shutil.which("ldb") is None:
        raise SystemExit("ldb (RocksDB's tool, Debian package rocksdb-tools) is not on PATH")
    started = time.perf_counter()
    with workdir(args) as work:
        bench = Bench(args, work)
        report = bench.report
        report.machine = machine_info()
        say(f"building a {args.size_mb} MiB DB in {work}")
        build_db(bench.db, args.size_mb)
        files = db_files(bench.db)
        bench.db_bytes = sum(files.values())
        report.notes.append(
            f"DB: {sum(1 for n in files if n.endswith('.sst'))} SSTs, {bench.db_bytes / MiB:.0f} MiB backed up "
            f"({args.size_mb} MiB of random {VALUE_SIZE}-byte values), raw mode, format_version 5; MB/s is MiB/s of "
            "these bytes.")
        try:
            bench.full_backup()
            bench.restore()
            bench.verify()
            bench.incremental_unchanged()
            bench.incremental_one_percent()
            bench.checksum_cost()
            listing_root = bench.listing()
            s3 = bench.s3(listing_root) if args.s3 else None
            if not args.s3:
                report.targets += [Target(n, "not run (--no-s3)", lim, None) for n, lim in [
                    ("S3 backup throughput vs s3fs bulk put", ">= 0.9x"),
                    ("S3 restore throughput vs s3fs bulk get", ">= 0.9x"),
                    ("open + list on S3: meta files fetched concurrently", "> 1 in flight")]]
            bench.rss(s3)
        finally:
            bench.stop_moto()
        report.machine.append(("load average at end", " ".join(f"{x:.2f}" for x in os.getloadavg())))
        report.machine.append(("work directory filesystem", _filesystem(work)))
        report.machine.append(("page cache", "dropped before each cold repetition" if bench.cache.can_drop
                               else "cannot be dropped (not root): warm rows only"))
        report.machine.append(("benchmark wall time", f"{time.perf_counter() - started:.0f} s"))
    report.notes += [
        "rbackup is timed in-process from opening the engine to closing it (imports excluded); ldb, cp and "
        "cat are timed as whole processes (start-up included, a few ms).",
        "rbackup's full backups and restores take the DB by path (the CLI's way: RocksDB's LOCK, a read-only "
        "open and a checkpoint), like ldb, which opens the DB itself.",
        "Order: within each round every tool runs once, ordered so that each tool follows each other tool "
        "about equally often (on this VM a run is slowed by the cleanup of the one before it: `ldb backup` took "
        "1.1-2.0 s right after `cp -r`, 0.8-0.9 s right after rbackup).",
        "Peak RSS is VmHWM of a fresh child process (not `ru_maxrss`, which Linux carries across fork and exec).",
        "moto answers every GET, ranged or not, by reading and copying the whole object (`FakeKey.value`), so a "
        "client that reads a file in several ranged GETs costs moto several times the file's size; real S3 "
        "does not. The CPU notes on S3 rows show where the time goes.",
        "S3 fairness: both clients move the same files with the same width: rbackup's S3 default of 16 files "
        "in flight, 8 MiB multipart parts and up to 4 parts in flight shared by all files (its part budget), s3fs with "
        "batch_size=16, chunksize=8 MiB, max_concurrency=1 and 16 pooled connections. The moto server runs "
        "in a child process.",
    ]
    text = report.to_markdown()
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
        say(f"wrote {args.output}")


def _filesystem(path: str) -> str:
    best = ("?", "")
    with open("/proc/mounts") as fh:
        for line in fh:
            device, mount, fstype = line.split()[:3]
            if path.startswith(mount) and len(mount) >= len(best[1]):
                best = (f"{fstype} on {device} ({mount})", mount)
    return best[0]


if __name__ == "__main__":
    main()
