"""A process to kill, and the checks that must hold after it dies.

Run as `python -m tests.crash_worker '<json spec>'` (cwd: the repository).
The worker opens a BackupEngine whose env is wrapped in `KillEnv`: every
operation that reaches the store, and every file-system call that commits
something (os.link, os.replace, os.fsync, the restore's unlinks and marker
write), is one tick of a `KillClock`.  With `kill_at=k` the worker sends
itself SIGKILL at tick k, before that operation happens: no `finally`, no
atexit, no cleanup, exactly as a power cut or the OOM killer would stop it.
With `record` set it instead writes the list of ticks it went through (a dry
run), so a test can sweep k over all of them.

The same module holds the DB builder and `check_backup_dir`, the invariants
checked after every kill and every injected fault (tests import them).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import rocksdict  # noqa: E402

from rbackup import (  # noqa: E402
    BackupableDBOptions,
    BackupEngine,
    BackupEngineReadOnly,
    BackupError,
    RestoreMode,
    RestoreOptions,
)
from rbackup.env.base import BackupEnv  # noqa: E402
from rbackup.env.registry import open_env  # noqa: E402
from rbackup.format.checksum import crc32c  # noqa: E402
from rbackup.format.naming import META_DIR, PRIVATE_DIR, parse_backup_id  # noqa: E402
from rbackup.lock import is_lock_file, writer_lock  # noqa: E402
from rbackup.state import load_state  # noqa: E402
from rbackup.testing.dbs import fill, read_all  # noqa: E402
from rbackup.testing.doubles import FaultInjectionEnv  # noqa: E402

IO_BUFFER = 16 << 10
"""Small copy chunks: each SST is several writes, so kill points fall inside files too."""


# -- the kill clock ---------------------------------------------------------------------
class KillClock:
    """Counts ticks; at tick `kill_at` the process SIGKILLs itself before the operation."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.kill_at = kill_at
        self.ticks: list[str] = []
        self._lock = threading.Lock()

    def tick(self, label: str) -> None:
        with self._lock:
            index = len(self.ticks)
            self.ticks.append(label)
            if index == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(60)  # never reached: SIGKILL cannot be caught


class KillEnv(FaultInjectionEnv):
    """FaultInjectionEnv whose hook kills the process instead of raising."""

    def __init__(self, inner: BackupEnv, clock: KillClock) -> None:
        super().__init__(inner)
        self.clock = clock

    def _op(self, op: str, path: str, *, may_fail: bool = True) -> None:
        self.clock.tick(f"{op} {path}")
        super()._op(op, path, may_fail=may_fail)


def _hook_os(clock: KillClock) -> None:
    """Make the commit steps inside LocalEnv and restore kill points of their own."""
    import rbackup.restore as restore_mod

    for name in ("link", "replace", "fsync"):
        original = getattr(os, name)

        def hooked(*args: Any, _original: Callable[..., Any] = original, _name: str = name, **kw: Any) -> Any:
            clock.tick(f"os.{_name} {args[0] if args and isinstance(args[0], str) else ''}")
            return _original(*args, **kw)

        setattr(os, name, hooked)
    for name in ("_write_file", "_unlink"):
        original = getattr(restore_mod, name)

        def hooked_restore(path: str, *args: Any, _original: Callable[..., Any] = original, _name: str = name) -> Any:
            clock.tick(f"restore.{_name} {os.path.basename(path)}")
            return _original(path, *args)

        setattr(restore_mod, name, hooked_restore)


# -- databases --------------------------------------------------------------------------
def db_options() -> rocksdict.Options:
    """No automatic compaction: the SSTs of each flush stay, so backups share files."""
    opts = rocksdict.Options()
    opts.set_disable_auto_compactions(True)
    opts.create_if_missing(True)
    return opts


