"""Client-side encryption as an env wrapper: `EncryptedEnv(inner, key=...)`.

Every file is encrypted before it leaves the process and decrypted as it is
read back, so the store (and anyone who can read it) sees only ciphertext;
the engine above sees plaintext, plaintext sizes and plaintext CRC-32Cs and
does not know encryption exists.

File format (version 1), streaming and with flat memory:

    header:  b"RBKENC1\\n" (8 bytes) | file id (16 random bytes)
    chunks:  nonce (12 random bytes) | AES-256-GCM(chunk) | tag (16 bytes)

Every chunk holds `chunk_size` plaintext bytes except the last, which holds
1..chunk_size bytes (0 only for an empty file, which is one empty final
chunk).  Each chunk's associated data binds the file id, the file's path,
the chunk's index and whether it is the final chunk, so chunks cannot be
reordered, dropped, truncated at a chunk boundary, or moved between files
or names without the tag check failing.  The plaintext size follows from the
ciphertext size, so `list` and `stat` need no extra reads.

The directory carries a marker, `rbackup-encryption.json` at its root, in
plaintext: the format, chunk size, a random salt and a key check value.  The
key file's 32 bytes are the master key; HKDF-SHA256 with the salt derives the
data key and the check value, so a wrong key is refused up front with
PermissionDenied, and damaged data fails with Corruption, never garbage.
The wrapper refuses a directory that holds backups but no marker (it did not
encrypt it), and the engine refuses a directory with a marker when it is not
opened through this wrapper (see `state.load_state`).
"""
from __future__ import annotations

import hmac
import io
import json
import os
import struct
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import AlreadyExists, Corruption, InvalidArgument, NotFound, NotSupported, PermissionDenied
from ..format.naming import ENCRYPTION_MARKER, META_DIR, PRIVATE_DIR, SHARED_CHECKSUM_DIR, SHARED_DIR
from .base import AtomicWriter, BackupEnv, Capabilities, FileInfo, ReadStream, StoredChecksum, check_path
from .wrappers import WrapperEnv

__all__ = ["DEFAULT_CHUNK_SIZE", "ENCRYPTION_MARKER", "EncryptedEnv", "load_key_file", "plaintext_size"]

MAGIC = b"RBKENC1\n"
FILE_ID_SIZE = 16
HEADER_SIZE = len(MAGIC) + FILE_ID_SIZE
NONCE_SIZE = 12
TAG_SIZE = 16
CHUNK_OVERHEAD = NONCE_SIZE + TAG_SIZE
DEFAULT_CHUNK_SIZE = 1 << 20
"""1 MiB: per-chunk cost (a nonce, a tag, one Python call) is lost in the noise,
and a reader or writer holds at most about two chunks."""
KEY_SIZE = 32
MIN_TRANSFER_WIDTH = 2
"""Files copied at once through the wrapper, at least (see `EncryptedEnv.capabilities`)."""
FORMAT = "rbackup-encrypted-1"
_MAX_MARKER = 64 << 10
_BACKUP_DIRS = (META_DIR, PRIVATE_DIR, SHARED_DIR, SHARED_CHECKSUM_DIR)


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    except ImportError as exc:  # an optional dependency: say how to get it
        raise NotSupported("encryption needs the 'cryptography' package: pip install 'rbackup[encryption]'") from exc
    return AESGCM, HKDF, hashes


