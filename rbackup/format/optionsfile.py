"""Reading and retargeting RocksDB OPTIONS files (pure: bytes in, bytes out, no I/O).

Why this exists: an OPTIONS file names absolute directories of the DB that wrote
it (`wal_dir`, `db_log_dir`, and in principle `db_paths` / `cf_paths`), and
RocksDB's backup and restore copy it verbatim.  A restored copy opened with its
own options would then read and write the *source's* WAL directory.  A restore
therefore retargets those options at the restore target, and a backup by path
reads `wal_dir` to find the WALs; both need to read the file the way RocksDB's
`RocksDBOptionsParser` does and change only the lines that must change, so that
RocksDB (and `ldb`) keep reading everything else exactly as written, including
options of a newer RocksDB this module has never heard of.

The format (RocksDB's options_parser.cc): lines trimmed of whitespace; `#`
starts a comment unless escaped as `\\#`; `[Title]` or `[Title "argument"]`
opens a section (`[Version]`, `[DBOptions]`, `[CFOptions "cf"]`,
`[TableOptions/BlockBasedTable "cf"]`); every other line is `name=value`.
Values are escaped by EscapeOptionString: a backslash before each of
`\\ # : CR LF`, CR and LF written as `r` and `n`.

Empty string options are not written at all by RocksDB (7.8 to 11.1 checked):
no `wal_dir` line means the WALs are in the DB directory.  `db_paths` and
`cf_paths` are never written by those versions either (RocksDB 9.8.4 with two
db_paths set writes neither); if a file has them anyway, `retarget` drops them,
which makes RocksDB put every SST and blob file (whatever its path id) in the
DB directory, exactly where a restore puts them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Corruption

DB_OPTIONS = "DBOptions"
CF_OPTIONS = "CFOptions"

_SPECIAL = {"\\": "\\", "#": "#", ":": ":", "\r": "r", "\n": "n"}
_UNESCAPE = {"r": "\r", "n": "\n"}

_DB_DIR_OPTIONS = ("db_paths",)
"""DBOptions naming directories for data files: dropped, the data is all in db_dir."""
_CF_DIR_OPTIONS = ("cf_paths",)
"""CFOptions naming directories for data files: dropped likewise."""


def escape(value: str) -> str:
    """RocksDB's EscapeOptionString."""
    return "".join("\\" + _SPECIAL[c] if c in _SPECIAL else c for c in value)


def unescape(value: str) -> str:
    """RocksDB's UnescapeOptionString: a backslash makes the next character literal
    (`r` and `n` standing for CR and LF)."""
    out: list[str] = []
    chars = iter(value)
    for c in chars:
        if c == "\\":
            nxt = next(chars, None)
            if nxt is None:
                break
            out.append(_UNESCAPE.get(nxt, nxt))
        else:
            out.append(c)
    return "".join(out)


@dataclass
class Section:
    title: str
    """"Version", "DBOptions", "CFOptions", "TableOptions/BlockBasedTable", ..."""
    argument: str | None
    """The column family name of CF and table sections, else None."""
    options: dict[str, str] = field(default_factory=dict)
    """Option name -> unescaped value, in file order."""
    lines: dict[str, int] = field(default_factory=dict)
    """Option name -> index of its line in OptionsFile.lines."""
    end: int = 0
    """Index just after the section's last option line (where a new option goes)."""


@dataclass
class OptionsFile:
    lines: list[str]
    """The file's lines, each with its line ending, as decoded."""
    sections: list[Section]

    def section(self, title: str, argument: str | None = None) -> Section | None:
        return next((s for s in self.sections if s.title == title and s.argument == argument), None)

    @property
    def db_options(self) -> dict[str, str]:
        found = self.section(DB_OPTIONS)
        return found.options if found is not None else {}

    def to_bytes(self) -> bytes:
        return "".join(self.lines).encode("utf-8", "surrogateescape")


