"""Where async jobs keep their inputs, records and results: a folder locally, S3 on AWS
(`aws.async_queue.S3Store`), behind one small interface.

Keys are relative (`inputs/<id>`, `jobs/<id>.json`, `results/<id>.json`, `failures/<id>.json`);
`uri(key)` is what a client is told (`file://...` or `s3://bucket/...`). `put_if_absent` is the
write that makes a job complete once: the first result stays, a second worker's is dropped.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol


class InputError(ValueError):
    """An input URI a job cannot read: outside the store, or missing; the message names it."""


class ObjectStore(Protocol):
    def uri(self, key: str) -> str: ...

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write unless the key exists; True when this call wrote it."""

    def key_of(self, uri: str) -> str:
        """The key of a URI inside this store; InputError naming it otherwise."""

    def size(self, key: str) -> int | None:
        """Bytes of the object, None when there is none."""


class LocalStore:
    """A folder; writes are atomic (a temporary file renamed, or linked for put_if_absent)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if not p.is_relative_to(self.root):
            raise InputError(f"{key!r}: outside the job store {self.root}")
        return p

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_of(self, uri: str) -> str:
        raw = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
        path = (self.root / raw).resolve()  # a relative path is inside the store
        if not path.is_relative_to(self.root):
            raise InputError(f"input {uri!r}: outside the job store {self.root.as_uri()}")
        return str(path.relative_to(self.root))

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def _temp(self, p: Path, data: bytes) -> str:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return tmp

    def put(self, key: str, data: bytes) -> None:
        p = self._path(key)
        os.replace(self._temp(p, data), p)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        p = self._path(key)
        tmp = self._temp(p, data)
        try:
            os.link(tmp, p)  # fails if p exists: the first writer wins, whole
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
