"""The model repository: where data scientists publish models and builds fetch them.

Layout under a store URI `az://<container>/<prefix>` (or `file://<dir>`):
`<prefix>/<version>/model.onnx`, `<prefix>/<version>/metadata.json`, and `<prefix>/latest.json`
naming the newest version, written last so a reader never sees a half-published version.
A fetch downloads into a temporary file beside the target, verifies the sha256, then renames
it into place: this module must never leave a partial or unverified model where a model
belongs, and must never put a credential into a message.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from .errors import PipelineError

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
LATEST_POINTER = "latest.json"
LOCK_FILE = "model.lock.json"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
CHUNK = 4 * 1024 * 1024

# Azurite's documented development account: public by design, valid only against the emulator.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class StoreObjectMissing(PipelineError):
    pass


def new_version() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d.%H%M%S")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelStore:
    """One backend's primitive operations on keys below the store's prefix."""

    uri: str

    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def upload_file(self, key: str, path: Path) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        raise NotImplementedError

    def etag(self, key: str) -> str:
        return ""

    def read_json(self, key: str) -> dict:
        try:
            return json.loads(self.read_bytes(key))
        except ValueError:
            raise PipelineError(
                f"{self.uri}/{key} is not valid JSON.",
                "Publish the model again with `invoke model.publish --force`.",
            ) from None


class FileStore(ModelStore):
    def __init__(self, root: Path):
        self.root = root
        self.uri = f"file://{root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def read_bytes(self, key):
        path = self._path(key)
        if not path.exists():
            raise StoreObjectMissing(f"{self.uri}/{key} does not exist.")
        return path.read_bytes()

    def write_bytes(self, key, data):
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.partial")
        temporary.write_bytes(data)
        os.replace(temporary, path)

    def upload_file(self, key, path):
        self.write_bytes(key, Path(path).read_bytes())

    def exists(self, key):
        return self._path(key).exists()

    def iter_chunks(self, key):
        path = self._path(key)
        if not path.exists():
            raise StoreObjectMissing(f"{self.uri}/{key} does not exist.")
        with open(path, "rb") as handle:
            yield from iter(lambda: handle.read(CHUNK), b"")


class AzureBlobStore(ModelStore):
    def __init__(self, container: str, prefix: str, account_url: str):
        from azure.storage.blob import BlobServiceClient

        self.container = container
        self.prefix = prefix.strip("/")
        self.uri = f"az://{container}/{self.prefix}".rstrip("/")
        self.account_url = account_url
        from azure.storage.blob import ExponentialRetry

        # The SDK's default backoff starts at 15 s: an unreachable store would hang for
        # a minute and a half before saying so.
        retry = ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=3)
        options = dict(retry_policy=retry, connection_timeout=5, read_timeout=60)
        connection_string = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        sas = os.environ.get("AZURE_STORAGE_SAS_TOKEN")
        if connection_string:
            service = BlobServiceClient.from_connection_string(connection_string, **options)
        elif sas:
            service = BlobServiceClient(account_url, credential=sas, **options)
        elif is_loopback(account_url):
            # A loopback endpoint is the Azurite emulator: use its documented dev account.
            credential = {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
            service = BlobServiceClient(account_url, credential=credential, **options)
        else:
            from azure.identity import DefaultAzureCredential  # optional: only for real Azure

            service = BlobServiceClient(account_url, credential=DefaultAzureCredential(), **options)
        self.endpoint = service.url.split("?")[0]
        self._container = service.get_container_client(container)

    def _blob(self, key: str):
        return self._container.get_blob_client(f"{self.prefix}/{key}" if self.prefix else key)

    @contextmanager
    def _translated_errors(self, key: str):
        """Turn the SDK's exceptions into PipelineErrors that name no credential."""
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        try:
            yield
        except ResourceNotFoundError as error:
            what = "container" if "ContainerNotFound" in str(error.error_code) else "object"
            target = self.container if what == "container" else f"{self.uri}/{key}"
            raise StoreObjectMissing(
                f"The model store has no {what} {target}.",
                "Publish a model first (`invoke model.publish`) or check model_store.uri.",
            ) from None
        except ClientAuthenticationError:
            raise PipelineError(
                f"The model store at {self.endpoint} refused the credentials.",
                "Check AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_SAS_TOKEN or `az login`.",
            ) from None
        except (ServiceRequestError, ServiceResponseError):
            raise PipelineError(
                f"Cannot reach the model store at {self.endpoint}.",
                "Check the network and model_store.account_url; for --env=local run "
                "`invoke local.up` to start Azurite.",
            ) from None
        except HttpResponseError as error:
            if error.status_code == 403:
                raise PipelineError(
                    f"The model store at {self.endpoint} refused access to {self.uri}/{key}.",
                    "Check the storage credentials and their permissions.",
                ) from None
            raise PipelineError(
                f"The model store at {self.endpoint} answered {error.status_code} "
                f"for {self.uri}/{key}.",
                "Try again; if it persists, check the storage account.",
            ) from None

    def _call(self, action, key: str):
        with self._translated_errors(key):
            return action()

    def read_bytes(self, key):
        return self._call(lambda: self._blob(key).download_blob().readall(), key)

    def write_bytes(self, key, data):
        self._call(lambda: self._blob(key).upload_blob(data, overwrite=True), key)

    def upload_file(self, key, path):
        with self._translated_errors(key), open(path, "rb") as handle:
            self._blob(key).upload_blob(handle, overwrite=True, max_concurrency=4)

    def exists(self, key):
        return self._call(lambda: self._blob(key).exists(), key)

    def etag(self, key):
        return self._call(lambda: self._blob(key).get_blob_properties().etag, key).strip('"')

    def iter_chunks(self, key):
        with self._translated_errors(key):
            yield from self._blob(key).download_blob(max_concurrency=4).chunks()

    def ensure_container(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with self._translated_errors(""):
            try:
                self._container.create_container()
            except ResourceExistsError:
                pass


def is_loopback(url: str) -> bool:
    return urlparse(url).hostname in ("127.0.0.1", "localhost", "::1")


def open_store(uri: str, account_url: str = "") -> ModelStore:
    """A store for `az://container/prefix` or `file:///dir`."""
    parsed = urlparse(uri)
    if parsed.scheme == "az":
        if not account_url:
            raise PipelineError(
                f"No storage account is configured for {uri}.",
                "Set model_store.account_url for this environment in invoke.yaml.",
            )
        if account_url.startswith("http://") and not is_loopback(account_url):
            raise PipelineError(
                f"Refusing plain http for the model store at {account_url}.",
                "Use https; plain http is only allowed for a loopback emulator.",
            )
        return AzureBlobStore(parsed.netloc, parsed.path, account_url)
    if parsed.scheme == "file":
        return FileStore(Path(parsed.path))
    raise PipelineError(
        f"Unsupported model store URI '{uri}'.",
        "Use az://<container>/<prefix> or file:///<dir>.",
    )


# --- the data scientists' side ------------------------------------------------------------


def publish(store: ModelStore, model_dir: Path, version: str, force: bool = False) -> dict:
    """Upload model + metadata under `<version>/`, then move the latest pointer to it."""
    if not VERSION_PATTERN.match(version):
        raise PipelineError(
            f"'{version}' is not a valid model version.",
            "Use letters, digits, '.', '_' or '-' (at most 64 characters).",
        )
    metadata_path = model_dir / METADATA_FILE
    model_path = model_dir / MODEL_FILE
    metadata = json.loads(metadata_path.read_text())
    if metadata.get("sha256") != sha256_of(model_path):
        raise PipelineError(
            f"{model_path} does not match the sha256 in {metadata_path}.",
            "Export the model again; never edit a model file after describing it.",
        )
    if isinstance(store, AzureBlobStore):
        store.ensure_container()
    if store.exists(f"{version}/{METADATA_FILE}") and not force:
        raise PipelineError(
            f"Version {version} is already published in {store.uri}.",
            "Publish under a new version, or pass --force to replace it.",
        )
    store.upload_file(f"{version}/{MODEL_FILE}", model_path)
    store.write_bytes(f"{version}/{METADATA_FILE}", json.dumps(metadata, indent=2).encode())
    # The pointer goes last: until it moves, readers keep getting the previous version.
    store.write_bytes(LATEST_POINTER, json.dumps({"version": version}).encode())
    return metadata


# --- the build's side ---------------------------------------------------------------------


@dataclass(frozen=True)
class FetchResult:
    version: str
    sha256: str
    size: int
    path: Path
    downloaded: bool


def resolve_version(store: ModelStore, version: str) -> str:
    if version != "latest":
        return version
    try:
        pointer = store.read_json(LATEST_POINTER)
    except StoreObjectMissing:
        raise PipelineError(
            f"No model has been published to {store.uri} yet.",
            "Publish one with `invoke model.publish` (data scientists' side).",
        ) from None
    resolved = pointer.get("version", "")
    if not VERSION_PATTERN.match(str(resolved)):
        raise PipelineError(
            f"{store.uri}/{LATEST_POINTER} names no valid version.",
            "Publish the model again with `invoke model.publish`.",
        )
    return resolved


def read_lock(target_dir: Path) -> dict | None:
    lock = target_dir / LOCK_FILE
    return json.loads(lock.read_text()) if lock.exists() else None


def fetch(store: ModelStore, target_dir: Path, version: str = "latest") -> FetchResult:
    """Make `target_dir` hold the verified model `version` from `store`."""
    resolved = resolve_version(store, version)
    try:
        metadata = store.read_json(f"{resolved}/{METADATA_FILE}")
    except StoreObjectMissing:
        raise PipelineError(
            f"Model version {resolved} is not in {store.uri}.",
            "Check the version, or publish it with `invoke model.publish`.",
        ) from None
    expected = metadata.get("sha256", "")
    if not re.fullmatch(r"[0-9a-f]{64}", str(expected)):
        raise PipelineError(
            f"The metadata of version {resolved} in {store.uri} has no valid sha256.",
            "Publish the model again with `invoke model.publish --force`.",
        )
    target_dir.mkdir(parents=True, exist_ok=True)
    model_path = target_dir / MODEL_FILE
    lock = read_lock(target_dir)
    if (
        lock and lock.get("sha256") == expected and lock.get("store") == store.uri
        and model_path.exists() and sha256_of(model_path) == expected
    ):
        return FetchResult(resolved, expected, model_path.stat().st_size, model_path, False)

    handle, temporary_name = tempfile.mkstemp(prefix=".model-", suffix=".partial", dir=target_dir)
    temporary = Path(temporary_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(handle, "wb") as out:
            for chunk in store.iter_chunks(f"{resolved}/{MODEL_FILE}"):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            raise PipelineError(
                f"The downloaded model {resolved} has sha256 {digest.hexdigest()[:12]}…, "
                f"but its metadata says {expected[:12]}….",
                "The store copy is corrupt or was replaced mid-publish; publish it again. "
                "The previous local model was kept.",
            )
        etag = store.etag(f"{resolved}/{MODEL_FILE}")
        # mkstemp makes the file owner-only; the image's non-root user must read it.
        temporary.chmod(0o644)
        os.replace(temporary, model_path)
    finally:
        temporary.unlink(missing_ok=True)
    _write_atomically(target_dir / METADATA_FILE, json.dumps(metadata, indent=2))
    _write_atomically(target_dir / LOCK_FILE, json.dumps({
        "store": store.uri, "version": resolved, "sha256": expected, "size": size, "etag": etag,
    }, indent=2))
    return FetchResult(resolved, expected, size, model_path, True)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text + "\n")
    os.replace(temporary, path)
