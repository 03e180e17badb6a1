"""Publishers racing for one version, and a publisher killed midway, on every kind of store.

Against the folder store, Azurite and moto's S3 server: of two publishers of the same
version exactly one wins and the other is told so; a publisher killed between the model
upload and the switch leaves the store as it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from modelship import model_store
from modelship.errors import PipelineError

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
ROUNDS = 4


@pytest.fixture(params=["file", "azure", "s3"])
def store_spec(request, tmp_path, unique_name):
    """(uri, account_url, endpoint_url) of an empty store."""
    if request.param == "file":
        return f"file://{tmp_path / 'store'}", "", ""
    if request.param == "azure":
        azurite = request.getfixturevalue("azurite")
        request.getfixturevalue("azure_env")
        return f"az://{unique_name}/byom", azurite.url, ""
    moto = request.getfixturevalue("moto_s3")
    request.getfixturevalue("aws_env")
    boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket=unique_name)
    return f"s3://{unique_name}/byom", "", moto.url


def race(store_spec, folders, version):
    """Publish every folder as `version` at the same moment; return (winners, errors)."""
    return race_versions(store_spec, [(folder, version) for folder in folders])


def race_versions(store_spec, publishes):
    """Publish every (folder, version) at the same moment; return (winners, errors)."""
    start = threading.Barrier(len(publishes))
    winners, errors = [], []

    def publish(folder, version):
        store = model_store.open_store(*store_spec)
        start.wait()
        try:
            winners.append(model_store.publish(store, folder, version))
        except PipelineError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=publish, args=job) for job in publishes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return winners, errors


def test_of_two_concurrent_publishers_of_one_version_exactly_one_wins(store_spec, make_model,
                                                                      tmp_path):
    for round_number in range(ROUNDS):
        version = f"race{round_number}"
        folders = [make_model(version, seed=10 * round_number + side) for side in (1, 2)]
        winners, errors = race(store_spec, folders, version)

        assert len(winners) == 1, errors
        assert len(errors) == 1 and errors[0].startswith(
            f"Version {version} is already published in"), errors
        result = model_store.fetch(model_store.open_store(*store_spec),
                                   tmp_path / "build" / version, version)
        # Whatever was fetched is exactly the winner's model, never a mix.
        assert result.sha256 == winners[0]["sha256"]
        fetched = (tmp_path / "build" / version / "model.onnx").read_bytes()
        winner = next(f for f in folders if model_store.sha256_of(f / "model.onnx")
                      == winners[0]["sha256"])
        assert fetched == (winner / "model.onnx").read_bytes()
        # The loser removed the model it had uploaded: nothing is left that no version names.
        assert model_store.list_orphans(model_store.open_store(*store_spec)) == []


def run_stalled_publisher(store_spec, folder, version, force, marker, *,
                          where="after-upload", stop_signal=signal.SIGKILL):
    """Run a publisher until it stalls at `where`, then stop it with `stop_signal`; return
    its exit code and what it printed."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "stalled_publisher.py"), *store_spec, str(folder), version,
         "force" if force else "", str(marker), where],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stderr=subprocess.PIPE, text=True,
    )
    try:
        for _ in range(600):  # up to a minute for the upload to finish
            if marker.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists(), "the publisher never got past the upload"
    finally:
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def test_a_forced_publish_killed_midway_leaves_the_version_intact(store_spec, make_model,
                                                                   tmp_path):
    store = model_store.open_store(*store_spec)
    original = make_model("1", seed=1)
    model_store.publish(store, original, "1")

    run_stalled_publisher(store_spec, make_model("1", seed=2), "1", True, tmp_path / "marker")

    result = model_store.fetch(store, tmp_path / "build", "1")
    assert (tmp_path / "build" / "model.onnx").read_bytes() == (original / "model.onnx").read_bytes()
    assert result.version == "1"
    # and a finished --force still replaces it
    replacement = make_model("1", seed=3)
    model_store.publish(store, replacement, "1", force=True)
    model_store.fetch(store, tmp_path / "build", "1")
    assert (tmp_path / "build" / "model.onnx").read_bytes() == (
        replacement / "model.onnx").read_bytes()


def test_a_first_publish_killed_midway_leaves_no_version_and_can_be_redone(store_spec,
                                                                          make_model, tmp_path):
    store = model_store.open_store(*store_spec)
    model_store.publish(store, make_model("0", seed=4), "0")

    run_stalled_publisher(store_spec, make_model("1", seed=5), "1", False, tmp_path / "marker")

    assert model_store.resolve_version(store) == "0"
    with pytest.raises(PipelineError, match="Model version 1 is not in"):
        model_store.fetch(store, tmp_path / "build", "1")
    model_store.publish(store, make_model("1", seed=6), "1")  # no --force needed
    assert model_store.resolve_version(store) == "1"


class PointerReadThen:
    """A store that runs `between` once, right after its first read of the `latest` pointer:
    another publisher finishing while this one decides whether to move the pointer."""

    def __init__(self, store, between):
        self._store, self._between = store, between

    def read_tagged(self, key):
        try:
            return self._store.read_tagged(key)  # the pointer, or StoreObjectMissing
        finally:
            if key == model_store.LATEST_POINTER and self._between is not None:
                between, self._between = self._between, None
                between()

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.mark.parametrize("first", [None, "1"])
def test_an_older_publish_never_moves_latest_back_past_a_newer_one_that_finished_meanwhile(
        store_spec, make_model, first):
    store = model_store.open_store(*store_spec)
    if first:
        model_store.publish(store, make_model(first, seed=1), first)
    newer = make_model("3", seed=3)
    racing = PointerReadThen(store, lambda: model_store.publish(
        model_store.open_store(*store_spec), newer, "3"))

    published = model_store.publish(racing, make_model("2", seed=2), "2")

    assert model_store.resolve_version(store) == "3"
    assert (published.latest_before, published.moved_latest) == ("3", False)


def test_of_many_publishers_of_different_versions_latest_ends_on_the_newest(store_spec,
                                                                            make_model):
    versions = [f"1.{minor}" for minor in (3, 10, 7, 1, 12, 5)]
    winners, errors = race_versions(store_spec, [
        (make_model(version, seed=index), version) for index, version in enumerate(versions)])

    assert errors == [] and len(winners) == len(versions)
    assert model_store.resolve_version(model_store.open_store(*store_spec)) == "1.12"
