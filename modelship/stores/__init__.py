"""Model store backends behind one interface: Azure Blob, S3 and a plain folder.

A backend knows how to read, write and download objects named by keys below its prefix,
and turns its SDK's exceptions into `PipelineError`s a user can act on. Layout, versions,
verification and locking live in `modelship.model_store`, never here. A backend must never
put a credential into a message, and never talk plain http to anything but loopback.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from ..errors import PipelineError

COPY_CHUNK = 8 * 1024 * 1024


class StoreObjectExists(PipelineError):
    """A create-only write found the object already there: someone else wrote it first."""


class StoreObjectChanged(PipelineError):
    """A conditional replace found the object rewritten (or created) since it was read."""


class StoreObjectMissing(PipelineError):
    """The container, bucket or object asked for does not exist."""

    def __init__(self, problem: str, fix: str = "", *, whole_store: bool = False):
        super().__init__(problem, fix)
        # True when the container or bucket itself is missing, not just one object.
        self.whole_store = whole_store


def is_loopback(url: str) -> bool:
    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


def refuse_plain_http(url: str, setting: str) -> None:
    """Plain http is only for emulators on this machine: anything else could leak the model."""
    if url.lower().startswith("http://") and not is_loopback(url):
        from ..redact import without_query

        raise PipelineError(
            f"Refusing plain http for the model store at {without_query(url)}.",
            f"Use an https endpoint in {setting}; plain http is only allowed for a loopback "
            "emulator.",
        )


class ModelStore:
    """One backend's primitive operations on keys below the store's prefix."""

    uri: str

    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def upload_file(self, key: str, path: Path, progress=None) -> None:
        raise NotImplementedError

    def create_bytes(self, key: str, data: bytes) -> None:
        """Write `key` only if it does not exist, atomically; else raise StoreObjectExists.

        Of two writers racing for the same key exactly one succeeds: the check and the
        write are one operation on the server (If-None-Match: *, or an exclusive link).
        """
        raise NotImplementedError

    def read_tagged(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and a tag that changes whenever the object is rewritten (the
        service's etag); StoreObjectMissing when there is none."""
        raise NotImplementedError

    def replace_bytes(self, key: str, data: bytes, tag: str | None) -> None:
        """Write `key` only if it is still what `read_tagged` saw (`tag`), or still absent
        when `tag` is None; else raise StoreObjectChanged. The check and the write are one
        operation on the server (If-Match / If-None-Match), so of two writers that read the
        same object exactly one replaces it."""
        if tag is None:
            try:
                self.create_bytes(key, data)
            except StoreObjectExists:
                raise StoreObjectChanged(f"{self.uri}/{key} was created meanwhile.") from None
            return
        self._replace_existing(key, data, tag)

    def _replace_existing(self, key: str, data: bytes, tag: str) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        """Remove `key`; nothing happens when it is already gone."""
        raise NotImplementedError

    def leftover_partials(self) -> list[str]:
        """Half-written files an interrupted writer left (keys, sorted). Only a folder store
        has them: the cloud services never show an unfinished upload as an object."""
        return []

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key below `prefix` (relative to the store's own prefix), sorted."""
        raise NotImplementedError

    def download(self, key: str, sink) -> str:
        """Write the object into the seekable file object `sink`; return its etag."""
        raise NotImplementedError

    def prepare_publish(self) -> None:
        """Make sure a publish can write (e.g. create the container); nothing by default."""

    def read_json(self, key: str) -> dict:
        try:
            value = json.loads(self.read_bytes(key))
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise PipelineError(
                f"{self.uri}/{key} is not a valid JSON object.",
                "Publish the model again with `invoke model.publish --force`.",
            )
        return value


def _unique_temporary(path: Path) -> Path:
    """A partial file beside `path` that no concurrent writer shares (one fixed name would)."""
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    return Path(name)


class FileStore(ModelStore):
    """A folder as a store: for tests, air-gapped builds and a shared network drive."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.uri = f"file://{self.root}"

    @contextmanager
    def _file_errors(self, key: str):
        """A folder that cannot be made, read or written is the user's to fix: say which."""
        try:
            yield
        except (StoreObjectExists, StoreObjectMissing):
            raise
        except OSError as error:
            reason = error.strerror or type(error).__name__
            where = error.filename or self._path(key)
            raise PipelineError(
                f"The model store {self.uri} cannot be used: {where}: {reason}.",
                "Point model_store.uri at a folder that exists (or can be created) and that "
                "this user may read and write.",
            ) from None

    def _path(self, key: str) -> Path:
        return self.root / key

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise StoreObjectMissing(f"{self.uri}/{key} does not exist.")
        return path

    def read_bytes(self, key):
        with self._file_errors(key):
            return self._existing(key).read_bytes()

    def write_bytes(self, key, data):
        with self._file_errors(key):
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = _unique_temporary(path)
            try:
                temporary.write_bytes(data)
                os.replace(temporary, path)
            finally:
                temporary.unlink(missing_ok=True)

    def upload_file(self, key, path, progress=None):
        with self._file_errors(key):
            target = self._path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = _unique_temporary(target)
            try:
                with open(path, "rb") as source, open(temporary, "wb") as copy:
                    for block in iter(lambda: source.read(COPY_CHUNK), b""):
                        copy.write(block)
                        if progress is not None:
                            progress.advance(len(block))
                os.replace(temporary, target)
            finally:
                temporary.unlink(missing_ok=True)

    def create_bytes(self, key, data):
        with self._file_errors(key):
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial",
                                                 dir=path.parent)
            try:
                with os.fdopen(handle, "wb") as stream:
                    stream.write(data)
                os.chmod(temporary, 0o644)
                # link() refuses an existing target, and the file it links is already whole.
                os.link(temporary, path)
            except FileExistsError:
                raise StoreObjectExists(f"{self.uri}/{key} already exists.") from None
            finally:
                Path(temporary).unlink(missing_ok=True)

    def read_tagged(self, key):
        data = self.read_bytes(key)
        return data, hashlib.sha256(data).hexdigest()

    def _replace_existing(self, key, data, tag):
        # A folder has no conditional write: writers on this machine (or on a share that
        # honours flock) take turns on a lock file beside the key, and compare under it.
        path = self._path(key)
        with self._file_errors(key), open(path.with_name(f".{path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                current = None
            if current != tag:
                raise StoreObjectChanged(f"{self.uri}/{key} was rewritten meanwhile.")
            self.write_bytes(key, data)

    def exists(self, key):
        with self._file_errors(key):
            return self._path(key).is_file()

    def delete(self, key):
        with self._file_errors(key):
            self._path(key).unlink(missing_ok=True)

    def leftover_partials(self):
        with self._file_errors(""):
            if not self.root.is_dir():
                return []
            return sorted(str(path.relative_to(self.root)) for path in self.root.rglob(".*.partial")
                          if path.is_file())

    def list_keys(self, prefix=""):
        with self._file_errors(prefix):
            base = self._path(prefix) if prefix else self.root
            if not base.is_dir():
                return []
            return sorted(str(path.relative_to(self.root)) for path in base.rglob("*")
                          if path.is_file() and not path.name.startswith("."))

    def download(self, key, sink):
        path = self._existing(key)
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(COPY_CHUNK), b""):
                sink.write(block)
        stat = path.stat()
        return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"
