"""rbackup-hdfs: the HDFS backend of rbackup, a plug-in like any third party's.

Registered in the `rbackup.backends` entry point group for `hdfs://` and
`viewfs://` URLs; the engine finds it through rbackup's registry and never
imports it.  The store is pyarrow's libhdfs binding behind fsspec's
ArrowFSWrapper, driven by rbackup's generic FsspecEnv.
"""
from .config import HdfsLocation, HdfsSettings, hadoop_fs_kwargs, parse_hdfs_url
from .env import (
    HdfsEnv,
    classpath_problems,
    connect_hadoop,
    ensure_hadoop_classpath,
    leave_signals_to_python,
    native_renames,
)
from .errors import translate_hdfs_error

__all__ = [
    "HdfsEnv",
    "HdfsLocation",
    "HdfsSettings",
    "classpath_problems",
    "connect_hadoop",
    "ensure_hadoop_classpath",
    "hadoop_fs_kwargs",
    "leave_signals_to_python",
    "native_renames",
    "parse_hdfs_url",
    "translate_hdfs_error",
]
__version__ = "0.1.0"
