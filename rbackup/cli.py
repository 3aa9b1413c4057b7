"""`rbackup`: the backup engine from the shell (create, list, verify, restore, delete, purge, copy, gc).

The command is a thin layer over the library: each subcommand opens one
engine (a read-only one for list, verify and restore, so they can never write
to the backup directory), calls one API method and prints the result.  What
it adds is the shell contract: one `rbackup: error: ...` line and a
meaningful exit code for every failure, a tqdm progress bar on terminals, and
Ctrl-C handling that says what an interruption left behind (SIGTERM and SIGHUP, a
service manager stopping the job or its terminal closing, unwind the same way).  Formatting lives
in `cli_format`, which is pure and unit-tested.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

import click

from . import __version__
from .cli_format import (
    LIST_JSON_SCHEMA,
    backends_table,
    backup_json,
    human_size,
    list_json,
    list_table,
    parse_size,
    parse_storage_options,
    verify_json,
    verify_line,
)
from .engine import BackupEngine, BackupEngineReadOnly
from .env.registry import list_backends
from .errors import Aborted, BackupError, Corruption, InvalidArgument, NotFound
from .options import BackupableDBOptions, MiB, Progress, RestoreOptions
from .restore_plan import parse_mode
from .sidecar import LiveDbPath

if TYPE_CHECKING:
    from tqdm import tqdm

    from .restore import VerifyResult

# Imported by the commands that use them, not here: every command pays for what this module
# imports, and a `create` to S3 is measured against s5cmd, which starts in 10 ms.  tqdm only
# draws on a terminal; replicate and retention serve `copy` and `purge`.

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
"""128 + SIGINT, what shells report for a command stopped by Ctrl-C."""

PROGRESS_INTERVAL = MiB
"""Progress callbacks every MiB (the library's default of 4 MiB makes a jerky bar)."""


class Interrupted(Exception):
    """Ctrl-C arrived; the message says what that left behind."""


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived.  It is a KeyboardInterrupt so that it unwinds every
    operation exactly as Ctrl-C does (the attempt's files removed, the writer lock or
    S3 lease released), instead of dying where it stands: a killed writer is crash
    safe too, but its lease would hold the next writer off for `lock_ttl`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _raise_stopped(signum: int, frame: object) -> None:
    # One-shot: a second signal while the first one unwinds kills at once, as an operator
    # sending it twice (or a service manager escalating) means; the directory is crash safe.
    for stop in STOP_SIGNALS:
        if signal.getsignal(stop) is _raise_stopped:  # not one the caller ignores (nohup's SIGHUP)
            signal.signal(stop, signal.SIG_DFL)
    raise Stopped(signum)


@contextlib.contextmanager
def _stop_signals_unwind() -> Iterator[None]:
    """Install the SIGTERM/SIGHUP handler for one command, where the signal still has its
    default meaning (a caller that ignores it, `nohup` for SIGHUP, keeps its choice) and
    where Python allows handlers (the main thread); put back what was there after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = [stop for stop in STOP_SIGNALS if signal.getsignal(stop) is signal.SIG_DFL]
    for stop in ours:
        signal.signal(stop, _raise_stopped)
    try:
        yield
    finally:
        for stop in ours:
            signal.signal(stop, signal.SIG_DFL)


def _stopped_by(exc: BaseException | None) -> Stopped | None:
    """The Stopped an interruption started from, wherever the library wrapped it."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, Stopped):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


# -- plumbing ---------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    """Library messages name the backup, file and URL; keep them on one line."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _print_error(message: str) -> None:
    click.echo(f"rbackup: error: {message}", err=True)


def _is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, also when it landed inside our progress callback, which the
    library reports as Aborted (a callback that raised) caused by KeyboardInterrupt."""
    return isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, Aborted) and isinstance(exc.__cause__, KeyboardInterrupt))


@contextlib.contextmanager
def _interruptible(consequence: str) -> Iterator[None]:
    """Turn Ctrl-C during a long operation into Interrupted(what it left behind)."""
    try:
        yield
    except (KeyboardInterrupt, Aborted) as exc:
        if not _is_interrupt(exc):
            raise
        raise Interrupted(consequence) from exc


class _LineFormatter(logging.Formatter):
    """`rbackup: warning: ...`, in the style of the error line, without tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        return f"rbackup: {record.levelname.lower()}: {record.getMessage()}"


def _configure_logging(verbosity: int) -> None:
    """Warnings only by default: every error reaches the user as the one line the
    command prints, so the library's own ERROR records would only repeat it.
    -v shows INFO (what the engine does), -vv DEBUG (every store request)."""
    handler = logging.StreamHandler(sys.stderr)
    if verbosity:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_LineFormatter())
        handler.addFilter(lambda record: record.levelno < logging.ERROR)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))


