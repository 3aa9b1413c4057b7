"""rbackup against a live HDFS: the MiniDFSCluster of tests/hdfs_fixtures.py, through pyarrow's libhdfs.

The engine round trip with a real rocksdict DB, the CLI, racing writers (threads and processes,
on the NameNode's no-clobber rename), and faults injected through the launcher's commands: a
DataNode stopped in the middle of an upload, the NameNode restarted between two backups, a backup
file deleted behind rbackup's back.  Skipped with the reason when no cluster can be built here
(a failure under RBACKUP_REQUIRE_HDFS=1).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hdfs_native
import pyarrow.fs
import pytest
import rocksdict
from rbackup_hdfs import HdfsEnv

from rbackup import BackupableDBOptions, BackupEngine
from rbackup.errors import BackupError, Corruption, NotFound
from tests.db_fixtures import LiveDB, fill, read_all
from tests.hdfs_fixtures import RealHdfs
from tests.test_cli import RBACKUP, cli_env, failed, listing, make_db, ok

pytestmark = [pytest.mark.hdfs, pytest.mark.slow]


@pytest.fixture
def cluster(real_hdfs: RealHdfs) -> Any:
    if real_hdfs.cluster is None:
        pytest.skip("fault injection needs the cluster started by the tests, not RBACKUP_TEST_HDFS_URL")
    return real_hdfs.cluster


def engine_at(url: str, **options: Any) -> BackupEngine:
    return BackupEngine.open(BackupableDBOptions(url, **options))


def final_files(url: str) -> dict[str, int]:
    """Every published (non-temp) file of the backup directory with its size."""
    return {f.path: f.size for f in HdfsEnv(url).list() if ".tmp" not in f.path}


def restored_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir() if p.suffix == ".sst"}


def test_engine_round_trip_full_incremental_purge_delete_gc(live_db: LiveDB, hdfs_dir: str, tmp_path: Path) -> None:
    engine = engine_at(hdfs_dir)
    first = dict(live_db.written)
    assert engine.create_new_backup(live_db.db, app_metadata="one") == 1
    live_db.add(3000, prefix="inc")
    assert engine.create_new_backup(live_db.db) == 2
    live_db.add(500, prefix="third", seed=3)
    assert engine.create_new_backup(live_db.db) == 3
    infos = engine.get_backup_info(include_file_details=True)
    assert [i.backup_id for i in infos] == [1, 2, 3] and infos[0].app_metadata == b"one"
    shared_1 = {f.relative_filename for f in infos[0].files or () if f.relative_filename.endswith(".sst")}
    shared_2 = {f.relative_filename for f in infos[1].files or () if f.relative_filename.endswith(".sst")}
    assert shared_1 and shared_1 < shared_2, "the second backup did not reuse the first one's SSTs"

    for backup_id, expected in ((1, first), (3, live_db.written)):
        engine.verify_backup(backup_id, verify_with_checksum=True)
        target = tmp_path / f"restored-{backup_id}"
        engine.restore_db_from_backup(backup_id, str(target), str(target))
        assert read_all(str(target)) == expected
    # Byte-identical: every SST of the live DB's latest backup comes back exactly.
    live_db.db.close()
    source = restored_files(Path(live_db.path))
    restored = restored_files(tmp_path / "restored-3")
    assert source and {k: v for k, v in restored.items() if k in source} == source

    engine.purge_old_backups(2)
    assert [i.backup_id for i in engine.get_backup_info()] == [2, 3]
    engine.delete_backup(2)
    engine.garbage_collect()
    engine.verify_backup(3, verify_with_checksum=True)
    assert [i.backup_id for i in engine.get_backup_info()] == [3]
    engine.close()
    needed = {f.relative_filename for f in engine_at(hdfs_dir).get_backup_info(True)[0].files or ()}
    left = {p for p in final_files(hdfs_dir) if p.startswith("shared")}
    assert left == {p for p in needed if p.startswith("shared")}, "GC left files no backup needs, or lost some"


def test_cli_against_hdfs(live_db: LiveDB, hdfs_dir: str, tmp_path: Path) -> None:
    live_db.db.close()
    db = live_db.path
    assert ok("create", "--db", db, "--backup-dir", hdfs_dir, "--metadata", "via cli").stdout == "1\n"
    assert ok("create", "--db", db, "--backup-dir", hdfs_dir).stdout == "2\n"
    doc = listing(hdfs_dir, "--files")
    assert doc["backup_dir"] == hdfs_dir
    assert [(b["id"], b["metadata"]) for b in doc["backups"]] == [(1, "via cli"), (2, "")]
    ok("verify", "--backup-dir", hdfs_dir, "--checksum")
    ok("restore", "--backup-dir", hdfs_dir, "--db", str(tmp_path / "r"), "--backup-id", "1")
    assert read_all(str(tmp_path / "r")) == live_db.written
    assert "backup 5 not found in hdfs://" in failed(1, "delete", "--backup-dir", hdfs_dir, "--backup-id", "5")
    ok("delete", "--backup-dir", hdfs_dir, "--backup-id", "1")
    ok("gc", "--backup-dir", hdfs_dir)
    assert ok("purge", "--backup-dir", hdfs_dir, "--keep", "0").stdout == "deleted backups 2\n"
    assert listing(hdfs_dir)["backups"] == []
    backends = ok("backends").stdout
    hdfs_line = next(line for line in backends.splitlines() if line.startswith("hdfs"))
    assert "HdfsEnv" in hdfs_line


_CREATOR = """
import json, sys, time
from rbackup.errors import AlreadyExists
from rbackup_hdfs import HdfsEnv
url, me, rounds, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
env = HdfsEnv(url)
env.exists("warm-up")  # the JVM and both clients are up before the race starts
time.sleep(max(0.0, start_at - time.time()))
won = []
for i in range(1, rounds + 1):
    try:
        env.create_exclusive(f"meta/{i}", f"{me} {i} ".encode() * 100)
        won.append(i)
    except AlreadyExists:
        pass
