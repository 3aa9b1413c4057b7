"""Concurrent use of one backup directory: writers exclude each other, readers need no lock.

On local disk the writer lock is a flock (released by the kernel when its
holder dies); on S3 a generation lease (see rbackup/lock.py).  Writers are
real processes (`tests/crash_worker.py`); lease races that need a precise
interleaving are forced in-process with an env that holds every contender at
a barrier.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from rbackup import BackupEngine, BackupEngineReadOnly, LockError
from rbackup.env.base import BackupEnv
from rbackup.env.wrappers import WrapperEnv
from rbackup.lock import LEASE_DIR, Holder, Lease, lease_path, writer_lock
from rbackup.testing.doubles import FaultInjectionEnv

from .crash_worker import (
    ROOT,
    World,
    check_backup_dir,
    engine_options,
    make_env,
)

Store = tuple[str, Any]  # (url, storage_options)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, world: World, scratch: Path) -> Store:
    """A backup directory holding backup 1 (of A): on local disk, or in a fresh moto bucket."""
    if request.param == "local":
        d = scratch / "bk"
        shutil.copytree(world.tmpl1, d)
        return str(d), None
    url, so = request.getfixturevalue("s3_bucket_url")
    url = f"{url}/db"
    with BackupEngine(engine_options(url, so)) as eng:
        eng.create_new_backup(world.dbs["A"])
    return url, so


def popen(spec: dict[str, Any]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.crash_worker", json.dumps(spec)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outcome(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, dict[str, Any]]:
    out, err = proc.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"worker exited {proc.returncode} without a result: {err[-2000:]}"
    return proc.returncode, json.loads(lines[-1])


def wait_line(proc: subprocess.Popen[str], expected: str) -> None:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        assert line, f"worker ended before {expected!r}: {proc.stderr.read() if proc.stderr else ''}"
        if line.strip() == expected:
            return


# -- two writer processes ------------------------------------------------------------------------------
def test_two_processes_create_at_once_one_proceeds_other_gets_lock_error(world: World, scratch: Path,
                                                                          store: Store) -> None:
    """Both start a (rate-limited, slow) create at the same moment: exactly one makes
    backup 2, the other fails at once with a LockError naming host, pid and since when."""
    url, so = store
    go = scratch / f"go-{uuid.uuid4().hex[:6]}"
    spec = {"op": "create", "url": url, "storage_options": so, "db": world.dbs["B"], "rate_limit": 250_000,
            "lock_timeout": 0, "hook_os": False, "start_file": str(go)}
    started = time.time()
    procs = [popen(spec), popen(spec)]
    for p in procs:
        wait_line(p, "ready")
    go.touch()
    results = [outcome(p) for p in procs]
    winners = [(p, r) for p, (code, r) in zip(procs, results, strict=True) if code == 0]
    losers = [(p, r) for p, (code, r) in zip(procs, results, strict=True) if code != 0]
    assert len(winners) == 1 and len(losers) == 1, results
    (win_proc, win), (_, lose) = winners[0], losers[0]
    assert win == {"result": 2}
    assert lose["error"] == "LockError", lose
    holder = lose["holder"]
    assert holder["pid"] == win_proc.pid and holder["host"] == socket.gethostname()
    assert started - 5 <= holder["since"] <= time.time()
    assert f"pid {win_proc.pid}" in lose["message"] and socket.gethostname() in lose["message"]
    check_backup_dir(url, so, expected={1: world.data["A"], 2: world.data["B"], 3: world.data["B"]},
                     must_list={1, 2}, untouched={}, scratch=scratch)


def test_a_second_writer_waits_when_asked(world: World, scratch: Path, store: Store) -> None:
    """With lock_timeout the second writer waits for the first instead of failing: both
    backups are made, with distinct ids, and both restore exactly."""
    url, so = store
    go = scratch / f"go-{uuid.uuid4().hex[:6]}"
    spec = {"op": "create", "url": url, "storage_options": so, "rate_limit": 250_000, "lock_timeout": 60,
            "hook_os": False, "start_file": str(go)}
    procs = [popen({**spec, "db": world.dbs["B"]}), popen({**spec, "db": world.dbs["C"]})]
    for p in procs:
        wait_line(p, "ready")
    go.touch()
    results = [outcome(p) for p in procs]
    assert all(code == 0 for code, _ in results), results
    ids = sorted(r["result"] for _, r in results)
    assert ids == [2, 3]
    expected = {1: world.data["A"]}
    for (_, r), name in zip(results, "BC", strict=True):
        expected[r["result"]] = world.data[name]
    check_backup_dir(url, so, expected=expected, must_list={1, 2, 3}, untouched={}, scratch=scratch)


def test_writer_lock_error_is_immediate_and_names_the_holder(store: Store) -> None:
    """A holder keeps the lock (a process inside a long operation): another writer's
    create, delete, purge and GC all fail with LockError within lock_timeout."""
    url, so = store
    holder = popen({"op": "hold_lock", "url": url, "storage_options": so, "hook_os": False})
    try:
        wait_line(holder, "locked")
        with BackupEngine(engine_options(url, so, lock_timeout=0.5)) as eng:
            for action in (lambda: eng.create_new_backup("/nonexistent"), lambda: eng.delete_backup(1),
                           lambda: eng.purge_old_backups(0), eng.garbage_collect):
                started = time.monotonic()
                with pytest.raises(LockError) as info:
                    action()
                assert 0.4 <= time.monotonic() - started < 5
                assert info.value.holder["pid"] == holder.pid
                assert f"pid {holder.pid}" in str(info.value) and "hold_lock" in str(info.value)
            assert [i.backup_id for i in eng.get_backup_info()] == [1]  # readers need no lock
            eng.verify_backup(1, True)
    finally:
        holder.kill()
        holder.communicate()


def test_stale_lock_of_a_killed_writer_is_taken_over(world: World, scratch: Path, store: Store) -> None:
    """SIGKILL the lock holder: the next writer proceeds at once (local: the kernel dropped
    the flock; S3: the lease names a pid of this machine that no longer exists)."""
    url, so = store
    holder = popen({"op": "hold_lock", "url": url, "storage_options": so, "hook_os": False})
    wait_line(holder, "locked")
    holder.kill()
    holder.communicate()
    started = time.monotonic()
    with BackupEngine(engine_options(url, so, lock_timeout=0)) as eng:
        assert eng.create_new_backup(world.dbs["B"]) == 2
    assert time.monotonic() - started < 10
    check_backup_dir(url, so, expected={1: world.data["A"], 2: world.data["B"]}, must_list={1, 2},
                     untouched={}, scratch=scratch)


# -- readers --------------------------------------------------------------------------------------------
def test_readers_never_see_a_half_made_backup(world: World, scratch: Path, store: Store) -> None:
    """A reader process loops list + verify-with-checksums (no lock) while a writer process
    creates backups: it never lists a backup that fails to verify, never sees a corrupt one."""
    url, so = store
    stop = scratch / f"stop-{uuid.uuid4().hex[:6]}"
    reading = scratch / f"reading-{uuid.uuid4().hex[:6]}"
    reader = popen({"op": "read_loop", "url": url, "storage_options": so, "stop_file": str(stop),
                    "started_file": str(reading), "hook_os": False})
    # The writer starts creating once the reader has finished a round: on a loaded machine the
    # reader's start-up could otherwise outlast all six creates.
    writer = popen({"op": "create_many", "url": url, "storage_options": so, "hook_os": False,
                    "dbs": [world.dbs[n] for n in "BCBCBC"], "lock_timeout": 30, "start_file": str(reading)})
    try:
        code, written = outcome(writer)
        assert code == 0, written
    finally:
        stop.touch()
    code, read = outcome(reader)
    assert code == 0, read
    report = read["result"]
    print(f"[concurrency] reader: {report['rounds']} rounds, {report['verified']} verifications, "
          f"saw backups {report['seen']}")
    assert report["problems"] == []
    assert report["rounds"] >= 3 and len(report["seen"]) >= 3


# -- the lease, in detail ---------------------------------------------------------------------------------
class BarrierEnv(WrapperEnv):
    """Holds every caller that reads a lease at a barrier: all contenders see the same
    (stale) lease before any of them acts on it, the interleaving that breaks a
    delete-then-create takeover."""

    def __init__(self, inner: BackupEnv, barrier: threading.Barrier) -> None:
        super().__init__(inner)
        self.barrier = barrier
        self.passed = threading.local()

    def open_read(self, path: str):  # type: ignore[override]
        stream = self.inner.open_read(path)
        if path.startswith(LEASE_DIR + "/") and not getattr(self.passed, "done", False):
            self.passed.done = True
            try:
                self.barrier.wait(timeout=20)
            except threading.BrokenBarrierError:
                pass
        return stream


def foreign_lease(**kw: Any) -> bytes:
    now = time.time()
    fields = {"host": "other-host.example", "pid": 4242, "since": now - 600, "expires": now - 10,
              "token": uuid.uuid4().hex, "operation": "create_new_backup"}
    fields.update(kw)
    return json.dumps(fields).encode()


class LeaseOnLocalDisk(WrapperEnv):
    """A local directory seen as an object store (no local path): the lease is then used
    instead of flock, over LocalEnv's atomic create (link)."""

    def local_path(self, path: str = "") -> str | None:
        return None