def _report_interruption(consequence: str, exc: BaseException) -> int:
    """Print `rbackup: interrupted[: what it left]` and return 130; after SIGTERM or SIGHUP
    `rbackup: stopped by SIGTERM[: ...]` and 128 + the signal, as a shell reports it."""
    stopped = _stopped_by(exc)
    what = f"stopped by {signal.Signals(stopped.signum).name}" if stopped else "interrupted"
    click.echo(f"rbackup: {what}{': ' + consequence if consequence else ''}", err=True)
    return 128 + stopped.signum if stopped else EXIT_INTERRUPTED


def _interrupted(consequence: str, exc: BaseException) -> NoReturn:
    raise click.exceptions.Exit(_report_interruption(consequence, exc)) from exc


def _fail(exc: Exception, verbose: int) -> NoReturn:
    """Report a failed command and exit: 2 for InvalidArgument (a value the user gave
    that can never work), 1 for everything else."""
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, (BackupError, OSError)):
        _print_error(_one_line(exc))
    else:  # a bug: still one line, the traceback is a -v away
        _print_error(f"unexpected {type(exc).__name__}: {_one_line(exc)}"
                     + ("" if verbose else " (rerun with --verbose for the traceback)"))
    raise click.exceptions.Exit(EXIT_USAGE if isinstance(exc, InvalidArgument) else EXIT_FAILED) from exc


def _report_failures(fn: Callable[..., None]) -> Callable[..., None]:
    """The error policy of every command: one `rbackup: error:` line (a traceback
    too with --verbose) and exit 1, or 2 for a value the user gave that can never
    work, or 130 with what was left behind after Ctrl-C."""

    @functools.wraps(fn)
    def run(*args: Any, verbose: int, **kwargs: Any) -> None:
        _configure_logging(verbose)
        try:
            fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, BrokenPipeError):
            raise
        except Interrupted as exc:
            _interrupted(str(exc), exc)
        except KeyboardInterrupt as exc:
            _interrupted("", exc)
        except Exception as exc:
            if _is_interrupt(exc):
                _interrupted("", exc)
            _fail(exc, verbose)

    return click.option("-v", "--verbose", count=True,
                        help="Log what happens (-vv: in detail) and show tracebacks on errors.")(run)