def add_ssts(path: str, count: int, *, first: int, keys: int = 300, value_size: int = 100) -> None:
    """Add `count` SSTs (one flush each) of incompressible values, then close cleanly."""
    db = rocksdict.Rdict(path, db_options())
    try:
        for i in range(first, first + count):
            fill(db, keys, prefix=f"s{i:03d}k", value_size=value_size, seed=i)
            db.flush()
    finally:
        db.close()


def read_db(path: str) -> dict[str, bytes]:
    """Every key and value, opened read-only (never creates or changes the DB)."""
    return read_all(path, read_only=True)


# -- stores -------------------------------------------------------------------------------
_ENVS: dict[tuple[str, str], BackupEnv] = {}


def make_env(url: str, storage_options: dict[str, Any] | None) -> BackupEnv:
    """The env for `url`; object-store envs are reused within a process (building an S3 client
    costs ~0.2 s and their envs keep no state between calls: no listing cache)."""
    if "://" not in url:
        return open_env(url, storage_options=storage_options)
    key = (url, json.dumps(storage_options, sort_keys=True))
    if key not in _ENVS:
        _ENVS[key] = open_env(url, storage_options=storage_options)
    return _ENVS[key]


def engine_options(url: str, storage_options: dict[str, Any] | None, env: BackupEnv | None = None,
                   **kw: Any) -> BackupableDBOptions:
    return BackupableDBOptions(url, backup_env=env, storage_options=storage_options,
                               io_buffer_size=kw.pop("io_buffer_size", IO_BUFFER), **kw)


def fingerprint(env: BackupEnv, paths: list[str]) -> dict[str, tuple[int, int]]:
    """(size, crc32c) of each file, read through the env."""
    out = {}
    for p in paths:
        data = env.read_bytes(p, 64 << 20)
        out[p] = (len(data), crc32c(data))
    return out


def backup_files(env: BackupEnv, backup_ids: list[int]) -> list[str]:
    """Every file the given valid backups consist of: meta, referenced and private files."""
    state = load_state(env)
    paths: set[str] = set()
    for i in backup_ids:
        b = state.backups[i]
        assert b.meta is not None, f"backup {i} is corrupt: {b.error}"
        paths.add(f"{META_DIR}/{i}")
        paths.update(b.live_paths)
        paths.update(p for p in state.listing if p.startswith(f"{PRIVATE_DIR}/{i}/"))
    return sorted(paths)


@dataclass
class CheckResult:
    listed: list[int]
    restored: int = 0
    next_id: int | None = None
    notes: list[str] = field(default_factory=list)


def orphans(env: BackupEnv) -> list[str]:
    """Files no valid backup accounts for (after GC this must be empty).

    Allowed: meta/<id> and private/<id>/* of valid backups, every file their
    meta files name, the writer lock's files, and the meta files of corrupt
    backups (kept, as RocksDB keeps them, until delete_backup).
    """
    state = load_state(env)
    allowed: set[str] = {f"{META_DIR}/{i}" for i in state.corrupt_ids}
    for b in state.valid:
        allowed.add(f"{META_DIR}/{b.backup_id}")
        allowed.update(b.live_paths)
    out = []
    for path in state.listing:
        if path in allowed or is_lock_file(path):
            continue
        top, _, rest = path.partition("/")
        if top == PRIVATE_DIR and parse_backup_id(rest.split("/", 1)[0]) in {b.backup_id for b in state.valid} \
                and ".tmp" not in rest:
            continue
        out.append(path)
    return sorted(out)


