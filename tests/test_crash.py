"""Crash safety: interrupt every operation at every point and check what is left.

Two ways of interrupting, on local disk and on S3 servers (moto, and a coarser
sweep on SeaweedFS, a real distributed store):

* in-process fault sweeps: a FaultInjectionEnv fails operation N, for every N
  of a dry run (`sticky`: every later operation fails too, as if the
  process had died and no cleanup could run; and "lost response": operation
  N takes effect but reports an error, as when S3's answer never arrives);
* real kills: `tests/crash_worker.py` runs the operation in a subprocess
  that SIGKILLs itself at tick k (an env operation or a commit step inside
  LocalEnv/restore), for a spread of k over its dry run and every k around
  the meta commit, plus kills at random moments from outside.

After each interruption `crash_worker.check_backup_dir` checks, as a new
process: nothing corrupt, no partial backup listed, every listed backup
verifies with checksums and restores to exactly its keys and values, older
backups' files unchanged, no orphan after garbage_collect(), and the next
create succeeds.  The counts of points tried are printed (run with -s).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import rocksdict

from rbackup import BackupEngine, BackupError, RestoreMode, RestoreOptions
from rbackup.env.base import AtomicWriter, BackupEnv
from rbackup.env.local import LocalEnv
from rbackup.lock import is_lock_file
from rbackup.restore import IN_PROGRESS_MARKER
from rbackup.testing.doubles import FaultInjectionEnv, InjectedFault, _FaultWriter

from .crash_worker import (
    ROOT,
    World,
    backup_files,
    check_backup_dir,
    engine_options,
    fingerprint,
    make_env,
    read_db,
)
from .s3_servers import S3Store, make_store

COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    """Print the totals (run with -s); RBACKUP_CRASH_COUNTS=<file> also writes them as JSON."""
    yield
    if COUNTS:
        print("\n[crash] totals: " + ", ".join(f"{k}: {v}" for k, v in COUNTS.items()))
        target = os.environ.get("RBACKUP_CRASH_COUNTS")
        if target:
            Path(target).write_text(json.dumps(COUNTS, indent=1))


def count(name: str, n: int) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + n
    print(f"[crash] {name}: {n}")


def expected_for(world: World, names: str) -> dict[int, dict[str, bytes]]:
    return {i + 1: world.data[n] for i, n in enumerate(names)}


def fresh_copy(template: str, dest: Path) -> str:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(template, dest)
    return str(dest)


# -- operations under test -------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One interruptible operation: how to run it, on which template, what must survive."""

    name: str
    template: str  # "tmpl1" or "tmpl3"
    run: Callable[[BackupEngine, World], Any]
    spec: dict[str, Any]
    must_list: frozenset[int]
    next_db: str


JOBS = {
    "create": Job("create", "tmpl1", lambda e, w: e.create_new_backup(w.dbs["B"]), {"op": "create"},
                  frozenset({1}), "B"),
    "delete": Job("delete", "tmpl3", lambda e, w: e.delete_backup(2), {"op": "delete", "backup_id": 2},
                  frozenset({1, 3}), "C"),
    "purge": Job("purge", "tmpl3", lambda e, w: e.purge_old_backups(1), {"op": "purge", "keep": 1},
                 frozenset({3}), "C"),
    "gc": Job("gc", "tmpl3", lambda e, w: e.garbage_collect(), {"op": "gc"}, frozenset({1, 2, 3}), "C"),
}


def job_expected(world: World, job: Job) -> dict[int, dict[str, bytes]]:
    return expected_for(world, "AB" if job.template == "tmpl1" else "ABC")


def survivors_fingerprint(url: str, so: dict[str, Any] | None, job: Job) -> dict[str, tuple[int, int]]:
    """Meta and private files of the backups that must survive `job`, before it runs (the
    content of their shared files is checked by verify_backup with checksums)."""
    env = make_env(url, so)
    try:
        return fingerprint(env, [p for p in backup_files(env, sorted(job.must_list)) if not p.startswith("shared")])
    finally:
        env.close()


def add_garbage(url: str, so: dict[str, Any] | None) -> None:
    """What crashed writers leave: a private dir of a never-committed backup, a temp file,
    an unreferenced shared file (GC jobs then have something to delete)."""
    env = make_env(url, so)
    try:
        env.write_bytes("private/9/MANIFEST-000001", b"x" * 100)
        env.write_bytes("private/9/CURRENT", b"MANIFEST-000001\n")
        env.write_bytes("shared_checksum/.000099_sX_10.sst.tmp", b"y" * 10)
        env.write_bytes("shared_checksum/000098_sABCDEFGHIJKLMNOPQRST_7.sst", b"z" * 7)
    finally:
        env.close()