def _strip_comment(line: str) -> str:
    """TrimAndRemoveComment: cut at the first `#` not preceded by a backslash."""
    pos = 0
    while True:
        hit = line.find("#", pos)
        if hit < 0:
            return line.strip()
        if hit == 0 or line[hit - 1] != "\\":
            return line[:hit].strip()
        pos = hit + 1


def parse(data: bytes, source: str = "OPTIONS") -> OptionsFile:
    """Parse an OPTIONS file; `source` names it in errors.  Raises Corruption on a
    line RocksDB would reject (an option outside any section, a line without `=`,
    a malformed section header)."""
    text = data.decode("utf-8", "surrogateescape")
    lines = text.splitlines(keepends=True)
    sections: list[Section] = []
    for index, raw in enumerate(lines):
        line = _strip_comment(raw)
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise Corruption(f"{source} line {index + 1}: malformed section header {line!r}")
            inner = line[1:-1].strip()
            title, _, rest = inner.partition(" ")
            rest = rest.strip()
            argument: str | None = None
            if rest:
                if len(rest) < 2 or rest[0] != '"' or rest[-1] != '"':
                    raise Corruption(f"{source} line {index + 1}: section argument must be quoted: {line!r}")
                argument = unescape(rest[1:-1])
            sections.append(Section(title, argument, end=index + 1))
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not name or any(c.isspace() for c in name):
            raise Corruption(f"{source} line {index + 1}: expected name=value, got {line!r}")
        if not sections:
            raise Corruption(f"{source} line {index + 1}: option {name!r} outside any section")
        sections[-1].options[name] = unescape(value.strip())
        sections[-1].lines[name] = index
        sections[-1].end = index + 1
    return OptionsFile(lines, sections)


def wal_dir(data: bytes, source: str = "OPTIONS") -> str | None:
    """The DB's wal_dir, or None when its WALs are in the DB directory (no or empty wal_dir)."""
    value = parse(data, source).db_options.get("wal_dir", "")
    return value or None


def _newline(opts: OptionsFile) -> str:
    return "\r\n" if opts.lines and opts.lines[0].endswith("\r\n") else "\n"


def _replace(opts: OptionsFile, section: Section, name: str, value: str | None) -> bool:
    """Rewrite (value) or blank out (None) the option's line in place, so no other
    line moves; False when the section has no such option."""
    if name not in section.lines:
        return False
    index = section.lines[name]
    old = opts.lines[index]
    indent = old[:len(old) - len(old.lstrip())]
    opts.lines[index] = "" if value is None else f"{indent}{name}={escape(value)}{_newline(opts)}"
    return True


def retarget(data: bytes, db_dir: str, wal_dir: str, source: str = "OPTIONS") -> bytes:
    """The OPTIONS file of a DB restored into `db_dir` with its WALs in `wal_dir`:
    wal_dir names `wal_dir` (or is dropped when that is `db_dir`), db_log_dir is
    dropped (the info LOG goes into db_dir), db_paths and cf_paths are dropped (every
    data file is in db_dir).  Nothing else changes, byte for byte."""
    opts = parse(data, source)
    db = opts.section(DB_OPTIONS)
    if db is None:
        raise Corruption(f"{source} has no [DBOptions] section")
    for name in ("db_log_dir", *_DB_DIR_OPTIONS):
        _replace(opts, db, name, None)
    for section in opts.sections:
        if section.title == CF_OPTIONS:
            for name in _CF_DIR_OPTIONS:
                _replace(opts, section, name, None)
    new_wal_dir = None if _normalize(wal_dir) == _normalize(db_dir) else wal_dir
    if not _replace(opts, db, "wal_dir", new_wal_dir) and new_wal_dir is not None:
        # Last edit: the only one that moves lines.
        if not opts.lines[db.end - 1].endswith(("\n", "\r")):
            opts.lines[db.end - 1] += _newline(opts)
        opts.lines.insert(db.end, f"  wal_dir={escape(new_wal_dir)}{_newline(opts)}")
    return opts.to_bytes()


def _normalize(path: str) -> str:
    return path.rstrip("/") or "/"
