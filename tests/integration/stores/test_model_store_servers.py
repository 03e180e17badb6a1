"""The model store against real servers on 127.0.0.1: Azurite and moto's S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from modelship import model_store
from modelship.errors import PipelineError
from modelship.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture
def az_store(azurite, azure_env, unique_name):
    return model_store.open_store(f"az://{unique_name}/digits", azurite.url)


@pytest.fixture
def s3_store(moto_s3, aws_env, unique_name):
    boto3.client("s3", endpoint_url=moto_s3.url).create_bucket(Bucket=unique_name)
    return model_store.open_store(f"s3://{unique_name}/digits", endpoint_url=moto_s3.url)


@pytest.fixture(params=["azure", "s3"])
def store(request):
    return request.getfixturevalue("az_store" if request.param == "azure" else "s3_store")


def test_publish_then_fetch_latest_gives_the_verified_model_and_a_lock(store, make_model,
                                                                      tmp_path):
    model_store.publish(store, make_model("1.0.0", seed=1), "1.0.0")
    second = make_model("1.1.0", size=9 * MIB, seed=2)  # above one ranged GET
    model_store.publish(store, second, "1.1.0")

    result = model_store.fetch(store, tmp_path / "build")

    assert result.version == "1.1.0" and result.downloaded
    assert (tmp_path / "build" / "model.onnx").read_bytes() == (second / "model.onnx").read_bytes()
    lock = json.loads((tmp_path / "build" / "model.lock.json").read_text())
    assert lock["store"] == store.uri and lock["version"] == "1.1.0"
    assert lock["sha256"] == result.sha256 and lock["size"] == 9 * MIB and lock["etag"]
    assert [p.name for p in (tmp_path / "build").iterdir() if p.name.startswith(".")] == []


def test_refetch_of_an_unchanged_model_downloads_nothing(store, make_model, tmp_path, monkeypatch):
    model_store.publish(store, make_model("2", seed=3), "2")
    model_store.fetch(store, tmp_path / "build")

    def no_download(*args, **kwargs):
        raise AssertionError("the model was downloaded again")

    monkeypatch.setattr(type(store), "download", no_download)
    assert model_store.fetch(store, tmp_path / "build").downloaded is False


def test_locked_fetch_takes_the_locked_version_not_the_newer_latest(store, make_model, tmp_path):
    model_store.publish(store, make_model("1", seed=4), "1")
    model_store.fetch(store, tmp_path / "first")
    model_store.publish(store, make_model("2", seed=5), "2")

    result = model_store.fetch(store, tmp_path / "rebuild", locked=True,
                               lock_file=tmp_path / "first" / "model.lock.json")

    first_lock = json.loads((tmp_path / "first" / "model.lock.json").read_text())
    assert result.version == "1" and result.sha256 == first_lock["sha256"]


def test_republishing_a_version_is_refused_unless_forced(store, make_model):
    model_store.publish(store, make_model("3", seed=6), "3")
    with pytest.raises(PipelineError, match="already published"):
        model_store.publish(store, make_model("3", seed=7), "3")
    model_store.publish(store, make_model("3", seed=7), "3", force=True)


def test_a_missing_version_is_named(store, make_model, tmp_path):
    model_store.publish(store, make_model("1", seed=8), "1")
    with pytest.raises(PipelineError, match="version 9.9 is not in"):
        model_store.fetch(store, tmp_path / "build", "9.9")


def test_nothing_published_yet_says_so(store, tmp_path):
    store.prepare_publish()  # the container or bucket exists, but holds no model
    with pytest.raises(PipelineError, match="No model has been published"):
        model_store.fetch(store, tmp_path / "build")


def test_a_missing_container_is_named(azurite, azure_env, tmp_path):
    store = model_store.open_store("az://no-such-container/digits", azurite.url)
    with pytest.raises(PipelineError, match="no container 'no-such-container'"):
        model_store.fetch(store, tmp_path / "build")


def test_a_missing_bucket_is_named(moto_s3, aws_env, tmp_path):
    store = model_store.open_store("s3://no-such-bucket/digits", endpoint_url=moto_s3.url)
    with pytest.raises(PipelineError, match="no bucket 'no-such-bucket'"):
        model_store.fetch(store, tmp_path / "build")


def test_a_wrong_account_key_is_refused_without_showing_it(azurite, azure_env, tmp_path,
                                                           make_model, az_store):
    model_store.publish(az_store, make_model("1", seed=9), "1")
    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    azure_env.setenv("AZURE_STORAGE_CONNECTION_STRING", (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={wrong_key};"
        f"BlobEndpoint={azurite.url};"
    ))
    store = model_store.open_store(az_store.uri, azurite.url)
    with pytest.raises(PipelineError, match="refused") as refused:
        model_store.fetch(store, tmp_path / "build")
    assert wrong_key not in str(refused.value)


def test_a_sas_token_fetches_and_an_expired_one_is_refused_masked(azurite, azure_env, tmp_path,
                                                                  make_model, az_store):
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    model_store.publish(az_store, make_model("1", seed=10), "1")

    def sas(expiry):
        return generate_container_sas(
            azurite.extra["account"], az_store.container, account_key=azurite.extra["key"],
            permission=ContainerSasPermissions(read=True), expiry=expiry,
        )

    valid = sas(datetime.now(timezone.utc) + timedelta(hours=1))
    azure_env.setenv("AZURE_STORAGE_SAS_TOKEN", valid)
    store = model_store.open_store(az_store.uri, azurite.url)
    assert model_store.fetch(store, tmp_path / "build").version == "1"

    expired = sas(datetime.now(timezone.utc) - timedelta(hours=1))
    azure_env.setenv("AZURE_STORAGE_SAS_TOKEN", expired)
    store = model_store.open_store(az_store.uri, azurite.url)
    with pytest.raises(PipelineError, match="refused") as refused:
        model_store.fetch(store, tmp_path / "other")
    signature = [part for part in expired.split("&") if part.startswith("sig=")][0][4:]
    assert signature not in str(refused.value)


def test_fetch_model_task_ends_with_one_clear_line_and_keeps_the_old_model(
        azurite, azure_env, tmp_path, unique_name):
    """The CLI path: a missing container is one line on stderr and a non-zero exit."""
    config = tmp_path / "store.yaml"
    config.write_text(
        "modelship:\n  environments:\n    local:\n      model_store:\n"
        f"        uri: az://{unique_name}-missing/digits\n        account_url: {azurite.url}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_STORAGE")}
    completed = subprocess.run(
        [sys.executable, "-m", "invoke", "-f", str(config), "fetch-model", "--env", "local"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, env=env, timeout=120,
    )
    assert completed.returncode != 0
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no container" in lines[0], completed.stderr
    assert "Traceback" not in completed.stderr
