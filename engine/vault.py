"""Encryption at rest: envelope encryption with per-user data keys, and crypto-shredding.

- The master key (key-encryption key) comes from the settings or from `master.key` in the data dir.
- Each owner (a pseudonymous user id) gets a random 256-bit data key, stored only wrapped by the master
  key, in its own SQLite file (`keys.sqlite3`), apart from the blobs and the main database.
- Every blob is AES-256-GCM encrypted in chunks with the owner's data key. The associated data binds each
  chunk to (owner, kind, blob id, chunk index, last-chunk flag): a blob moved to another owner or kind, a
  reordered chunk or a cut-off file fails to decrypt as a whole.
- `shred(owner)` destroys the data key: every copy of that owner's blobs, backups included, becomes noise.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.blobs import BlobStore, LocalBlobs
from engine.errors import VaultError

if TYPE_CHECKING:
    from engine.settings import Settings

log = logging.getLogger(__name__)

MAGIC = b"LKV1"
CHUNK_SIZE = 1 << 20  # 1 MiB of plaintext per AES-GCM call (pyca refuses more than 2 GiB in one call)
_HEADER = struct.Struct(">4sI8s")  # magic, chunk size, random nonce prefix
_TAG = 16
_SYSTEM_OWNER = "~system"  # holder of the pseudonym secret; never a pseudonymous user id (those are hex)


class BlobCorrupt(VaultError):
    """A blob was tampered with, truncated, or belongs to another owner, kind or id."""


class KeyMissing(VaultError):
    """The owner has no data key (never had one, or it was shredded)."""


class MasterKeyError(VaultError):
    """The master key is malformed or does not match the key store."""


def decode_master_key(text: str) -> bytes:
    """Decode a urlsafe-base64 256-bit key; raises MasterKeyError with a one-line reason."""
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (ValueError, TypeError):
        raise MasterKeyError("the master key is not valid urlsafe base64") from None
    if len(key) != 32:
        raise MasterKeyError(f"the master key must be 32 bytes, got {len(key)}")
    return key


def encode_master_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode("ascii")


def new_master_key() -> bytes:
    return secrets.token_bytes(32)


def load_or_create_master_key(configured: str, data_dir: Path) -> bytes:
    """The configured key, else `data_dir/master.key`, created (mode 0600) on first run."""
    if configured:
        return decode_master_key(configured)
    path = data_dir / "master.key"
    if path.exists():
        return decode_master_key(path.read_text(encoding="ascii"))
    data_dir.mkdir(parents=True, exist_ok=True)
    key = new_master_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(encode_master_key(key) + "\n")
    log.warning(
        "Created a new master key at %s. BACK IT UP somewhere safe: without it no stored data can be "
        "decrypted. Or set LIKENESS_MASTER_KEY and delete the file.",
        path,
    )
    return key


def key_id(master_key: bytes) -> str:
    """A short public fingerprint of a master key (tells which key wrapped a data key)."""
    return hashlib.sha256(b"likeness key id" + master_key).hexdigest()[:16]


class KeyTable(Protocol):
    """Where wrapped data keys are stored (engine/db/<backend>/keystore.py)."""

    def any_key_id(self) -> str | None: ...
    def get(self, owner: str) -> bytes | None: ...
    def insert(self, owner: str, wrapped: bytes, key_id: str) -> None: ...
    def delete(self, owner: str) -> bool: ...
    def all(self) -> list[tuple[str, bytes]]: ...
    def replace_all(self, rows: list[tuple[str, bytes, str]]) -> None: ...
    def close(self) -> None: ...


class KeyStore:
    """Per-owner data keys, stored only wrapped by the master key, in a `KeyTable` of their own."""

    def __init__(self, table: KeyTable, master_key: bytes):
        self.table = table
        self._master = master_key
        stored = table.any_key_id()
        if stored is not None and stored != key_id(master_key):
            table.close()
            raise MasterKeyError(
                "the master key does not match the key store (wrong LIKENESS_MASTER_KEY or master.key?)"
            )

    @staticmethod
    def _aad(owner: str) -> bytes:
        return b"likeness/data-key/v1/" + owner.encode()

    def _wrap(self, master: bytes, owner: str, data_key: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + AESGCM(master).encrypt(nonce, data_key, self._aad(owner))

    def _unwrap(self, master: bytes, owner: str, wrapped: bytes) -> bytes:
        try:
            return AESGCM(master).decrypt(wrapped[:12], wrapped[12:], self._aad(owner))
        except InvalidTag:
            raise MasterKeyError("a data key cannot be unwrapped with this master key") from None

    def data_key(self, owner: str, create: bool = False) -> bytes:
        """The owner's data key; created when `create` is set, else KeyMissing if there is none."""
        wrapped = self.table.get(owner)
        if wrapped is None:
            if not create:
                raise KeyMissing("no data key for this owner (erased or never stored)")
            self.table.insert(
                owner, self._wrap(self._master, owner, secrets.token_bytes(32)), key_id(self._master)
            )
            wrapped = self.table.get(owner)  # the winner's key, if another process created one at once
            if wrapped is None:
                raise KeyMissing("the data key was destroyed while it was being created")
        return self._unwrap(self._master, owner, wrapped)

    def has_key(self, owner: str) -> bool:
        return self.table.get(owner) is not None

    def shred(self, owner: str) -> bool:
        """Destroy the owner's data key (no copy left in the key store). True if one existed."""
        return self.table.delete(owner)

    def rotate(self, new_master: bytes) -> int:
        """Re-wrap every data key under `new_master` in one transaction; returns how many."""
        rows = [
            (
                owner,
                self._wrap(new_master, owner, self._unwrap(self._master, owner, wrapped)),
                key_id(new_master),
            )
            for owner, wrapped in self.table.all()
        ]
        self.table.replace_all(rows)
        self._master = new_master
        return len(rows)

    def close(self) -> None:
        self.table.close()


