"""Fault injection: a loopback proxy cuts or corrupts the model download mid-body.

Either the fetch retries and ends with the right sha256, or it fails with a clear message
and the previous model untouched.
"""

from __future__ import annotations

import hashlib

import boto3
import pytest

from modelship import model_store
from modelship.errors import PipelineError

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
MODEL_SIZE = 12 * MIB


@pytest.fixture(params=["azure", "s3"])
def proxied(request, unique_name, tmp_path):
    """(store as the build sees it through the proxy, the proxy); both versions published."""
    if request.param == "azure":
        azurite = request.getfixturevalue("azurite")
        request.getfixturevalue("azure_env")
        proxy = request.getfixturevalue("azurite_proxy")
        direct = model_store.open_store(f"az://{unique_name}/digits", azurite.url)
        through = model_store.open_store(direct.uri, proxy.url("/devstoreaccount1"))
    else:
        moto = request.getfixturevalue("moto_s3")
        request.getfixturevalue("aws_env")
        proxy = request.getfixturevalue("moto_proxy")
        boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket=unique_name)
        direct = model_store.open_store(f"s3://{unique_name}/digits", endpoint_url=moto.url)
        through = model_store.open_store(direct.uri, endpoint_url=proxy.url())
    make_model = request.getfixturevalue("make_model")
    model_store.publish(direct, make_model("1", size=MIB, seed=1), "1")
    # The build already holds version 1; version 2 is the big one the faults hit.
    model_store.fetch(direct, tmp_path / "build")
    model_store.publish(direct, make_model("2", size=MODEL_SIZE, seed=2), "2")
    return through, proxy


def old_model_intact(build_dir):
    model = (build_dir / "model.onnx").read_bytes()
    lock = model_store.read_lock(build_dir)
    leftovers = [path.name for path in build_dir.iterdir() if path.name.startswith(".")]
    return (lock["version"] == "1" and hashlib.sha256(model).hexdigest() == lock["sha256"]
            and leftovers == [])


@pytest.mark.parametrize("mode", ["cut", "corrupt"])
def test_one_broken_transfer_is_retried_and_verified(proxied, tmp_path, mode):
    store, proxy = proxied
    proxy.set_fault(mode, after=3 * MIB, times=1)

    result = model_store.fetch(store, tmp_path / "build")

    assert proxy.faults_done == 1
    assert result.version == "2" and result.downloaded
    on_disk = hashlib.sha256((tmp_path / "build" / "model.onnx").read_bytes()).hexdigest()
    assert on_disk == result.sha256


# Resuming a broken range is the Azure downloader's own; boto3 restarts its part.
@pytest.mark.parametrize("proxied", ["azure"], indirect=True)
def test_an_azure_download_cut_several_times_resumes_where_it_stopped(proxied, tmp_path):
    store, proxy = proxied
    proxy.set_fault("cut", after=3 * MIB, times=3)

    result = model_store.fetch(store, tmp_path / "build")

    assert proxy.faults_done == 3
    on_disk = hashlib.sha256((tmp_path / "build" / "model.onnx").read_bytes()).hexdigest()
    assert on_disk == result.sha256
    # Each break costs nothing already received: a restart would have moved 3+6+9 MiB more.
    assert proxy.bytes_delivered < MODEL_SIZE + MIB


def test_connections_that_always_break_fail_cleanly_with_the_old_model_kept(proxied, tmp_path):
    store, proxy = proxied
    # Every connection breaks before it has delivered much, so no number of resumes helps.
    proxy.set_fault("cut", after=256 * 1024, times=-1)

    with pytest.raises(PipelineError, match="connection"):
        model_store.fetch(store, tmp_path / "build")

    assert old_model_intact(tmp_path / "build")


def test_bytes_always_corrupted_fail_the_checksum_with_the_old_model_kept(proxied, tmp_path):
    store, proxy = proxied
    proxy.set_fault("corrupt", after=3 * MIB, times=-1)

    with pytest.raises(PipelineError, match="sha256"):
        model_store.fetch(store, tmp_path / "build")

    assert old_model_intact(tmp_path / "build")