def check_backup_dir(url: str, storage_options: dict[str, Any] | None, *, expected: dict[int, dict[str, bytes]],
                     must_list: set[int], untouched: dict[str, tuple[int, int]], scratch: Path,
                     next_db: str | None = None, restore_ids: set[int] | None = None) -> CheckResult:
    """The promises after an interrupted operation, checked as a new process would.

    - nothing is corrupt, every listed backup is one we expect (no partial
      backup is listed), `must_list` are all there;
    - every listed backup verifies with checksums and restores to exactly
      its expected keys and values (`restore_ids`: only those, to save time);
    - the files of older backups (`untouched`: path -> size, crc) are unchanged;
    - garbage collection leaves no orphan;
    - the next create succeeds and its backup restores to `next_db`'s data.
    """
    env = make_env(url, storage_options)
    ro = BackupEngineReadOnly(engine_options(url, storage_options, env))
    corrupt = ro.get_corrupted_backups()
    assert corrupt == [], f"corrupt backups after interruption: {ro.corruption_reasons()}"
    listed = [b.backup_id for b in ro.get_backup_info()]
    result = CheckResult(listed)
    assert set(listed) <= set(expected), f"unexpected backups listed: {listed} (expected some of {sorted(expected)})"
    assert must_list <= set(listed), f"backups {sorted(must_list - set(listed))} vanished (listed: {listed})"
    for backup_id in listed:
        ro.verify_backup(backup_id, True)
        if restore_ids is None or backup_id in restore_ids:
            target = scratch / f"restore-{backup_id}-{uuid.uuid4().hex[:8]}"
            ro.restore_db_from_backup(backup_id, str(target))
            got = read_db(str(target))
            assert got == expected[backup_id], f"backup {backup_id} restored different data"
            shutil.rmtree(target)
            result.restored += 1
    now = fingerprint(env, sorted(untouched))
    assert now == untouched, "files of an older backup changed"
    ro.close()

    rw = BackupEngine(engine_options(url, storage_options, env))
    rw.garbage_collect()
    left = orphans(env)
    assert not left, f"orphans after garbage_collect(): {left}"
    if next_db is not None:
        result.next_id = rw.create_new_backup(next_db)
        rw.verify_backup(result.next_id, True)
        assert result.next_id > max(listed, default=0)
    rw.close()
    env.close()
    return result


# -- the world: three DB states and backup directories made from them ----------------------
@dataclass
class World:
    """dbA (4 SSTs) < dbB (+4) < dbC (+2): copies of one DB at three moments, so their
    backups share SST files; `tmpl1` holds backup 1 of A, `tmpl3` backups 1-3 of A, B, C."""

    root: Path
    dbs: dict[str, str]
    data: dict[str, dict[str, bytes]]
    tmpl1: str
    tmpl3: str


