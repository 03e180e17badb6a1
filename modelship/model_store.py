"""The model repository: where data scientists publish models and builds fetch them.

Layout under a store URI (`az://<container>/<prefix>`, `s3://<bucket>/<prefix>` or
`file:///<dir>`): `<version>/model.onnx` and `<version>/metadata.json` per version, and
`latest.json` naming the newest version, written last so a reader never sees a
half-published version. A fetch resolves the version, skips the transfer when the local copy
already has the right sha256, else downloads into a temporary file beside the target,
verifies the sha256 and renames it into place, then writes a lock file naming exactly what
it fetched. This module must never leave a partial or unverified model where a model
belongs, and must never put a credential into a message.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

from packaging.version import InvalidVersion, Version

from . import model_metadata
from .errors import PipelineError
from .redact import mask
from .stores import (FileStore, ModelStore, StoreObjectChanged, StoreObjectExists,
                     StoreObjectMissing, is_loopback, refuse_plain_http)
from .stores.azure_blob import AZURITE_ACCOUNT, AZURITE_KEY
from .transfer import ProgressFactory, VerifyingWriter, console_progress

__all__ = [
    "AZURITE_ACCOUNT", "AZURITE_KEY", "FetchResult", "FileStore", "ModelStore",
    "StoreObjectMissing", "fetch", "is_loopback", "new_version", "open_store", "publish",
    "read_lock", "resolve_version", "sha256_of",
]

MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
LATEST_POINTER = "latest.json"
LOCK_FILE = "model.lock.json"
VERSION_PATTERN = model_metadata.LABEL_SAFE
SHA256_PATTERN = model_metadata.SHA256
HASH_CHUNK = 8 * 1024 * 1024
# A corrupted transfer is downloaded once more before giving up: the SDKs retry broken
# connections themselves, but only the sha256 can tell that bytes were altered.
DOWNLOAD_ATTEMPTS = 2


class ChecksumMismatch(PipelineError):
    pass


def _secrets_masked(function):
    """Whatever the function raises for the user to read goes out with secrets masked."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except PipelineError as error:
            error.problem, error.fix = mask(error.problem), mask(error.fix)
            error.args = (error.problem,)
            raise
    return wrapper


def new_version() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d.%H%M%S")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@_secrets_masked
def open_store(uri: str, account_url: str = "", endpoint_url: str = "",
               env: str = "") -> ModelStore:
    """A store for `az://container/prefix`, `s3://bucket/prefix` or `file:///dir`; `env`
    names the environment in its advice."""
    parsed = urlparse(uri)
    if parsed.scheme == "az":
        if not account_url and not os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
            raise PipelineError(
                f"No storage account is configured for {uri}.",
                f"Set model_store.account_url for '{env}' in invoke.yaml.",
            )
        if account_url:
            refuse_plain_http(account_url, "model_store.account_url")
        from .stores.azure_blob import AzureBlobStore

        return AzureBlobStore(parsed.netloc, parsed.path, account_url, env)
    if parsed.scheme == "s3":
        from .stores.s3 import S3Store

        return S3Store(parsed.netloc, parsed.path, endpoint_url, env)
    if parsed.scheme == "file":
        return FileStore(Path(parsed.netloc + parsed.path))
    raise PipelineError(
        f"Unsupported model store URI '{uri}'.",
        "Use az://<container>/<prefix>, s3://<bucket>/<prefix> or file:///<dir>.",
    )


# --- the data scientists' side ------------------------------------------------------------


def read_model_dir(model_dir: Path) -> dict:
    """The metadata of a folder ready to publish, checked against its model file."""
    model_dir = Path(model_dir)
    metadata_path, model_path = model_dir / METADATA_FILE, model_dir / MODEL_FILE
    if not (metadata_path.is_file() and model_path.is_file()):
        raise PipelineError(
            f"{model_dir} does not hold {MODEL_FILE} and {METADATA_FILE}.",
            "Point --model-dir at an exported model folder.",
        )
    try:
        metadata = json.loads(metadata_path.read_text())
    except ValueError as error:
        raise PipelineError(f"{metadata_path} is not valid JSON ({error}).",
                            "Export the model again.") from None
    model_metadata.check(metadata, str(metadata_path),
                         "Describe the model again: `invoke model.publish --model FILE.onnx "
                         "--samples FILE.json` writes valid metadata (docs/model-store.md).")
    if metadata["sha256"] != sha256_of(model_path) or metadata["size"] != model_path.stat().st_size:
        raise PipelineError(
            f"{model_path} does not match the sha256 and size in {metadata_path}.",
            "Export the model again; never edit a model file after describing it.",
        )
    return metadata


