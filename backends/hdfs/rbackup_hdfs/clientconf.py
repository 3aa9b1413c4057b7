"""The Hadoop client settings rbackup changes from Hadoop's defaults, unless the configuration sets them.

Closing a file written to HDFS asks the NameNode to complete it, and the NameNode refuses until a
DataNode has reported the file's last block (its incremental block report, sent on its own schedule
right after the write pipeline's last acknowledgement, which the client already holds).  The client
then sleeps `dfs.client.block.write.locateFollowingBlock.initial.delay.ms`, 400 ms by default, and
asks again, doubling the sleep each time.  The close usually races that report and often loses: on
the test MiniDFSCluster 3-7% of the closes of 300-byte files and 30-70% of those of 8 MiB files took
~410 ms instead of 15-25 ms, more than all the other requests of a backup together.  Starting at
25 ms (still doubling) with 10 retries instead of 5 asks sooner yet waits longer in all before a close
fails for want of replicas (25.6 s against 12.4 s), for at most 5 more requests in that rare case.
Adding a block to a file (`locateFollowingBlock`, files over one block) retries under the same keys.

A key set in the client configuration files libhdfs loads (core-site.xml, hdfs-site.xml in a
directory on CLASSPATH) or in `extra_conf` is left as it is set there.
"""
from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Collection, Mapping

log = logging.getLogger(__name__)

TUNED: Mapping[str, str] = {
    "dfs.client.block.write.locateFollowingBlock.initial.delay.ms": "25",
    "dfs.client.block.write.locateFollowingBlock.retries": "10",
}
"""Hadoop client keys rbackup sets where the configuration does not (Hadoop's defaults: 400, 5)."""

SITE_FILES = ("core-site.xml", "hdfs-site.xml")


def site_keys(environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """The keys the client's core-site.xml and hdfs-site.xml set: of each file, the first found in a
    directory on CLASSPATH (Hadoop's Configuration loads the first resource of that name on its
    class path, and libhdfs reads the configuration only from there).  A file that cannot be read or
    parsed counts as setting nothing: libhdfs will complain about it itself."""
    dirs = [e for e in environ.get("CLASSPATH", "").split(os.pathsep) if e and not e.endswith("*")]
    keys: set[str] = set()
    for name in SITE_FILES:
        path = next((os.path.join(d, name) for d in dirs if os.path.isfile(os.path.join(d, name))), None)
        if path is None:
            continue
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as exc:
            log.debug("could not read %s: %s", path, exc)
            continue
        keys.update(n.text.strip() for n in root.iter("name") if n.text)
    return frozenset(keys)


def client_conf(extra_conf: Mapping[str, str], configured: Collection[str]) -> dict[str, str]:
    """The configuration handed to libhdfs: `TUNED` without the keys the site files set, then the
    user's `extra_conf` over it."""
    return {**{k: v for k, v in TUNED.items() if k not in configured}, **extra_conf}