def _chunks(data: bytes) -> Iterator[tuple[int, bytes, bool]]:
    count = max(1, -(-len(data) // CHUNK_SIZE))
    for index in range(count):
        yield index, data[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE], index == count - 1


def _aad(header: bytes, owner: str, kind: str, blob_id: str, index: int, last: bool) -> bytes:
    return b"\x00".join(
        [header, owner.encode(), kind.encode(), blob_id.encode(), struct.pack(">I?", index, last)]
    )


def encrypt(data_key: bytes, owner: str, kind: str, blob_id: str, plaintext: bytes) -> bytes:
    """Encrypt `plaintext` for (owner, kind, blob_id) in authenticated chunks."""
    header = _HEADER.pack(MAGIC, CHUNK_SIZE, secrets.token_bytes(8))
    cipher = AESGCM(data_key)
    parts = [header]
    for index, chunk, last in _chunks(plaintext):
        nonce = header[8:16] + struct.pack(">I", index)
        parts.append(cipher.encrypt(nonce, chunk, _aad(header, owner, kind, blob_id, index, last)))
    return b"".join(parts)


def decrypt(data_key: bytes, owner: str, kind: str, blob_id: str, blob: bytes) -> bytes:
    """Decrypt a whole blob, or raise BlobCorrupt; never returns part of a blob."""
    if len(blob) < _HEADER.size + _TAG:
        raise BlobCorrupt("the blob is truncated")
    header = blob[: _HEADER.size]
    magic, chunk_size, prefix = _HEADER.unpack(header)
    if magic != MAGIC or chunk_size <= 0:
        raise BlobCorrupt("the blob has no valid header")
    cipher = AESGCM(data_key)
    body, offset, index, plain = blob[_HEADER.size :], 0, 0, []
    while offset < len(body):
        piece = body[offset : offset + chunk_size + _TAG]
        offset += len(piece)
        last = offset >= len(body)
        try:
            plain.append(
                cipher.decrypt(
                    prefix + struct.pack(">I", index), piece, _aad(header, owner, kind, blob_id, index, last)
                )
            )
        except InvalidTag:
            raise BlobCorrupt(
                "the blob was altered, truncated, or belongs to another owner or kind"
            ) from None
        index += 1
    return b"".join(plain)


class Vault:
    """Encrypted blobs in a `BlobStore` (the `blobs/` folder by default), keyed per owner through the
    `KeyStore` (`keys/keys.sqlite3` by default). Only ciphertext ever reaches either."""

    def __init__(
        self,
        data_dir: Path,
        master_key: bytes,
        *,
        blobs: BlobStore | None = None,
        key_table: KeyTable | None = None,
    ):
        from engine.db.sqlite.keystore import SqliteKeyTable

        self.blobs = blobs if blobs is not None else LocalBlobs(data_dir / "blobs")
        self.keys = KeyStore(key_table or SqliteKeyTable(data_dir / "keys" / "keys.sqlite3"), master_key)

    @property
    def blob_dir(self) -> Path:
        """The local blob folder (only with the default local store)."""
        return self.blobs.root  # type: ignore[attr-defined]

    @staticmethod
    def _check(owner: str, blob_id: str) -> None:
        if not blob_id.isalnum() or not owner.replace("~", "").isalnum():
            raise VaultError("blob ids and owners must be alphanumeric")

    def put(self, owner: str, kind: str, blob_id: str, plaintext: bytes) -> int:
        """Encrypt and store atomically. Returns the stored size."""
        self._check(owner, blob_id)
        sealed = encrypt(self.keys.data_key(owner, create=True), owner, kind, blob_id, plaintext)
        self.blobs.write(owner, blob_id, sealed)  # only ciphertext is ever written
        return len(sealed)

    def get(self, owner: str, kind: str, blob_id: str) -> bytes:
        """Read and decrypt a blob; raises KeyMissing, BlobCorrupt or FileNotFoundError."""
        self._check(owner, blob_id)
        sealed = self.blobs.read(owner, blob_id)
        return decrypt(self.keys.data_key(owner), owner, kind, blob_id, sealed)

    def seal(self, owner: str, kind: str, item_id: str, plaintext: bytes) -> bytes:
        """Encrypt a small value for a database column (same binding as blobs)."""
        return encrypt(self.keys.data_key(owner, create=True), owner, kind, item_id, plaintext)

    def open(self, owner: str, kind: str, item_id: str, sealed: bytes) -> bytes:
        return decrypt(self.keys.data_key(owner), owner, kind, item_id, sealed)

    def delete(self, owner: str, blob_id: str) -> bool:
        """Delete one blob; True if it existed. Idempotent."""
        self._check(owner, blob_id)
        return self.blobs.delete(owner, blob_id)

    def erase_owner(self, owner: str) -> int:
        """Shred the owner's data key, then delete all their blobs. Returns blobs deleted."""
        self.keys.shred(owner)
        return self.blobs.delete_owner(owner)

    def space_used(self) -> int | None:
        """Bytes of encrypted blobs stored (all users together); None where the store does not say."""
        return self.blobs.space_used()

    def close(self) -> None:
        self.keys.close()


def open_vault(settings: Settings, master_key: bytes) -> Vault:
    """The vault of this deployment: blobs and key store as configured (local by default)."""
    from engine.blobs import open_blobs

    key_table: KeyTable | None = None
    if settings.keystore_url:
        from engine.db.postgres.keystore import PostgresKeyTable

        key_table = PostgresKeyTable(settings.keystore_url)
    return Vault(
        settings.data_dir,
        master_key,
        blobs=open_blobs(settings.blobs_url, settings.data_dir),
        key_table=key_table,
    )


class Pseudonymizer:
    """Keyed hash of platform ids. The secret is random, kept wrapped in the key store, so pseudonyms
    stay stable when the master key is rotated."""

    def __init__(self, vault: Vault):
        self._secret = vault.keys.data_key(_SYSTEM_OWNER, create=True)

    def user(self, platform: str, platform_user_id: str | int) -> str:
        message = f"user:{platform}:{platform_user_id}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:32]

    def keyed(self, purpose: str, value: str) -> str:
        """A keyed hash of `value` for one purpose (invite codes, support references): not reversible,
        and different for each purpose."""
        message = f"{purpose}:{value}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