# Names a version may not take: `latest` is what fetch-model and promote read as "the
# pointer", and `latest.json` is the pointer's own key (a folder of that name would sit
# beside or, on a folder store, in place of it). Compared case-blind: a store on a
# case-insensitive share holds only one of `latest.json` and `Latest.json`.
RESERVED_VERSIONS = frozenset({"latest", LATEST_POINTER})


def require_publishable_version(version: str) -> str:
    """`version` if a publish may use it; else a PipelineError saying why not."""
    model_metadata.require_label_safe(version, "The version")
    if version.casefold() in RESERVED_VERSIONS:
        raise PipelineError(
            f"'{version}' cannot be a model version: the store uses that name for its "
            "pointer to the newest version.",
            "Publish under another --version (the default is a UTC timestamp).")
    return version


def _digit_runs(version: str) -> tuple:
    parts = re.split(r"(\d+)", version)
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts if part)


def is_newer(version: str, than: str) -> bool:
    """Whether `version` comes after `than`. Two PEP 440 versions compare as pip does, so
    1.0rc1 < 1.0 < 1.0.post1 and 2024.06.2 < 2024.06.10; anything else (a team's own scheme,
    such as v3-experimental) compares digit runs as numbers and the rest as text, so
    run-9 < run-10."""
    try:
        return Version(version) > Version(than)
    except InvalidVersion:
        return _digit_runs(version) > _digit_runs(than)


def latest_or_none(store: ModelStore) -> str | None:
    """The version `latest` names before a publish; None when there is no pointer, or one
    that names no valid version (the publish writes a good one)."""
    if not store.exists(LATEST_POINTER):
        return None
    try:
        return resolve_version(store)
    except StoreObjectMissing:
        raise
    except PipelineError:
        return None


def moves_latest(current: str | None, version: str, promote: bool) -> bool:
    """Whether publishing `version` moves `latest`: the first version, the same one again
    (its sha256 in the pointer may change), a newer one, or whatever `--promote` says."""
    return (promote or current is None or current == version
            or is_newer(version, current))


class PublishInterrupted(PipelineError):
    pass


@contextmanager
def _interruptible():
    """A SIGTERM (a cancelled pipeline, `kill`) ends the publish through its cleanup, like
    Ctrl-C does, instead of leaving half-written objects behind. Only the main thread can
    take signals; elsewhere the default stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(_signal, _frame):
        raise PublishInterrupted("The publish was stopped (SIGTERM) before it finished.",
                                 "Nothing was published; run it again.")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _named_by_metadata(store: ModelStore, version: str) -> set[str]:
    """The keys the version's metadata.json names, or none if it has no readable one."""
    try:
        metadata = store.read_json(f"{version}/{METADATA_FILE}")
    except PipelineError:
        return set()
    names = {metadata.get("model_file", MODEL_FILE), metadata.get("signature_file")}
    return {f"{version}/{name}" for name in names if isinstance(name, str)}


def _remove_unnamed(store: ModelStore, version: str, written: list[str]) -> None:
    """After a failed or lost publish: remove what it wrote that no metadata names (a
    concurrent winner with the same bytes named the same model file: that one stays)."""
    keep = _named_by_metadata(store, version)
    for key in written:
        if key not in keep:
            try:
                store.delete(key)
            except PipelineError:
                pass  # `invoke model.list --orphans` shows what could not be removed


