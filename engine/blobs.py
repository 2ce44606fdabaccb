"""Where the vault keeps its (already encrypted) blobs: a local folder, or S3-compatible object storage.

Both store only ciphertext: the vault encrypts before `write` and decrypts after `read`. Deleting an
owner removes every object of theirs; on a versioned bucket, every version and delete marker too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Protocol


class BlobStore(Protocol):
    def write(self, owner: str, blob_id: str, data: bytes) -> None: ...
    def read(self, owner: str, blob_id: str) -> bytes:
        """The stored bytes; FileNotFoundError if there are none."""
        ...

    def delete(self, owner: str, blob_id: str) -> bool: ...
    def delete_owner(self, owner: str) -> int:
        """Delete every blob of the owner; returns how many blobs were deleted."""
        ...

    def space_used(self) -> int | None:
        """Bytes stored (all owners), or None where measuring would be costly (a bucket listing)."""
        ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobs:
    """Files `root/<owner>/<blob id>.bin`, written atomically (temp file + fsync + rename)."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, owner: str, blob_id: str) -> Path:
        return self.root / owner / f"{blob_id}.bin"

    def write(self, owner: str, blob_id: str, data: bytes) -> None:
        path = self.path(owner, blob_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)  # a failed write (disk full) leaves no partial file
        _fsync_dir(path.parent)

    def read(self, owner: str, blob_id: str) -> bytes:
        return self.path(owner, blob_id).read_bytes()

    def delete(self, owner: str, blob_id: str) -> bool:
        try:
            self.path(owner, blob_id).unlink()
            return True
        except FileNotFoundError:
            return False

    def delete_owner(self, owner: str) -> int:
        folder = self.root / owner
        removed = 0
        if folder.is_dir():
            for path in folder.iterdir():
                path.unlink(missing_ok=True)
                removed += 1
            folder.rmdir()
        return removed

    def space_used(self) -> int | None:
        total = 0
        for path in self.root.rglob("*"):
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                total += path.stat().st_size if path.is_file() else 0
        return total


class S3Blobs:
    """Objects `<prefix>/<owner>/<blob id>.bin` in one bucket of any S3-compatible service.

    Endpoint, region and credentials come from the standard AWS environment variables and files
    (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...). Path-style addressing, which
    S3-compatible servers need, is used throughout.
    """

    def __init__(self, url: str):
        import boto3
        from botocore.config import Config

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client(
            "s3", config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard"})
        )

    def space_used(self) -> int | None:
        return None  # listing a whole bucket at every scrape would be costly; the provider reports it

    def key(self, owner: str, blob_id: str) -> str:
        return f"{self.owner_prefix(owner)}{blob_id}.bin"

    def owner_prefix(self, owner: str) -> str:
        return f"{self.prefix}/{owner}/" if self.prefix else f"{owner}/"

    def write(self, owner: str, blob_id: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(owner, blob_id), Body=data)

    def read(self, owner: str, blob_id: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(owner, blob_id))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(blob_id) from None

    def delete(self, owner: str, blob_id: str) -> bool:
        return self._delete_versions(self.key(owner, blob_id)) > 0

    def delete_owner(self, owner: str) -> int:
        return self._delete_versions(self.owner_prefix(owner))

    def _delete_versions(self, prefix: str) -> int:
        """Delete every version and delete marker under `prefix` (a plain delete on a versioned bucket
        only hides the object). Returns how many distinct objects had versions."""
        keys: set[str] = set()
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            entries = [*page.get("Versions", []), *page.get("DeleteMarkers", [])]
            entries = [entry for entry in entries if entry["Key"] == prefix or prefix.endswith("/")]
            if not entries:
                continue
            keys.update(entry["Key"] for entry in page.get("Versions", []))
            objects = [{"Key": entry["Key"], "VersionId": entry["VersionId"]} for entry in entries]
            for start in range(0, len(objects), 1000):
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects[start : start + 1000], "Quiet": True}
                )
        return len(keys)


def open_blobs(url: str, data_dir: Path) -> BlobStore:
    """The configured blob store: `s3://bucket/prefix`, or (empty) the `blobs/` folder in the data dir."""
    return S3Blobs(url) if url else LocalBlobs(data_dir / "blobs")