# -- in-process fault envs -------------------------------------------------------------------
class LostResponseEnv(FaultInjectionEnv):
    """Operation `lose_at` takes effect in the store, then raises as if its reply was lost
    (a retried S3 request, an fsync error after a rename).  Only mutations can be lost."""

    def __init__(self, inner: BackupEnv, lose_at: int) -> None:
        super().__init__(inner)
        self.lose_at = lose_at

    def _lose(self, first: int, op: str, path: str) -> None:
        if first <= self.lose_at < len(self.ops):
            self.faults.append((op, path))
            raise InjectedFault(f"injected lost response: {op} {path} (operation #{self.lose_at})")

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        first = len(self.ops)
        super().create_exclusive(path, data, sync=sync)
        self._lose(first, "create_exclusive", path)

    def delete(self, paths) -> None:  # type: ignore[override]
        first = len(self.ops)
        super().delete(list(paths))
        self._lose(first, "delete", "")

    def _wrap_writer(self, path: str, writer: AtomicWriter) -> AtomicWriter:
        self._count_write(path, 0)
        return _LosingWriter(self, path, writer)

    def remove_dir(self, path: str) -> None:
        first = len(self.ops)
        super().remove_dir(path)
        self._lose(first, "remove_dir", path)


class _LosingWriter(_FaultWriter):
    _env: LostResponseEnv

    def commit(self) -> None:
        first = len(self._env.ops)
        super().commit()
        self._env._lose(first, "commit", self._path)


def run_in_process(job: Job, world: World, env: BackupEnv, url: str) -> BaseException | None:
    """Open an engine on `env` and run the job; return what it raised (BackupError only)."""
    try:
        with BackupEngine(engine_options(url, None, env)) as eng:
            job.run(eng, world)
    except BackupError as exc:
        return exc
    return None


def dry_run_ops(job: Job, world: World, scratch: Path) -> int:
    d = fresh_copy(getattr(world, job.template), scratch / "dry")
    if job.name == "gc":
        add_garbage(d, None)
    env = FaultInjectionEnv(LocalEnv(d))
    assert run_in_process(job, world, env, d) is None
    return len(env.ops)


def sweep_in_process(job: Job, world: World, tmp_path: Path, make: Callable[[BackupEnv, int], FaultInjectionEnv],
                     stride: int = 1) -> tuple[int, int]:
    """Interrupt `job` at every operation; return (points, faults that fired)."""
    total = dry_run_ops(job, world, tmp_path)
    expected = job_expected(world, job)
    fired = 0
    points = 0
    for n in range(0, total, stride):
        d = fresh_copy(getattr(world, job.template), tmp_path / "bk")
        if job.name == "gc":
            add_garbage(d, None)
        before = survivors_fingerprint(d, None, job)
        env = make(LocalEnv(d), n)
        error = run_in_process(job, world, env, d)
        if not env.faults and isinstance(env, LostResponseEnv):
            continue  # operation n reads: there is no response to lose
        fired += len(env.faults)
        points += 1
        assert env.faults, f"{job.name}: no fault fired at operation {n} of {total}"
        swallowed_ok = env.faults[0][0] in ("sync_dir", "remove_dir") or isinstance(env, LostResponseEnv)
        assert error is not None or swallowed_ok, f"{job.name}: fault at {n} ({env.faults[0]}) was swallowed"
        check_backup_dir(d, None, expected=expected, must_list=set(job.must_list), untouched=before,
                         scratch=tmp_path, next_db=world.dbs[job.next_db])
    return points, fired


@pytest.mark.parametrize("job_name", sorted(JOBS))
@pytest.mark.parametrize("mode", ["fail", "sticky", "lost_response"])
def test_fault_at_every_operation_local(world: World, scratch: Path, job_name: str, mode: str) -> None:
    """Fail each operation of create/delete/purge/GC in turn: the promises hold after each.

    "sticky" models a process that died at that point (its cleanup fails too);
    "lost_response" an operation that took effect but reported failure.
    """
    job = JOBS[job_name]
    make: Callable[[BackupEnv, int], FaultInjectionEnv]
    if mode == "lost_response":
        make = LostResponseEnv
    else:
        sticky = mode == "sticky"

        def make(inner: BackupEnv, n: int) -> FaultInjectionEnv:
            return FaultInjectionEnv(inner, fail_at=n, sticky=sticky)
    points, _ = sweep_in_process(job, world, scratch, make)
    count(f"in-process {mode} fault points, {job_name}, local", points)
    assert points >= (1 if mode == "lost_response" else 5)


