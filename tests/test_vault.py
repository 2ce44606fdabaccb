"""Vault: envelope encryption, chunked AES-GCM blobs, crypto-shredding and master-key rotation, with the
key store on every backend (the `vault` and `backend` fixtures)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

import engine.vault as vault_module
from engine.db import Tables
from engine.vault import (
    BlobCorrupt,
    KeyMissing,
    MasterKeyError,
    Pseudonymizer,
    Vault,
    VaultError,
    decode_master_key,
    decrypt,
    encode_master_key,
    encrypt,
    load_or_create_master_key,
    new_master_key,
)
from tests.storage_backends import Backend

OWNER = "a1b2c3d4"
OTHER = "e5f6a7b8"
MARKER = b"PLAINTEXT-MARKER-7f3e"


def payload(size: int) -> bytes:
    """Recognisable, non-repeating-looking bytes of a given size."""
    pattern = MARKER + bytes(range(256))
    return (pattern * (size // len(pattern) + 1))[:size]


def wrapped_key(backend: Backend, owner: str) -> bytes:
    """The owner's wrapped data key, read straight from the key store."""
    wrapped = backend.wrapped_key(owner)
    assert wrapped is not None
    return wrapped


def key_store_bytes(backend: Backend) -> bytes:
    """Every byte the key store keeps on disk (with any journal or dead tuple)."""
    return b"".join(backend.key_store_files().values())


def files_outside_keys(data_dir: Path) -> list[Path]:
    return [p for p in data_dir.rglob("*") if p.is_file() and "keys" not in p.relative_to(data_dir).parts]


# -- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 1000])
def test_round_trip_small(vault: Vault, size: int) -> None:
    data = payload(size)
    stored = vault.put(OWNER, "photo", "p1", data)
    assert stored == (vault.blob_dir / OWNER / "p1.bin").stat().st_size
    assert vault.get(OWNER, "photo", "p1") == data


def test_round_trip_multi_chunk_real_chunk_size(vault: Vault) -> None:
    data = payload(2 * vault_module.CHUNK_SIZE + 12345)  # three chunks of 1 MiB, the last one partial
    vault.put(OWNER, "adapter", "lora1", data)
    blob = (vault.blob_dir / OWNER / "lora1.bin").read_bytes()
    assert len(blob) == 16 + len(data) + 3 * 16  # header + plaintext + one tag per chunk
    assert vault.get(OWNER, "adapter", "lora1") == data


