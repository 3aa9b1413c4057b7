"""Real RocksDB databases (rocksdict) for tests: the one set of DB helpers that the
conformance kit, rbackup's own tests and the crash workers share.

Values are random bytes from a seeded generator: incompressible, so SSTs have
the sizes a test expects, and reproducible, so a test can rebuild what it wrote.
"""
from __future__ import annotations

import os
import random
from typing import Any

import rocksdict

__all__ = ["fill", "ldb_compatible_options", "read_all"]


def ldb_compatible_options() -> rocksdict.Options:
    """Options Debian's ldb 7.8.3 can open: raw mode, block-based format_version 5."""
    opts = rocksdict.Options(raw_mode=True)
    table = rocksdict.BlockBasedOptions()
    table.set_format_version(5)
    opts.set_block_based_table_factory(table)
    opts.create_if_missing(True)
    return opts


def fill(db: Any, n: int, *, prefix: str = "k", value_size: int = 100, seed: int = 0,
         raw: bool = False) -> dict:
    """Write n random (incompressible) values to an open Rdict; return what was written."""
    rng = random.Random(seed)
    written = {}
    for i in range(n):
        key = f"{prefix}{i:08d}"
        value = rng.randbytes(value_size)
        if raw:
            db[key.encode()] = value
        else:
            db[key] = value
        written[key] = value
    return written


def read_all(path: str | os.PathLike, *, raw: bool = False, read_only: bool = False) -> dict:
    """Every key and value of the (closed) DB at `path`; `read_only` never creates or changes it."""
    kwargs: dict[str, Any] = {}
    if raw:
        kwargs["options"] = rocksdict.Options(raw_mode=True)
    if read_only:
        kwargs["access_type"] = rocksdict.AccessType.read_only()
    db = rocksdict.Rdict(os.fspath(path), **kwargs)
    try:
        return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in db.items()}
    finally:
        db.close()
