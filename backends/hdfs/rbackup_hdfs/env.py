"""HdfsEnv: rbackup's BackupEnv on HDFS, over pyarrow's libhdfs binding.

The store is `pyarrow.fs.HadoopFileSystem` wrapped in fsspec's
`ArrowFSWrapper` (exactly what fsspec's own `hdfs://` implementation is) and
driven by the generic `FsspecEnv`; this module adds only what HDFS changes.
What each promise of the contract rests on, as pyarrow really does it:

- publish: FsspecEnv's temp name plus rename.  A new name appears whole in
  one NameNode rename, atomic and logged in the edit log before the call
  returns.  `open_write_new` (every file of a backup) writes a temp name
  private to the writer and publishes it with the rename that refuses an
  existing name (through hdfs-native, as create-if-absent does), so a file
  is never replaced and no look precedes the publish (`exclusive_publish`).
  `open_write` (replacing: the engine replaces only small bookkeeping files,
  its lock lease on renewal) uses `.<name>.tmp` and the rename with
  OVERWRITE through hdfs-native: one NameNode step, the name never absent
  (pyarrow's `move` deletes the destination and renames again).
- durability: pyarrow binds libhdfs's `hdfsFlush` (Java `flush()`), never
  `hflush` or `hsync`.  `close()` returns once every DataNode of the write
  pipeline acknowledged every packet and the NameNode completed the file:
  the data is on `replication` DataNodes, in their memory, not fsynced, so
  `durable_sync` is False and the `sync` flags change nothing (DataNodes run
  with dfs.datanode.synconclose=true do fsync on close).
- create-if-absent: atomic.  pyarrow has none (libhdfs always creates with
  overwrite=true, `move` clobbers), so `create_exclusive` writes through
  pyarrow to a private temp and publishes it with HDFS's rename that refuses
  an existing destination, called through `hdfs-native` (a JVM-free client
  of the NameNode's RPC); see `HdfsEnv.create_exclusive`.
- deleting a missing file: libhdfs reports it as EIO (Java's `delete`
  returned false), which `delete` treats as "already gone" after a check.
- listings are never cached (ArrowFSWrapper has no listing cache).
"""
from __future__ import annotations

import dataclasses
import errno
import faulthandler
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

import hdfs_native
import pyarrow.fs
from fsspec.implementations.arrow import ArrowFSWrapper

from rbackup.env.base import DISK_BUFFER_SIZE, Capabilities, check_path
from rbackup.env.fsspec_env import FsspecEnv
from rbackup.errors import AlreadyExists, BackupError, InvalidArgument, NotFound
from rbackup.format.tempnames import exclusive_temp_path

from .clientconf import site_keys
from .config import DEFAULT_NAMENODE, HdfsLocation, HdfsSettings, hadoop_fs_kwargs, parse_hdfs_url
from .errors import translate_hdfs_error

log = logging.getLogger(__name__)

Connector = Callable[..., pyarrow.fs.FileSystem]
"""Called with `pyarrow.fs.HadoopFileSystem`'s keyword arguments; returns a pyarrow file system."""
ExclusiveRename = Callable[[str, str], None]
"""`(source, destination)`, absolute paths: rename in one step, raising FileExistsError (and
changing nothing) if the destination exists."""
Rename = Callable[[str, str], None]
"""`(source, destination)`, absolute paths: rename in one step, replacing the destination."""


