"""Pure helpers of the `rbackup` command: parsing its arguments and shaping its output.

Nothing here touches storage, the terminal or the clock, so every rule the
command line promises (how `-o` keys nest, what a size like `10M` means, the
JSON schema of `rbackup list --json`, how metadata is shown) is unit-tested
without running the command.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .options import BackupInfo

if TYPE_CHECKING:
    from .env.base import Capabilities
    from .env.registry import BackendInfo
    from .restore import VerifyResult

# -- arguments -------------------------------------------------------------------------


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """`-o KEY=VALUE` pairs -> the nested `storage_options` dict a backend takes.

    Dotted keys nest (`client_kwargs.endpoint_url=http://h:9000` ->
    `{"client_kwargs": {"endpoint_url": "http://h:9000"}}`), because s3fs and
    friends take nested keyword dicts.  A value is JSON when it parses as JSON
    (`true`, `16777216`, `{"a": 1}`), a string otherwise; quote it
    (`'key="123"'`) to keep a numeric-looking value a string.  A repeated key
    overrides the earlier one; a key that is both a value and a parent is an
    error.  Errors never echo a value: values may be secrets.
    """
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ValueError("storage options are KEY=VALUE; one has no '='")
        parts = key.strip().split(".")
        if any(not p for p in parts):
            raise ValueError(f"invalid storage option key {key!r}: empty component")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"storage option {key!r} conflicts with {'.'.join(parts[:depth + 1])!r}, "
                                 "which has a value")
            node = child
        value = _json_or_str(raw)
        existing = node.get(parts[-1])
        if isinstance(existing, dict):
            if not isinstance(value, dict):
                raise ValueError(f"storage option {key!r} conflicts with the nested options under it")
            existing.update(value)
        else:
            node[parts[-1]] = value
    return result


def _json_or_str(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """A byte count as people write it: `1048576`, `512K`, `10M`, `1.5GiB` (powers of
    1024, as rsync and dd read them), `10MB` (powers of 1000, the SI reading)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 1048576, 512K, 10MiB, 10MB, 1.5G)")
    number, prefix, binary, byte = match.groups()
    base = 1000 if byte and not binary and prefix else 1024
    return int(float(number) * base ** _POWERS[prefix.lower()])


# -- values ----------------------------------------------------------------------------


def human_size(n: int) -> str:
    """`1536` -> `1.5 KiB`: sizes in tables are read, not parsed (JSON has the bytes)."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def iso_utc(timestamp: int) -> str:
    """`2024-05-01T12:00:00Z`: one unambiguous spelling for machines."""
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def local_time(timestamp: int, tz: _dt.tzinfo | None = None) -> str:
    """For people: their own time zone (`tz` None), named so it is never ambiguous."""
    moment = _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).astimezone(tz)
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").rstrip()


def metadata_text(metadata: bytes) -> str | None:
    """The app metadata as text when it is UTF-8, else None (JSON then has only the hex)."""
    try:
        return metadata.decode("utf-8")
    except UnicodeDecodeError:
        return None


def metadata_display(metadata: bytes) -> str:
    """Table cell for app metadata: the text when it is printable UTF-8, else `hex:...`,
    so that binary metadata cannot garble the terminal or the table."""
    text = metadata_text(metadata)
    if text is not None and text.isprintable():
        return text
    return f"hex:{metadata.hex()}"


# -- rbackup list ----------------------------------------------------------------------

LIST_JSON_SCHEMA = """\
{"backup_dir": STR,
 "backups": [{"id": INT, "timestamp": INT (Unix seconds), "time": STR (ISO-8601 UTC),
              "size": INT (bytes), "files": INT, "metadata": STR (UTF-8 text) or null,
              "metadata_hex": STR,
              "file_details": [{"path": STR, "size": INT, "crc32c": INT or null}]  (--files only),
              "excluded_files": [STR]  (--files only, when the backup excludes files)}],
 "corrupt": [{"id": INT, "reason": STR}]}"""
"""The stable shape of `rbackup list --json`, shown in --help and docs/cli.md."""


def backup_json(info: BackupInfo) -> dict[str, Any]:
    """One entry of "backups" (file details when `info` was loaded with them)."""
    entry: dict[str, Any] = {
        "id": info.backup_id,
        "timestamp": info.timestamp,
        "time": iso_utc(info.timestamp),
        "size": info.size,
        "files": info.number_files,
        "metadata": metadata_text(info.app_metadata),
        "metadata_hex": info.app_metadata.hex(),
    }
    if info.files is not None:
        entry["file_details"] = [{"path": f.relative_filename, "size": f.size, "crc32c": f.crc32c}
                                 for f in info.files]
    if info.excluded_files:
        entry["excluded_files"] = list(info.excluded_files)
    return entry


def list_json(backup_dir: str, backups: Sequence[BackupInfo], corrupt: dict[int, str]) -> dict[str, Any]:
    """The document `rbackup list --json` prints (LIST_JSON_SCHEMA)."""
    return {
        "backup_dir": backup_dir,
        "backups": [backup_json(b) for b in backups],
        "corrupt": [{"id": i, "reason": corrupt[i]} for i in sorted(corrupt)],
    }


def verify_line(result: VerifyResult) -> str:
    """`rbackup verify`'s line for a backup that passed, saying how its files were checked."""
    if not result.with_checksum:
        return f"backup {result.backup_id}: ok (files and sizes verified)"
    unchecked = result.files - result.from_store_checksum - result.downloaded
    how = [f"{result.from_store_checksum} from the store's CRC-32C",
           f"{result.downloaded} read back ({human_size(result.bytes_downloaded)})"]
    if unchecked:
        how.append(f"{unchecked} without a recorded CRC-32C, size only")
    return f"backup {result.backup_id}: ok (checksums verified: {', '.join(how)})"