class _Size(click.ParamType):
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _storage_options(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> dict[str, Any] | None:
    try:
        return parse_storage_options(value) or None
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


def _backup_dir_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option(
        "-o", "--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE",
        callback=_storage_options,
        help="Storage option for the backend (repeatable). Dotted keys nest "
             "(client_kwargs.endpoint_url=http://localhost:9000); values are JSON when they parse "
             "(true, 8388608), else strings.")(fn)
    return click.option(
        "--backup-dir", required=True, metavar="URL",
        help="The backup directory: a path, or a URL (file://, s3://bucket/prefix, hdfs://nn:8020/path, "
             "any registered protocol).")(fn)


def _quiet_option(fn: Callable[..., None]) -> Callable[..., None]:
    return click.option("-q", "--quiet", is_flag=True,
                        help="No progress bar and no status lines (errors are still printed).")(fn)


def _options(backup_dir: str, storage_options: dict[str, Any] | None, **overrides: Any) -> BackupableDBOptions:
    return BackupableDBOptions(backup_dir, storage_options=storage_options,
                               callback_trigger_interval_size=PROGRESS_INTERVAL, **overrides)


class ProgressBar:
    """Draws the library's Progress reports as one tqdm bar on stderr: bytes done of
    the total, files done in the postfix, and tqdm's own rate and time left.

    Shown only on a terminal, so logs and pipes never collect carriage-return
    noise; log lines go through tqdm meanwhile so they do not tear the bar.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.last: Progress | None = None
        """The latest report, bar or not: what the operation copied (the library reports after each file)."""
        self._bar: tqdm | None = None
        self._stack = contextlib.ExitStack()

    def __call__(self, progress: Progress) -> None:
        self.last = progress
        if not self.enabled:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = self._stack.enter_context(tqdm(
                total=progress.bytes_total, desc=f"{progress.operation} {progress.backup_id}", unit="B",
                unit_scale=True, unit_divisor=1024, file=sys.stderr, dynamic_ncols=True, leave=True))
        self._bar.set_postfix_str(f"{progress.files_done}/{progress.files_total} files", refresh=False)
        self._bar.update(progress.bytes_done - self._bar.n)

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._stack.enter_context(logging_redirect_tqdm())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _say(quiet: bool, message: str, *, err: bool = False) -> None:
    if not quiet:
        click.echo(message, err=err)


# -- the commands -----------------------------------------------------------------------

_EXIT_CODES = """\b
Exit codes: 0 success; 1 the operation failed (corruption, backup not found,
storage error, lock held); 2 usage error (bad option or value); 130
interrupted by Ctrl-C."""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=_EXIT_CODES)
@click.version_option(__version__, "-V", "--version", prog_name="rbackup", message="%(prog)s %(version)s")
def cli() -> None:
    """Incremental RocksDB backups in RocksDB's own format, on local disk, S3, HDFS
    or any fsspec store (RocksDB's BackupEngine).

    \b
    Examples:
      rbackup create  --db /var/lib/app/rocksdb --backup-dir s3://bucket/app
      rbackup list    --backup-dir s3://bucket/app
      rbackup verify  --backup-dir s3://bucket/app --checksum
      rbackup restore --backup-dir s3://bucket/app --db /restore/here
      rbackup purge   --backup-dir s3://bucket/app --keep-daily 7 --keep-weekly 4
      rbackup copy    --from /backups/app --to s3://offsite/app

    S3 credentials, region and endpoint come from the standard AWS_* environment
    variables and AWS config files, or from -o options (key=..., secret=...,
    endpoint_url=..., client_kwargs.region_name=...).
    """


@cli.command()
@_backup_dir_options
@click.option("--db", "db_path", required=True, type=click.Path(exists=True, file_okay=False),
              help="The DB directory, written by any RocksDB 6.x to 11.x. No process may hold it open (its LOCK "
                   "is held for the backup), unless --live.")
@click.option("--live", is_flag=True,
              help="The DB is open in another process that keeps running: back it up beside it, as RocksDB "
                   "would recover it after a crash at that moment (every write acknowledged before the backup "
                   "started is in it).")
@click.option("--flush", is_flag=True,
              help="Flush memtables before the backup (flush_before_backup). A DB backed up from its path is "
                   "not opened and not flushed; its WAL files are backed up, so no write is lost.")
@click.option("--metadata", help="Application metadata to store with the backup (text).")
@click.option("--rate-limit", type=_Size(), default="0",
              help="Upload at most SIZE bytes per second (e.g. 50M, 1GiB); 0, the default, is unlimited.")
@click.option("--json", "as_json", is_flag=True, help="Print the new backup as a JSON object.")
@_quiet_option
@_report_failures
def create(backup_dir: str, storage_options: dict[str, Any] | None, db_path: str, live: bool, flush: bool,
           metadata: str | None, rate_limit: int, as_json: bool, quiet: bool) -> None:
    """Back up a DB from its directory; print the new backup's id.

    Only files the backup directory does not hold yet are uploaded: unchanged
    SST files are shared with earlier backups. The DB is not opened: its
    MANIFEST says which files are live, and its WAL files are backed up too,
    so the backup holds every write.

    \b
    Examples:
      rbackup create --db /var/lib/app/rocksdb --backup-dir /backups/app
      rbackup create --db /var/lib/app/rocksdb --backup-dir /backups/app --live   # app keeps running
      ID=$(rbackup create --db /data/db --backup-dir s3://bucket/app --metadata "v1.4 nightly")
      rbackup create --db /data/db --backup-dir s3://bucket/app --rate-limit 20M --json
      rbackup create --db /data/db --backup-dir s3://bucket/app \\
          -o client_kwargs.endpoint_url=http://minio:9000
    """
    with BackupEngine(_options(backup_dir, storage_options, backup_rate_limit=rate_limit)) as engine:
        known = {b.backup_id for b in engine.get_backup_info()}
        started = time.monotonic()
        try:
            with ProgressBar(not quiet) as bar:
                source = LiveDbPath(db_path) if live else db_path
                backup_id = engine.create_new_backup(source, flush, app_metadata=metadata, progress_callback=bar)
        except (KeyboardInterrupt, Aborted) as exc:
            if not _is_interrupt(exc):
                raise
            # The library removed what this attempt wrote, unless Ctrl-C came after the commit.
            committed = [b.backup_id for b in engine.get_backup_info() if b.backup_id not in known]
            raise Interrupted(f"backup {committed[-1]} had already been committed; it is complete" if committed
                              else "no backup was created; the backup directory is unchanged") from exc
        info = next((b for b in engine.get_backup_info() if b.backup_id == backup_id), None)
        location = engine.env.describe()
        if info is None:  # another writer deleted or damaged it right after the commit
            raise Corruption(f"backup {backup_id} was committed to {location} but no longer lists as valid: "
                             f"{engine.corruption_reasons().get(backup_id, 'it is gone')}")
    # What an incremental backup cost is what it copied, not the backup's size.
    copied = bar.last.bytes_done if bar.last else 0
    click.echo(json.dumps({"backup_dir": location, **backup_json(info), "bytes_copied": copied}) if as_json
               else str(backup_id))
    _say(quiet, f"created backup {backup_id} in {location}: {info.number_files} files, {human_size(info.size)} "
                f"({human_size(copied)} copied), in {time.monotonic() - started:.1f}s", err=True)


def _require_local_dir(engine: BackupEngine) -> None:
    """A local backup directory that is missing or a file is a mistake (a typo), not an
    empty list: say so, as verify and restore do.  Object stores have no such test."""
    root = engine.env.local_path("")
    if root is not None and not os.path.isdir(root):
        raise NotFound(f"backup directory {root} {'is not a directory' if os.path.exists(root) else 'does not exist'}")


@cli.command(name="list", help=f"""List the backups: id, time (local), size, files and metadata.

    Corrupt backups are listed as CORRUPT with the reason. Metadata is shown as
    text when it is printable UTF-8, else as hex:... . Read-only: nothing in the
    backup directory is written.

    \b
    Examples:
      rbackup list --backup-dir /backups/app
      rbackup list --backup-dir s3://bucket/app --files
      rbackup list --backup-dir s3://bucket/app --json | jq '.backups[-1].id'

    \b
    --json prints one object (file_details only with --files):
{textwrap.indent(LIST_JSON_SCHEMA, "    ")}
    """)
@_backup_dir_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the schema is above).")
@click.option("--files", is_flag=True, help="Also list each backup's files with size and CRC-32C.")
@_report_failures
def list_(backup_dir: str, storage_options: dict[str, Any] | None, as_json: bool, files: bool) -> None:
    with BackupEngineReadOnly(_options(backup_dir, storage_options)) as engine:
        _require_local_dir(engine)
        backups = engine.get_backup_info(include_file_details=files)
        corrupt = engine.corruption_reasons()
        location = engine.env.describe()
    if as_json:
        click.echo(json.dumps(list_json(location, backups, corrupt), indent=2))
    elif backups or corrupt:
        click.echo(list_table(backups, corrupt))
    else:
        click.echo(f"no backups in {location}")


@cli.command()
@_backup_dir_options
@click.option("--backup-id", type=int, metavar="N", help="Verify this backup only (default: every backup).")
@click.option("--checksum", is_flag=True,
              help="Check every file's CRC-32C, from the store's own checksum where the store has shown it checks "
                   "them (S3 stores that refuse a wrong one), else by reading the file back (default: check "
                   "presence and sizes).")
@click.option("--read-back", is_flag=True, help="With --checksum: read every file back, even where the store keeps "
                                                 "a checksum (also finds damage inside the store since the upload).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: {backup_dir, backups: [{id, ok, error | files, with_checksum, "
                   "from_store_checksum, downloaded, bytes_downloaded}]}.")
@_quiet_option
@_report_failures
def verify(backup_dir: str, storage_options: dict[str, Any] | None, backup_id: int | None, checksum: bool,
           read_back: bool, as_json: bool, quiet: bool) -> None:
    """Check that backups are intact; exit 1 if any is not.

    Without --checksum each file of the backup must exist with its recorded
    size; with it, each file's CRC-32C is compared too: the store's own CRC-32C
    of the object where the store has shown it checks the ones it is sent (no
    download), else the file is read back. Each backup's line says how many were
    checked each way. Every backup is checked and each failure reported. Read-only.

    \b
    Examples:
      rbackup verify --backup-dir /backups/app
      rbackup verify --backup-dir s3://bucket/app --backup-id 12 --checksum
      rbackup verify --backup-dir s3://bucket/app --checksum --read-back --json
    """
    quiet = quiet or as_json
    with BackupEngineReadOnly(_options(backup_dir, storage_options)) as engine:
        ids = [backup_id] if backup_id is not None else sorted(
            [b.backup_id for b in engine.get_backup_info()] + engine.get_corrupted_backups())
        if not ids:
            raise NotFound(f"no backups to verify in {engine.env.describe()}")
        outcomes: list[VerifyResult | tuple[int, str]] = []
        for i in ids:
            try:
                with _interruptible(f"verification of backup {i} did not finish"), ProgressBar(not quiet) as bar:
                    result = engine.verify_backup(i, checksum, progress_callback=bar, read_back=read_back)
            except BackupError as exc:
                if backup_id is not None and not as_json:
                    raise
                if not as_json:
                    _print_error(_one_line(exc))
                outcomes.append((i, _one_line(exc)))
                continue
            outcomes.append(result)
            _say(quiet, verify_line(result))
        if as_json:
            click.echo(json.dumps(verify_json(engine.env.describe(), outcomes), indent=2))
    if any(isinstance(o, tuple) for o in outcomes):
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.command()
@_backup_dir_options
@click.option("--db", "db_dir", required=True, type=click.Path(file_okay=False),
              help="Where to restore the DB; files already there are deleted first, as RocksDB's restore does.")
@click.option("--wal-dir", type=click.Path(file_okay=False), help="Where to put the WAL files (default: --db).")
@click.option("--backup-id", type=int, metavar="N", help="The backup to restore (default: the latest valid one).")
@click.option("--keep-log-files", is_flag=True,
              help="Keep the WAL files already in the WAL directory (for backups made without WAL files).")
@click.option("--mode", type=click.Choice(["full", "keep-latest", "verify", "keep-latest+verify"]), default="full",
              show_default=True,
              help="Incremental restore: keep SST files already in --db that are the backup's own, judged by "
                   "DB session id and size (keep-latest) or by CRC-32C (verify); copy the rest. full copies all.")
@click.option("--rate-limit", type=_Size(), default="0",
              help="Download at most SIZE bytes per second (e.g. 50M); 0, the default, is unlimited.")
@_quiet_option
@_report_failures
def restore(backup_dir: str, storage_options: dict[str, Any] | None, db_dir: str, wal_dir: str | None,
            backup_id: int | None, keep_log_files: bool, mode: str, rate_limit: int, quiet: bool) -> None:
    """Restore a backup into a DB directory. Read-only on the backup directory.

    Every file is checked (size and CRC-32C) as it arrives, and the DB's CURRENT
    file is written last: a restore that fails or is interrupted leaves a DB
    that RocksDB refuses to open, never one with partial data.

    \b
    Examples:
      rbackup restore --backup-dir /backups/app --db /var/lib/app/rocksdb
      rbackup restore --backup-dir s3://bucket/app --db /restore/here --backup-id 12
      rbackup restore --backup-dir s3://bucket/app --db /data/db --wal-dir /fast/wal
      rbackup restore --backup-dir s3://bucket/app --db /data/db --mode keep-latest
    """
    with BackupEngineReadOnly(_options(backup_dir, storage_options, restore_rate_limit=rate_limit)) as engine:
        if backup_id is None:  # resolved here rather than by restore_db_from_latest_backup, to report the id
            valid = engine.get_backup_info()
            if not valid:
                raise NotFound(f"no valid backup to restore in {engine.env.describe()}")
            backup_id = valid[-1].backup_id
        with _interruptible(f"the restore of backup {backup_id} into {db_dir} did not finish; the DB there "
                            "is incomplete and will not open until a restore completes"), \
                ProgressBar(not quiet) as bar:
            engine.restore_db_from_backup(backup_id, db_dir, wal_dir,
                                          RestoreOptions(keep_log_files=keep_log_files, mode=parse_mode(mode)),
                                          progress_callback=bar)
    _say(quiet, f"restored backup {backup_id} into {db_dir}")


_LEFTOVERS = "the backup directory is consistent; 'rbackup gc' removes any files left behind"


@cli.command()
@_backup_dir_options
@click.option("--backup-id", type=int, required=True, metavar="N", help="The backup to delete.")
@_quiet_option
@_report_failures
def delete(backup_dir: str, storage_options: dict[str, Any] | None, backup_id: int, quiet: bool) -> None:
    """Delete one backup (valid or corrupt); files other backups share stay.

    \b
    Example:
      rbackup delete --backup-dir s3://bucket/app --backup-id 3
    """
    with BackupEngine(_options(backup_dir, storage_options)) as engine, _interruptible(_LEFTOVERS):
        engine.delete_backup(backup_id)
    _say(quiet, f"deleted backup {backup_id}")


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    from .retention import parse_duration

    try:
        return None if value is None else parse_duration(value)
    except InvalidArgument as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc


_KEEP_COUNT = click.IntRange(min=-1)


@cli.command()
@_backup_dir_options
@click.option("--keep", type=click.IntRange(min=0), metavar="N",
              help="Keep the newest N valid backups (by id); cannot be combined with the --keep-* rules.")
@click.option("--keep-last", type=_KEEP_COUNT, default=0, metavar="N", help="Keep the newest N backups.")
@click.option("--keep-hourly", type=_KEEP_COUNT, default=0, metavar="N",
              help="Keep the newest backup of each of the last N hours that have one.")
@click.option("--keep-daily", type=_KEEP_COUNT, default=0, metavar="N", help="... of the last N days.")
@click.option("--keep-weekly", type=_KEEP_COUNT, default=0, metavar="N", help="... of the last N ISO weeks.")
@click.option("--keep-monthly", type=_KEEP_COUNT, default=0, metavar="N", help="... of the last N months.")
@click.option("--keep-yearly", type=_KEEP_COUNT, default=0, metavar="N", help="... of the last N years.")
@click.option("--keep-within", callback=_duration, metavar="DURATION",
              help="Keep every backup younger than DURATION (e.g. 30d, 2w, 1w12h) measured from the newest.")
@click.option("--tz", metavar="ZONE", help="Time zone for periods (IANA name, e.g. Europe/Berlin); default UTC.")
@click.option("--dry-run", is_flag=True, help="Only show what would be deleted and why each kept backup is kept.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON: {policy, keep, remove, dry_run}.")
@_quiet_option
@_report_failures
def purge(backup_dir: str, storage_options: dict[str, Any] | None, keep: int | None, keep_last: int,
          keep_hourly: int, keep_daily: int, keep_weekly: int, keep_monthly: int, keep_yearly: int,
          keep_within: timedelta | None, tz: str | None, dry_run: bool, as_json: bool, quiet: bool) -> None:
    """Delete old backups: the oldest beyond the newest N (--keep N), or those a
    retention policy does not keep (restic's rules).

    Each --keep-* rule keeps the newest backup of each period, for the last N
    periods that have a backup (-1: all of them); a backup kept by any rule is
    kept. At least one rule is required. Corrupt backups are not touched.

    \b
    Examples:
      rbackup purge --backup-dir s3://bucket/app --keep 7
      rbackup purge --backup-dir s3://bucket/app --keep-daily 7 --keep-weekly 4 --keep-monthly 12
      rbackup purge --backup-dir /backups/app --keep-last 3 --keep-within 2w --tz Europe/Berlin --dry-run
    """
    from .retention import RetentionPolicy

    counts = (keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly)
    policy_plan: RetentionPolicy | None = None
    if keep is not None:
        if any(counts) or keep_within is not None or tz is not None:
            raise click.UsageError("--keep cannot be combined with --keep-* rules or --tz")
    else:  # no rule at all: InvalidArgument, nothing deleted
        policy_plan = RetentionPolicy(*counts, keep_within=keep_within, tz=tz)
    engine_type = BackupEngineReadOnly if dry_run else BackupEngine
    with engine_type(_options(backup_dir, storage_options)) as engine, _interruptible(_LEFTOVERS):
        location = engine.env.describe()
        before = [b.backup_id for b in engine.get_backup_info()]
        if policy_plan is None:
            assert keep is not None
            doomed = before[:max(0, len(before) - keep)]
            if not dry_run:
                engine.purge_old_backups(keep)
            doc: dict[str, Any] = {"policy": {"keep": keep}, "keep": [{"id": i} for i in before if i not in doomed],
                                   "remove": [{"id": i} for i in doomed]}
        else:
            plan = engine.purge_by_policy(policy_plan, dry_run=dry_run)
            doomed, doc = plan.remove, plan.to_json()
        # A store may refuse some deletions (S3 Object Lock): report what really went.
        remaining = set(before) if dry_run else {b.backup_id for b in engine.get_backup_info()}
    deleted = doomed if dry_run else [i for i in before if i not in remaining]
    refused = [i for i in doomed if i in remaining and not dry_run]
    if as_json:
        click.echo(json.dumps({"backup_dir": location, "dry_run": dry_run, **doc, "not_deleted": refused}, indent=2))
    elif dry_run and not quiet:
        for item in doc["keep"]:
            why = ", ".join(item.get("reasons", [f"newest {keep}"]))
            click.echo(f"keep   {item['id']:>6}  {why}")
        for item in doc["remove"]:
            click.echo(f"remove {item['id']:>6}")
    if refused:  # not a failure: an immutable store keeps them until their retention ends
        click.echo(f"rbackup: warning: backups {', '.join(map(str, refused))} were not deleted: the store "
                   "keeps them (e.g. S3 Object Lock retention); purge again once it has passed", err=True)
    if not as_json:
        verb = "would delete" if dry_run else "deleted"
        _say(quiet, f"{verb} backups {', '.join(map(str, deleted))}" if deleted
             else f"nothing to delete: {len(before)} backups, "
                  + (f"keeping {keep}" if keep is not None else "all kept by the policy"))


@cli.command()
@click.option("--from", "source", required=True, metavar="URL", help="The backup directory to copy from.")
@click.option("--to", "destination", required=True, metavar="URL", help="The backup directory to copy to.")
@click.option("--from-option", "source_options", multiple=True, metavar="KEY=VALUE", callback=_storage_options,
              help="Storage option for the source (repeatable; as -o of the other commands).")
@click.option("--to-option", "destination_options", multiple=True, metavar="KEY=VALUE",
              callback=_storage_options, help="Storage option for the destination (repeatable).")
@click.option("--backup-id", "backup_ids", type=int, multiple=True, metavar="N",
              help="Copy this backup (repeatable; default: every valid backup).")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as a JSON object.")
@_quiet_option
@_report_failures
def copy(source: str, destination: str, source_options: dict[str, Any] | None,
         destination_options: dict[str, Any] | None, backup_ids: tuple[int, ...], as_json: bool, quiet: bool) -> None:
    """Copy backups to another backup directory (any store to any store).

    Incremental (shared files the destination already holds are not sent),
    every file's CRC-32C checked on the way, each backup's meta file written
    last; run it again after an interruption and it resumes. Nothing is ever
    deleted or replaced at the destination, which stays in RocksDB's format.

    \b
    Examples:
      rbackup copy --from /backups/app --to s3://offsite/app
      rbackup copy --from s3://bucket/app --to /mnt/usb/app --backup-id 12 --backup-id 13
      rbackup copy --from /backups/app --to s3://offsite/app --to-option encryption_key_file=/etc/app.key
    """
    from .replicate import copy_backups

    with ProgressBar(not quiet) as bar, _interruptible(
            "the copy did not finish; backups already committed at the destination are complete, and running "
            "the same copy again resumes without sending the files already there"):
        report = copy_backups(source, destination, backup_ids or None, source_storage_options=source_options,
                              destination_storage_options=destination_options, progress_callback=bar)
    if as_json:
        click.echo(json.dumps({"from": source, "to": destination, **asdict(report)}, indent=2))
        return
    for backup_id, reason in report.skipped_corrupt.items():
        _print_error(f"backup {backup_id} not copied: corrupt in the source ({' '.join(reason.split())})")
    present = f"{len(report.already_present)} backups already there"
    if report.copied:
        _say(quiet, f"copied backups {', '.join(map(str, report.copied))}: {report.files_copied} files, "
                    f"{human_size(report.bytes_copied)} sent; {report.files_reused} shared files already there, "
                    f"{report.files_resumed} resumed from an earlier run; {present}")
    else:
        _say(quiet, f"nothing to copy: {present}")
    if report.skipped_corrupt:
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.command()
@_backup_dir_options
@_quiet_option
@_report_failures
def gc(backup_dir: str, storage_options: dict[str, Any] | None, quiet: bool) -> None:
    """Remove files no valid backup needs (left by interrupted or failed operations,
    or belonging to corrupt backups).

    \b
    Example:
      rbackup gc --backup-dir s3://bucket/app
    """
    with BackupEngine(_options(backup_dir, storage_options)) as engine, _interruptible(_LEFTOVERS):
        engine.garbage_collect()
        location = engine.env.describe()
    _say(quiet, f"garbage collection of {location} done")


@cli.command()
@_report_failures
def backends() -> None:
    """List the installed storage backends and their capabilities.

    Backends are plug-ins registered under the entry point group
    rbackup.backends. A URL whose protocol has none is served by the generic
    fsspec backend, with conservative capabilities, if fsspec knows it.

    \b
    Example:
      rbackup backends
    """
    click.echo(backends_table(list_backends()))


if __name__ == "__main__":
    # `python -m rbackup.cli`: this copy of the module is __main__, and cli_read would import a
    # second, half-made rbackup.cli; run the real module's main instead.
    from rbackup.__main__ import run

    run()

from .cli_read import get, inspect, scan  # noqa: E402  (they use the helpers above)

for _command in (inspect, get, scan):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: run one command and return its exit code.

    click runs in non-standalone mode so that usage errors, like every other
    failure, come out as one `rbackup: error:` line.
    """
    try:
        with _stop_signals_unwind():
            return cli.main(args=argv, prog_name="rbackup", standalone_mode=False) or 0
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _print_error(f"{exc.format_message().rstrip('.')}{hint}")
        return exc.exit_code
    except click.ClickException as exc:
        _print_error(exc.format_message())
        return exc.exit_code
    except click.Abort as exc:  # Ctrl-C (or SIGTERM) while click itself was parsing
        return _report_interruption("", exc)
    except BrokenPipeError:  # `rbackup list | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail
        return EXIT_FAILED