@_secrets_masked
def publish(store: ModelStore, model_dir: Path, version: str, force: bool = False,
            signature: Path | None = None, promote: bool = False) -> dict:
    """Upload model + metadata under `<version>/`, then move the latest pointer to it when
    `moves_latest` says so. A publish that fails or loses a race removes what it uploaded."""
    require_publishable_version(version)
    metadata = read_model_dir(model_dir)
    if str(metadata["version"]) != version:
        raise PipelineError(
            f"The model in {model_dir} describes itself as version {metadata['version']}, "
            f"not {version}.",
            f"Publish it as --version {metadata['version']}, or export it again as {version}.",
        )
    store.prepare_publish()
    metadata_key = f"{version}/{METADATA_FILE}"
    if store.exists(metadata_key) and not force:
        raise _already_published(version, store)
    # The model goes under a name of its own content: a replacement never overwrites the
    # bytes the current metadata names, and two publishers of one version never write
    # into the same object. metadata.json, naming the file, is what makes a version exist.
    model_file = f"model-{metadata['sha256']}.onnx"
    stored = {**metadata, "model_file": model_file}
    written: list[str] = []
    with _interruptible():
        try:
            if not store.exists(f"{version}/{model_file}"):
                model_path = Path(model_dir) / MODEL_FILE
                written.append(f"{version}/{model_file}")
                with console_progress(f"uploading {model_file[:18]}…",
                                      model_path.stat().st_size) as bar:
                    store.upload_file(f"{version}/{model_file}", model_path, progress=bar)
            if signature is not None:
                # Named by its own content too: two publishers of the same bytes (whose
                # signatures differ, as they cover the metadata) never overwrite each other's.
                stored["signature_file"] = _signature_name(Path(signature))
                written.append(f"{version}/{stored['signature_file']}")
                store.upload_file(f"{version}/{stored['signature_file']}", Path(signature))
            body = json.dumps(stored, indent=2).encode()
            if force:
                store.write_bytes(metadata_key, body)  # one atomic PUT/rename: the switch
            else:
                try:
                    store.create_bytes(metadata_key, body)
                except StoreObjectExists:
                    raise _already_published(version, store) from None
        except BaseException:
            _remove_unnamed(store, version, written)
            raise
    # The pointer goes last: until it moves, readers keep getting the previous version.
    published = Published(stored)
    published.latest_before, published.moved_latest = move_latest(
        store, version, metadata["sha256"], promote)
    return published


def _signature_name(signature: Path) -> str:
    return f"signature-{sha256_of(signature)}.sig"


def _already_published(version: str, store: ModelStore) -> PipelineError:
    return PipelineError(
        f"Version {version} is already published in {store.uri}.",
        "Publish under a new version, or pass --force to replace it.",
    )


class Published(dict):
    """A publish's stored metadata, and what it did to `latest`: the version the pointer
    named when it was rewritten (or left), and whether it moved."""
    latest_before: str | None = None
    moved_latest: bool = False


# Each attempt loses only to another publisher's completed pointer write, so this bounds a
# burst of that many publishers finishing at once.
POINTER_ATTEMPTS = 8


def _pointer_body(version: str, sha256: str) -> bytes:
    pointer = {"version": version, "sha256": sha256,
               "published": datetime.now(timezone.utc).isoformat()}
    return json.dumps(pointer, indent=2).encode()


def write_pointer(store: ModelStore, version: str, sha256: str) -> None:
    store.write_bytes(LATEST_POINTER, _pointer_body(version, sha256))


def _pointer_now(store: ModelStore) -> tuple[str | None, str | None]:
    """The version the pointer names (None: absent or unreadable) and its tag (None: absent)."""
    try:
        data, tag = store.read_tagged(LATEST_POINTER)
    except StoreObjectMissing as missing:
        if missing.whole_store:
            raise
        return None, None
    try:
        named = str(json.loads(data).get("version", ""))
    except (ValueError, AttributeError):
        return None, tag
    return (named if VERSION_PATTERN.match(named) else None), tag


def move_latest(store: ModelStore, version: str, sha256: str,
                promote: bool) -> tuple[str | None, bool]:
    """Point `latest` at `version` when `moves_latest` says so, judged against the pointer as
    it is at the moment of the write: the write is conditional on the pointer being the one
    just read, so of two publishers racing, the older version can never overwrite the newer
    one's pointer. Returns the version the pointer named before, and whether it moved."""
    for _attempt in range(POINTER_ATTEMPTS):
        current, tag = _pointer_now(store)
        if not moves_latest(current, version, promote):
            return current, False
        try:
            store.replace_bytes(LATEST_POINTER, _pointer_body(version, sha256), tag)
            return current, True
        except StoreObjectChanged:
            continue  # another publisher moved it first: judge again against theirs
    raise PipelineError(
        f"{store.uri}/{LATEST_POINTER} kept changing while this publish tried to move it "
        f"({POINTER_ATTEMPTS} attempts); {version} itself is published.",
        f"See which version latest names with `invoke model.list`; move it with "
        f"`invoke model.promote --version {version}` if it should be this one.")


