"""pyarrow's HDFS errors, translated into rbackup's hierarchy with a cause an operator can act on.

pyarrow reports HDFS failures as OSError.  Where libhdfs knew the Java
exception it sets an errno (its table: FileNotFoundException ENOENT,
AccessControlException EACCES, FileAlreadyExistsException EEXIST,
ParentNotDirectoryException ENOTDIR, SafeModeException EROFS,
QuotaExceededException EDQUOT, LeaseExpiredException ESTALE,
UnsupportedOperationException ENOTSUP, anything else EINTERNAL = 255 with the
Java stack trace printed on stderr), and the OSError subclass follows from
it.  The failures before any connection exists carry only a message:
"Unable to load libjvm", "Unable to load libhdfs", then "Prior attempt to load
libhdfs failed" for the rest of the process, and "HDFS connection failed".
"""
from __future__ import annotations

import errno

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
        return StorageError(
            f"{what}: libhdfs could not connect (its Java exception is on stderr); check that CLASSPATH "
            "holds Hadoop's client jars and slf4j-api (`hadoop classpath --glob`, or hadoop-client-api, "
            "hadoop-client-runtime, slf4j-api, commons-lang3), the configuration directory (HADOOP_CONF_DIR "
            "counts only on the CLASSPATH), the NameNode address and the Kerberos ticket")
    code = getattr(exc, "errno", None)
    if code in _ERRNO_CAUSES:
        return StorageError(f"{what}: {_ERRNO_CAUSES[code]}: {message}")
    if code in (errno.ENOTSUP, errno.EOPNOTSUPP):
        return NotSupported(f"{what}: not supported by this file system (UnsupportedOperationException): {message}")
    if code == EINTERNAL:
        return StorageError(f"{what}: HDFS failed with a Java exception (libhdfs printed it on stderr): {message}")
    return translate_store_error(exc, what)
