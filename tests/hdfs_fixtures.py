"""A real HDFS for the tests: Hadoop's MiniDFSCluster, and the libhdfs pyarrow needs to reach it.

Nothing of Hadoop is in the repository.  On first use this module
1. builds the launcher in tests/hdfs_cluster (Maven fetches `hadoop-client-minicluster` 3.5.0 and
   its jars into ~/.m2 once; later builds run `mvn -o`, and none runs while the build is current);
2. builds `libhdfs.so` from the C sources shipped in the crates.io crate `hdfs-sys` (fetched with
   `cargo fetch`) against the JDK's headers, cached in ~/.cache/rbackup-test (RBACKUP_TEST_CACHE);
3. starts one cluster for the session (2 DataNodes, a bounded heap), waits for its READY line, and
   sets exactly the environment the README tells a user to set (JAVA_HOME, ARROW_LIBHDFS_DIR,
   CLASSPATH with the client configuration directory first, HADOOP_CONF_DIR, LIBHDFS_OPTS) plus
   RBACKUP_TEST_HDFS_URL.

Without java, mvn, cargo or a C compiler the HDFS tests are skipped with the reason; with
RBACKUP_REQUIRE_HDFS=1 (CI) that skip is a failure instead.  A cluster of one's own can be used by
setting RBACKUP_TEST_HDFS_URL (and the environment above) before pytest starts.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NoReturn

import pytest

log = logging.getLogger(__name__)

HDFS_URL_VAR = "RBACKUP_TEST_HDFS_URL"
REQUIRE_VAR = "RBACKUP_REQUIRE_HDFS"
LAUNCHER_DIR = Path(__file__).parent / "hdfs_cluster"
CACHE_DIR = Path(os.environ.get("RBACKUP_TEST_CACHE", Path.home() / ".cache" / "rbackup-test"))
HDFS_SYS = "hdfs-sys"
HDFS_SYS_VERSION = "0.3.0"
LIBHDFS_SOURCES = "libhdfs/hdfs_3_3"
CLIENT_JARS = ("hadoop-client-api-", "hadoop-client-runtime-", "slf4j-api-", "commons-lang3-", "slf4j-nop-")
"""What libhdfs needs on CLASSPATH beside the configuration directory: the two shaded client jars,
slf4j-api (else NoClassDefFoundError) and commons-lang3 (else the JVM kills the process at the first
Java exception, because libhdfs calls the unshaded ExceptionUtils); slf4j-nop only silences SLF4J's
three warning lines on stderr."""
START_TIMEOUT = float(os.environ.get("RBACKUP_HDFS_START_TIMEOUT", "300"))
COMMAND_TIMEOUT = 180.0
CLUSTER_HEAP = "-Xmx768m"
CLIENT_JVM_OPTS = "-Xmx512m -Xrs"
"""-Xrs: the JVM inside the Python process leaves SIGINT/SIGTERM to Python."""


class HdfsUnavailable(Exception):
    """Something the test cluster or libhdfs needs is missing here; the message says what."""


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: float = 1200,
         env: dict[str, str] | None = None) -> str:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HdfsUnavailable(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise HdfsUnavailable(f"{what} failed ({' '.join(cmd)}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return done.stdout


def find_java_home() -> Path:
    """JAVA_HOME if set, else the home of the `java` on PATH; it must have libjvm.so and javac's headers."""
    home = os.environ.get("JAVA_HOME")
    if not home:
        java = shutil.which("java")
        if java is None:
            raise HdfsUnavailable("no Java: install a JDK 17 (e.g. apt-get install openjdk-17-jdk-headless)")
        home = str(Path(os.path.realpath(java)).parent.parent)
    java_home = Path(home)
    if not (java_home / "lib" / "server" / "libjvm.so").exists():
        raise HdfsUnavailable(f"{java_home} has no lib/server/libjvm.so: set JAVA_HOME to a JDK 17")
    if not (java_home / "include" / "jni.h").exists():
        raise HdfsUnavailable(f"{java_home} has no include/jni.h (a JRE, not a JDK): libhdfs cannot be built")
    return java_home


@dataclass(frozen=True)
class Launcher:
    """The built launcher: the JVM's classpath for MiniHdfs and the client jars among it."""

    classpath: list[str]

    def client_jars(self) -> list[str]:
        found = [next((jar for jar in self.classpath if Path(jar).name.startswith(prefix)), None)
                 for prefix in CLIENT_JARS]
        missing = [prefix for prefix, jar in zip(CLIENT_JARS, found, strict=True) if jar is None]
        if missing:
            raise HdfsUnavailable(f"the launcher's classpath lacks {missing}")
        return [jar for jar in found if jar is not None]