def ensure_hadoop_classpath(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set CLASSPATH from `hadoop classpath --glob` when it is unset.

    libhdfs starts its JVM with the CLASSPATH environment variable and fails
    with only "HDFS connection failed" (plus a NoClassDefFoundError on stderr)
    without Hadoop's jars on it; the `hadoop` command knows them.  Nothing is
    done once CLASSPATH is set, or without a `hadoop` on PATH or in
    $HADOOP_HOME/bin.
    """
    if environ.get("CLASSPATH"):
        return
    hadoop = shutil.which("hadoop", path=environ.get("PATH"))
    home = environ.get("HADOOP_HOME")
    if hadoop is None and home and os.access(os.path.join(home, "bin", "hadoop"), os.X_OK):
        hadoop = os.path.join(home, "bin", "hadoop")
    if hadoop is None:
        return
    try:
        done = subprocess.run([hadoop, "classpath", "--glob"], capture_output=True, text=True,
                              timeout=120, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not get Hadoop's classpath from %s: %s", hadoop, exc)
        return
    environ["CLASSPATH"] = done.stdout.strip()
    log.info("CLASSPATH for libhdfs set from `%s classpath --glob`", hadoop)


def leave_signals_to_python(environ: MutableMapping[str, str] = os.environ) -> None:
    """Add -Xrs to LIBHDFS_OPTS, which libhdfs reads when it starts its JVM inside this process.

    Without it the JVM takes SIGINT, SIGTERM and SIGHUP for its own shutdown and exits the
    process on the spot: no KeyboardInterrupt, nothing unwound, a writer's lease left behind
    until it expires.  The JVM reads the variable once, so this is harmless afterwards.
    """
    opts = environ.get("LIBHDFS_OPTS", "")
    if "-Xrs" not in opts.split():
        environ["LIBHDFS_OPTS"] = f"{opts} -Xrs".strip()


def classpath_problems(environ: Mapping[str, str] = os.environ) -> list[str]:
    """What the CLASSPATH libhdfs will read visibly lacks, judged by jar file names.

    Two lacks do not fail cleanly: without commons-lang3 the JVM kills the
    whole process at the first Java exception (libhdfs formats exceptions with
    the unshaded ExceptionUtils), and without HADOOP_CONF_DIR's directory on the
    CLASSPATH libhdfs silently ignores that configuration.  A jar that bundles
    commons-lang3 under another name is not seen, hence warnings, not errors.
    """
    entries = [e for e in environ.get("CLASSPATH", "").split(os.pathsep) if e]
    names: list[str] = []
    for entry in entries:
        if entry.endswith("*") and os.path.isdir(entry[:-1] or "."):
            names.extend(os.listdir(entry[:-1] or "."))
        else:
            names.append(os.path.basename(entry))
    problems = []
    if entries and not any(n.startswith("commons-lang3") for n in names):
        problems.append("CLASSPATH has no commons-lang3 jar: the JVM will kill this process at the first "
                        "Java exception (libhdfs needs the unshaded org.apache.commons.lang3)")
    conf_dir = environ.get("HADOOP_CONF_DIR")
    if conf_dir and os.path.realpath(conf_dir) not in {os.path.realpath(e) for e in entries}:
        problems.append(f"HADOOP_CONF_DIR={conf_dir} is not on CLASSPATH: libhdfs reads its configuration "
                        "only from the CLASSPATH, so it ignores that directory")
    return problems


FAULTHANDLER_HAZARD = (
    "faulthandler is enabled in this process: libhdfs's JVM runs here and handles SIGSEGV in its normal work, "
    "and when faulthandler is disabled (pytest does at the end of a session, Python at exit) SIGSEGV goes back "
    "to its default and the JVM's next safepoint can kill the process; leave it off (pytest -p no:faulthandler, "
    "no -X faulthandler or PYTHONFAULTHANDLER)")
"""Why faulthandler and an in-process JVM do not mix: faulthandler.disable() restores the handler it found
when enabled (SIG_DFL), over the one the JVM installed after it."""


def connect_hadoop(location: HdfsLocation, settings: HdfsSettings,
                   factory: Connector | None = None) -> pyarrow.fs.FileSystem:
    """The pyarrow file system for `location`; load and connection failures become rbackup errors."""
    kwargs = hadoop_fs_kwargs(location, settings, site_keys())
    if factory is None:
        ensure_hadoop_classpath()
        leave_signals_to_python()
        for problem in classpath_problems():
            log.warning("%s: %s", location.url, problem)
        if faulthandler.is_enabled():
            log.warning("%s: %s", location.url, FAULTHANDLER_HAZARD)
        factory = pyarrow.fs.HadoopFileSystem
    log.debug("connecting to %s (namenode %r, port %d) as %s", location.url, location.namenode,
              location.port, settings.user or "the login user")
    try:
        return factory(**kwargs)
    except (OSError, ValueError) as exc:  # pyarrow: OSError (ArrowIOError), ArrowInvalid
        raise translate_hdfs_error(exc, f"connect {location.url}") from exc


def hdfs_native_url(location: HdfsLocation) -> str | None:
    """The NameNode URL for hdfs-native; None: fs.defaultFS from HADOOP_CONF_DIR (hdfs:///path)."""
    if location.namenode == DEFAULT_NAMENODE:
        return None
    if "://" in location.namenode:  # viewfs://cluster
        return location.namenode
    port = f":{location.port}" if location.port else ""
    return f"hdfs://{location.namenode}{port}"


def native_renames(location: HdfsLocation, settings: HdfsSettings) -> tuple[ExclusiveRename, Rename]:
    """HDFS's renames through one hdfs-native client: `rename2` without OVERWRITE (refusing an
    existing destination), and with it (replacing one in the same single NameNode step, where
    pyarrow's `move` deletes the destination and renames again, leaving the name absent between).

    The client connects lazily and reads HADOOP_CONF_DIR itself; `extra_conf`
    is passed on.  Under simple authentication it acts as HADOOP_USER_NAME or
    the login user, not as `settings.user`.  hdfs-native takes a ticket cache
    only with its principal: given `kerb_ticket` and `user` both, it gets
    them; given `kerb_ticket` alone, it uses the default cache (KRB5CCNAME).
    """
    kerberos: dict[str, str] = {}
    if settings.kerb_ticket is not None and settings.user is not None:
        kerberos = {"kerberos_cache": settings.kerb_ticket, "kerberos_principal": settings.user}
    client = hdfs_native.Client(hdfs_native_url(location), dict(settings.extra_conf) or None, **kerberos)

    def exclusive(source: str, destination: str) -> None:
        client.rename(source, destination, overwrite=False)

    def replacing(source: str, destination: str) -> None:
        client.rename(source, destination, overwrite=True)

    return exclusive, replacing


class HdfsEnv(FsspecEnv):
    """The backup directory `hdfs://namenode:port/path` (or `hdfs:///path`, `viewfs://cluster/path`).

    `storage_options` are the fields of `HdfsSettings` (`user`, `kerb_ticket`,
    `replication`, `buffer_size`, `default_block_size`, `extra_conf`,
    `concurrency`, `transfer_width`).  libhdfs itself needs JAVA_HOME, libhdfs.so (HADOOP_HOME
    or ARROW_LIBHDFS_DIR), Hadoop's jars on CLASSPATH (found with the `hadoop`
    command when unset) and usually HADOOP_CONF_DIR; without them the
    constructor raises NotSupported naming what is missing.

    `connect` replaces `pyarrow.fs.HadoopFileSystem` (same keyword arguments)
    and `rename_exclusive` the hdfs-native no-clobber rename (a replacing
    publish then goes through pyarrow's `move`): the tests pass a connector
    returning `pyarrow.fs.LocalFileSystem()` and a local no-clobber rename,
    which runs this env's whole code path on local disk.
    """

    capabilities = Capabilities(atomic_rename=True, conditional_create=True, exclusive_publish=True,
                                durable_sync=False, directories=True, concurrency=HdfsSettings.concurrency,
                                transfer_width=HdfsSettings.transfer_width, buffer_size=DISK_BUFFER_SIZE)
    """The defaults, for `rbackup backends`; an instance reflects its own settings."""

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None,
                 connect: Connector | None = None, rename_exclusive: ExclusiveRename | None = None) -> None:
        location = parse_hdfs_url(url)
        settings = HdfsSettings.from_options(storage_options, url_user=location.user)
        arrow_fs = connect_hadoop(location, settings, connect)
        self.rename_replacing: Rename | None = None
        """HDFS's replacing rename; None (a caller's `rename_exclusive` given): pyarrow's `move`."""
        if rename_exclusive is None:
            self.rename_exclusive, self.rename_replacing = native_renames(location, settings)
        else:
            self.rename_exclusive = rename_exclusive
        super().__init__(
            ArrowFSWrapper(arrow_fs, skip_instance_cache=True),
            location.path,
            url=location.url,
            capabilities=dataclasses.replace(HdfsEnv.capabilities, concurrency=settings.concurrency,
                                             transfer_width=settings.transfer_width),
        )
        self.location = location
        self.settings = settings

    _open_makes_parents = True
    """libhdfs's hdfsOpenFile creates with Hadoop's `FileSystem.create`, which makes missing parent
    directories: no mkdirs request per file (the tests' local stand-in makes them on ENOENT)."""

    @classmethod
    def from_url(cls, url: str, storage_options: dict[str, Any] | None = None) -> HdfsEnv:
        return cls(url, storage_options=storage_options)

    def _error(self, exc: BaseException, path: str, action: str) -> BackupError:
        return translate_hdfs_error(exc, f"{action} {self.describe(path)}")

    def delete(self, paths: Iterable[str]) -> None:
        """Delete files, missing ones included: libhdfs reports deleting a missing file as EIO
        (Java's `delete` returned false), so an EIO is checked against the file still being there."""
        checked = [check_path(p) for p in paths]
        for path in checked:
            full = self._full(path)
            try:
                self.fs.rm_file(full)
            except FileNotFoundError:
                pass
            except OSError as exc:
                # rbackup's exists, not fsspec's: fsspec's says False for any error, and a
                # delete that failed would then be reported as done.
                if exc.errno == errno.EIO and not self.exists(path):
                    continue
                raise self._error(exc, path, "delete") from exc

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        """Create `path` holding `data` unless it exists, atomically: exactly one racing creator wins.

        1. AlreadyExists if `path` exists (saves writing the data for nothing);
        2. write `data` whole through pyarrow to a temp name private to this call;
        3. rename the temp onto `path` with HDFS's rename that refuses an existing
           destination (one NameNode call, through hdfs-native: pyarrow's `move`
           would delete the destination first); a refusal removes the temp and
           raises AlreadyExists.

        The name never holds a partial file, and a name once created is never
        replaced by this method.  A refusal whose temp is gone means the rename
        was ours and only its reply was lost (a retried RPC): that is success.
        """
        path = check_path(path)
        if self.exists(path):
            raise AlreadyExists(f"create {self.describe(path)}: already exists")
        tmp_path = exclusive_temp_path(path)
        tmp = self._full(tmp_path)
        try:
            with self._open_in_dir(tmp, lambda target: self.fs.open(target, "wb")) as f:
                f.write(data)
            self._publish_new(path, tmp_path, lambda: self._holds(path, data))
        except AlreadyExists:
            self._remove_quietly(tmp_path)
            raise AlreadyExists(f"create {self.describe(path)}: already exists") from None
        except Exception as exc:
            self._remove_quietly(tmp_path)
            raise self._error(exc, path, "create") from exc

    def _rename_replacing(self, source: str, destination: str) -> None:
        """A replacing publish (`open_write`: the lease's renewals) in one NameNode step, so the
        name never goes missing in between, as it does in pyarrow's `move` (refused rename,
        delete, rename again: three requests)."""
        if self.rename_replacing is None:
            super()._rename_replacing(source, destination)
        else:
            self.rename_replacing(source, destination)

    def _rename_new(self, source: str, destination: str) -> None:
        """HDFS's rename that refuses an existing destination (`rename_exclusive`): what
        `open_write_new` and `create_exclusive` publish with."""
        self.rename_exclusive(source, destination)

    def _holds(self, path: str, data: bytes) -> bool:
        """Whether `path` holds exactly `data` (False if it is gone or differs)."""
        try:
            return self.read_bytes(path, len(data)) == data
        except (NotFound, InvalidArgument):
            return False

    def _remove_quietly(self, path: str) -> None:
        """Drop a temp file after a failure that is already being reported."""
        try:
            self.fs.rm_file(self._full(path))
        except FileNotFoundError:
            pass
        except Exception:
            log.warning("could not remove temp file %s", self.describe(path), exc_info=True)