def lease_env(store: Store) -> BackupEnv:
    url, so = store
    if so is None:
        from rbackup.env.local import LocalEnv

        return LeaseOnLocalDisk(LocalEnv(url))
    return make_env(url, so)


@pytest.mark.parametrize("contenders", [2, 8])
def test_takeover_of_one_stale_lease_has_exactly_one_winner(store: Store, contenders: int) -> None:
    """N writers find the same expired lease at the same moment: exactly one gets the lock,
    the others a LockError naming the winner, never two holders."""
    env = lease_env(store)
    env.create_exclusive(lease_path(7), foreign_lease())
    barrier = threading.Barrier(contenders)
    won: list[Lease] = []
    lost: list[LockError] = []
    guard = threading.Lock()

    def contend() -> None:
        lease = Lease(BarrierEnv(env, barrier), "create_new_backup", timeout=0, ttl=60)
        try:
            lease.acquire()
        except LockError as exc:
            with guard:
                lost.append(exc)
            return
        with guard:
            won.append(lease)

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 1 and len(lost) == contenders - 1, (won, lost)
    winner = won[0]
    assert all(e.holder["token"] == winner.holder.token for e in lost)
    leases = [f.path for f in env.list(LEASE_DIR)]
    assert leases == [lease_path(8)]  # the stale one is gone, the winner's supersedes it
    winner.release()
    assert Holder.parse(env.read_bytes(lease_path(8), 4096)).released  # type: ignore[union-attr]