def verify_json(backup_dir: str, outcomes: Sequence[VerifyResult | tuple[int, str]]) -> dict[str, Any]:
    """The document `rbackup verify --json` prints: per backup, how it was checked or why it failed."""
    backups: list[dict[str, Any]] = []
    for o in outcomes:
        if isinstance(o, tuple):
            backups.append({"id": o[0], "ok": False, "error": o[1]})
        else:
            backups.append({"id": o.backup_id, "ok": True, "files": o.files, "with_checksum": o.with_checksum,
                            "from_store_checksum": o.from_store_checksum, "downloaded": o.downloaded,
                            "bytes_downloaded": o.bytes_downloaded})
    return {"backup_dir": backup_dir, "backups": backups}


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; `right` lists right-aligned columns (numbers).
    The last column is not padded, so long metadata or reasons do not drag trailing blanks."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            cell = str(cell)
            if i == len(cells) - 1 and i not in right:
                out.append(cell)
            else:
                out.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return "\n".join(line(r) for r in [headers, *rows])


def list_table(backups: Sequence[BackupInfo], corrupt: dict[int, str], tz: _dt.tzinfo | None = None) -> str:
    """The readable `rbackup list`: one row per backup in id order, corrupt ones
    in place with their reason; file lines under each backup loaded with details."""
    rows: list[tuple[int, list[str]]] = []
    for b in backups:
        rows.append((b.backup_id, [str(b.backup_id), local_time(b.timestamp, tz), human_size(b.size),
                                   str(b.number_files), metadata_display(b.app_metadata)]))
    for i, reason in corrupt.items():
        rows.append((i, [str(i), "CORRUPT", "-", "-", reason]))
    rows.sort(key=lambda r: r[0])
    table = render_table(["ID", "TIME", "SIZE", "FILES", "METADATA"], [cells for _, cells in rows],
                         right=(0, 2, 3))
    by_id = {b.backup_id: b for b in backups}
    if not any(b.files is not None for b in backups):
        return table
    lines = table.split("\n")
    out = [lines[0]]
    for (backup_id, _), line in zip(rows, lines[1:], strict=True):
        out.append(line)
        info = by_id.get(backup_id)
        if info is not None and info.files is not None:
            out.extend("    " + f for f in file_lines(info).split("\n") if f)
    return "\n".join(out)


def file_lines(info: BackupInfo) -> str:
    """A backup's files as an aligned block: path, size, CRC-32C in hex (as checksum tools print it)."""
    rows = [[f.relative_filename, human_size(f.size), "-" if f.crc32c is None else f"crc32c {f.crc32c:08x}"]
            for f in info.files or ()]
    rows += [[path, "-", "excluded"] for path in info.excluded_files or ()]
    if not rows:
        return ""
    return render_table(["FILE", "SIZE", "CHECKSUM"], rows, right=(1,))


# -- rbackup backends ------------------------------------------------------------------


def _capability_cells(caps: Capabilities | None) -> list[str]:
    if caps is None:
        return ["?"] * 5
    yes_no = ["yes" if v else "no" for v in (caps.atomic_rename, caps.conditional_create, caps.durable_sync,
                                             caps.directories)]
    return [*yes_no, str(caps.concurrency)]


def backends_table(backends: Sequence[BackendInfo]) -> str:
    """Registered backends and what each store promises (a broken plug-in shows its error)."""
    rows = [[b.protocol, b.distribution or "?", *_capability_cells(b.capabilities),
             b.target if b.error is None else f"{b.target}: failed to load: {b.error}"] for b in backends]
    return render_table(["PROTOCOL", "PACKAGE", "ATOMIC-RENAME", "CONDITIONAL-CREATE", "DURABLE-SYNC",
                         "DIRECTORIES", "CONCURRENCY", "CLASS"], rows, right=(6,))
