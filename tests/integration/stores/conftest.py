"""Session fixtures for the model store tests: Azurite, moto's S3 server, a fault proxy.

Each server is started here on a free 127.0.0.1 port with its data in a temporary folder
and stopped at the end of the session; the services of `invoke local.up` are not touched.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.support import emulators

from fault_proxy import FaultProxy  # this folder is on sys.path (rootdir conftest)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def azurite():
    server = emulators.start_azurite()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_s3():
    server = emulators.start_moto()
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    """Credentials moto accepts; nothing from the developer's own AWS setup leaks in."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "modelship-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "modelship-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return monkeypatch


@pytest.fixture
def azure_env(monkeypatch):
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def unique_name(request):
    """A container/bucket/prefix name no other test uses."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    return f"t{digest}"


def write_model(folder: Path, version: str, size: int, seed: int = 0) -> Path:
    """A model folder to publish: random bytes stand in for ONNX; the store never parses it."""
    folder.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048  # 64 KiB, cheap to repeat
    data = (block * (size // len(block) + 1))[:size]
    data = bytes([seed % 251]) + data[1:]
    (folder / "model.onnx").write_bytes(data)
    (folder / "metadata.json").write_text(json.dumps({
        "name": "digits", "version": version, "sha256": hashlib.sha256(data).hexdigest(),
        "size": size, "created": datetime.now(timezone.utc).isoformat(),
        "input": {"name": "input", "shape": [None, 64], "dtype": "float32"},
        "golden": [{"instance": [0.0] * 64, "label": 0}],
    }))
    return folder


@pytest.fixture
def make_model(tmp_path):
    def make(version: str, size: int = 64 * 1024, seed: int = 0) -> Path:
        return write_model(tmp_path / "models" / f"{version}-{seed}", version, size, seed)

    return make


@pytest.fixture
def azurite_proxy(azurite):
    proxy = FaultProxy(azurite.extra["port"])
    yield proxy
    proxy.close()


@pytest.fixture
def moto_proxy(moto_s3):
    proxy = FaultProxy(moto_s3.extra["port"])
    yield proxy
    proxy.close()
