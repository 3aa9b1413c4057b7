"""RocksDB's backup format and rbackup's stricter rules, as pure code: bytes, names and
records in, records and names out, no I/O (docs/format.md is the reference).

- `meta`: meta files (`meta/<id>`), read and written byte for byte as RocksDB does;
- `naming`: every name in a backup directory and a DB directory;
- `tempnames`: every temporary name, the one format module storage code imports;
- `paths`: `check_path`, the rule every backup-relative path obeys;
- `sstprops` (with `_snappy`): an SST's table properties, its DB session id;
- `logformat`, `manifest`: RocksDB's log format, CURRENT and MANIFEST replay;
- `optionsfile`: OPTIONS files, read and retargeted;
- `checksum`: CRC-32C as RocksDB records it.

Importing this package imports none of them; see docs/architecture.md for the map.
"""