def build_launcher(java_home: Path) -> Launcher:
    """`mvn process-classes` in tests/hdfs_cluster, skipped while its output is newer than its sources."""
    target = LAUNCHER_DIR / "target"
    listing = target / "classpath.txt"
    sources = [LAUNCHER_DIR / "pom.xml", *LAUNCHER_DIR.glob("src/**/*.java")]
    if listing.exists() and listing.stat().st_mtime > max(p.stat().st_mtime for p in sources):
        classpath = listing.read_text().strip().split(os.pathsep)
        if all(Path(jar).exists() for jar in classpath):
            return Launcher([str(target / "classes"), *classpath])
    mvn = shutil.which("mvn")
    if mvn is None:
        raise HdfsUnavailable("no Maven (mvn) to build the test cluster: apt-get install maven")
    env = {**os.environ, "JAVA_HOME": str(java_home)}
    try:
        _run([mvn, "-q", "-B", "-o", "process-classes"], f"offline Maven build of {LAUNCHER_DIR}", LAUNCHER_DIR,
             env=env)
    except HdfsUnavailable:
        log.info("offline build failed (first run?); building with downloads from Maven Central")
        _run([mvn, "-q", "-B", "process-classes"], f"Maven build of {LAUNCHER_DIR}", LAUNCHER_DIR, env=env)
    return Launcher([str(target / "classes"), *listing.read_text().strip().split(os.pathsep)])


def build_libhdfs(java_home: Path) -> Path:
    """The directory holding a libhdfs.so built from hdfs-sys's C sources against this JDK (cached)."""
    key = f"libhdfs-{HDFS_SYS}-{HDFS_SYS_VERSION}-{java_home.resolve().name}"
    out_dir = CACHE_DIR / key
    if (out_dir / "libhdfs.so").exists():
        return out_dir
    cargo, cc = shutil.which("cargo"), shutil.which("cc") or shutil.which("gcc")
    if cargo is None or cc is None:
        raise HdfsUnavailable("building libhdfs needs cargo (to fetch the hdfs-sys crate's C sources) "
                              "and a C compiler")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        crate = Path(tmp) / "crate"
        (crate / "src").mkdir(parents=True)
        (crate / "src" / "lib.rs").write_text("")
        (crate / "Cargo.toml").write_text(
            '[package]\nname = "libhdfs-sources"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n'
            f'[dependencies]\n{HDFS_SYS} = {{ version = "={HDFS_SYS_VERSION}", default-features = false }}\n')
        _run([cargo, "fetch", "--quiet"], f"cargo fetch of the {HDFS_SYS} crate", crate)
        meta = json.loads(_run([cargo, "metadata", "--format-version", "1", "--offline"],
                               "cargo metadata", crate))
        manifest = next(p["manifest_path"] for p in meta["packages"] if p["name"] == HDFS_SYS)
        root = Path(manifest).parent / "libhdfs"
        src = root / "hdfs_3_3"
        files = [src / name for name in ("exception.c", "jni_helper.c", "hdfs.c", "jclasses.c",
                                         "os/posix/mutexes.c", "os/posix/thread.c",
                                         "os/posix/thread_local_storage.c")]
        includes = [root, src, src / "include", src / "os", src / "os" / "posix",
                    java_home / "include", java_home / "include" / "linux"]
        built = Path(tmp) / "libhdfs.so"
        _run([cc, "-shared", "-fPIC", "-O2", "-w", "-o", str(built), *(f"-I{d}" for d in includes),
              *map(str, files), f"-L{java_home / 'lib' / 'server'}", "-ljvm", "-lpthread"],
             f"compiling libhdfs from {src}")
        staged = Path(tmp) / key
        staged.mkdir()
        built.rename(staged / "libhdfs.so")
        try:
            staged.rename(out_dir)  # atomic: a racing session's build wins, both are equal
        except OSError:
            if not (out_dir / "libhdfs.so").exists():
                raise
    return out_dir


def client_environment(java_home: Path, libhdfs_dir: Path, conf_dir: Path, client_jars: list[str]) -> dict[str, str]:
    """What the README tells a user to set for pyarrow's HadoopFileSystem: the fixture sets the same."""
    return {
        "JAVA_HOME": str(java_home),
        "ARROW_LIBHDFS_DIR": str(libhdfs_dir),
        # libhdfs reads HADOOP_CONF_DIR only through CLASSPATH: the directory itself must be on it.
        "CLASSPATH": os.pathsep.join([str(conf_dir), *client_jars]),
        "HADOOP_CONF_DIR": str(conf_dir),
        "LIBHDFS_OPTS": CLIENT_JVM_OPTS,
    }


