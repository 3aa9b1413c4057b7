"""The `rbackup` command, run as users run it: the installed console script in a
subprocess, against real rocksdict DBs on local disk and on the moto S3 server."""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
import rocksdict

from tests.db_fixtures import files_under, fill, read_all
from tests.s3_fixtures import DUMMY_AWS_ENV, UNSET_AWS_ENV

RBACKUP = os.path.join(os.path.dirname(sys.executable), "rbackup")

pytestmark = pytest.mark.skipif(not os.access(RBACKUP, os.X_OK),
                                reason=f"console script {RBACKUP} not installed (pip install -e .)")


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of every run: UTC for stable times, fake AWS credentials and
    no AWS configuration, so nothing can reach real AWS; no PYTHONFAULTHANDLER, which
    makes a CLI on HDFS warn (and risk its JVM's SIGSEGV handler)."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET_AWS_ENV and k != "PYTHONFAULTHANDLER"}
    env.update(DUMMY_AWS_ENV, TZ="UTC")
    env.update(extra)
    return env


def rbackup(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([RBACKUP, *args], capture_output=True, text=True, env=env or cli_env(),
                          stdin=subprocess.DEVNULL, timeout=timeout)


def ok(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = rbackup(*args, env=env)
    assert result.returncode == 0, f"rbackup {' '.join(args)} -> {result.returncode}: {result.stderr}"
    return result


def failed(code: int, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a command expected to fail; return its one error line."""
    result = rbackup(*args, env=env)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbackup: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def listing(backup_dir: str, *extra: str, env: dict[str, str] | None = None) -> dict:
    return json.loads(ok("list", "--backup-dir", backup_dir, "--json", *extra, env=env).stdout)


def make_db(path: Path, n: int = 2000, *, prefix: str = "k", value_size: int = 100, seed: int = 0) -> dict:
    """Add n keys to the (closed) DB at path, creating it if needed; return what was written."""
    db = rocksdict.Rdict(str(path))
    try:
        return fill(db, n, prefix=prefix, value_size=value_size, seed=seed)
    finally:
        db.close()


@pytest.fixture
def closed_db(live_db) -> tuple[str, dict]:
    """`create --db` takes a DB no process holds open: the live_db fixture, closed."""
    live_db.db.close()
    return live_db.path, live_db.written


# -- the main road, local disk ----------------------------------------------------------
def test_create_list_verify_restore(closed_db, tmp_path):
    db, written = closed_db
    bdir = str(tmp_path / "backups")

    created = ok("create", "--db", db, "--backup-dir", bdir, "--metadata", "nightly v1")
    assert created.stdout == "1\n"
    assert f"created backup 1 in {bdir}" in created.stderr
    as_json = json.loads(ok("create", "--db", db, "--backup-dir", f"file://{bdir}", "--json", "-q").stdout)
    assert as_json["id"] == 2 and as_json["backup_dir"] == bdir and as_json["metadata"] == ""
    assert 0 < as_json["bytes_copied"] < as_json["size"] / 10  # incremental: the private files only
    third = ok("create", "--db", db, "--backup-dir", bdir, "--metadata", "bin\x01").stderr
    # an incremental says what it copied: its private files, not its shared SSTs again
    size, copied = re.fullmatch(r"created backup 3 in .*: \d+ files, (.+) \((.+) copied\), in .*\n", third).groups()
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20}
    size_bytes, copied_bytes = (float(v) * units[u] for v, u in (x.split() for x in (size, copied)))
    assert 0 < copied_bytes < size_bytes / 10, third

    table = ok("list", "--backup-dir", bdir).stdout.splitlines()
    assert table[0].split() == ["ID", "TIME", "SIZE", "FILES", "METADATA"]
    assert [line.split()[0] for line in table[1:]] == ["1", "2", "3"]
    assert table[1].endswith("nightly v1") and "UTC" in table[1]
    assert table[3].endswith("hex:62696e01")

    doc = listing(bdir)
    assert doc["backup_dir"] == bdir and doc["corrupt"] == []
    first = doc["backups"][0]
    assert set(first) == {"id", "timestamp", "time", "size", "files", "metadata", "metadata_hex"}
    assert first["metadata"] == "nightly v1" and first["metadata_hex"] == b"nightly v1".hex()
    assert first["time"].endswith("Z") and first["size"] > 0 and first["files"] >= 4
    assert doc["backups"][2]["metadata"] == "bin\x01"

    detailed = listing(bdir, "--files")["backups"][0]["file_details"]
    assert any(f["path"].startswith("shared_checksum/") and f["path"].endswith(".sst") for f in detailed)
    assert all(isinstance(f["crc32c"], int) and f["size"] >= 0 for f in detailed)
    assert "crc32c" in ok("list", "--backup-dir", bdir, "--files").stdout

    assert ok("verify", "--backup-dir", bdir).stdout.splitlines() == [
        f"backup {i}: ok (files and sizes verified)" for i in (1, 2, 3)]
    checked = ok("verify", "--backup-dir", bdir, "--backup-id", "2", "--checksum").stdout
    assert checked.startswith("backup 2: ok (checksums verified: 0 from the store's CRC-32C, ")  # a disk keeps none
    [two] = json.loads(ok("verify", "--backup-dir", bdir, "--backup-id", "2", "--checksum", "--json").stdout)["backups"]
    assert two["ok"] and two["from_store_checksum"] == 0 and two["downloaded"] == two["files"] >= 4
    assert f"{two['downloaded']} read back" in checked

    restored = tmp_path / "restored"
    out = ok("restore", "--backup-dir", bdir, "--db", str(restored), "--backup-id", "1")
    assert out.stdout == f"restored backup 1 into {restored}\n"
    assert read_all(str(restored)) == written
    latest, wal = tmp_path / "latest", tmp_path / "wal"
    assert ok("restore", "--backup-dir", bdir, "--db", str(latest), "--wal-dir", str(wal)).stdout == (
        f"restored backup 3 into {latest}\n")
    assert read_all(str(latest)) == written


def test_delete_purge_gc(closed_db, tmp_path):
    db, _ = closed_db
    bdir = str(tmp_path / "backups")
    for _ in range(4):
        ok("create", "--db", db, "--backup-dir", bdir, "-q")

    assert ok("delete", "--backup-dir", bdir, "--backup-id", "2").stdout == "deleted backup 2\n"
    assert [b["id"] for b in listing(bdir)["backups"]] == [1, 3, 4]
    assert "backup 2 not found" in failed(1, "delete", "--backup-dir", bdir, "--backup-id", "2")

    assert ok("purge", "--backup-dir", bdir, "--keep", "1").stdout == "deleted backups 1, 3\n"
    assert [b["id"] for b in listing(bdir)["backups"]] == [4]
    assert ok("purge", "--backup-dir", bdir, "--keep", "5").stdout == "nothing to delete: 1 backups, keeping 5\n"
    assert "--keep" in failed(2, "purge", "--backup-dir", bdir, "--keep", "-1")

    junk = Path(bdir, "shared_checksum", "000777_sJUNK_3.sst")
    junk.write_bytes(b"old")
    Path(bdir, "private", "99").mkdir()
    Path(bdir, "private", "99", "CURRENT").write_bytes(b"x")
    assert ok("gc", "--backup-dir", bdir).stdout == f"garbage collection of {bdir} done\n"
    assert not junk.exists() and not Path(bdir, "private", "99").exists()
    ok("verify", "--backup-dir", bdir, "--checksum")


# -- failures: exit codes and the one error line ----------------------------------------
def test_usage_errors_exit_2(closed_db, tmp_path):
    db, _ = closed_db
    bdir = str(tmp_path / "backups")
    assert "--backup-dir" in failed(2, "list")
    assert "--backup-dir" in failed(2, "create", "--db", db)
    assert "No such command" in failed(2, "frobnicate")
    assert "storage option" in failed(2, "list", "--backup-dir", bdir, "-o", "no-equals")
    assert "--backup-id" in failed(2, "verify", "--backup-dir", bdir, "--backup-id", "seven")
    assert "--rate-limit" in failed(2, "create", "--db", db, "--backup-dir", bdir, "--rate-limit", "fast")
    assert "does not exist" in failed(2, "create", "--db", str(tmp_path / "nodb"), "--backup-dir", bdir)
    assert "not a RocksDB directory" in failed(2, "create", "--db", str(tmp_path), "--backup-dir", bdir)


def test_operation_failures_exit_1(closed_db, tmp_path):
    db, _ = closed_db
    bdir = str(tmp_path / "backups")
    assert "no valid backup to restore" in failed(1, "restore", "--backup-dir", bdir, "--db", str(tmp_path / "r"))
    assert f"no backups to verify in {bdir}" in failed(1, "verify", "--backup-dir", bdir)
    ok("create", "--db", db, "--backup-dir", bdir, "-q")
    line = failed(1, "verify", "--backup-dir", bdir, "--backup-id", "42")
    assert "backup 42 not found" in line and bdir in line
    assert "backup 42" in failed(1, "restore", "--backup-dir", bdir, "--db", str(tmp_path / "r"), "--backup-id", "42")
    assert "unknown storage protocol" in failed(1, "list", "--backup-dir", "nosuchproto://x/y")
    (tmp_path / "empty").mkdir()
    assert ok("list", "--backup-dir", str(tmp_path / "empty")).stdout == f"no backups in {tmp_path / 'empty'}\n"


def test_list_of_a_missing_path_or_a_file_exits_1(tmp_path):
    """Before: exit 0 and "no backups in ...", so a typo in a cron job looked like an empty directory."""
    missing = str(tmp_path / "typo")
    assert failed(1, "list", "--backup-dir", missing) == f"rbackup: error: backup directory {missing} does not exist"
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    assert failed(1, "list", "--backup-dir", str(a_file)) == \
        f"rbackup: error: backup directory {a_file} is not a directory"
    assert not os.path.exists(missing)


def test_db_held_open_by_another_process(live_db, tmp_path):
    line = failed(1, "create", "--db", live_db.path, "--backup-dir", str(tmp_path / "backups"))
    assert live_db.path in line and "LOCK" in line


def test_corruption_found_by_verify_checksum_names_the_file(closed_db, tmp_path):
    db, _ = closed_db
    bdir = tmp_path / "backups"
    ok("create", "--db", db, "--backup-dir", str(bdir), "-q")
    sst = next((bdir / "shared_checksum").glob("*.sst"))
    data = bytearray(sst.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only a checksum can tell
    sst.write_bytes(bytes(data))

    ok("verify", "--backup-dir", str(bdir))
    line = failed(1, "verify", "--backup-dir", str(bdir), "--checksum")
    assert "backup 1" in line and f"shared_checksum/{sst.name}" in line and "checksum mismatch" in line
    line = failed(1, "restore", "--backup-dir", str(bdir), "--db", str(tmp_path / "r"))
    assert sst.name in line

    verbose = rbackup("verify", "--backup-dir", str(bdir), "--checksum", "--backup-id", "1", "--verbose")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert verbose.stderr.rstrip().splitlines()[-1].startswith("rbackup: error: backup 1: checksum mismatch")


def test_corrupt_backup_is_listed_with_its_reason(closed_db, tmp_path):
    db, _ = closed_db
    bdir = tmp_path / "backups"
    for _ in range(2):
        ok("create", "--db", db, "--backup-dir", str(bdir), "-q")
    (bdir / "private" / "1" / "CURRENT").unlink()

    doc = listing(str(bdir))
    assert [b["id"] for b in doc["backups"]] == [2]
    assert [c["id"] for c in doc["corrupt"]] == [1] and "private/1/CURRENT" in doc["corrupt"][0]["reason"]
    row = ok("list", "--backup-dir", str(bdir)).stdout.splitlines()[1]
    assert row.split()[:2] == ["1", "CORRUPT"] and "private/1/CURRENT" in row

    result = rbackup("verify", "--backup-dir", str(bdir))
    assert result.returncode == 1
    assert result.stdout == "backup 2: ok (files and sizes verified)\n"
    errors = [line for line in result.stderr.splitlines() if not line.startswith("rbackup: warning: ")]
    assert len(errors) == 1 and errors[0].startswith("rbackup: error: backup 1 is corrupt")


# -- help, version, backends ------------------------------------------------------------
def test_version_help_and_backends():
    assert ok("--version").stdout == "rbackup 0.1.0\n"
    top = ok("--help").stdout
    assert "Exit codes" in top and "Examples" in top
    for command in ("create", "list", "verify", "restore", "delete", "purge", "gc", "backends"):
        text = ok(command, "--help").stdout
        assert "Example" in text and "--help" in text, command
    assert '"metadata_hex"' in ok("list", "--help").stdout

    lines = ok("backends").stdout.splitlines()
    assert lines[0].split()[:2] == ["PROTOCOL", "PACKAGE"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["file"][1:7] == ["rbackup", "yes", "yes", "yes", "yes", "1"]  # local disk: one request at a time
    assert rows["s3"][1] == "rbackup-s3"


# -- progress ---------------------------------------------------------------------------
def run_on_tty(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (120 columns): (exit code, stdout, terminal output)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen([RBACKUP, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                            env=cli_env())
    os.close(slave)
    chunks: list[bytes] = []

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        reader.join(timeout)
        os.close(master)
    return proc.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


def test_progress_bar_only_on_a_terminal(closed_db, tmp_path):
    db, written = closed_db
    bdir = str(tmp_path / "backups")

    piped = ok("create", "--db", db, "--backup-dir", bdir)
    assert "\r" not in piped.stderr and "%|" not in piped.stderr and "B/s" not in piped.stderr

    code, out, tty = run_on_tty("create", "--db", db, "--backup-dir", bdir)
    assert (code, out) == (0, "2\n")
    assert re.search(r"backup 2: 100%\|.*B/s, (\d+)/\1 files\]", tty), tty

    code, _, tty = run_on_tty("verify", "--backup-dir", bdir, "--backup-id", "2", "--checksum")
    assert code == 0 and "verify 2: 100%|" in tty

    code, _, tty = run_on_tty("restore", "--backup-dir", bdir, "--db", str(tmp_path / "r"))
    assert code == 0 and "restore 2: 100%|" in tty and "B/s" in tty
    assert read_all(str(tmp_path / "r")) == written

    code, out, tty = run_on_tty("create", "--db", db, "--backup-dir", bdir, "--quiet")
    assert (code, out) == (0, "3\n") and tty == ""


# -- Ctrl-C and concurrent writers -------------------------------------------------------
def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None and time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.02)


def as_in_a_terminal() -> None:
    """Give the child Ctrl-C's default meaning.  A test run started in the background of a
    non-interactive shell (`.ci/run &`) inherits SIGINT ignored, Python then installs no
    KeyboardInterrupt handler, and a `create` sent SIGINT rightly finishes its backup."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_and_a_second_writer(tmp_path):
    db = tmp_path / "db"
    written = make_db(db)
    bdir = str(tmp_path / "backups")
    ok("create", "--db", str(db), "--backup-dir", bdir, "-q")
    written.update(make_db(db, 8000, prefix="big", value_size=4096, seed=3))  # ~32 MiB, incompressible
    before = files_under(bdir)

    # 32 MiB at 1 MiB/s: half a minute of copying to interrupt; the interrupt ends the wait.
    proc = subprocess.Popen([RBACKUP, "create", "--db", str(db), "--backup-dir", bdir, "--rate-limit", "1M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            preexec_fn=as_in_a_terminal)
    wait_for(lambda: any(n.endswith(".tmp") for n in os.listdir(Path(bdir, "shared_checksum"))), proc,
             "the copy")
    copying = time.monotonic()
    line = failed(1, "gc", "--backup-dir", bdir)  # meanwhile, another writer is refused
    assert "locked by another writer" in line and bdir in line
    refused = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)

    assert (proc.returncode, out) == (130, ""), (f"SIGINT sent {refused - copying:.1f} s after the copy began", err)
    assert err == "rbackup: interrupted: no backup was created; the backup directory is unchanged\n"
    assert files_under(bdir) == before
    assert [b["id"] for b in listing(bdir)["backups"]] == [1]
    ok("verify", "--backup-dir", bdir, "--checksum")

    assert ok("create", "--db", str(db), "--backup-dir", bdir).stdout == "2\n"
    target = tmp_path / "restored"
    proc = subprocess.Popen([RBACKUP, "restore", "--backup-dir", bdir, "--db", str(target), "--rate-limit", "2M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            preexec_fn=as_in_a_terminal)
    wait_for(lambda: any(p.suffix == ".sst" for p in target.glob("*")), proc, "the restore")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (130, "")
    assert err.startswith(f"rbackup: interrupted: the restore of backup 2 into {target} did not finish")
    with pytest.raises(Exception, match="CURRENT"):
        read_all(str(target))  # RocksDB refuses the half-restored DB
    ok("restore", "--backup-dir", bdir, "--db", str(target), "-q")
    assert read_all(str(target)) == written


def stop_when(condition, proc: subprocess.Popen, what: str, signum: int) -> tuple[str, str]:
    wait_for(condition, proc, what)
    proc.send_signal(signum)
    return proc.communicate(timeout=60)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_service_manager_stopping_create_leaves_the_directory_as_it_was(tmp_path, signum):
    """systemd, Kubernetes and a closed terminal stop a job with SIGTERM or SIGHUP, not Ctrl-C:
    the create unwinds as after Ctrl-C (its temp files removed) and exits 128 + the signal."""
    db = tmp_path / "db"
    make_db(db)
    bdir = str(tmp_path / "backups")
    ok("create", "--db", str(db), "--backup-dir", bdir, "-q")
    make_db(db, 8000, prefix="big", value_size=4096, seed=3)  # ~32 MiB at 1 MiB/s
    before = files_under(bdir)

    proc = subprocess.Popen([RBACKUP, "create", "--db", str(db), "--backup-dir", bdir, "--rate-limit", "1M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    out, err = stop_when(lambda: any(n.endswith(".tmp") for n in os.listdir(Path(bdir, "shared_checksum"))),
                         proc, "the copy", signum)

    name = signal.Signals(signum).name
    assert (proc.returncode, out) == (128 + signum, ""), err
    assert err == f"rbackup: stopped by {name}: no backup was created; the backup directory is unchanged\n"
    assert files_under(bdir) == before
    assert ok("create", "--db", str(db), "--backup-dir", bdir).stdout == "2\n"


def test_a_stop_signal_the_caller_ignores_stays_ignored(tmp_path):
    """`nohup rbackup create ...` must outlive its terminal: an ignored SIGHUP is the caller's choice."""
    db = tmp_path / "db"
    make_db(db)
    make_db(db, 2000, prefix="big", value_size=4096, seed=3)  # ~8 MiB at 4 MiB/s
    bdir = str(tmp_path / "backups")
    proc = subprocess.Popen([RBACKUP, "create", "--db", str(db), "--backup-dir", bdir, "--rate-limit", "4M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    out, err = stop_when(lambda: Path(bdir, "shared_checksum").is_dir()
                         and any(n.endswith(".tmp") for n in os.listdir(Path(bdir, "shared_checksum"))),
                         proc, "the copy", signal.SIGHUP)
    assert (proc.returncode, out) == (0, "1\n") and err.startswith("created backup 1 in "), err
    ok("verify", "--backup-dir", bdir, "--checksum")


def test_the_first_stop_signal_gives_back_only_the_handlers_rbackup_installed():
    """Under `nohup`, a SIGTERM's unwinding must not make SIGHUP deadly again."""
    from rbackup import cli

    before = {stop: signal.getsignal(stop) for stop in cli.STOP_SIGNALS}
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with pytest.raises(cli.Stopped), cli._stop_signals_unwind():
            assert signal.getsignal(signal.SIGTERM) is cli._raise_stopped
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        for stop, handler in before.items():
            signal.signal(stop, handler)


# -- what a command imports ---------------------------------------------------------------
# Start-up is most of a small backup's cost (a `create` to S3 is measured against s5cmd, which
# starts in 10 ms): a command must not import what it does not use.  No timing here, only which
# modules a real run has loaded when it exits.
MODULES_AT_EXIT = """
import json, sys
from rbackup.cli import main
try:
    code = main(sys.argv[2:])
finally:
    with open(sys.argv[1], "w") as fh:
        json.dump(sorted(sys.modules), fh)
sys.exit(code)
"""

NEVER_FOR_A_PLAIN_CREATE = {
    "cryptography", "rbackup.env.encrypted",  # encryption only
    "rocksdict", "rbackup.backup_db",  # a DB given by path is read without opening it
    "tqdm",  # progress bars only on a terminal
    "rbackup.replicate", "rbackup.retention",  # copy, purge --keep-*
    "rbackup_hdfs", "pyarrow",  # the HDFS backend: never for another protocol
    "rbackup_s3.object_lock",  # Object Lock options only
}


def modules_at_exit(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules `rbackup ARGS` had imported when it exited (a fresh interpreter, the console
    script's entry point); the command must succeed."""
    out = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", MODULES_AT_EXIT, str(out), *args], capture_output=True,
                            text=True, env=env or cli_env(), stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 0, result.stderr
    return set(json.loads(out.read_text()))


def test_a_local_create_imports_neither_fsspec_nor_what_other_commands_use(closed_db, tmp_path):
    db, _ = closed_db
    loaded = modules_at_exit(tmp_path, "create", "--db", db, "--backup-dir", str(tmp_path / "b"), "--quiet")
    assert {"rbackup.create", "rbackup.env.local"} <= loaded  # it did back up, to local disk
    not_for_local_disk = {"fsspec", "rbackup.env.fsspec_env", "rbackup_s3", "s3fs"}
    assert sorted(loaded & (NEVER_FOR_A_PLAIN_CREATE | not_for_local_disk)) == []


S3FS_STACK = ("s3fs", "aiobotocore", "aiohttp", "botocore", "fsspec", "asyncio")
"""s3fs's stack and what it brings (most of a second of start-up): only for S3 options the native client
does not serve."""


def test_an_s3_create_imports_only_the_s3_backend(closed_db, s3_bucket_url, tmp_path):
    db, _ = closed_db
    url, storage_options = s3_bucket_url
    loaded = modules_at_exit(tmp_path, "create", "--db", db, "--backup-dir", f"{url}/app", "--quiet",
                             "-o", f"endpoint_url={storage_options['endpoint_url']}")
    assert {"rbackup.create", "rbackup_s3.env"} <= loaded
    assert sorted(loaded & NEVER_FOR_A_PLAIN_CREATE) == []
    # rbackup's own S3 client: none of s3fs's stack.
    assert sorted(m for m in loaded if m.split(".")[0] in S3FS_STACK) == []
    assert "rbackup_s3.operations" in loaded


def test_an_s3_restore_and_list_import_neither_s3fs_nor_aiobotocore_nor_aiohttp(closed_db, s3_bucket_url, tmp_path):
    db, _ = closed_db
    url, storage_options = s3_bucket_url
    with_o = ["-o", f"endpoint_url={storage_options['endpoint_url']}"]
    ok("create", "--db", db, "--backup-dir", f"{url}/app", *with_o, "--quiet")
    for args in (("restore", "--backup-dir", f"{url}/app", "--db", str(tmp_path / "r"), "--quiet"),
                 ("list", "--backup-dir", f"{url}/app"), ("verify", "--backup-dir", f"{url}/app")):
        loaded = modules_at_exit(tmp_path, *args, *with_o)
        assert "rbackup_s3.env" in loaded
        assert sorted(m for m in loaded if m.split(".")[0] in S3FS_STACK) == []


# -- S3 (moto server) -------------------------------------------------------------------
def test_s3_end_to_end(closed_db, s3_bucket_url, tmp_path):
    db, written = closed_db
    url, storage_options = s3_bucket_url
    bdir = f"{url}/app"
    endpoint = storage_options["endpoint_url"]
    with_o = ["-o", f"client_kwargs.endpoint_url={endpoint}"]
    via_env = cli_env(AWS_ENDPOINT_URL=endpoint)

    assert ok("create", "--db", db, "--backup-dir", bdir, *with_o, "--metadata", "s3 one").stdout == "1\n"
    assert ok("create", "--db", db, "--backup-dir", bdir, env=via_env).stdout == "2\n"

    doc = listing(bdir, "--files", env=via_env)
    assert doc["backup_dir"] == bdir
    assert [(b["id"], b["metadata"]) for b in doc["backups"]] == [(1, "s3 one"), (2, "")]
    assert doc["backups"][0]["file_details"]

    ok("verify", "--backup-dir", bdir, "--checksum", *with_o)
    ok("restore", "--backup-dir", bdir, "--db", str(tmp_path / "r"), "--backup-id", "1", env=via_env)
    assert read_all(str(tmp_path / "r")) == written

    assert "backup 5 not found in s3://" in failed(1, "delete", "--backup-dir", bdir, "--backup-id", "5", env=via_env)
    ok("delete", "--backup-dir", bdir, "--backup-id", "1", *with_o)
    ok("gc", "--backup-dir", bdir, *with_o)
    assert ok("purge", "--backup-dir", bdir, "--keep", "0", env=via_env).stdout == "deleted backups 2\n"
    assert listing(bdir, *with_o)["backups"] == []

    missing = failed(1, "list", "--backup-dir", "s3://no-such-bucket-rbk/x", *with_o)
    assert "no-such-bucket-rbk" in missing


def test_sigterm_on_s3_releases_the_lease_for_the_next_writer(tmp_path, s3_bucket_url):
    """A writer killed on S3 holds its lease until `lock_ttl` (5 minutes by default) runs out;
    one stopped by SIGTERM unwinds, removes what it published and releases the lease, so the
    next scheduled run need not wait."""
    import boto3

    db = tmp_path / "db"
    make_db(db)
    url, storage_options = s3_bucket_url
    bdir = f"{url}/app"
    endpoint = storage_options["endpoint_url"]
    env = cli_env(AWS_ENDPOINT_URL=endpoint)
    bucket = url.removeprefix("s3://")
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")

    def keys() -> set[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="app/")
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    ok("create", "--db", str(db), "--backup-dir", bdir, "-q", env=env)
    make_db(db, 8000, prefix="big", value_size=4096, seed=3)  # ~32 MiB at 1 MiB/s
    before = keys()

    proc = subprocess.Popen([RBACKUP, "create", "--db", str(db), "--backup-dir", bdir, "--rate-limit", "1M"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = stop_when(lambda: any("/rbackup.lock.d/" in k for k in keys() - before), proc, "the lease",
                         signal.SIGTERM)

    assert (proc.returncode, out) == (128 + signal.SIGTERM, ""), err
    assert err.startswith("rbackup: stopped by SIGTERM: no backup was created"), err
    assert {k for k in keys() if "/rbackup.lock" not in k} == {k for k in before if "/rbackup.lock" not in k}
    assert ok("create", "--db", str(db), "--backup-dir", bdir, env=env).stdout == "2\n"  # no lease in the way