@dataclass(frozen=True)
class PublishedVersion:
    version: str
    created: str
    sha256: str
    size: int
    latest: bool


@_secrets_masked
def list_versions(store: ModelStore) -> list[PublishedVersion]:
    """Every published version (one whose metadata.json exists and is valid), oldest first."""
    latest = resolve_version(store) if store.exists(LATEST_POINTER) else None
    versions = sorted({key.split("/")[0] for key in store.list_keys()
                       if key.count("/") == 1 and key.endswith(f"/{METADATA_FILE}")})
    found = []
    for version in versions:
        if not VERSION_PATTERN.match(version):
            continue  # not something publish could have written
        metadata = _read_metadata(store, version)
        found.append(PublishedVersion(version, metadata["created"], metadata["sha256"],
                                      metadata["size"], version == latest))
    return sorted(found, key=lambda entry: (entry.created, entry.version))


@_secrets_masked
def list_orphans(store: ModelStore) -> list[str]:
    """Keys no published version names: what an interrupted or losing publish, or a
    `--force` replacement, left behind (a publish still running shows its files too)."""
    orphans = list(store.leftover_partials())
    by_version: dict[str, list[str]] = {}
    for key in store.list_keys():
        if "/" in key:
            by_version.setdefault(key.split("/", 1)[0], []).append(key)
    for version, keys in sorted(by_version.items()):
        named = _named_by_metadata(store, version) if VERSION_PATTERN.match(version) else set()
        if named:
            named.add(f"{version}/{METADATA_FILE}")
        orphans.extend(key for key in keys if key not in named)
    return sorted(orphans)


@_secrets_masked
def promote(store: ModelStore, version: str, *, dry: bool = False) -> dict:
    """Move `latest` to a published version, newer or older; return its metadata.

    With `dry`, everything is checked (the version exists and its metadata is valid) but the
    pointer is left where it is.
    """
    if not VERSION_PATTERN.match(version):
        raise PipelineError(f"'{version}' is not a valid model version.",
                            "Pick one that `invoke model.list` shows.")
    metadata = _read_metadata(store, version)
    if not dry:
        write_pointer(store, version, metadata["sha256"])
    return metadata


# --- the build's side ---------------------------------------------------------------------


@dataclass(frozen=True)
class FetchResult:
    version: str
    sha256: str
    size: int
    path: Path
    downloaded: bool


def resolve_version(store: ModelStore, version: str = "latest") -> str:
    if version != "latest":
        if not VERSION_PATTERN.match(version):
            raise PipelineError(f"'{version}' is not a valid model version.",
                                "Use 'latest' or a published version.")
        return version
    try:
        pointer = store.read_json(LATEST_POINTER)
    except StoreObjectMissing as missing:
        if missing.whole_store:
            raise
        raise PipelineError(
            f"No model has been published to {store.uri} yet.",
            "Publish one with `invoke model.publish` (data scientists' side).",
        ) from None
    resolved = str(pointer.get("version", ""))
    if not VERSION_PATTERN.match(resolved):
        raise PipelineError(
            f"{store.uri}/{LATEST_POINTER} names no valid version.",
            "Publish the model again with `invoke model.publish`.",
        )
    return resolved


def read_lock(path: Path) -> dict | None:
    """A lock file's content: a folder's `model.lock.json`, or a lock file's own path."""
    path = Path(path)
    if path.is_dir():
        path = path / LOCK_FILE
    try:
        lock = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return lock if isinstance(lock, dict) else None