def test_live_foreign_lease_is_respected_and_expired_one_taken(store: Store) -> None:
    """A lease of another host is never judged by pid: while unexpired it blocks (LockError
    naming host, pid and since), once expired it is taken over; a writer willing to wait
    gets it the moment it expires."""
    env = lease_env(store)
    since = time.time() - 30
    expires = time.time() + 3
    env.create_exclusive(lease_path(3), foreign_lease(since=since, expires=expires, pid=os.getpid()))
    with pytest.raises(LockError) as info:
        with writer_lock(env, "delete_backup", timeout=0.2):
            pass
    assert info.value.holder["host"] == "other-host.example" and info.value.holder["since"] == since
    assert "other-host.example" in str(info.value)
    assert time.strftime("%Y-%m-%d", time.localtime(since)) in str(info.value)
    with writer_lock(env, "delete_backup", timeout=10) as holder:
        # Judged against the lease's own expiry, not the test's start: a loaded machine may spend
        # most of the 3 s in the refused attempt above.
        assert expires <= time.time() < expires + 5
        assert holder.pid == os.getpid()
    assert [f.path for f in env.list(LEASE_DIR)] == [lease_path(4)]


def test_lease_of_a_dead_pid_on_this_machine_is_taken_at_once(store: Store) -> None:
    env = lease_env(store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    env.create_exclusive(lease_path(50), foreign_lease(host=socket.gethostname(), pid=dead.pid,
                                                       expires=time.time() + 3600))
    with writer_lock(env, "garbage_collect", timeout=0):
        assert [f.path for f in env.list(LEASE_DIR)] == [lease_path(51)]


def test_heartbeat_keeps_a_long_holder_and_a_stalled_holder_notices_its_loss(store: Store) -> None:
    """ttl 1.2 s: a holder that keeps renewing is never taken over during 3 s; one whose
    renewals fail is taken over once its lease expires, notices at its next heartbeat
    (`lost`), and its release leaves the new holder's lease alone."""
    env = lease_env(store)
    with Lease(env, "create_new_backup", timeout=0, ttl=1.2):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with pytest.raises(LockError):
                Lease(env, "purge_old_backups", timeout=0, ttl=1.2).acquire()
            time.sleep(0.3)

    stalled_env = FaultInjectionEnv(env, fail_on=lambda op, path: op == "open_write" and path.startswith(LEASE_DIR))
    stalled = Lease(stalled_env, "create_new_backup", timeout=0, ttl=1.2)
    stalled.acquire()
    successor = Lease(env, "create_new_backup", timeout=10, ttl=60)
    started = time.monotonic()
    successor.acquire()  # waits for the stalled lease to expire
    assert 0.8 < time.monotonic() - started < 5
    assert stalled.lost.wait(5), "the stalled holder never noticed that it lost the lock"
    stalled.release()
    current = Holder.parse(env.read_bytes(lease_path(successor.generation or 0), 4096))
    assert current is not None and current.token == successor.holder.token and not current.released
    successor.release()


def test_two_engines_of_one_process_exclude_each_other_locally(world: World, scratch: Path) -> None:
    """flock is per open file: a second engine on the same directory in the same process is
    another writer, and gets a LockError while the first is inside an operation."""
    d = str(scratch / "bk")
    shutil.copytree(world.tmpl1, d)
    # The first waits for the lock: the second's GC may hold it at the moment the first asks.
    first = BackupEngine(engine_options(d, None, backup_rate_limit=200_000, lock_timeout=60))
    second = BackupEngine(engine_options(d, None, lock_timeout=0))
    errors: list[BaseException] = []
    t = threading.Thread(target=lambda: first.create_new_backup(world.dbs["B"]))
    t.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                second.garbage_collect()
            except LockError as exc:
                errors.append(exc)
                break
            time.sleep(0.02)
    finally:
        t.join()
    assert errors and errors[0].holder["pid"] == os.getpid()  # type: ignore[attr-defined]
    first.close()
    second.close()
    with BackupEngineReadOnly(engine_options(d, None)) as ro:
        assert [i.backup_id for i in ro.get_backup_info()] == [1, 2]


class WalkingListEnv(WrapperEnv):
    """Lists the whole directory one top-level directory at a time, data before meta/, as
    a walk of a local file system may (LocalEnv's order follows the file system's
    directory order) and as any store whose listing is not a snapshot does; `between`
    runs just before meta/ is listed."""

    def __init__(self, inner: BackupEnv, between: Any) -> None:
        super().__init__(inner)
        self.between = between

    def list(self, prefix: str = "") -> list[Any]:
        if prefix:
            return self.inner.list(prefix)
        out = []
        for top in ("shared_checksum", "shared", "private", "meta"):
            if top == "meta":
                self.between()
            out += self.inner.list(top)
        return sorted(out, key=lambda f: f.path)


def test_reader_listing_racing_a_commit_never_sees_a_corrupt_backup(world: World, scratch: Path) -> None:
    """The worst moment for a reader: a writer commits a whole backup while the reader's
    listing is half done, after the data directories and before meta/.  The reader must
    not report the new backup as corrupt ("named in the meta file but not found"): it
    either does not see it yet or sees all of it."""
    from rbackup.env.local import LocalEnv

    d = str(scratch / "bk")
    shutil.copytree(world.tmpl1, d)
    fired: list[int] = []

    def commit_now() -> None:
        if not fired:
            with BackupEngine(engine_options(d, None)) as writer:
                fired.append(writer.create_new_backup(world.dbs["B"]))

    with BackupEngineReadOnly(engine_options(d, None, WalkingListEnv(LocalEnv(d), commit_now))) as reader:
        corrupt = reader.corruption_reasons()
        listed = [i.backup_id for i in reader.get_backup_info()]
        assert fired == [2]
        assert corrupt == {}, corrupt
        assert listed in ([1], [1, 2])
        for backup_id in listed:
            reader.verify_backup(backup_id, True)
