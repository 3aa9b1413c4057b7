"""RocksDB 11.1.2's own BackupEngine (`rbpeer`, ../shared/tools/rocksdb11/) as a test peer.

Found through `$RBACKUP_RBPEER`, else as `shared/tools/rocksdb11/rbpeer` beside the repository or any
directory above it (CI has ../shared beside the clone).  Tests that need it skip, saying so, where it
is absent.  Its first call installs the wheel it runs on (~30 s, cached).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest


def find_rbpeer() -> str | None:
    configured = os.environ.get("RBACKUP_RBPEER")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for parent in Path(__file__).resolve().parents[1:]:
        candidate = parent / "shared" / "tools" / "rocksdb11" / "rbpeer"
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


RBPEER = find_rbpeer()
needs_rbpeer = pytest.mark.skipif(RBPEER is None, reason="rbpeer (RocksDB 11.1.2's BackupEngine, "
                                  "../shared/tools/rocksdb11/) not found; set RBACKUP_RBPEER")


def peer(*args: str, fail: bool = False, timeout: float = 300) -> dict:
    """Run rbpeer; its JSON answer (or, with fail=True, assert it failed and return its message)."""
    assert RBPEER is not None
    proc = subprocess.run([RBPEER, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if fail:
        assert proc.returncode != 0, f"rbpeer {' '.join(args)} succeeded: {proc.stdout}"
        return {"error": proc.stderr}
    assert proc.returncode == 0, f"rbpeer {' '.join(args)} failed: {proc.stderr}{proc.stdout}"
    return json.loads(proc.stdout)


def peer_dump(db_dir: str, out: Path) -> list[str]:
    """Every key and value of every column family, as RocksDB 11 reads them (read-only open: it may
    write a LOG into `db_dir`, so never dump a DB whose bytes a test compares)."""
    peer("dump", db_dir, str(out))
    return out.read_text().splitlines()