def _read_metadata(store: ModelStore, version: str) -> dict:
    try:
        metadata = store.read_json(f"{version}/{METADATA_FILE}")
    except StoreObjectMissing as missing:
        if missing.whole_store:
            raise
        raise PipelineError(
            f"Model version {version} is not in {store.uri}.",
            "Check the version, or publish it with `invoke model.publish`.",
        ) from None
    model_metadata.check(
        metadata, f"{store.uri}/{version}/{METADATA_FILE}",
        "Refusing to build from it. Publish the model again with valid metadata "
        "(`invoke model.publish --force`).",
    )
    if metadata["version"] != version:
        raise PipelineError(
            f"{store.uri}/{version}/{METADATA_FILE} describes version {metadata['version']}.",
            "The store was edited by hand; publish the model again with `--force`.",
        )
    return metadata


def _pinned_by_lock(lock_path: Path, store: ModelStore, version: str) -> dict:
    lock = read_lock(lock_path)
    if lock is None:
        raise PipelineError(
            f"--locked needs a lock file, and {lock_path} is missing or unreadable.",
            "Run fetch-model once without --locked (it writes the lock), or pass --lock-file.",
        )
    if lock.get("store") != store.uri:
        raise PipelineError(
            f"The lock file names the store {lock.get('store')}, but this environment uses "
            f"{store.uri}.",
            "Fetch with the environment the lock was written for, or drop --locked.",
        )
    if version not in ("latest", lock.get("version")):
        raise PipelineError(
            f"--locked pins version {lock.get('version')}, but --version asks for {version}.",
            "Pass only one of them.",
        )
    if not VERSION_PATTERN.match(str(lock.get("version", ""))) or not SHA256_PATTERN.match(
        str(lock.get("sha256", ""))
    ):
        raise PipelineError(f"The lock file {lock_path} names no valid version and sha256.",
                            "Run fetch-model without --locked to write a new one.")
    return lock


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text + "\n")
    os.replace(temporary, path)


def _verify_signature(store: ModelStore, version: str, metadata: dict, staging: Path,
                      public_key: Path) -> None:
    from . import signing

    where = f"{store.uri}/{version}"
    signature_file = metadata.get("signature_file")
    if not signature_file:
        raise PipelineError(
            f"Model version {version} in {store.uri} is not signed, and this environment "
            "requires a signature (model_store.public_key is set).",
            "Publish it again with `invoke model.publish --signing-key KEY.pem --force`.",
        )
    signature_path = staging / ".model.sig"
    signature_path.write_bytes(store.read_bytes(f"{version}/{signature_file}"))
    try:
        signing.verify(staging / MODEL_FILE, metadata, signature_path, public_key, where)
    finally:
        signature_path.unlink(missing_ok=True)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        target.chmod(0o644)


def _switch_in(staging: Path, target_dir: Path) -> None:
    """Put the staged folder where `target_dir` is, as two renames.

    Between them `target_dir` is briefly missing (never a mix of two versions); the
    previous folder is removed only once the new one is in place.
    """
    previous = None
    if target_dir.exists():
        previous = target_dir.with_name(f".{target_dir.name}-previous-{os.getpid()}")
        shutil.rmtree(previous, ignore_errors=True)
        os.rename(target_dir, previous)
    os.rename(staging, target_dir)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _remove_leftovers(target_dir: Path) -> None:
    """Folders a fetch killed mid-switch left beside `target_dir`."""
    for pattern in (f".{target_dir.name}-staging-*", f".{target_dir.name}-previous-*"):
        for leftover in target_dir.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


def _disk_error(error: OSError, target_dir: Path, size: int) -> PipelineError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return PipelineError(
            f"Not enough disk space in {target_dir} for the model ({size / 1e6:.0f} MB).",
            "Free some space and fetch again; the previous model was kept.",
        )
    return PipelineError(
        f"Could not write the model into {target_dir}: {error.strerror or error}.",
        "Check the folder's permissions and free space; the previous model was kept.",
    )


