"""The model store's rules, on a folder store: layout, versions, verification, locks, failures."""

from __future__ import annotations

import errno
import hashlib
import json
import os

import pytest

from modelship import model_store, transfer
from modelship.errors import PipelineError
from modelship.redact import mask
from modelship.stores import FileStore


def write_model(folder, version, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(data)
    (folder / "metadata.json").write_text(json.dumps({
        "name": "digits", "version": version, "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data), "created": "2024-01-01T00:00:00+00:00", "input": {"name": "input", "shape": [None, 2], "dtype": "float32"},
        "golden": [{"instance": [0.0, 1.0], "label": 1}],
    }))
    return folder


@pytest.fixture
def store(tmp_path):
    return FileStore(tmp_path / "store")


@pytest.fixture
def publish(store, tmp_path):
    def publish_version(version, data, force=False):
        folder = write_model(tmp_path / "export" / f"{version}-{len(data)}", version, data)
        return model_store.publish(store, folder, version, force=force)
    return publish_version


class RecordingStore(FileStore):
    """A folder store that remembers the order of writes and counts downloads."""

    def __init__(self, root):
        super().__init__(root)
        self.writes, self.downloads = [], 0

    def write_bytes(self, key, data):
        self.writes.append(key)
        super().write_bytes(key, data)

    def upload_file(self, key, path, progress=None):
        self.writes.append(key)
        super().upload_file(key, path, progress)

    def create_bytes(self, key, data):
        self.writes.append(key)
        super().create_bytes(key, data)

    def download(self, key, sink):
        self.downloads += 1
        return super().download(key, sink)


def stored_model(store, version):
    """The store's copy of a version's model: the file its metadata names."""
    return store.root / version / store.read_json(f"{version}/metadata.json")["model_file"]


def test_publish_writes_one_folder_per_version_and_the_pointer_last(tmp_path):
    store = RecordingStore(tmp_path / "store")
    folder = write_model(tmp_path / "export", "1.0", b"model bytes")
    model_store.publish(store, folder, "1.0")
    model_file = f"model-{hashlib.sha256(b'model bytes').hexdigest()}.onnx"
    assert store.writes == [f"1.0/{model_file}", "1.0/metadata.json", "latest.json"]
    assert json.loads((tmp_path / "store" / "latest.json").read_text())["version"] == "1.0"
    metadata = json.loads((tmp_path / "store" / "1.0" / "metadata.json").read_text())
    assert {"name", "version", "sha256", "size", "created", "input", "golden"} <= set(metadata)
    assert metadata["model_file"] == model_file


def test_publishing_an_existing_version_is_refused_unless_forced(publish, store):
    publish("1", b"first")
    with pytest.raises(PipelineError, match="already published"):
        publish("1", b"second")
    publish("1", b"second", force=True)
    assert stored_model(store, "1").read_bytes() == b"second"


def test_publish_refuses_a_model_that_does_not_match_its_metadata(tmp_path, store):
    folder = write_model(tmp_path / "export", "1", b"described")
    (folder / "model.onnx").write_bytes(b"edited afterwards")
    with pytest.raises(PipelineError, match="does not match the sha256"):
        model_store.publish(store, folder, "1")
    assert not store.exists("latest.json")


def test_publish_refuses_a_version_other_than_the_models_own(tmp_path, store):
    folder = write_model(tmp_path / "export", "1", b"m")
    with pytest.raises(PipelineError, match="describes itself as version 1"):
        model_store.publish(store, folder, "2")


def test_fetch_latest_verifies_renames_and_locks(publish, store, tmp_path):
    publish("1", b"one")
    publish("2", b"two" * 1000)
    result = model_store.fetch(store, tmp_path / "build")
    assert (result.version, result.downloaded, result.size) == ("2", True, 3000)
    assert (tmp_path / "build" / "model.onnx").read_bytes() == b"two" * 1000
    lock = json.loads((tmp_path / "build" / "model.lock.json").read_text())
    assert lock == {"store": store.uri, "version": "2", "sha256": result.sha256, "size": 3000,
                    "etag": lock["etag"]} and lock["etag"]
    assert oct((tmp_path / "build" / "model.onnx").stat().st_mode & 0o777) == "0o644"


def test_an_unchanged_local_model_is_not_downloaded_again(tmp_path):
    store = RecordingStore(tmp_path / "store")
    model_store.publish(store, write_model(tmp_path / "export", "1", b"m" * 100), "1")
    model_store.fetch(store, tmp_path / "build")
    second = model_store.fetch(store, tmp_path / "build")
    assert store.downloads == 1 and second.downloaded is False


def test_a_tampered_local_model_is_downloaded_again(publish, store, tmp_path):
    publish("1", b"m" * 100)
    model_store.fetch(store, tmp_path / "build")
    (tmp_path / "build" / "model.onnx").write_bytes(b"x" * 100)
    assert model_store.fetch(store, tmp_path / "build").downloaded is True
    assert (tmp_path / "build" / "model.onnx").read_bytes() == b"m" * 100


def test_locked_fetch_pins_the_version_and_refuses_a_replaced_one(publish, store, tmp_path):
    publish("1", b"one")
    model_store.fetch(store, tmp_path / "build")
    publish("2", b"two")
    assert model_store.fetch(store, tmp_path / "build", locked=True).version == "1"
    publish("1", b"one, replaced", force=True)
    with pytest.raises(PipelineError, match="replaced since the lock"):
        model_store.fetch(store, tmp_path / "build", locked=True)
    assert (tmp_path / "build" / "model.onnx").read_bytes() == b"one"


def test_locked_fetch_without_a_lock_file_says_what_to_do(publish, store, tmp_path):
    publish("1", b"one")
    with pytest.raises(PipelineError, match="needs a lock file"):
        model_store.fetch(store, tmp_path / "build", locked=True)


def test_a_corrupt_store_copy_fails_and_keeps_the_previous_model(publish, store, tmp_path):
    publish("1", b"good")
    model_store.fetch(store, tmp_path / "build")
    publish("2", b"new model")
    stored_model(store, "2").write_bytes(b"bit rot!!")
    with pytest.raises(PipelineError, match="sha256"):
        model_store.fetch(store, tmp_path / "build")
    assert (tmp_path / "build" / "model.onnx").read_bytes() == b"good"
    assert model_store.read_lock(tmp_path / "build")["version"] == "1"
    assert not [p for p in (tmp_path / "build").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("where", ["reserving space", "writing"])
def test_a_full_disk_fails_clearly_and_keeps_the_previous_model(publish, store, tmp_path,
                                                                 monkeypatch, where):
    publish("1", b"good")
    model_store.fetch(store, tmp_path / "build")
    publish("2", b"new model" * 100)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "writing":
        monkeypatch.setattr(transfer.os, "pwrite", disk_full)
    else:
        monkeypatch.setattr(model_store.os, "posix_fallocate", disk_full)
    with pytest.raises(PipelineError, match="Not enough disk space"):
        model_store.fetch(store, tmp_path / "build")
    assert (tmp_path / "build" / "model.onnx").read_bytes() == b"good"
    assert not [p for p in (tmp_path / "build").iterdir() if p.name.startswith(".")]


def test_missing_version_and_empty_store_are_named(publish, store, tmp_path):
    with pytest.raises(PipelineError, match="No model has been published"):
        model_store.fetch(store, tmp_path / "build")
    publish("1", b"one")
    with pytest.raises(PipelineError, match="version 7 is not in"):
        model_store.fetch(store, tmp_path / "build", "7")


@pytest.mark.parametrize("uri, kwargs", [
    ("az://models/digits", {"account_url": "http://storage.example.com/acct"}),
    ("s3://models/digits", {"endpoint_url": "http://s3.example.com"}),
])
def test_plain_http_is_refused_beyond_loopback(uri, kwargs, monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    with pytest.raises(PipelineError, match="Refusing plain http"):
        model_store.open_store(uri, **kwargs)


def test_plain_http_is_allowed_for_a_loopback_emulator(monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_SAS_TOKEN", raising=False)
    store = model_store.open_store("az://models/digits", "http://127.0.0.1:10000/devstoreaccount1")
    assert store.uri == "az://models/digits"


def test_a_connection_string_pointing_at_plain_http_elsewhere_is_refused_masked(monkeypatch):
    key = "c2VjcmV0LWtleS1zZWNyZXQta2V5LXNlY3JldC1rZXk="
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={key};"
                       "BlobEndpoint=http://storage.example.com/acct;")
    with pytest.raises(PipelineError, match="Refusing plain http") as refused:
        model_store.open_store("az://models/digits", "")
    assert key not in str(refused.value)


def test_s3_refusals_and_missing_buckets_read_clearly(monkeypatch):
    from botocore.stub import Stubber

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example-secret-access-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = model_store.open_store("s3://models/digits")
    with Stubber(store._client) as stub:
        stub.add_client_error("get_object", "AccessDenied", http_status_code=403)
        stub.add_client_error("get_object", "NoSuchBucket", http_status_code=404)
        with pytest.raises(PipelineError, match="refused access .*AccessDenied"):
            store.read_bytes("latest.json")
        with pytest.raises(PipelineError, match="no bucket 'models'"):
            store.read_bytes("latest.json")


def test_secrets_are_masked_in_messages(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "sv=2024&sp=r&sig=abcdefSECRET")
    text = ("GET https://a.blob.core.windows.net/c/m?sv=2024&sp=r&sig=abcdefSECRET "
            "AccountKey=topsecretkey==;X-Amz-Signature=deadbeef aws_secret_access_key = s3cr3t")
    masked = mask(text)
    for secret in ("abcdefSECRET", "topsecretkey", "deadbeef", "s3cr3t"):
        assert secret not in masked
    assert "https://a.blob.core.windows.net/c/m" in masked


def test_verifying_writer_hashes_out_of_order_and_rewritten_ranges(tmp_path):
    data = os.urandom(3 * 1024 + 17)
    expected = hashlib.sha256(data).hexdigest()
    for order, rewrite in (([2, 0, 1], False), ([0, 2, 1], True)):
        path = tmp_path / f"out-{rewrite}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        writer = transfer.VerifyingWriter(fd, len(data))
        pieces = [(0, 1024), (1024, 2048), (2048, len(data))]
        for index in order:
            start, end = pieces[index]
            writer.seek(start)
            writer.write(data[start:end])
        if rewrite:  # a retried range: written twice, the second time correctly
            writer.seek(1024)
            writer.write(data[1024:2048])
        assert writer.hexdigest() == expected
        os.close(fd)
        assert path.read_bytes() == data


def test_the_azure_download_is_authorised_as_the_sdk_client_is(monkeypatch):
    """SAS in the URL, a read-only SAS signed with an account key, or a bearer token."""
    from azure.core.credentials import AccessToken
    from azure.storage.blob import BlobClient

    from modelship.stores.azure_blob import AZURITE_ACCOUNT, AZURITE_KEY, authorised_get

    account = "https://acct.blob.core.windows.net"
    with_sas = BlobClient(account, "models", "d/1/model.onnx", credential="sv=2024&sig=abc")
    url, headers = authorised_get(with_sas)
    assert url.endswith("/models/d/1/model.onnx?sv=2024&sig=abc")
    assert "Authorization" not in headers and headers["x-ms-version"]

    keyed = BlobClient(account, "models", "d/1/model.onnx",
                       credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY})
    url, headers = authorised_get(keyed)
    query = url.split("?", 1)[1]
    assert "sp=r&" in query and "sig=" in query and "se=" in query  # read-only, expiring
    assert AZURITE_KEY not in url

    class TokenCredential:
        scopes = None

        def get_token(self, *scopes, **kwargs):
            TokenCredential.scopes = scopes
            return AccessToken("token-123", 2**31)

    with_token = BlobClient(account, "models", "d/1/model.onnx", credential=TokenCredential())
    url, headers = authorised_get(with_token)
    assert "?" not in url and headers["Authorization"] == "Bearer token-123"
    assert TokenCredential.scopes == ("https://storage.azure.com/.default",)


def test_list_names_every_version_and_marks_latest(publish, store):
    publish("1", b"one")
    publish("2", b"two!")
    (store.root / "3").mkdir()  # a publish killed before metadata.json: not a version
    (store.root / "3" / "model-x.onnx").write_bytes(b"orphan")
    versions = model_store.list_versions(store)
    assert [(v.version, v.size, v.latest) for v in versions] == [("1", 3, False), ("2", 4, True)]
    assert versions[0].sha256 == hashlib.sha256(b"one").hexdigest()


def test_promote_moves_latest_back_to_an_older_version_and_fetch_follows(publish, store,
                                                                         tmp_path):
    publish("1", b"one")
    publish("2", b"two")
    model_store.promote(store, "1")
    assert model_store.resolve_version(store) == "1"
    assert model_store.fetch(store, tmp_path / "build").version == "1"
    assert (tmp_path / "build" / "model.onnx").read_bytes() == b"one"
    with pytest.raises(PipelineError, match="Model version 7 is not in"):
        model_store.promote(store, "7")
    assert model_store.resolve_version(store) == "1"


def test_dry_promote_checks_the_version_and_leaves_latest(publish, store):
    publish("1", b"one")
    publish("2", b"two")
    pointer_before = (store.root / model_store.LATEST_POINTER).read_bytes()
    assert model_store.promote(store, "1", dry=True)["version"] == "1"
    with pytest.raises(PipelineError, match="Model version 7 is not in"):
        model_store.promote(store, "7", dry=True)
    assert (store.root / model_store.LATEST_POINTER).read_bytes() == pointer_before


def local_set(folder):
    """(model bytes, metadata version, lock version) of a fetched folder."""
    return ((folder / "model.onnx").read_bytes(),
            json.loads((folder / "metadata.json").read_text())["version"],
            json.loads((folder / "model.lock.json").read_text())["version"])


@pytest.mark.parametrize("failing_file", ["metadata.json", "model.lock.json"])
def test_a_disk_that_fills_after_the_model_leaves_the_previous_set_whole(
        publish, store, tmp_path, monkeypatch, failing_file):
    publish("1", b"one")
    model_store.fetch(store, tmp_path / "build")
    publish("2", b"two")
    write = model_store._write_atomically

    def fills_up(path, text):
        if path.name == failing_file:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(path, text)

    monkeypatch.setattr(model_store, "_write_atomically", fills_up)
    with pytest.raises(PipelineError, match="Not enough disk space"):
        model_store.fetch(store, tmp_path / "build")
    assert local_set(tmp_path / "build") == (b"one", "1", "1")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_fetch_interrupted_mid_switch_never_leaves_a_mix_and_the_next_one_recovers(
        publish, store, tmp_path, monkeypatch):
    publish("1", b"one")
    model_store.fetch(store, tmp_path / "build")
    publish("2", b"two")
    renames = []
    real_rename = os.rename

    def interrupted_after_moving_the_old_set_away(source, target):
        renames.append(target)
        real_rename(source, target)
        if len(renames) == 1:
            raise KeyboardInterrupt  # as a killed process would stop there

    monkeypatch.setattr(model_store.os, "rename", interrupted_after_moving_the_old_set_away)
    with pytest.raises(KeyboardInterrupt):
        model_store.fetch(store, tmp_path / "build")
    assert not (tmp_path / "build").exists()  # missing, so nobody builds from a mix
    monkeypatch.setattr(model_store.os, "rename", real_rename)

    model_store.fetch(store, tmp_path / "build")
    assert local_set(tmp_path / "build") == (b"two", "2", "2")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("older, newer", [
    ("20240611.093000", "20240612.080000"), ("2024.06.2", "2024.06.10"), ("9", "10"),
    ("v1", "v2"), ("1.0", "1.0.1"), ("1.0rc1", "1.0"), ("1.0a2", "1.0b1"), ("1.0", "1.0.post1"),
    ("1.0.dev3", "1.0a1"), ("run-9", "run-10"), ("v3-experimental", "v10-experimental"),
])
def test_versions_compare_as_pep_440_or_with_digit_runs_as_numbers(older, newer):
    assert model_store.is_newer(newer, older)
    assert not model_store.is_newer(older, newer)
    assert model_store.moves_latest(older, newer, promote=False)
    assert not model_store.moves_latest(newer, older, promote=False)
    assert model_store.moves_latest(newer, older, promote=True)


def test_a_publish_rewrites_a_broken_pointer_instead_of_being_stuck_on_it(store, publish):
    publish("1", b"one")
    store.write_bytes(model_store.LATEST_POINTER, b'{"version": "x\\ny"}')
    publish("0", b"zero")  # older than nothing readable: the pointer is made good again
    assert model_store.resolve_version(store) == "0"


def test_a_publish_whose_metadata_write_fails_removes_the_model_it_uploaded(store, tmp_path):
    class FailingMetadata(FileStore):
        def create_bytes(self, key, data):
            raise PipelineError("the share went away", "try again")

    failing = FailingMetadata(store.root)
    with pytest.raises(PipelineError, match="the share went away"):
        model_store.publish(failing, write_model(tmp_path / "m", "1", b"one"), "1")
    assert store.list_keys() == [] and store.leftover_partials() == []
