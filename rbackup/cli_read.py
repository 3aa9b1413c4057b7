"""`rbackup inspect`, `get` and `scan`: read a backup's keys without restoring it.

Each opens the backup read-only in place (`BackupEngineReadOnly.open_backup`):
on local disk through a temporary view of links, on remote stores through the
local cache (`--cache-dir`), and never writes to the backup directory.
Registered on the `rbackup` group by `cli.py`.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from .cli import _backup_dir_options, _options, _report_failures
from .cli_format import human_size, render_table
from .engine import BackupEngine, BackupEngineReadOnly
from .errors import NotFound

if TYPE_CHECKING:  # the engine imports it when a backup is opened; `rbackup create` never does
    from .backup_db import BackupDB

__all__ = ["get", "inspect", "scan"]


def _open_options(fn: Any) -> Any:
    fn = click.option("--cache-dir", type=click.Path(file_okay=False),
                      help="Where files of a remote backup are cached between opens (default "
                           "~/.cache/rbackup/open).")(fn)
    return click.option("--backup-id", type=int, metavar="N",
                        help="The backup to read (default: the latest valid one).")(fn)


def _open(engine: BackupEngine, backup_id: int | None, cache_dir: str | None) -> BackupDB:
    if backup_id is None:
        backup_id = engine.get_latest_backup_info().backup_id
    return engine.open_backup(backup_id, cache_dir=cache_dir)


def _key(db: BackupDB, text: str, as_hex: bool) -> Any:
    """Raw DBs (RocksDB's own) have bytes keys; rocksdict DBs the Python keys they were written with."""
    if as_hex:
        return bytes.fromhex(text)
    return text.encode() if db.raw_mode else text


def _show(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            text = bytes(value).decode("utf-8")
            if text.isprintable():
                return text
        except UnicodeDecodeError:
            pass
        return "hex:" + bytes(value).hex()
    return str(value)


def inspect_report(db: BackupDB) -> dict[str, Any]:
    """Estimated keys per column family, and SST files and bytes per LSM level (all families:
    rocksdict's live_files does not say which family a file belongs to)."""
    levels: dict[int, dict[str, int]] = {}
    for f in db.live_files():
        level = levels.setdefault(f["level"], {"files": 0, "bytes": 0, "entries": 0})
        level["files"] += 1
        level["bytes"] += f["size"]
        level["entries"] += f["num_entries"]
    families = {}
    for name in db.column_families:
        handle = db if name == "default" else db.get_column_family(name)
        families[name] = {"estimated_keys": handle.property_int_value("rocksdb.estimate-num-keys") or 0}
    return {"backup_id": db.backup_id, "raw_mode": db.raw_mode, "column_families": families,
            "levels": {str(k): levels[k] for k in sorted(levels)}}


@click.command()
@_backup_dir_options
@_open_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@_report_failures
def inspect(backup_dir: str, storage_options: dict[str, Any] | None, backup_id: int | None, cache_dir: str | None,
            as_json: bool) -> None:
    """Show a backup's column families, estimated key counts and size per level, without restoring it.

    \b
    Examples:
      rbackup inspect --backup-dir /backups/app --backup-id 3
      rbackup inspect --backup-dir s3://bucket/app --json
    """
    with BackupEngineReadOnly(_options(backup_dir, storage_options)) as engine, \
            _open(engine, backup_id, cache_dir) as db:
        report = inspect_report(db)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"backup {report['backup_id']}{' (raw mode: bytes keys)' if report['raw_mode'] else ''}")
    for name, cf in report["column_families"].items():
        click.echo(f"column family {name}: ~{cf['estimated_keys']} keys")
    rows = [[f"L{level}", str(v["files"]), human_size(v["bytes"]), str(v["entries"])]
            for level, v in report["levels"].items()]
    if rows:
        click.echo(render_table(["LEVEL", "FILES", "SIZE", "ENTRIES"], rows, right=(1, 2, 3)))


@click.command()
@_backup_dir_options
@_open_options
@click.option("--cf", "column_family", default="default", show_default=True, help="Column family.")
@click.option("--hex", "as_hex", is_flag=True, help="KEY is hex-encoded bytes.")
@click.argument("key")
@_report_failures
def get(backup_dir: str, storage_options: dict[str, Any] | None, backup_id: int | None, cache_dir: str | None,
        column_family: str, as_hex: bool, key: str) -> None:
    """Print the value of KEY in a backup (exit 1 if it is absent).

    Values print as text when they are printable UTF-8, else as hex:... .

    \b
    Example:
      rbackup get --backup-dir /backups/app --backup-id 3 user:42
    """
    with BackupEngineReadOnly(_options(backup_dir, storage_options)) as engine, \
            _open(engine, backup_id, cache_dir) as db:
        handle = db if column_family == "default" else db.get_column_family(column_family)
        value = handle.get(_key(db, key, as_hex))
        if value is None:
            raise NotFound(f"key {key!r} not found in column family {column_family} of backup {db.backup_id}")
        click.echo(_show(value))


@click.command()
@_backup_dir_options
@_open_options
@click.option("--cf", "column_family", default="default", show_default=True, help="Column family.")
@click.option("--prefix", default="", help="Only keys starting with this (text; raw DBs: its UTF-8 bytes).")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True,
              help="At most this many keys (0: all).")
@_report_failures
def scan(backup_dir: str, storage_options: dict[str, Any] | None, backup_id: int | None, cache_dir: str | None,
         column_family: str, prefix: str, limit: int) -> None:
    """Print a backup's keys and values in key order, one `key<TAB>value` line each.

    \b
    Example:
      rbackup scan --backup-dir s3://bucket/app --prefix user: --limit 10
    """
    with BackupEngineReadOnly(_options(backup_dir, storage_options)) as engine, \
            _open(engine, backup_id, cache_dir) as db:
        handle = db if column_family == "default" else db.get_column_family(column_family)
        start = _key(db, prefix, False) if prefix else None
        shown = 0
        for k, v in handle.items(from_key=start) if start is not None else handle.items():
            if prefix and not _show(k).startswith(prefix):
                break
            click.echo(f"{_show(k)}\t{_show(v)}")
            shown += 1
            if limit and shown >= limit:
                break