def load_key_file(path: str | os.PathLike) -> bytes:
    """A key file holds 32 raw bytes or 64 hex digits (e.g. `head -c 32 /dev/urandom > key`)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(4096)
    except OSError as exc:
        raise InvalidArgument(f"cannot read encryption key file {os.fspath(path)}: {exc}") from exc
    if len(data) == KEY_SIZE:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise InvalidArgument(f"encryption key file {os.fspath(path)} must hold 32 bytes or 64 hex digits, "
                          f"found {len(data)} bytes")


def plaintext_size(stored: int, chunk_size: int) -> int | None:
    """The plaintext size of an encrypted file of `stored` bytes; None if no
    encrypted file can have that size (a torn temp file, a damaged file)."""
    body = stored - HEADER_SIZE
    if body < CHUNK_OVERHEAD:
        return None
    full, rest = divmod(body, chunk_size + CHUNK_OVERHEAD)
    if rest == 0:
        return full * chunk_size
    if rest < CHUNK_OVERHEAD or (rest == CHUNK_OVERHEAD and full > 0):
        return None  # only an empty file ends with an empty chunk
    return full * chunk_size + rest - CHUNK_OVERHEAD


def _aad(file_id: bytes, path: str, index: int, final: bool) -> bytes:
    encoded = path.encode("utf-8")
    return file_id + struct.pack(">QQ?", len(encoded), index, final) + encoded


class _SpareBuffers(threading.local):
    """Chunk buffers that this thread's readers and writers have finished with.

    Every file needs two chunk-sized buffers.  A new pair per file (zeroed, and on
    fresh pages the kernel must fault in) made reading or writing a small file (a meta
    file, CURRENT) through the wrapper cost ten times a plain one, which opening a
    directory of a thousand backups pays a thousand times; large files paid it too.
    A reader or writer gives its buffers back exactly once, when it ends, and then
    refuses to be used, so no two live ones ever share a buffer.
    """

    _KEEP = 4  # a reader and a writer open at once on one thread (copy, replication)

    def __init__(self) -> None:
        self.free: list[bytearray] = []

    def take(self, size: int) -> memoryview:
        for i, buf in enumerate(self.free):
            if len(buf) == size:
                return memoryview(self.free.pop(i))
        return memoryview(bytearray(size))

    def give(self, *views: memoryview) -> None:
        for view in views:
            if isinstance(view.obj, bytearray) and len(self.free) < self._KEEP:
                self.free.append(view.obj)


_RELEASED = memoryview(b"")
"""What a finished reader's or writer's buffers point at, once given back."""


@dataclass(frozen=True)
class _Keys:
    aead: Any
    chunk_size: int


class EncryptedEnv(WrapperEnv):
    """Encrypts everything written through it with AES-256-GCM, chunk by chunk."""

    def __init__(self, inner: BackupEnv, *, key: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        super().__init__(inner)
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
            raise InvalidArgument(f"encryption key for {inner.describe()} must be {KEY_SIZE} bytes")
        if not isinstance(chunk_size, int) or not 4096 <= chunk_size <= 64 << 20:
            raise InvalidArgument(f"encryption chunk_size must be an int in 4096..{64 << 20}, got {chunk_size!r}")
        _crypto()
        self._master = bytes(key)
        self._new_chunk_size = chunk_size
        self._init_lock = threading.Lock()
        self._spares = _SpareBuffers()
        self._keys: _Keys | None = self._open_marker()

    @classmethod
    def from_key_file(cls, inner: BackupEnv, key_file: str | os.PathLike) -> EncryptedEnv:
        return cls(inner, key=load_key_file(key_file))

    # -- the marker ----------------------------------------------------------------
    def _derive(self, salt: bytes, info: bytes) -> bytes:
        _, hkdf, hashes = _crypto()
        return bytes(hkdf(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=info).derive(self._master))

    def _keys_from(self, doc: dict[str, Any]) -> _Keys:
        aesgcm, _, _ = _crypto()
        where = self.inner.describe(ENCRYPTION_MARKER)
        try:
            if doc["format"] != FORMAT:
                raise NotSupported(f"{where}: unknown encryption format {doc['format']!r} (this rbackup "
                                   f"reads {FORMAT})")
            salt = bytes.fromhex(doc["salt"])
            check = bytes.fromhex(doc["key_check"])
            chunk_size = int(doc["chunk_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Corruption(f"{where}: damaged encryption marker ({exc})") from exc
        if chunk_size < 1 or not salt:
            raise Corruption(f"{where}: damaged encryption marker")
        if not hmac.compare_digest(self._derive(salt, b"rbackup key check"), check):
            raise PermissionDenied(f"wrong encryption key for {self.inner.describe()}: the key does not "
                                   "match the one this backup directory was encrypted with")
        return _Keys(aesgcm(self._derive(salt, b"rbackup data key")), chunk_size)

    def _open_marker(self) -> _Keys | None:
        try:
            raw = self.inner.read_bytes(ENCRYPTION_MARKER, _MAX_MARKER)
        except NotFound:
            if any(fi.path.split("/", 1)[0] in _BACKUP_DIRS for fi in self.inner.list("")):
                raise InvalidArgument(f"{self.inner.describe()} holds unencrypted backups (no "
                                      f"{ENCRYPTION_MARKER}): encryption cannot be switched on for an existing "
                                      "backup directory; copy its backups into a new, encrypted one") from None
            return None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise Corruption(f"{self.inner.describe(ENCRYPTION_MARKER)}: damaged encryption marker") from exc
        return self._keys_from(doc if isinstance(doc, dict) else {})

    def _keys_for_write(self) -> _Keys:
        """An empty directory gets its marker on the first write (never on a read,
        so opening a read-only engine writes nothing)."""
        if self._keys is not None:
            return self._keys
        with self._init_lock:
            if self._keys is None:
                salt = os.urandom(32)
                doc = {"format": FORMAT, "cipher": "AES-256-GCM", "chunk_size": self._new_chunk_size,
                       "salt": salt.hex(), "key_check": self._derive(salt, b"rbackup key check").hex()}
                try:
                    self.inner.create_exclusive(ENCRYPTION_MARKER, json.dumps(doc, indent=1).encode() + b"\n")
                except AlreadyExists:
                    pass  # another writer initialised it first: use theirs (and check our key against it)
                self._keys = self._open_marker()
                assert self._keys is not None
        return self._keys

    def _keys_for_read(self, path: str) -> _Keys:
        if self._keys is None:
            self._keys = self._open_marker()
        if self._keys is None:
            raise NotFound(f"{self.describe(path)}: not found (the encrypted backup directory is empty)")
        return self._keys

    # -- the contract ----------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """The inner store's, but copying at least two files at once.

        A disk copies one file at a time (its bandwidth is the limit), and then the
        cipher's CPU time adds straight onto the disk's: each file is sealed, then
        waits for its fsync, with the CPU idle.  With a second file in flight one
        file is sealed while the other is synced.  Measured with
        `examples/bench_encryption.py` under load 3-7: 0.82x plain with one file at
        a time, 0.88x with two (plain stays at one: it has no cipher to hide).
        """
        inner = self.inner.capabilities
        return replace(inner, transfer_width=max(inner.transfer_width, MIN_TRANSFER_WIDTH))

    def local_path(self, path: str = "") -> str | None:
        """The directory stays the inner one's (its flock, the restore-target check), but no
        file on disk holds the bytes `open_read` returns: `open_backup` must decrypt them."""
        return self.inner.local_path("") if path == "" else None

    def stored_checksum(self, path: str) -> StoredChecksum | None:
        """None: the store checksums the ciphertext, the meta file the plaintext."""
        check_path(path)
        return None

    def open_read(self, path: str) -> ReadStream:
        check_path(path)
        keys = self._keys_for_read(path)
        return _DecryptingReader(self.inner.open_read(path), keys, path, self.describe(path), self._spares)

    def _check_writable(self, path: str) -> None:
        if check_path(path) == ENCRYPTION_MARKER:
            raise InvalidArgument(f"{self.describe(path)}: the encryption marker cannot be written through the env")

    def open_write(self, path: str, *, sync: bool = True) -> AtomicWriter:
        self._check_writable(path)
        keys = self._keys_for_write()
        return _EncryptingWriter(self.inner.open_write(path, sync=sync), keys, path, self._spares)

    def open_write_new(self, path: str, *, sync: bool = True) -> AtomicWriter:
        # The inner store's never-replace publish (If-None-Match on S3), not the base class's
        # check-then-commit: encryption must not weaken what the store guarantees.
        self._check_writable(path)
        keys = self._keys_for_write()
        return _EncryptingWriter(self.inner.open_write_new(path, sync=sync), keys, path, self._spares)

    def create_exclusive(self, path: str, data: bytes, *, sync: bool = True) -> None:
        self._check_writable(path)
        keys = self._keys_for_write()
        out = io.BytesIO()
        writer = _EncryptingWriter(out, keys, path, self._spares)
        writer.write(data)
        writer.finish()
        self.inner.create_exclusive(path, out.getvalue(), sync=sync)

    def list(self, prefix: str = "") -> list[FileInfo]:
        infos = []
        for fi in self.inner.list(prefix):
            if fi.path == ENCRYPTION_MARKER:
                continue
            size = self._plain_size(fi.size)
            # A size no encrypted file can have (a torn temp file) is shown as -1: it matches no
            # recorded size, so such a file can never pass for a backup's file.
            infos.append(FileInfo(fi.path, -1 if size is None else size))
        return infos

    def stat(self, path: str) -> FileInfo:
        check_path(path)
        if path == ENCRYPTION_MARKER:
            raise NotFound(f"{self.describe(path)}: not found")
        info = self.inner.stat(path)
        size = self._plain_size(info.size)
        if size is None:
            raise Corruption(f"{self.describe(path)}: {info.size} bytes is not the size of an encrypted file")
        return FileInfo(info.path, size)

    def delete(self, paths: Iterable[str]) -> None:
        self.inner.delete([p for p in paths if p != ENCRYPTION_MARKER])

    def _plain_size(self, stored: int) -> int | None:
        chunk = self._keys.chunk_size if self._keys is not None else self._new_chunk_size
        return plaintext_size(stored, chunk)

    def __repr__(self) -> str:
        return f"EncryptedEnv({self.inner!r})"


class _EncryptingWriter(AtomicWriter):
    """Holds back one chunk: only at commit is it known which chunk is the final one.

    Whole chunks followed by more data in the same call are sealed straight from
    the caller's memory; only the held-back chunk is copied.  Sealing goes into
    one reused buffer (nonce, ciphertext, tag), handed to the inner writer in
    one call, which consumes it before returning (the AtomicWriter contract).
    Both buffers come from, and go back to, the thread's spares.
    """

    def __init__(self, inner: Any, keys: _Keys, path: str, spares: _SpareBuffers) -> None:
        self._inner = inner
        self._aead = keys.aead
        self._chunk = keys.chunk_size
        self._path = path
        self._spares = spares
        self._file_id = os.urandom(FILE_ID_SIZE)
        self._inner.write(MAGIC + self._file_id)
        self._held = spares.take(self._chunk)
        self._held_len = 0
        self._sealed = spares.take(self._chunk + CHUNK_OVERHEAD)
        self._index = 0

    def _check_open(self) -> None:
        if self._sealed is _RELEASED:
            raise InvalidArgument(f"{self._path}: encrypting writer already finished")

    def _release(self) -> None:
        if self._sealed is not _RELEASED:
            self._spares.give(self._held, self._sealed)
            self._held = self._sealed = _RELEASED

    def write(self, data: bytes | memoryview) -> int:
        self._check_open()
        view = memoryview(data).cast("B")
        total = view.nbytes
        while view.nbytes:
            if self._held_len == self._chunk:
                self._seal(self._held, final=False)
                self._held_len = 0
            if self._held_len == 0 and view.nbytes > self._chunk:
                self._seal(view[:self._chunk], final=False)
                view = view[self._chunk:]
                continue
            take = min(self._chunk - self._held_len, view.nbytes)
            self._held[self._held_len:self._held_len + take] = view[:take]
            self._held_len += take
            view = view[take:]
        return total

    def _seal(self, plain: memoryview, *, final: bool) -> None:
        nonce = os.urandom(NONCE_SIZE)
        end = NONCE_SIZE + plain.nbytes + TAG_SIZE
        self._sealed[:NONCE_SIZE] = nonce
        self._aead.encrypt_into(nonce, plain, _aad(self._file_id, self._path, self._index, final),
                                self._sealed[NONCE_SIZE:end])
        self._inner.write(self._sealed[:end])
        self._index += 1

    def finish(self) -> None:
        """Seal the final chunk; the writer takes no more data after this."""
        self._check_open()
        self._seal(self._held[:self._held_len], final=True)
        self._held_len = 0
        self._release()

    def commit(self) -> None:
        if self._sealed is not _RELEASED:  # a second commit is the inner writer's to answer
            self.finish()
        self._inner.commit()

    def abort(self) -> None:
        self._held_len = 0
        self._release()
        self._inner.abort()


class _DecryptingReader(io.RawIOBase):
    """Reads one sealed chunk ahead of what it hands out, plus one byte to learn
    whether that chunk is the last (the final flag is part of its authentication).

    A chunk decrypts straight into the caller's buffer when it fits there,
    else into one reused buffer that later reads drain.  Both buffers come from,
    and go back to (at close), the thread's spares.
    """

    def __init__(self, inner: ReadStream, keys: _Keys, path: str, where: str, spares: _SpareBuffers) -> None:
        super().__init__()
        self._inner = inner
        self._aead = keys.aead
        self._spares = spares
        self._sealed = self._plain_buf = self._plain = _RELEASED
        self._path = path
        self._where = where
        self._index = 0
        self._lookahead = b""
        self._done = False
        header = self._inner.read(HEADER_SIZE)
        while header and len(header) < HEADER_SIZE:
            more = self._inner.read(HEADER_SIZE - len(header))
            if not more:
                break
            header += more
        if len(header) != HEADER_SIZE or header[:len(MAGIC)] != MAGIC:
            inner.close()
            raise Corruption(f"{where}: not an rbackup-encrypted file (bad or missing header)")
        self._file_id = header[len(MAGIC):]
        self._lookahead = self._inner.read(1)
        self._sealed = spares.take(keys.chunk_size + CHUNK_OVERHEAD)
        self._plain_buf = spares.take(keys.chunk_size)

    def _fill(self, view: memoryview) -> int:
        """Read into `view` until it is full or the stream ends."""
        got = 0
        readinto = getattr(self._inner, "readinto", None)
        while got < view.nbytes:
            if readinto is not None:
                n = readinto(view[got:])
            else:
                part = self._inner.read(view.nbytes - got)
                n = len(part)
                view[got:got + n] = part
            if not n:
                break
            got += n
        return got

    def _open_next(self, out: memoryview | None) -> int:
        """Decrypt the next chunk into `out` if it fits there (returns its length),
        else into the internal buffer (returns 0, `_plain` holds it)."""
        if not self._lookahead:
            if self._index == 0:
                raise Corruption(f"{self._where}: truncated encrypted file (no chunk)")
            self._done = True
            return 0
        self._sealed[0:1] = self._lookahead
        size = 1 + self._fill(self._sealed[1:])
        self._lookahead = self._inner.read(1)
        final = not self._lookahead
        if size < CHUNK_OVERHEAD:
            raise Corruption(f"{self._where}: truncated encrypted file (chunk {self._index})")
        plain_len = size - CHUNK_OVERHEAD
        nonce = bytes(self._sealed[:NONCE_SIZE])
        direct = out is not None and out.nbytes >= plain_len
        target = out[:plain_len] if direct and out is not None else self._plain_buf[:plain_len]
        try:
            self._aead.decrypt_into(nonce, self._sealed[NONCE_SIZE:size],
                                    _aad(self._file_id, self._path, self._index, final), target)
        except Exception as exc:  # cryptography's InvalidTag: wrong key, tampering, truncation, a swapped chunk
            raise Corruption(f"{self._where}: encrypted chunk {self._index} fails authentication (the file was "
                             "damaged, truncated, reordered or moved, or the key is wrong)") from exc
        self._index += 1
        self._done = final
        if direct:
            return plain_len
        self._plain = self._plain_buf[:plain_len]
        return 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError(f"{self._where}: read from a closed file")
        out = memoryview(buffer).cast("B")
        written = 0
        while written < out.nbytes:
            if self._plain.nbytes:
                n = min(out.nbytes - written, self._plain.nbytes)
                out[written:written + n] = self._plain[:n]
                self._plain = self._plain[n:]
                written += n
            elif self._done:
                break
            else:
                written += self._open_next(out[written:])
        return written

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all if negative), gathered chunk by chunk: `size` is a bound
        (`read_bytes` passes 64 MiB to read a meta file of a few KiB), never an allocation."""
        if self.closed:
            raise ValueError(f"{self._where}: read from a closed file")
        want = sys.maxsize if size is None or size < 0 else size
        pieces: list[bytes] = []
        while want > 0:
            if not self._plain.nbytes:
                if self._done:
                    break
                self._open_next(None)
                continue
            n = min(want, self._plain.nbytes)
            pieces.append(bytes(self._plain[:n]))
            self._plain = self._plain[n:]
            want -= n
        return b"".join(pieces)

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
            self._spares.give(self._sealed, self._plain_buf)
            self._sealed = self._plain_buf = self._plain = _RELEASED
        super().close()