def _reserve_space(fd: int, size: int) -> None:
    """Fail on a full disk before transferring anything, where the filesystem can tell."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Filesystems without preallocation: the writes will tell instead.


def _download_once(store: ModelStore, key: str, expected: str, size: int, target_dir: Path,
                   progress: ProgressFactory | None, label: str) -> tuple[Path, str]:
    """Download into a verified temporary file beside the target; return it and the etag."""
    fd, name = tempfile.mkstemp(prefix=".model-", suffix=".partial", dir=target_dir)
    temporary = Path(name)
    bar = progress(label, size) if progress else None
    try:
        try:
            _reserve_space(fd, size)
            sink = VerifyingWriter(fd, size, bar)
            etag = store.download(key, sink)
            # No fsync: a torn file after a power cut fails the sha256 check every fetch and
            # every model load make, and syncing 256 MiB would cost more than the download.
            actual = sink.hexdigest()
        finally:
            os.close(fd)
            if bar is not None:
                bar.close()
        if actual != expected:
            raise ChecksumMismatch(
                f"The downloaded {key} has sha256 {actual[:12]}…, but its metadata says "
                f"{expected[:12]}….",
                "The transfer or the store copy is corrupt; if it persists, publish the model "
                "again. The previous local model was kept.",
            )
        # mkstemp makes the file owner-only; the image's non-root user must read it.
        temporary.chmod(0o644)
        return temporary, etag
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise _disk_error(error, target_dir, size) from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@_secrets_masked
def fetch(store: ModelStore, target_dir: Path, version: str = "latest", *, locked: bool = False,
          lock_file: Path | None = None, progress: ProgressFactory | None = None,
          public_key: Path | None = None) -> FetchResult:
    """Make `target_dir` hold the verified model `version` (or the locked one) from `store`."""
    target_dir = Path(target_dir)
    version = version or "latest"
    if locked:
        pinned = _pinned_by_lock(Path(lock_file or target_dir / LOCK_FILE), store, version)
        resolved = pinned["version"]
    else:
        pinned = None
        resolved = resolve_version(store, version)
    metadata = _read_metadata(store, resolved)
    expected, size = metadata["sha256"], metadata["size"]
    if pinned is not None and pinned["sha256"] != expected:
        raise PipelineError(
            f"Version {resolved} in {store.uri} was replaced since the lock file was written "
            f"(sha256 {expected[:12]}…, the lock says {pinned['sha256'][:12]}…).",
            "A locked build cannot be reproduced from a replaced version; fetch without "
            "--locked to take the new one deliberately.",
        )
    try:
        target_dir.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(target_dir)
        # Model, metadata and lock are assembled in a folder of their own, then switched in
        # together: no interruption leaves a new model beside old metadata.
        staging = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}-staging-",
                                        dir=target_dir.parent))
        staging.chmod(0o755)
    except OSError as error:
        raise _disk_error(error, target_dir, size) from None

    model_path = target_dir / MODEL_FILE
    previous_lock = read_lock(target_dir) or {}
    try:
        local_matches = (
            model_path.is_file() and model_path.stat().st_size == size
            and sha256_of(model_path) == expected
        )
        if local_matches:
            etag = previous_lock.get("etag", "") if previous_lock.get("sha256") == expected else ""
            _link_or_copy(model_path, staging / MODEL_FILE)
            downloaded = False
        else:
            key = f"{resolved}/{metadata.get('model_file', MODEL_FILE)}"
            for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                try:
                    temporary, etag = _download_once(store, key, expected, size, staging,
                                                     progress, f"{store.uri}/{key}")
                    break
                except ChecksumMismatch:
                    if attempt == DOWNLOAD_ATTEMPTS:
                        raise
            os.replace(temporary, staging / MODEL_FILE)
            downloaded = True
        lock = {"store": store.uri, "version": resolved, "sha256": expected, "size": size,
                "etag": etag}
        _write_atomically(staging / METADATA_FILE, json.dumps(metadata, indent=2))
        _write_atomically(staging / LOCK_FILE, json.dumps(lock, indent=2))
        if public_key:
            _verify_signature(store, resolved, metadata, staging, Path(public_key))
        # Verified once more where it will be switched in: the set is what the lock says.
        if sha256_of(staging / MODEL_FILE) != expected:
            raise ChecksumMismatch(f"The staged model in {staging} changed before the switch.",
                                   "Fetch again; the previous model was kept.")
        _switch_in(staging, target_dir)
    except OSError as error:
        raise _disk_error(error, target_dir, size) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FetchResult(resolved, expected, size, model_path, downloaded)