# -- real kills ---------------------------------------------------------------------------------
def run_worker(spec: dict[str, Any], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.crash_worker", json.dumps(spec)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def record_ticks(spec: dict[str, Any], scratch: Path) -> list[str]:
    record = scratch / "ticks.json"
    proc = run_worker({**spec, "record": str(record)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(record.read_text())


COMMITS = ("create_exclusive meta/", "delete meta/", "os.link")
"""Ticks of a commit: the meta file appearing (and LocalEnv's link inside it), or going."""


def pick_kill_points(ticks: list[str], budget: int, around: tuple[str, ...] = COMMITS) -> list[int]:
    """`budget` points spread evenly over the run, plus every tick within 2 of a commit."""
    n = len(ticks)
    spread = {round(i * (n - 1) / max(1, budget - 1)) for i in range(budget)} if n else set()
    for i, label in enumerate(ticks):
        if any(a in label for a in around):
            spread.update(j for j in range(i - 2, i + 3) if 0 <= j < n)
    return sorted(spread)


def sigkill_sweep(job: Job, world: World, scratch: Path, url_for: Callable[[str], tuple[str, Any]],
                  budget: int) -> int:
    """SIGKILL the worker at `budget`-ish ticks; check after each; return points tried."""
    expected = job_expected(world, job)
    url, so = url_for("dry")
    spec = {**job.spec, "url": url, "storage_options": so, "db": world.dbs["B"]}
    ticks = record_ticks(spec, scratch)
    points = pick_kill_points(ticks, budget)
    for k in points:
        url, so = url_for(f"k{k}")
        before = survivors_fingerprint(url, so, job)
        proc = run_worker({**spec, "url": url, "storage_options": so, "kill_at": k})
        assert proc.returncode == -9, f"tick {k} ({ticks[k]}): worker exited {proc.returncode}: {proc.stderr}"
        check_backup_dir(url, so, expected=expected, must_list=set(job.must_list), untouched=before,
                         scratch=scratch, next_db=world.dbs[job.next_db])
        # A create snapshots the DB into a hard-link checkpoint beside it; one left by a killed
        # create would pin the space of SSTs the DB later deletes.  The next create removes it.
        left = [n for n in os.listdir(world.root) if n.startswith(".rbackup-checkpoint-")]
        assert left == [], f"tick {k} ({ticks[k]}): checkpoints left beside the DB: {left}"
    return len(points)


def local_urls(world: World, job: Job, scratch: Path) -> Callable[[str], tuple[str, Any]]:
    def url_for(tag: str) -> tuple[str, Any]:
        d = fresh_copy(getattr(world, job.template), scratch / f"bk-{tag}")
        if job.name == "gc":
            add_garbage(d, None)
        return d, None
    return url_for


@pytest.mark.parametrize("job_name,budget", [("create", 40), ("delete", 12), ("purge", 12), ("gc", 12)])
def test_sigkill_at_ticks_local(world: World, scratch: Path, job_name: str, budget: int) -> None:
    """Really kill the process (SIGKILL, no cleanup of any kind) at points spread over the
    whole operation and at every step around the meta commit."""
    job = JOBS[job_name]
    n = sigkill_sweep(job, world, scratch, local_urls(world, job, scratch), budget)
    count(f"SIGKILL points, {job_name}, local", n)
    assert n >= min(budget, 10)


def _popen_worker(spec: dict[str, Any]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.crash_worker", json.dumps(spec)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", (line, proc.stderr.read() if proc.stderr else "")
    return proc


def _finish(proc: subprocess.Popen[str]) -> int:
    proc.communicate(timeout=60)
    return proc.returncode


def timed_kills(job: Job, world: World, scratch: Path, url_for: Callable[[str], tuple[str, Any]],
                kills: int, rate: int, seed: int) -> int:
    """Kill a rate-limited run from outside at moments spread over its measured duration."""
    expected = job_expected(world, job)
    url, so = url_for("timing")
    spec = {**job.spec, "url": url, "storage_options": so, "db": world.dbs["B"], "rate_limit": rate,
            "hook_os": False}
    proc = _popen_worker(spec)
    started = time.monotonic()
    assert _finish(proc) == 0
    duration = time.monotonic() - started
    rng = random.Random(seed)
    killed = 0
    for i in range(kills):
        url, so = url_for(f"t{i}")
        before = survivors_fingerprint(url, so, job)
        proc = _popen_worker({**spec, "url": url, "storage_options": so})
        time.sleep(0.8 * duration * (i + rng.random()) / kills)  # a run may go faster than the measured one
        proc.kill()
        killed += _finish(proc) == -9
        check_backup_dir(url, so, expected=expected, must_list=set(job.must_list), untouched=before,
                         scratch=scratch, next_db=world.dbs[job.next_db])
    return killed


def test_sigkill_at_random_times_local(world: World, scratch: Path) -> None:
    """Kills from outside at moments spread over a rate-limited create (not tied to ticks)."""
    job = JOBS["create"]
    killed = timed_kills(job, world, scratch, local_urls(world, job, scratch), kills=8, rate=300_000, seed=5)
    count("time-based SIGKILLs of create, local", killed)
    assert killed >= 5  # most land while the create still runs (the last ones may come too late)


# -- restore ---------------------------------------------------------------------------------------
def check_killed_restore(target: str, expected: dict[str, bytes], old: dict[str, bytes], touched: bool,
                         backup_dir: str, so: Any, rerun: RestoreOptions | None = None) -> str:
    """After a killed restore the target, opened as a user would (a plain writable
    Rdict(target), which would create an empty DB were CURRENT missing), holds either
    nothing that opens, or exactly the backup's data, or - only when the kill came
    before the restore touched the target - the old DB unchanged.  A re-run of the
    restore then gives exactly the backup's data."""
    try:
        db = rocksdict.Rdict(target)
    except Exception as exc:
        outcome = "refused"
        assert "Corruption" in str(exc), str(exc)
    else:
        try:
            got = dict(db.items())
        finally:
            db.close()
        if got == expected:
            outcome = "complete"
        else:
            assert not touched and got == old, \
                f"the interrupted restore target opened with {len(got)} keys: neither the backup's " \
                f"{len(expected)} nor, untouched, the old DB's {len(old)}"
            outcome = "untouched"
    with BackupEngine(engine_options(backup_dir, so)) as eng:
        eng.restore_db_from_backup(2, target, options=rerun or RestoreOptions())
    assert read_db(target) == expected
    return outcome


def prepare_target(world: World, target: Path) -> str:
    """A target holding another DB (C), as when restoring over an old copy."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(world.dbs["C"], target)
    return str(target)


def test_sigkill_restore_local(world: World, scratch: Path) -> None:
    """Kill a restore (of backup 2 over a target holding another DB) at its ticks: the
    target never opens with wrong or partial data, and a re-run restores it exactly."""
    d = fresh_copy(world.tmpl3, scratch / "bk")
    spec = {"op": "restore", "url": d, "backup_id": 2, "target": prepare_target(world, scratch / "t")}
    ticks = record_ticks(spec, scratch)
    points = pick_kill_points(ticks, 30, around=("restore._write_file", "os.replace"))
    # the first step that changes what the target opens as: CURRENT replaced by the marker
    first_touch = next(i for i, t in enumerate(ticks) if t.startswith(("restore._unlink", "os.replace")))
    outcomes: dict[str, int] = {}
    for k in points:
        target = prepare_target(world, scratch / "t")
        proc = run_worker({**spec, "kill_at": k})
        assert proc.returncode == -9, f"tick {k} ({ticks[k]}): {proc.returncode}: {proc.stderr}"
        outcome = check_killed_restore(target, world.data["B"], world.data["C"], k > first_touch, d, None)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    count("SIGKILL points, restore, local", len(points))
    assert outcomes.get("refused", 0) > len(points) // 2, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("mode", [RestoreMode.KEEP_LATEST_DB_SESSION_ID_FILES, RestoreMode.VERIFY_CHECKSUM])
def test_sigkill_incremental_restore_local(world: World, scratch: Path, mode: RestoreMode) -> None:
    """Kill an incremental restore (of backup 2 over DB C, which holds all of B's SSTs and two
    more) at its ticks: as with a full restore the target never opens with wrong or partial
    data, and an incremental re-run (reusing what the killed one kept or copied) restores it exactly."""
    d = fresh_copy(world.tmpl3, scratch / "bk")
    spec = {"op": "restore", "url": d, "backup_id": 2, "target": prepare_target(world, scratch / "t"),
            "mode": int(mode)}
    ticks = record_ticks(spec, scratch)
    assert any(t.startswith("restore._unlink") for t in ticks)  # C's two extra SSTs go
    points = pick_kill_points(ticks, 20, around=("restore._write_file", "os.replace"))
    first_touch = next(i for i, t in enumerate(ticks) if t.startswith(("restore._unlink", "os.replace")))
    outcomes: dict[str, int] = {}
    for k in points:
        target = prepare_target(world, scratch / "t")
        proc = run_worker({**spec, "kill_at": k})
        assert proc.returncode == -9, f"tick {k} ({ticks[k]}): {proc.returncode}: {proc.stderr}"
        outcome = check_killed_restore(target, world.data["B"], world.data["C"], k > first_touch, d, None,
                                       RestoreOptions(mode=mode))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    count(f"SIGKILL points, incremental restore ({mode.name}), local", len(points))
    assert outcomes.get("refused", 0) > len(points) // 2, outcomes


def test_failed_restore_leaves_a_target_that_will_not_open(world: World, scratch: Path) -> None:
    """Fail every env operation of a restore in turn: the target then refuses to open."""
    d = fresh_copy(world.tmpl3, scratch / "bk")
    env = FaultInjectionEnv(LocalEnv(d))
    with BackupEngine(engine_options(d, None, env)) as eng:
        env.ops.clear()
        eng.restore_db_from_backup(2, prepare_target(world, scratch / "t"))
        total = len(env.ops)
        for n in range(total):
            target = prepare_target(world, scratch / "t")
            env.ops.clear()
            env.faults.clear()
            env.fail_at = n
            with pytest.raises(BackupError):
                eng.restore_db_from_backup(2, target, options=RestoreOptions())
            with open(os.path.join(target, "CURRENT"), "rb") as fh:
                assert fh.read() == IN_PROGRESS_MARKER
            with pytest.raises(Exception, match="Corruption"):
                rocksdict.Rdict(target)
            env.fail_at = None
            eng.restore_db_from_backup(2, target)
            assert read_db(target) == world.data["B"]
    count("in-process faults, restore, local", total)


# -- the same on S3 (moto, and SeaweedFS: a real distributed store) -----------------------------
def s3_copy_prefix(client: Any, bucket: str, src: str, dst: str) -> None:
    """Server-side copy of a backup directory (objects under `src/`) to `dst/`."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=src + "/"):
        for obj in page.get("Contents", []):
            client.copy_object(Bucket=bucket, Key=dst + obj["Key"][len(src):],
                               CopySource={"Bucket": bucket, "Key": obj["Key"]})


def s3_drop_prefix(client: Any, bucket: str, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


@dataclass
class S3Templates:
    store: S3Store
    """A fresh location (s3://bucket[/prefix]) on one server."""
    made: dict[str, str]
    copies: list[str] = field(default_factory=list)

    @property
    def options(self) -> dict[str, Any]:
        return self.store.storage_options

    def url_for(self, world: World, job: Job) -> Callable[[str], tuple[str, Any]]:
        """A fresh copy of the job's template under a new prefix, per call."""
        bucket, _, root = self.store.url[len("s3://"):].partition("/")
        key = (lambda name: f"{root}/{name}") if root else (lambda name: name)
        client = self.store.client()
        if job.template not in self.made:
            prefix = f"template-{job.template}"
            with BackupEngine(engine_options(f"{self.store.url}/{prefix}", self.options)) as eng:
                for name in ("A" if job.template == "tmpl1" else "ABC"):
                    eng.create_new_backup(world.dbs[name])
            self.made[job.template] = prefix

        def url_for(tag: str) -> tuple[str, Any]:
            # moto lists a prefix by scanning the whole bucket: drop the previous copy first
            for old in self.copies:
                s3_drop_prefix(client, bucket, key(old))
            self.copies.clear()
            prefix = f"{job.name}-{tag}-{uuid.uuid4().hex[:6]}"
            self.copies.append(prefix)
            s3_copy_prefix(client, bucket, key(self.made[job.template]), key(prefix))
            url = f"{self.store.url}/{prefix}"
            if job.name == "gc":
                add_garbage(url, self.options)
            return url, self.options
        return url_for


@pytest.fixture(params=["moto", "seaweedfs"])
def s3_templates(request: pytest.FixtureRequest) -> Iterator[S3Templates]:
    """Templates on moto, and on SeaweedFS (a subset of each sweep there: see `_on`)."""
    for store in make_store(request, request.param):
        yield S3Templates(store, {})


def _on(templates: S3Templates, moto: int, seaweedfs: int) -> int:
    """A sweep's stride or budget on each server: SeaweedFS, which burns as much CPU as the
    client, gets a coarser sweep so that CI stays short."""
    return moto if templates.store.name == "moto" else seaweedfs


MUTATIONS = ("commit", "create_exclusive", "delete", "remove_dir")


def sweep_in_process_s3(job: Job, world: World, scratch: Path, templates: S3Templates,
                        make: Callable[[BackupEnv, int], FaultInjectionEnv], stride: int,
                        only: tuple[str, ...] | None = None) -> tuple[int, int]:
    """Like sweep_in_process, on S3: every `stride`-th operation (or every one named in `only`)."""
    url_for = templates.url_for(world, job)
    expected = job_expected(world, job)
    url, so = url_for("dry")
    dry = FaultInjectionEnv(make_env(url, so))
    assert run_in_process(job, world, dry, url) is None
    ops = list(dry.ops)
    dry.close()
    points_to_try = [n for n in range(len(ops)) if only is None or ops[n][0] in only][::stride]
    fired = points = 0
    for n in points_to_try:
        url, so = url_for(f"n{n}")
        before = survivors_fingerprint(url, so, job)
        env = make(make_env(url, so), n)
        error = run_in_process(job, world, env, url)
        env.close()
        if not env.faults and isinstance(env, LostResponseEnv):
            continue  # transfers run in parallel on S3: operation n was a read this time
        assert env.faults, f"{job.name}: no fault fired at operation {n} of {len(ops)}"
        assert error is not None or isinstance(env, LostResponseEnv) or is_lock_file(env.faults[0][1]), \
            f"fault {env.faults[0]} was swallowed"  # (a failed lock release is only logged)
        fired += len(env.faults)
        points += 1
        check_backup_dir(url, so, expected=expected, must_list=set(job.must_list), untouched=before,
                         scratch=scratch, next_db=world.dbs[job.next_db], restore_ids={max(expected)})
    return points, fired


@pytest.mark.slow
@pytest.mark.parametrize("job_name,mode,stride", [("create", "sticky", 4), ("create", "lost_response", 1),
                                                  ("delete", "sticky", 4)])
def test_fault_at_operations_s3(world: World, scratch: Path, s3_templates: S3Templates, job_name: str,
                                mode: str, stride: int) -> None:
    """The in-process sweep against an S3 server: every `stride`-th operation failing for
    good (sticky), and every mutation taking effect with its reply lost."""
    if mode == "sticky":
        make: Callable[[BackupEnv, int], FaultInjectionEnv] = \
            lambda inner, n: FaultInjectionEnv(inner, fail_at=n, sticky=True)  # noqa: E731
        only = None
    else:
        make, only = LostResponseEnv, MUTATIONS
    stride = _on(s3_templates, stride, stride * 3)
    points, _ = sweep_in_process_s3(JOBS[job_name], world, scratch, s3_templates, make, stride, only)
    count(f"in-process {mode} fault points, {job_name}, S3 ({s3_templates.store.name})", points)
    assert points >= 3


@pytest.mark.slow
@pytest.mark.parametrize("job_name,budget", [("create", 10), ("delete", 4), ("gc", 3)])
def test_sigkill_at_ticks_s3(world: World, scratch: Path, s3_templates: S3Templates, job_name: str,
                             budget: int) -> None:
    """Real kills of a worker talking to an S3 server: in-flight uploads die with it."""
    job = JOBS[job_name]
    budget = _on(s3_templates, budget, max(2, budget // 3))
    n = sigkill_sweep(job, world, scratch, s3_templates.url_for(world, job), budget)
    count(f"SIGKILL points, {job_name}, S3 ({s3_templates.store.name})", n)
    assert n >= budget


def test_sigkill_at_random_times_s3(world: World, scratch: Path, s3_templates: S3Templates) -> None:
    job = JOBS["create"]
    kills = _on(s3_templates, 4, 2)
    killed = timed_kills(job, world, scratch, s3_templates.url_for(world, job), kills=kills, rate=300_000, seed=9)
    count(f"time-based SIGKILLs of create, S3 ({s3_templates.store.name})", killed)
    assert killed >= kills // 2  # the run's speed varies with the load: a late kill finds it done
