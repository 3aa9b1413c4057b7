"""pyarrow's HDFS errors, translated into rbackup's hierarchy with a cause an operator can act on.

pyarrow reports HDFS failures as OSError.  Where libhdfs knew the Java
exception it sets an errno (its table: FileNotFoundException ENOENT,
AccessControlException EACCES, FileAlreadyExistsException EEXIST,
ParentNotDirectoryException ENOTDIR, SafeModeException EROFS,
QuotaExceededException EDQUOT, LeaseExpiredException ESTALE,
UnsupportedOperationException ENOTSUP, anything else EINTERNAL = 255 with the
Java stack trace printed on stderr), and the OSError subclass follows from
it.  What the Java exception said is kept by libhdfs (Hadoop 3) per thread, and
`java_root_cause` reads it so that the error names it ("ConnectException:
Connection refused") instead of pointing at stderr.  The failures before any
connection exists carry only a message:
"Unable to load libjvm", "Unable to load libhdfs", then "Prior attempt to load
libhdfs failed" for the rest of the process, and "HDFS connection failed".
"""
from __future__ import annotations

import ctypes
import errno
import threading
from collections.abc import Callable

from rbackup.env.fsspec_env import translate_store_error
from rbackup.errors import BackupError, NotSupported, StorageError

EINTERNAL = 255
"""libhdfs's errno for a Java exception it has no errno for."""

_LOAD_FAILURES = (
    ("Unable to load libjvm",
     "pyarrow could not load libjvm.so, the Java VM: set JAVA_HOME to a Java installation "
     "(one with lib/server/libjvm.so)"),
    ("Unable to load libhdfs",
     "pyarrow could not load libhdfs.so, Hadoop's C client: set HADOOP_HOME (searched in "
     "$HADOOP_HOME/lib/native) or ARROW_LIBHDFS_DIR to the directory that holds it"),
    ("Prior attempt to load libhdfs failed",
     "an earlier attempt in this process to load libjvm or libhdfs failed and pyarrow never "
     "tries again: fix JAVA_HOME, HADOOP_HOME or ARROW_LIBHDFS_DIR and start a new process"),
)

_ERRNO_CAUSES = {
    errno.EROFS: "the NameNode is in safe mode (read-only) (SafeModeException)",
    errno.EDQUOT: "an HDFS quota is exceeded (QuotaExceededException)",
    errno.ESTALE: "the write lease expired: another client took the file over (LeaseExpiredException)",
}


_ROOT_CAUSE_LIMIT = 500
"""Characters of a Java root cause kept in an error message (Hadoop's can run to a paragraph)."""

_libhdfs_lock = threading.Lock()
_libhdfs_root_cause: Callable[[], bytes | None] | None = None


def _root_cause_function() -> Callable[[], bytes | None] | None:
    """libhdfs's `hdfsGetLastExceptionRootCause`, from the libhdfs.so pyarrow loaded into this
    process (found in /proc/self/maps); None before it is loaded or where it lacks the function."""
    global _libhdfs_root_cause
    with _libhdfs_lock:
        if _libhdfs_root_cause is None:
            try:
                with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
                    paths = {line.split(None, 5)[-1].strip() for line in maps if "/libhdfs.so" in line}
                for path in sorted(paths):
                    function = getattr(ctypes.CDLL(path), "hdfsGetLastExceptionRootCause", None)
                    if function is not None:
                        function.restype = ctypes.c_char_p
                        function.argtypes = ()
                        _libhdfs_root_cause = function
                        break
            except OSError:
                return None
        return _libhdfs_root_cause


def java_root_cause() -> str | None:
    """The root cause of the last Java exception libhdfs met in this thread ("ConnectException:
    ... Connection refused ..."), shortened; None if there is none to read.

    libhdfs keeps it per thread and sets it for each Java exception it turns into an error, so
    right after a failed call in this thread it is that call's."""
    function = _root_cause_function()
    if function is None:
        return None
    raw = function()
    if not raw:
        return None
    cause = " ".join(raw.decode("utf-8", errors="replace").split())
    return cause if len(cause) <= _ROOT_CAUSE_LIMIT else cause[:_ROOT_CAUSE_LIMIT] + "..."


def missing_library(message: str) -> str | None:
    """What is missing, when `message` says pyarrow could not load the Java VM or libhdfs."""
    for prefix, explanation in _LOAD_FAILURES:
        if message.startswith(prefix):
            return explanation
    return None


def translate_hdfs_error(exc: BaseException, what: str) -> BackupError:
    """Map an exception from pyarrow's HadoopFileSystem; `what` names the operation and URL."""
    if isinstance(exc, BackupError):
        return exc
    message = str(exc)
    missing = missing_library(message)
    if missing is not None:
        return NotSupported(f"{what}: HDFS is not available here: {missing}")
    if message.startswith("HDFS connection failed"):
        cause = java_root_cause()
        said = (f"libhdfs could not connect: {cause}" if cause
                else "libhdfs could not connect (its Java exception is on stderr)")
        return StorageError(
            f"{what}: {said}; check that CLASSPATH "
            "holds Hadoop's client jars and slf4j-api (`hadoop classpath --glob`, or hadoop-client-api, "
            "hadoop-client-runtime, slf4j-api, commons-lang3), the configuration directory (HADOOP_CONF_DIR "
            "counts only on the CLASSPATH), the NameNode address and the Kerberos ticket")
    code = getattr(exc, "errno", None)
    if code in _ERRNO_CAUSES:
        return StorageError(f"{what}: {_ERRNO_CAUSES[code]}: {message}")
    if code in (errno.ENOTSUP, errno.EOPNOTSUPP):
        return NotSupported(f"{what}: not supported by this file system (UnsupportedOperationException): {message}")
    if code == EINTERNAL:
        cause = java_root_cause()
        if cause:
            return StorageError(f"{what}: HDFS failed: {cause} (libhdfs printed the Java stack trace on stderr)")
        return StorageError(f"{what}: HDFS failed with a Java exception (libhdfs printed it on stderr): {message}")
    return translate_store_error(exc, what)