def ram_dir(tag: str) -> Path | None:
    """A fresh directory on tmpfs, where fsync costs nothing: the sweeps keep sync=True
    (its code paths are interruption points too) without waiting on a disk thousands
    of times.  Crash safety against a killed process does not depend on the medium."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        return None
    path = shm / f"rbackup-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    path = ram_dir("crash")
    yield path or tmp_path
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    ram = ram_dir("world")
    try:
        yield make_world(ram or tmp_path_factory.mktemp("crash-world"))
    finally:
        if ram is not None:
            shutil.rmtree(ram, ignore_errors=True)


def make_world(root: Path) -> World:
    live = str(root / "live")
    dbs: dict[str, str] = {}
    for name, (first, n) in {"A": (0, 4), "B": (4, 4), "C": (8, 2)}.items():
        add_ssts(live, n, first=first)
        dbs[name] = str(root / f"db{name}")
        shutil.copytree(live, dbs[name])
    data = {name: read_db(path) for name, path in dbs.items()}
    assert len(data["A"]) < len(data["B"]) < len(data["C"])
    tmpl1, tmpl3 = str(root / "tmpl1"), str(root / "tmpl3")
    for tmpl, names in ((tmpl1, "A"), (tmpl3, "ABC")):
        with BackupEngine(engine_options(tmpl, None)) as eng:
            for name in names:
                eng.create_new_backup(dbs[name])
    return World(root, dbs, data, tmpl1, tmpl3)



# -- the worker ---------------------------------------------------------------------------
def run(spec: dict[str, Any]) -> None:
    clock = KillClock(spec.get("kill_at"))
    if spec.get("hook_os", True):
        _hook_os(clock)
    url, so = spec["url"], spec.get("storage_options")
    env = KillEnv(make_env(url, so), clock)
    op = spec["op"]
    extra = {"backup_rate_limit": spec.get("rate_limit", 0), "restore_rate_limit": spec.get("rate_limit", 0)}
    if spec.get("lock_ttl"):
        extra["lock_ttl"] = spec["lock_ttl"]
    if spec.get("lock_timeout") is not None:
        extra["lock_timeout"] = spec["lock_timeout"]
    if op in ("restore", "read_loop"):
        engine: BackupEngine = BackupEngineReadOnly(engine_options(url, so, env, **extra))
    else:
        engine = BackupEngine(engine_options(url, so, env, **extra))
    print("ready", flush=True)
    if spec.get("start_file"):  # several workers start the operation together
        while not os.path.exists(spec["start_file"]):
            time.sleep(0.005)
    try:
        result = _dispatch(spec, op, engine, env)
    except BackupError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc),
                          "holder": getattr(exc, "holder", None)}), flush=True)
        raise SystemExit(3) from None
    if spec.get("record"):
        with open(spec["record"], "w") as fh:
            json.dump(clock.ticks, fh)
    print(json.dumps({"result": result}), flush=True)


def _dispatch(spec: dict[str, Any], op: str, engine: BackupEngine, env: BackupEnv) -> Any:
    result: Any = None
    if op == "create":
        result = engine.create_new_backup(spec["db"])
    elif op == "delete":
        engine.delete_backup(spec["backup_id"])
    elif op == "purge":
        engine.purge_old_backups(spec["keep"])
    elif op == "gc":
        engine.garbage_collect()
    elif op == "restore":
        mode = RestoreMode(spec.get("mode", RestoreMode.PURGE_ALL_FILES))
        engine.restore_db_from_backup(spec["backup_id"], spec["target"], options=RestoreOptions(mode=mode))
    elif op == "hold_lock":
        # Hold the writer lock until killed (or for `seconds`), as a long create would.
        with writer_lock(env, "hold_lock", timeout=0, ttl=spec.get("lock_ttl", 300.0)):
            print("locked", flush=True)
            time.sleep(spec.get("seconds", 3600))
    elif op == "create_many":
        result = [engine.create_new_backup(db) for db in spec["dbs"]]
    elif op == "read_loop":
        result = read_loop(spec, env)
    else:
        raise SystemExit(f"unknown op {op!r}")
    return result


def read_loop(spec: dict[str, Any], env: BackupEnv) -> dict[str, Any]:
    """A reader (no lock) that lists and verifies with checksums, as a fresh engine each
    round, until `stop_file` appears: every problem it sees is reported.  After its first
    round it creates `started_file`, so a writer can wait until the reader is really reading."""
    rounds = verified = 0
    problems: list[str] = []
    seen: set[int] = set()
    while True:
        stop = os.path.exists(spec["stop_file"])
        try:
            with BackupEngineReadOnly(engine_options(spec["url"], spec.get("storage_options"), env)) as ro:
                if ro.get_corrupted_backups():
                    problems.append(f"round {rounds}: corrupt {ro.corruption_reasons()}")
                for info in ro.get_backup_info():
                    try:
                        ro.verify_backup(info.backup_id, True)
                        verified += 1
                        seen.add(info.backup_id)
                    except BackupError as exc:
                        problems.append(f"round {rounds}: listed backup {info.backup_id} failed: {exc}")
        except BackupError as exc:
            problems.append(f"round {rounds}: {type(exc).__name__}: {exc}")
        rounds += 1
        if rounds == 1 and spec.get("started_file"):
            open(spec["started_file"], "w").close()  # a writer waiting on it starts now
        if stop:
            return {"rounds": rounds, "verified": verified, "seen": sorted(seen), "problems": problems}


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
