"""Racing writers on real S3 servers: never a backup reported as created that does not restore.

Each scenario of issue 12, as seen on SeaweedFS and s3rver:

- CLI writers racing round after round, on a store that arbitrates (moto,
  SeaweedFS), on stores run with `conditional_writes=False` (SeaweedFS,
  s3rver), and on s3rver with default options (every create must fail with
  the clear error, none may be reported);
- a writer stopped (SIGSTOP) past `lock_ttl` in the middle of its create
  while a successor takes the lease and makes a backup (never with the stalled
  writer's id), then resumed; and, in-process, which ids a successor may use
  and a commit that lands after its writer lost the lease.

The promise checked every time: no two writers report the same id, and every
id a writer reported verifies with checksums and restores to exactly that
writer's DB.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rbackup import BackupEngine, BackupEngineReadOnly
from rbackup.env.wrappers import WrapperEnv
from rbackup.errors import Corruption
from rbackup.lock import LEASE_DIR, Holder, lease_path

from .crash_worker import ROOT, World, add_ssts, engine_options, read_db
from .s3_servers import S3Store, make_store
from .test_concurrency import outcome, popen, wait_line

WRITERS = 4
ROUNDS = 3


@pytest.fixture(scope="module")
def four_dbs(world: World) -> list[tuple[str, dict[str, bytes]]]:
    """Four DBs that share most SSTs (A < B < C < D), as copies of one DB at four moments."""
    d = str(Path(world.dbs["C"]).parent / "dbD")
    if not Path(d).exists():
        shutil.copytree(world.dbs["C"], d)
        add_ssts(d, 1, first=10)
    paths = [world.dbs["A"], world.dbs["B"], world.dbs["C"], d]
    return [(p, read_db(p)) for p in paths]


def check_reported(store: S3Store, storage_options: dict[str, Any], reported: list[tuple[int, int]],
                   dbs: list[tuple[str, dict[str, bytes]]], scratch: Path) -> None:
    """Every reported (id, writer) is unique by id, verifies and restores to that writer's DB."""
    ids = [i for i, _ in reported]
    assert len(ids) == len(set(ids)), f"two writers reported the same backup id: {sorted(reported)}"
    with BackupEngineReadOnly(engine_options(store.url, storage_options)) as ro:
        valid = {b.backup_id for b in ro.get_backup_info()}
        for backup_id, writer in reported:
            assert backup_id in valid, f"reported backup {backup_id} is not valid: {ro.corruption_reasons()}"
            ro.verify_backup(backup_id, True)
            target = scratch / f"restore-{backup_id}-{uuid.uuid4().hex[:6]}"
            ro.restore_db_from_backup(backup_id, str(target))
            assert read_db(str(target)) == dbs[writer][1], f"backup {backup_id} holds another writer's DB"
            shutil.rmtree(target)


RACES = [("moto", {}), ("seaweedfs", {}), ("seaweedfs", {"conditional_writes": False}),
         ("s3rver", {"conditional_writes": False}), ("s3rver", {})]


@pytest.fixture(params=RACES, ids=lambda p: p[0] + ("-best-effort" if p[1] else "-default"))
def race_store(request: pytest.FixtureRequest) -> Iterator[tuple[S3Store, dict[str, Any]]]:
    name, extra = request.param
    for store in make_store(request, name):
        yield store, extra