@dataclass
class MiniHdfs:
    """A running MiniHdfs launcher: ports from its READY line, and its stdin commands."""

    proc: subprocess.Popen[str]
    conf_dir: Path
    log_path: Path
    namenode_port: int = 0
    datanode_ports: list[int] = field(default_factory=list)
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @classmethod
    def start(cls, java_home: Path, launcher: Launcher, base: Path, datanodes: int = 2) -> MiniHdfs:
        conf_dir = base / "conf"
        log_path = base / "cluster.log"
        with open(log_path, "w") as stderr:
            proc = subprocess.Popen(
                [str(java_home / "bin" / "java"), CLUSTER_HEAP, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 "-cp", os.pathsep.join(launcher.classpath), "rbackup.test.MiniHdfs",
                 str(base / "data"), str(conf_dir), str(datanodes)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1)
        cluster = cls(proc, conf_dir, log_path)
        threading.Thread(target=cluster._pump, args=(proc.stdout,), daemon=True).start()
        try:
            cluster._parse_ports(cluster._expect("READY", START_TIMEOUT, "start"))
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _pump(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _expect(self, prefix: str, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise HdfsUnavailable(f"the test HDFS did not answer {what!r} within {timeout:.0f} s "
                                      f"(log: {self.log_path})") from None
            if line is None:
                raise HdfsUnavailable(f"the test HDFS exited during {what!r} ({self._log_tail()})")
            if line.startswith("ERR"):
                raise RuntimeError(f"the test HDFS refused {what!r}: {line}")
            if line.startswith(prefix):
                return line

    def _parse_ports(self, line: str) -> None:
        fields = dict(word.split("=", 1) for word in line.split()[1:] if "=" in word)
        self.namenode_port = int(fields["namenode"])
        self.datanode_ports = [int(p) for p in fields["datanodes"].split(",") if p]

    def _log_tail(self) -> str:
        try:
            return "log tail: " + self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return f"no log at {self.log_path}"

    def command(self, command: str, timeout: float = COMMAND_TIMEOUT) -> None:
        """Run one launcher command ("stop-datanode 0", "restart-datanode 0", "restart-namenode")."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        self._parse_ports(self._expect(f"OK {command}", timeout, command))

    @property
    def url(self) -> str:
        return f"hdfs://127.0.0.1:{self.namenode_port}"

    def stop(self) -> None:
        """Close stdin (the launcher shuts the cluster down and exits); kill it if it hangs."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class RealHdfs:
    """What the real-HDFS tests get: the base URL of a scratch directory, and the cluster if ours."""

    url: str
    cluster: MiniHdfs | None


def _unavailable(reason: str) -> NoReturn:
    message = f"HDFS itself is not exercised: {reason}"
    if os.environ.get(REQUIRE_VAR) == "1":
        pytest.fail(f"{REQUIRE_VAR}=1 but {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_hdfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealHdfs]:
    """A real HDFS for the session: RBACKUP_TEST_HDFS_URL if set, else a MiniDFSCluster started here."""
    external = os.environ.get(HDFS_URL_VAR)
    if external:
        yield RealHdfs(external.rstrip("/"), None)
        return
    try:
        java_home = find_java_home()
        launcher = build_launcher(java_home)
        libhdfs_dir = build_libhdfs(java_home)
        base = tmp_path_factory.mktemp("hdfs")
        started = time.monotonic()
        cluster = MiniHdfs.start(java_home, launcher, base)
    except HdfsUnavailable as exc:
        _unavailable(str(exc))
    log.info("test HDFS up in %.1f s at %s", time.monotonic() - started, cluster.url)
    url = f"{cluster.url}/rbackup-test"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in client_environment(java_home, libhdfs_dir, cluster.conf_dir,
                                              launcher.client_jars()).items():
            mp.setenv(name, value)
        mp.setenv(HDFS_URL_VAR, url)
        try:
            yield RealHdfs(url, cluster)
        finally:
            cluster.stop()


@pytest.fixture
def hdfs_dir(real_hdfs: RealHdfs) -> Iterator[str]:
    """A fresh backup directory URL on the live cluster, removed afterwards."""
    from rbackup_hdfs import HdfsEnv  # the plug-in, only where a test asks for the cluster

    url = f"{real_hdfs.url}/{uuid.uuid4().hex}"
    yield url
    env = HdfsEnv(url)
    if env.fs.exists(env.root):
        env.fs.rm(env.root, recursive=True)