@pytest.mark.parametrize("size", [0, 63, 64, 65, 128, 1000])
def test_round_trip_at_chunk_boundaries(vault: Vault, monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(vault_module, "CHUNK_SIZE", 64)
    data = payload(size)
    vault.put(OWNER, "photo", "p1", data)
    chunks = max(1, -(-size // 64))
    assert (vault.blob_dir / OWNER / "p1.bin").stat().st_size == 16 + size + 16 * chunks
    assert vault.get(OWNER, "photo", "p1") == data


def test_chunk_size_is_read_from_the_blob(vault: Vault, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob written with one chunk size stays readable after the constant changes."""
    data = payload(5000)
    with monkeypatch.context() as patch:
        patch.setattr(vault_module, "CHUNK_SIZE", 100)
        vault.put(OWNER, "photo", "p1", data)
    assert vault_module.CHUNK_SIZE == 1 << 20
    assert vault.get(OWNER, "photo", "p1") == data


def test_seal_and_open_database_values(vault: Vault) -> None:
    sealed = vault.seal(OWNER, "chat", "u1", MARKER)
    assert MARKER not in sealed
    assert vault.open(OWNER, "chat", "u1", sealed) == MARKER
    with pytest.raises(BlobCorrupt):
        vault.open(OWNER, "chat", "u2", sealed)


def test_missing_blob_and_missing_key(vault: Vault) -> None:
    with pytest.raises(FileNotFoundError):
        vault.get(OWNER, "photo", "nothere")
    sealed = encrypt(new_master_key(), OTHER, "photo", "p1", b"x")
    with pytest.raises(KeyMissing):
        vault.open(OTHER, "photo", "p1", sealed)


@pytest.mark.parametrize("owner, blob_id", [("../etc", "p1"), (OWNER, "../p1"), (OWNER, ""), ("a/b", "p1")])
def test_paths_cannot_escape_the_blob_dir(vault: Vault, owner: str, blob_id: str) -> None:
    with pytest.raises(VaultError):
        vault.put(owner, "photo", blob_id, b"x")


# -- binding to owner, kind and id ------------------------------------------------------------------------


def test_wrong_kind_fails(vault: Vault) -> None:
    vault.put(OWNER, "photo", "p1", payload(100))
    with pytest.raises(BlobCorrupt):
        vault.get(OWNER, "output", "p1")


def test_wrong_id_fails(vault: Vault) -> None:
    vault.put(OWNER, "photo", "p1", payload(100))
    shutil.copy(vault.blob_dir / OWNER / "p1.bin", vault.blob_dir / OWNER / "p2.bin")
    with pytest.raises(BlobCorrupt):
        vault.get(OWNER, "photo", "p2")


def test_wrong_owner_fails(vault: Vault) -> None:
    """A blob moved into another owner's folder does not decrypt, even under that owner's key."""
    vault.put(OWNER, "photo", "p1", payload(100))
    vault.put(OTHER, "photo", "p9", b"the other owner has a key too")
    shutil.copy(vault.blob_dir / OWNER / "p1.bin", vault.blob_dir / OTHER / "p1.bin")
    with pytest.raises(BlobCorrupt):
        vault.get(OTHER, "photo", "p1")
    # Even with the right key, the associated data binds the blob to its owner.
    blob = (vault.blob_dir / OWNER / "p1.bin").read_bytes()
    with pytest.raises(BlobCorrupt):
        decrypt(vault.keys.data_key(OWNER), OTHER, "photo", "p1", blob)


# -- tampering and truncation -----------------------------------------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(vault_module, "CHUNK_SIZE", 16)
    return 16


def test_every_flipped_byte_fails(small_chunks: int) -> None:
    """Header, every chunk body and every tag are authenticated: no single-bit change goes unnoticed."""
    key, data = new_master_key(), payload(40)  # chunks of 16, 16 and 8 bytes
    blob = encrypt(key, OWNER, "photo", "p1", data)
    assert small_chunks == 16 and len(blob) == 16 + len(data) + 3 * 16  # header, 40 bytes, 3 tags
    assert decrypt(key, OWNER, "photo", "p1", blob) == data
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(BlobCorrupt):
            decrypt(key, OWNER, "photo", "p1", bytes(tampered))


def test_every_truncation_fails(small_chunks: int) -> None:
    """Cutting a blob anywhere (mid-chunk, at a chunk boundary, inside the header) never yields data."""
    key = new_master_key()
    blob = encrypt(key, OWNER, "photo", "p1", payload(40))
    for length in range(len(blob)):
        with pytest.raises(BlobCorrupt):
            decrypt(key, OWNER, "photo", "p1", blob[:length])


def test_dropped_appended_or_reordered_chunks_fail(vault: Vault, small_chunks: int) -> None:
    vault.put(OWNER, "photo", "p1", payload(48))  # three full chunks of 16 bytes + 16-byte tags
    path = vault.blob_dir / OWNER / "p1.bin"
    blob = path.read_bytes()
    header, body = blob[:16], blob[16:]
    chunks = [body[i : i + 32] for i in range(0, len(body), 32)]
    assert len(chunks) == 3
    variants = {
        "drop the last chunk": header + chunks[0] + chunks[1],
        "drop a middle chunk": header + chunks[0] + chunks[2],
        "swap two chunks": header + chunks[1] + chunks[0] + chunks[2],
        "repeat the last chunk": header + b"".join(chunks) + chunks[2],
        "cut mid-chunk": blob[: 16 + 32 + 20],
    }
    for name, variant in variants.items():
        path.write_bytes(variant)
        with pytest.raises(BlobCorrupt):
            vault.get(OWNER, "photo", "p1")
            pytest.fail(f"{name}: decrypted")


# -- what is on disk --------------------------------------------------------------------------------------


def test_writes_are_atomic_and_ciphertext_only(vault: Vault) -> None:
    data = payload(300_000)
    for blob_id in ("p1", "p2", "p1"):  # the second p1 replaces the first
        vault.put(OWNER, "photo", blob_id, data)
    files = sorted(p.name for p in (vault.blob_dir / OWNER).iterdir())
    assert files == ["p1.bin", "p2.bin"]
    assert not list(vault.blob_dir.rglob("*.tmp"))
    for path in vault.blob_dir.rglob("*.bin"):
        assert MARKER not in path.read_bytes()


async def test_keys_never_leave_the_key_store(
    backend: Backend, data_dir: Path, master_key: bytes, vault: Vault
) -> None:
    """A backup of blobs + main database alone holds neither a data key nor the master key."""
    vault.put(OWNER, "photo", "p1", payload(5000))
    db = await backend.open_db()
    await Tables(db).users.ensure(OWNER, "telegram", vault.seal(OWNER, "chat", OWNER, b"chat 12345"))
    await db.close()
    secrets_ = [master_key, vault.keys.data_key(OWNER), wrapped_key(backend, OWNER)]
    backup = {p.name: p.read_bytes() for p in files_outside_keys(data_dir)} | backend.database_files()
    assert "p1.bin" in backup and backend.database_files()
    for name, content in backup.items():
        for secret in secrets_:
            assert secret not in content, name
    key_store = key_store_bytes(backend)
    assert wrapped_key(backend, OWNER) in key_store  # the scan of the key store can fail
    assert vault.keys.data_key(OWNER) not in key_store  # only wrapped
    assert master_key not in key_store
    assert not (data_dir / "master.key").exists()


# -- crypto-shredding -------------------------------------------------------------------------------------


def test_erase_defeats_a_backup(
    backend: Backend, data_dir: Path, master_key: bytes, vault: Vault, tmp_path: Path
) -> None:
    data = payload(3000)
    vault.put(OTHER, "photo", "p1", data)  # first: the erased key is the newest row of the key store
    vault.put(OWNER, "photo", "p1", data)
    vault.put(OWNER, "adapter", "a1", data)
    sealed_chat = vault.seal(OWNER, "chat", OWNER, b"chat 12345")
    wrapped_before = wrapped_key(backend, OWNER)
    assert wrapped_before in key_store_bytes(backend)
    backup = tmp_path / "backup"
    shutil.copytree(vault.blob_dir, backup / "blobs")

    assert vault.erase_owner(OWNER) == 2
    assert not (vault.blob_dir / OWNER).exists()
    assert not vault.keys.has_key(OWNER)

    # The live key store, even with the master key, cannot open the backed-up blobs any more.
    for blob_id, kind in (("p1", "photo"), ("a1", "adapter")):
        blob = (backup / "blobs" / OWNER / f"{blob_id}.bin").read_bytes()
        with pytest.raises(KeyMissing):
            vault.open(OWNER, kind, blob_id, blob)
    with pytest.raises(KeyMissing):
        vault.open(OWNER, "chat", OWNER, sealed_chat)
    # Restoring the backup into a freshly opened vault does not help either.
    vault.close()
    reopened = Vault(data_dir, master_key, key_table=backend.key_table())
    shutil.copytree(backup / "blobs" / OWNER, reopened.blob_dir / OWNER)
    with pytest.raises(KeyMissing):
        reopened.get(OWNER, "photo", "p1")
    assert reopened.get(OTHER, "photo", "p1") == data  # the other owner is untouched
    reopened.close()

    # The wrapped key is gone from the key store's files (journal, free pages, dead tuples), not only
    # unlinked from its table. PostgreSQL's WAL is not scanned: see docs/architecture.md.
    after = key_store_bytes(backend)
    assert wrapped_before not in after
    for start in range(0, len(wrapped_before) - 12, 12):
        assert wrapped_before[start : start + 12] not in after


def test_erase_of_an_unknown_owner_is_harmless(vault: Vault) -> None:
    vault.put(OTHER, "photo", "p1", b"x")
    assert vault.erase_owner(OWNER) == 0
    assert vault.get(OTHER, "photo", "p1") == b"x"


# -- master key -------------------------------------------------------------------------------------------


def test_rotation_rewraps_every_key(
    backend: Backend, data_dir: Path, master_key: bytes, vault: Vault
) -> None:
    pseudonym = Pseudonymizer(vault).user("telegram", 12345)
    blobs = {(owner, f"b{i}"): payload(100 + i) for owner in (OWNER, OTHER, "c0ffee") for i in range(2)}
    for (owner, blob_id), data in blobs.items():
        vault.put(owner, "photo", blob_id, data)
    wrapped_before = wrapped_key(backend, OWNER)

    new_key = new_master_key()
    assert vault.keys.rotate(new_key) == 4  # three owners + the pseudonym secret
    assert wrapped_key(backend, OWNER) != wrapped_before
    assert wrapped_before not in key_store_bytes(backend)  # no stale copy left
    assert vault.get(OWNER, "photo", "b0") == blobs[(OWNER, "b0")]  # the open vault keeps working
    vault.close()

    rotated = Vault(data_dir, new_key, key_table=backend.key_table())
    for (owner, blob_id), data in blobs.items():
        assert rotated.get(owner, "photo", blob_id) == data
    assert Pseudonymizer(rotated).user("telegram", 12345) == pseudonym
    rotated.close()
    with pytest.raises(MasterKeyError):
        Vault(data_dir, master_key, key_table=backend.key_table())


def test_failed_rotation_changes_nothing(
    backend: Backend, data_dir: Path, master_key: bytes, vault: Vault
) -> None:
    vault.put(OWNER, "photo", "p1", b"one")
    vault.put(OTHER, "photo", "p1", b"two")
    backend.set_wrapped_key(OTHER, b"\0" * 60)  # damage one wrapped key
    with pytest.raises(MasterKeyError):
        vault.keys.rotate(new_master_key())
    vault.close()
    again = Vault(data_dir, master_key, key_table=backend.key_table())
    assert again.get(OWNER, "photo", "p1") == b"one"
    again.close()


def test_rotate_master_key_command(
    backend_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m engine rotate-master-key` on the deployment's key store: the new key opens every blob,
    the old one opens nothing (a configured key is printed, a key file is replaced)."""
    from engine.__main__ import rotate_master_key
    from engine.vault import open_vault
    from tests.tiny_settings import tiny_settings

    settings = tiny_settings(tmp_path / "data", **backend_env)
    old = load_or_create_master_key(settings.master_key, settings.data_dir)
    vault = open_vault(settings, old)
    vault.put(OWNER, "photo", "p1", b"one")
    vault.close()

    assert rotate_master_key(settings) == 0
    printed = capsys.readouterr().out
    if settings.master_key:
        new = decode_master_key(printed.strip().splitlines()[-1])
    else:
        new = load_or_create_master_key("", settings.data_dir)
        assert encode_master_key(new) not in printed
    assert new != old
    with pytest.raises(MasterKeyError):
        open_vault(settings, old)
    rotated = open_vault(settings, new)
    assert rotated.get(OWNER, "photo", "p1") == b"one"
    rotated.close()


def test_master_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    key = load_or_create_master_key("", data_dir)
    path = data_dir / "master.key"
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert decode_master_key(path.read_text()) == key
    assert load_or_create_master_key("", data_dir) == key


def test_configured_master_key_wins(tmp_path: Path) -> None:
    key = new_master_key()
    assert load_or_create_master_key(encode_master_key(key), tmp_path) == key
    assert load_or_create_master_key(encode_master_key(key).rstrip("="), tmp_path) == key
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize(
    "configured", ["short", "%%%%", "abcde", encode_master_key(b"x" * 31), encode_master_key(b"x" * 33)]
)
def test_malformed_master_key_is_one_line(tmp_path: Path, configured: str) -> None:
    with pytest.raises(MasterKeyError) as error:
        load_or_create_master_key(configured, tmp_path)
    assert "\n" not in str(error.value)
    assert "master key" in str(error.value)


def test_malformed_master_key_file(tmp_path: Path) -> None:
    (tmp_path / "master.key").write_text("not a key\n")
    with pytest.raises(MasterKeyError):
        load_or_create_master_key("", tmp_path)


# -- pseudonyms -------------------------------------------------------------------------------------------


def test_pseudonyms_are_stable_keyed_and_distinct(
    backend: Backend, data_dir: Path, master_key: bytes, vault: Vault
) -> None:
    pseudonyms = Pseudonymizer(vault)
    first = pseudonyms.user("telegram", 42)
    assert first == pseudonyms.user("telegram", "42")
    assert len({first, pseudonyms.user("discord", 42), pseudonyms.user("telegram", 43)}) == 3
    assert len(first) == 32 and int(first, 16) >= 0
    vault.close()
    reopened = Vault(data_dir, master_key, key_table=backend.key_table())
    assert Pseudonymizer(reopened).user("telegram", 42) == first
    reopened.close()
    other_deployment = Vault(data_dir.parent / "elsewhere", master_key, key_table=backend.other_key_table())
    assert Pseudonymizer(other_deployment).user("telegram", 42) != first  # keyed by a random secret
    other_deployment.close()


async def test_the_data_dir_databases_are_private_files(tmp_path):
    """Like the master key: the database (with its WAL and shared-memory files) and the key store are 0600."""
    # SQLite-only: file modes of the embedded databases; PostgreSQL's files are its server's, not ours.
    from engine.facade import Engine
    from tests.tiny_settings import tiny_settings

    engine = await Engine.open(tiny_settings(tmp_path / "data"))
    try:
        user = engine.pseudonym("console", "someone")
        await engine.give_consent(user, "console", {"chat_id": "c", "user_id": "u"}, "1", "self")
        files = [
            tmp_path / "data" / name
            for name in (
                "likeness.sqlite3",
                "likeness.sqlite3-wal",
                "likeness.sqlite3-shm",
                "keys/keys.sqlite3",
            )
        ]
        assert all(path.exists() for path in files)
        assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {
            path.name: 0o600 for path in files
        }
        assert stat.S_IMODE((tmp_path / "data" / "keys").stat().st_mode) == 0o700
    finally:
        await engine.close()