print(json.dumps(won))
"""


def test_two_processes_racing_create_exclusive_have_one_winner_each(hdfs_dir: str) -> None:
    """Two writers (separate processes, separate JVMs) race for the same 40 meta names: every name
    has exactly one winner, holding that winner's bytes; nothing is overwritten, no temp is left."""
    rounds = 40
    start_at = time.time() + 25
    procs = {me: subprocess.Popen([sys.executable, "-c", _CREATOR, hdfs_dir, me, str(rounds), str(start_at)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me in ("alpha", "beta")}
    won = {}
    for me, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        won[me] = set(json.loads(out.strip().splitlines()[-1]))
    assert won["alpha"] | won["beta"] == set(range(1, rounds + 1))
    assert not won["alpha"] & won["beta"], "both writers were told they created the same name"
    env = HdfsEnv(hdfs_dir)
    for me, names in won.items():
        for i in names:
            assert env.read_bytes(f"meta/{i}", 1 << 20) == f"{me} {i} ".encode() * 100
    assert all(".tmp" not in f.path for f in env.list()), "temp files left behind"


def test_two_cli_writers_racing(live_db: LiveDB, hdfs_dir: str) -> None:
    """Two `rbackup create` processes on one HDFS directory: each success has its own id, every
    listed backup verifies, and a loser fails with a clean one-line error."""
    live_db.db.close()
    procs = [subprocess.Popen([RBACKUP, "create", "--db", live_db.path, "--backup-dir", hdfs_dir],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                              stdin=subprocess.DEVNULL) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    ids = sorted(int(out) for code, out, _ in results if code == 0)
    assert ids, results
    for code, _, err in results:
        if code != 0:
            assert code == 1 and err.startswith("rbackup: error: ") and "Traceback" not in err, err
    assert ids == list(range(1, len(ids) + 1))
    assert [b["id"] for b in listing(hdfs_dir)["backups"]] == ids
    ok("verify", "--backup-dir", hdfs_dir, "--checksum")
    metas = [p for p in final_files(hdfs_dir) if p.startswith("meta/")]
    assert sorted(metas) == [f"meta/{i}" for i in ids]


class CountingFs:
    """pyarrow's HadoopFileSystem, recording each call rbackup makes and its first argument
    (each call is one NameNode request, or more)."""

    def __init__(self, inner: Any, calls: list[tuple[str, Any]]) -> None:
        self._inner, self._calls = inner, calls

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls.append((name, args[0] if args else None))
            return attr(*args, **kwargs)

        return call


def test_namenode_requests_per_backup_file(live_db: LiveDB, hdfs_dir: str) -> None:
    """What a backup asks the NameNode for each file it copies: a create (opening its temp, which
    makes missing parent directories), a complete (closing it) and one rename that refuses an
    existing name.  No mkdirs per file, no look before the publish (the rename is the check) and no
    stat of a shared file after the commit (a name published that way cannot have been replaced);
    only the backup's private files are read back."""
    for part in range(4):
        live_db.add(300, prefix=f"sst{part}", seed=part)
    calls: list[tuple[str, Any]] = []
    env = HdfsEnv(hdfs_dir, connect=lambda **kw: CountingFs(pyarrow.fs.HadoopFileSystem(**kw), calls))
    renamed: list[str] = []
    no_clobber = env.rename_exclusive

    def counting_rename(source: str, destination: str) -> None:
        renamed.append(destination)
        no_clobber(source, destination)

    env.rename_exclusive = counting_rename
    engine = BackupEngine.open(BackupableDBOptions(hdfs_dir, backup_env=env))
    calls.clear()
    assert engine.create_new_backup(live_db.db) == 1
    files = [f"{env.root}/{f.relative_filename}" for f in engine.get_backup_info(True)[0].files or ()]
    engine.close()
    shared = [f for f in files if "/shared_checksum/" in f]
    assert len(shared) >= 5 and len(files) > len(shared)

    created = [arg for name, arg in calls if name == "open_output_stream"]
    stats = [arg for name, arg in calls if name == "get_file_info" and isinstance(arg, list)]
    moved = [arg for name, arg in calls if name == "move"]
    read = [arg for name, arg in calls if name in ("open_input_file", "open_input_stream")]
    made = [arg for name, arg in calls if name == "create_dir"]
    assert made in ([], [f"{env.root}/private/1"]), "directories made per file"
    for f in files:
        head, _, name = f.rpartition("/")
        assert len([p for p in created if p.startswith(f"{head}/.{name}.") and p.endswith(".tmp")]) == 1, f
        assert renamed.count(f) == 1, f
        assert f not in moved and [f] not in stats, f
    assert not set(read) & set(shared), "a shared file was read back"


def test_a_replacing_write_is_one_rename(hdfs_dir: str) -> None:
    """`open_write` over an existing file (what the lease's renewals do) publishes with HDFS's rename
    with OVERWRITE, one NameNode step: never pyarrow's `move`, which deletes the name and renames
    again (a taker listing the leases in between would find none)."""
    calls: list[tuple[str, Any]] = []
    env = HdfsEnv(hdfs_dir, connect=lambda **kw: CountingFs(pyarrow.fs.HadoopFileSystem(**kw), calls))
    lease = "rbackup.lock.d/00000000000000000001"
    env.write_bytes(lease, b"first")
    calls.clear()
    env.write_bytes(lease, b"second, longer")
    assert env.read_bytes(lease, 100) == b"second, longer"
    assert [name for name, _ in calls if name in ("move", "delete_file")] == []
    assert [f.path for f in env.list()] == [lease]


# -- faults, through the launcher's commands --------------------------------------------------
def big_db(path: Path, mib: int) -> dict:
    """A closed DB of about `mib` MiB in a few large SSTs (incompressible values)."""
    db = rocksdict.Rdict(str(path))
    try:
        written = {}
        for part in range(4):
            written.update(fill(db, mib * 1024 // 4 // 4, prefix=f"p{part}", value_size=4096, seed=part))
            db.flush()
        return written
    finally:
        db.close()


@pytest.mark.parametrize("replication", [1, 2])
def test_datanode_stopped_mid_upload(cluster: Any, hdfs_dir: str, tmp_path: Path, replication: int) -> None:
    """A DataNode stops while an SST is being written: the backup completes or fails with a
    BackupError, and never leaves a partial file under a final name (what is published verifies)."""
    written = big_db(tmp_path / "db", 48)
    env = HdfsEnv(hdfs_dir, storage_options={"replication": replication})
    real_open = env.fs.open
    stopped: list[str] = []

    class StopMidway:
        """The SST stream, stopping DataNode 0 once 4 MiB of it are written."""

        def __init__(self, stream: Any, path: str) -> None:
            self._stream, self._path, self._written = stream, path, 0

        def write(self, data: Any) -> int:
            n = self._stream.write(data)
            self._written += n
            if not stopped and self._written >= 4 << 20:
                stopped.append(self._path)
                cluster.command("stop-datanode 0")
            return n

        def __getattr__(self, name: str) -> Any:
            return getattr(self._stream, name)

    def open_and_stop_midway(path: str, mode: str = "rb", **kw: Any) -> Any:
        stream = real_open(path, mode, **kw)
        if mode == "wb" and ".sst." in path and path.endswith(".tmp") and not stopped:
            return StopMidway(stream, path)
        return stream

    env.fs.open = open_and_stop_midway  # type: ignore[method-assign]
    db = rocksdict.Rdict(str(tmp_path / "db"))
    try:
        engine = BackupEngine.open(BackupableDBOptions(hdfs_dir, backup_env=env))
        try:
            outcome: object = engine.create_new_backup(db)
        except BackupError as exc:
            outcome = exc
        engine.close()
    finally:
        db.close()
        if stopped:
            cluster.command("restart-datanode 0")
    assert stopped, "the upload never reached 4 MiB of one SST"
    print(f"replication={replication}: {outcome!r}")

    # Whatever was published is whole: a second backup reuses it and verifies with checksums.
    engine = engine_at(hdfs_dir)
    db = rocksdict.Rdict(str(tmp_path / "db"))
    try:
        latest = engine.create_new_backup(db)
    finally:
        db.close()
    for info in engine.get_backup_info():
        engine.verify_backup(info.backup_id, verify_with_checksum=True)
    engine.restore_db_from_backup(latest, str(tmp_path / "r"), str(tmp_path / "r"))
    assert read_all(str(tmp_path / "r")) == written
    engine.close()


def test_namenode_restarted_between_two_backups(cluster: Any, live_db: LiveDB, hdfs_dir: str,
                                                tmp_path: Path) -> None:
    engine = engine_at(hdfs_dir)
    assert engine.create_new_backup(live_db.db) == 1
    port = cluster.namenode_port
    cluster.command("restart-namenode")
    assert cluster.namenode_port == port
    live_db.add(1000, prefix="after")
    assert engine.create_new_backup(live_db.db) == 2  # the same engine and connection, a new NameNode
    engine.close()
    engine = engine_at(hdfs_dir)
    for backup_id in (1, 2):
        engine.verify_backup(backup_id, verify_with_checksum=True)
    engine.restore_db_from_latest_backup(str(tmp_path / "r"), str(tmp_path / "r"))
    assert read_all(str(tmp_path / "r")) == live_db.written
    engine.close()


def test_file_deleted_behind_our_back(live_db: LiveDB, hdfs_dir: str, tmp_path: Path) -> None:
    """An SST of backup 1 removed directly in HDFS: verify names it, restore refuses, and after
    deleting the damaged backup and GC a new backup is whole again."""
    engine = engine_at(hdfs_dir)
    assert engine.create_new_backup(live_db.db) == 1
    sst = next(f.relative_filename for f in engine.get_backup_info(True)[0].files or ()
               if f.relative_filename.endswith(".sst"))
    engine.close()
    raw = HdfsEnv(hdfs_dir)
    raw.fs.rm_file(f"{raw.root}/{sst}")

    engine = engine_at(hdfs_dir)
    with pytest.raises((NotFound, Corruption), match=sst.rsplit("/", 1)[-1]):
        engine.verify_backup(1)
    with pytest.raises(BackupError):
        engine.restore_db_from_backup(1, str(tmp_path / "r1"), str(tmp_path / "r1"))
    engine.delete_backup(1)
    engine.garbage_collect()
    new_id = engine.create_new_backup(live_db.db)
    engine.verify_backup(new_id, verify_with_checksum=True)
    engine.restore_db_from_backup(new_id, str(tmp_path / "r2"), str(tmp_path / "r2"))
    assert read_all(str(tmp_path / "r2")) == live_db.written
    engine.close()


# -- what the client environment must hold (the README's facts, checked in child processes) ------
_WRITER = """
import sys
import hdfs_native
from rbackup_hdfs import HdfsEnv
url = sys.argv[1]
env = HdfsEnv(url)
with env.open_write("probe") as f:
    f.write(b"x" * 1000)
info = hdfs_native.Client(url.rsplit("/", 2)[0]).get_file_info(env.root + "/probe")
print("replication", info.replication, "length", info.length, flush=True)
env.open_read("missing")  # a Java FileNotFoundException inside libhdfs
"""


def _child(url: str, classpath: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run _WRITER; `cwd` receives the hs_err_pid*.log of a JVM that crashes."""
    env = dict(os.environ, CLASSPATH=os.pathsep.join(classpath))
    return subprocess.run([sys.executable, "-c", _WRITER, url], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300, stdin=subprocess.DEVNULL, check=False)


def test_closed_file_is_whole_with_the_client_replication(hdfs_dir: str) -> None:
    """What a returned commit means on HDFS: another client (hdfs-native, not libhdfs) sees the
    whole file, completed, with the client configuration's dfs.replication (2 here)."""
    env = HdfsEnv(hdfs_dir)
    data = os.urandom(3 << 20)
    env.write_bytes("meta/1", data, sync=True)
    client = hdfs_native.Client(hdfs_dir.rsplit("/", 2)[0])
    info = client.get_file_info(f"{env.root}/meta/1")
    assert (info.length, info.replication) == (len(data), 2)
    with client.read(f"{env.root}/meta/1") as f:
        assert f.read() == data


def test_conf_dir_counts_only_on_the_classpath(hdfs_dir: str) -> None:
    """HADOOP_CONF_DIR set but its directory not on CLASSPATH: libhdfs never reads hdfs-site.xml,
    so replication=0 does not give the client configuration's 2 (the cluster's is 2 too)."""
    classpath = os.environ["CLASSPATH"].split(os.pathsep)
    conf_dir = os.environ["HADOOP_CONF_DIR"]
    assert classpath[0] == conf_dir
    with_conf = _child(hdfs_dir + "/a", classpath)
    without_conf = _child(hdfs_dir + "/b", classpath[1:])
    assert "replication 2 length 1000" in with_conf.stdout, with_conf.stderr[-2000:]
    assert "length 1000" in without_conf.stdout, without_conf.stderr[-2000:]
    assert "replication 2 " not in without_conf.stdout
    assert "rbackup.errors.NotFound" in with_conf.stderr


def test_classpath_without_commons_lang3_kills_the_process(hdfs_dir: str, tmp_path: Path) -> None:
    """libhdfs formats Java exceptions with the unshaded commons-lang3: without it the JVM takes the
    whole Python process down at the first exception (the README's warning)."""
    classpath = [p for p in os.environ["CLASSPATH"].split(os.pathsep) if "commons-lang3" not in p]
    done = _child(hdfs_dir, classpath, cwd=tmp_path)
    assert done.returncode < 0 or done.returncode > 128, (done.returncode, done.stderr[-2000:])
    assert "CLASSPATH has no commons-lang3 jar" in done.stderr  # HdfsEnv's warning came first
    assert "org/apache/commons/lang3/exception/ExceptionUtils" in done.stderr
    assert "rbackup.errors" not in done.stderr, "the exception became a Python error after all"


_SIGSEGV_PROBE = '''
"""A pytest plugin: at the very end of the session, who handles SIGSEGV (libjvm.so, or nobody)."""
import ctypes
import os
import signal

import pytest


class _Sigaction(ctypes.Structure):  # glibc's struct sigaction; only the handler is read
    _fields_ = [("handler", ctypes.c_void_p), ("rest", ctypes.c_byte * 256)]


class _DlInfo(ctypes.Structure):
    _fields_ = [("fname", ctypes.c_char_p), ("fbase", ctypes.c_void_p),
                ("sname", ctypes.c_char_p), ("saddr", ctypes.c_void_p)]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    libc = ctypes.CDLL(None)
    action = _Sigaction()
    assert libc.sigaction(signal.SIGSEGV, None, ctypes.byref(action)) == 0
    owner = "SIG_DFL"
    if action.handler:
        info = _DlInfo()
        libc.dladdr(ctypes.c_void_p(action.handler), ctypes.byref(info))
        owner = os.path.basename(info.fname.decode())
    with open(os.environ["PROBE_OUT"], "w") as out:
        out.write(owner)
'''


def test_the_test_sessions_leave_the_jvm_its_sigsegv_handler(hdfs_dir: str, tmp_path: Path) -> None:
    """libhdfs's JVM runs in the test process and relies on its SIGSEGV handler; pytest's faulthandler
    plugin puts SIG_DFL back at the end of a session, and a JVM safepoint then killed CI after a green
    summary (exit 139). A child pytest session that loads the JVM: with this project's configuration the
    JVM still handles SIGSEGV at the very end; with pytest's default it does not (the hazard is real), and
    HdfsEnv warned about it."""
    (tmp_path / "sigsegv_probe.py").write_text(_SIGSEGV_PROBE)
    (tmp_path / "test_loads_the_jvm.py").write_text(
        "import os\nfrom rbackup_hdfs import HdfsEnv\n\n"
        "def test_list():\n    assert HdfsEnv(os.environ['PROBE_URL']).list() == []\n")
    repo = Path(__file__).resolve().parents[3]

    def session(name: str, *options: str) -> tuple[str | None, subprocess.CompletedProcess[str]]:
        out = tmp_path / f"owner-{name}"
        env = dict(os.environ, PROBE_URL=f"{hdfs_dir}/{name}", PROBE_OUT=str(out), PYTHONPATH=str(tmp_path))
        env.pop("PYTHONFAULTHANDLER", None)
        done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(repo / "pyproject.toml"),
                               "-p", "sigsegv_probe", "-p", "no:cacheprovider", "-p", "no:logging", "-s", *options,
                               str(tmp_path / "test_loads_the_jvm.py")],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
        return (out.read_text() if out.exists() else None), done

    owner, done = session("ours")
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert owner == "libjvm.so", owner
    assert "faulthandler is enabled" not in done.stderr
    owner, done = session("pytest-default", "-o", "addopts=-ra")  # pytest's faulthandler plugin on
    assert "faulthandler is enabled in this process" in done.stderr, done.stderr[-2000:]
    # The hazard: SIGSEGV back to its default at the end; the session may even die of it, as CI did,
    # before the probe reports (stdout to a pipe may then be lost too).
    crashed = done.returncode == -signal.SIGSEGV
    assert crashed or (done.returncode == 0 and owner == "SIG_DFL"), (done.returncode, owner, done.stderr[-2000:])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_unwinds_a_create_even_when_libhdfs_opts_lacks_xrs(tmp_path: Path, hdfs_dir: str,
                                                                         signum: int) -> None:
    """Without -Xrs the JVM that libhdfs starts inside the process takes SIGINT, SIGTERM and SIGHUP
    for its own shutdown and exits on the spot: no unwinding, the lease left behind. HdfsEnv adds
    -Xrs to LIBHDFS_OPTS before the JVM starts, so the CLI stops as on any store."""
    db = tmp_path / "db"
    make_db(db)
    ok("create", "--db", str(db), "--backup-dir", hdfs_dir, "-q")
    make_db(db, 6000, prefix="big", value_size=4096, seed=3)  # ~24 MiB at 1 MiB/s, incompressible
    before = final_files(hdfs_dir)
    env = cli_env(LIBHDFS_OPTS="-Xmx512m")
    proc = subprocess.Popen([RBACKUP, "create", "--db", str(db), "--backup-dir", hdfs_dir, "--rate-limit", "1M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not any(".tmp" in f.path for f in HdfsEnv(hdfs_dir).list("shared_checksum")):
        assert proc.poll() is None and time.monotonic() < deadline, "the create never started copying"
        time.sleep(0.1)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)

    assert (proc.returncode, out) == ((130 if signum == signal.SIGINT else 128 + signum), ""), err[-2000:]
    assert "no backup was created; the backup directory is unchanged" in err, err[-2000:]
    def backup_files(files: dict[str, int]) -> dict[str, int]:
        return {path: size for path, size in files.items() if not path.startswith("rbackup.lock")}

    assert backup_files(final_files(hdfs_dir)) == backup_files(before)
    assert ok("create", "--db", str(db), "--backup-dir", hdfs_dir, env=env).stdout == "2\n"  # no lease left


def test_an_unreachable_namenode_is_named_with_the_java_exception_not_a_pointer_to_stderr(hdfs_dir: str) -> None:
    """libhdfs reports most Java exceptions as errno 255 and prints the trace on stderr; the error
    itself says what the exception was (libhdfs keeps its root cause per thread)."""
    port = hdfs_dir.split("/")[2].split(":")[1]
    closed = hdfs_dir.replace(f":{port}/", ":1/", 1)
    with pytest.raises(BackupError, match=r"hdfs://127\.0\.0\.1:1/.*ConnectException.*Connection refused"):
        HdfsEnv(closed).list()
    done = subprocess.run([RBACKUP, "list", "--backup-dir", closed], capture_output=True, text=True, env=cli_env(),
                          stdin=subprocess.DEVNULL, timeout=300, check=False)
    line = done.stderr.splitlines()[-1]  # libhdfs's own trace comes first, on the same stderr
    assert done.returncode == 1 and line.startswith(f"rbackup: error: list {closed}/"), done.stderr[-2000:]
    assert "ConnectException: Connection refused" in line, line