@pytest.mark.slow
def test_racing_cli_writers_never_report_a_damaged_backup(race_store: tuple[S3Store, dict[str, Any]],
                                                          four_dbs: list[tuple[str, dict[str, bytes]]],
                                                          scratch: Path) -> None:
    store, extra = race_store
    options = {**store.storage_options, **extra}
    reported: list[tuple[int, int]] = []
    failures: list[str] = []
    for _ in range(ROUNDS):
        procs = [subprocess.Popen([sys.executable, "-m", "rbackup.cli", "create", "--db", path, "--backup-dir",
                                   store.url, *store.cli_options(**extra), "--quiet"],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for path, _ in four_dbs]
        for writer, proc in enumerate(procs):
            out, err = proc.communicate(timeout=300)
            assert "Traceback" not in err and "unexpected" not in err, err
            if proc.returncode == 0:
                reported.append((int(out.strip()), writer))
            else:
                assert proc.returncode == 1, err
                failures.append(err.strip().splitlines()[-1])
    print(f"[races] {store.name} {extra}: {len(reported)} of {WRITERS * ROUNDS} creates reported, "
          f"failures: {sorted(set(f[:90] for f in failures))}")
    if not store.conditional_put and not extra:
        assert reported == [] and all("conditional_writes=False" in f for f in failures)
        return
    assert reported, failures
    check_reported(store, options, reported, four_dbs, scratch)


@pytest.fixture(params=["moto", "seaweedfs"])
def arbitrating(request: pytest.FixtureRequest) -> Iterator[S3Store]:
    yield from make_store(request, request.param)


@pytest.mark.slow
def test_writer_stalled_past_lock_ttl_cannot_damage_its_successor(arbitrating: S3Store, world: World,
                                                                  scratch: Path) -> None:
    """Writer 1 (lock_ttl 6 s, rate-limited) is stopped with SIGSTOP once its first files are up,
    perhaps with a PUT in flight; writer 2 waits for the lease to expire, takes it over and makes
    a backup of another DB, never with writer 1's id 2 (SeaweedFS checks If-None-Match when a
    PUT's headers arrive, so writer 1's in-flight PUT into private/2/ would land over writer 2's
    object); then writer 1 is resumed.  Writer 1 must fail without touching writer 2's backup,
    which verifies and restores to writer 2's DB; the next creates work and skip id 2 too."""
    store = arbitrating
    url, so = store.url, store.storage_options
    with BackupEngine(engine_options(url, so)) as eng:
        assert eng.create_new_backup(world.dbs["A"]) == 1
    env_probe = BackupEngineReadOnly(engine_options(url, so))
    before = {f.path for f in env_probe.env.list()}

    def new_backup_files() -> set[str]:
        return {f.path for f in env_probe.env.list() if f.path.startswith(("private/", "shared"))} - before

    stalled = popen({"op": "create", "url": url, "storage_options": so, "db": world.dbs["B"], "lock_ttl": 6,
                     "rate_limit": 60_000, "hook_os": False})
    try:
        wait_line(stalled, "ready")
        deadline = time.monotonic() + 120
        while not new_backup_files():
            assert time.monotonic() < deadline and stalled.poll() is None, "writer 1 never wrote a file"
            time.sleep(0.02)
        stalled.send_signal(signal.SIGSTOP)
        with BackupEngine(engine_options(url, so, lock_timeout=60)) as successor:
            assert successor.create_new_backup(world.dbs["C"]) == 3
        stalled.send_signal(signal.SIGCONT)
        code, result = outcome(stalled)
    finally:
        stalled.send_signal(signal.SIGCONT)
        if stalled.poll() is None:
            stalled.kill()
        stalled.communicate()
    assert code != 0, f"writer 1 reported {result} after losing its lease"
    print(f"[races] stalled writer on {store.name}: {result}")
    check_reported(store, so, [(3, 0)], [(world.dbs["C"], world.data["C"])], scratch)
    with BackupEngine(engine_options(url, so)) as eng:
        eng.garbage_collect()
        assert eng.create_new_backup(world.dbs["B"]) == 4
        assert [b.backup_id for b in eng.get_backup_info()] == [1, 3, 4]
        eng.verify_backup(4, True)
        eng.verify_backup(1, True)
    env_probe.close()



class AsObjectStore(WrapperEnv):
    """A local directory seen as an object store: the lease, not flock, is the writer lock."""

    def local_path(self, path: str = "") -> str | None:
        return None


def foreign_lease(generation: int, *, expired: bool, backup_id: int | None, released: bool = False,
                  reserved: int = 0) -> tuple[str, bytes]:
    """The lease of a writer on another host (its pid cannot be checked from here)."""
    now = time.time()
    holder = Holder("other-host", 4242, now - 60, now - 1 if expired else now + 600, uuid.uuid4().hex,
                    "create_new_backup", released=released, backup_id=backup_id, reserved=reserved)
    return lease_path(generation), holder.encode()


def test_successor_of_a_writer_whose_lease_expired_never_takes_its_backup_id(world: World, scratch: Path) -> None:
    """A writer on another host was creating backup 2 when its lease expired (stalled, not
    known dead): its successor makes backup 3, and so does every later writer skip 2, since
    the stalled writer may resume and finish a PUT into private/2/ at any time.  Its leftovers
    are garbage; a writer whose lease was released leaves its id to be tried again."""
    from rbackup.env.local import LocalEnv

    directory = scratch / "bk"
    shutil.copytree(world.tmpl1, directory)
    env = AsObjectStore(LocalEnv(str(directory)))
    env.create_exclusive(*foreign_lease(7, expired=True, backup_id=2))
    env.write_bytes("private/2/CURRENT", b"the stalled writer's CURRENT\n")
    with BackupEngine(engine_options(str(directory), None, env=env)) as eng:
        assert eng.create_new_backup(world.dbs["B"]) == 3
    env.delete(["private/2/CURRENT"])  # gone (GC), yet the stalled writer may still write there
    with BackupEngine(engine_options(str(directory), None, env=env)) as eng:
        assert eng.create_new_backup(world.dbs["C"]) == 4, "the reservation of id 2 was not carried over"
        env.write_bytes("private/2/MANIFEST-000001", b"the stalled writer, resumed")
        eng.garbage_collect()
        assert not [f for f in env.list("private") if f.path.startswith("private/2/")]
        assert [b.backup_id for b in eng.get_backup_info()] == [1, 3, 4]
        for backup_id in (1, 3, 4):
            eng.verify_backup(backup_id, True)

    # An expired lease of an older rbackup, which recorded no id: its leftovers are skipped.
    env.create_exclusive(*foreign_lease(20, expired=True, backup_id=None))
    env.write_bytes("private/9/CURRENT", b"an unknown writer's CURRENT\n")
    with BackupEngine(engine_options(str(directory), None, env=env)) as eng:
        assert eng.create_new_backup(world.dbs["C"]) == 10

    # A released lease: its holder is done, so a failed id is tried again, as in RocksDB.
    env.create_exclusive(*foreign_lease(30, expired=False, backup_id=11, released=True, reserved=10))
    env.write_bytes("private/11/CURRENT", b"leftover of a failed create\n")
    with BackupEngine(engine_options(str(directory), None, env=env)) as eng:
        assert eng.create_new_backup(world.dbs["A"]) == 11
        eng.verify_backup(11, True)


class SupersededAtCommit(AsObjectStore):
    """A successor takes the lease over in the instant between the writer's last check and
    its meta commit (the writer stalled there past lock_ttl)."""

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        if path.startswith("meta/"):
            top = max(int(f.path.rpartition("/")[2]) for f in self.inner.list(LEASE_DIR))
            self.inner.create_exclusive(*foreign_lease(top + 1, expired=False, backup_id=None))
        self.inner.create_exclusive(path, data, sync=sync)


def test_commit_that_lands_after_the_lease_was_lost_is_withdrawn(world: World, scratch: Path) -> None:
    """The successor's garbage collection does not know the late commit's backup and may be
    deleting its files: the late writer withdraws its commit and fails."""
    from rbackup.env.local import LocalEnv

    directory = scratch / "bk"
    shutil.copytree(world.tmpl1, directory)
    with BackupEngine(engine_options(str(directory), None, env=SupersededAtCommit(LocalEnv(str(directory))))) as eng:
        with pytest.raises(Corruption, match=r"backup 2 .*lost the lock.*withdrawn"):
            eng.create_new_backup(world.dbs["B"])
    with BackupEngineReadOnly(engine_options(str(directory), None)) as ro:
        assert [b.backup_id for b in ro.get_backup_info()] == [1] and ro.get_corrupted_backups() == []


class OverwrittenAfterCommit(AsObjectStore):
    """A local directory seen as an object store, where "another writer" replaces the new
    backup's MANIFEST the moment its meta commit lands, as a racing writer can on a store
    that cannot arbitrate."""

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        self.inner.create_exclusive(path, data, sync=sync)
        if path.startswith("meta/"):
            backup_id = path.split("/")[1]
            manifest = next(f.path for f in self.inner.list(f"private/{backup_id}") if "MANIFEST" in f.path)
            self.inner.write_bytes(manifest, b"another writer's MANIFEST")


def test_commit_damaged_right_after_it_landed_is_withdrawn_and_reported(world: World, scratch: Path) -> None:
    from rbackup.env.local import LocalEnv

    directory = scratch / "bk"
    with BackupEngine(engine_options(str(directory), None)) as eng:
        assert eng.create_new_backup(world.dbs["A"]) == 1
    env = OverwrittenAfterCommit(LocalEnv(str(directory)))
    with BackupEngine(engine_options(str(directory), None, env=env)) as eng:
        with pytest.raises(Corruption, match=r"backup 2 .*MANIFEST.*withdrawn"):
            eng.create_new_backup(world.dbs["B"])
        assert [b.backup_id for b in eng.get_backup_info()] == [1] and eng.get_corrupted_backups() == []
        eng.verify_backup(1, True)
