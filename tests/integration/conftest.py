"""Session fixtures for integration tests: the local environment's real services.

Services that already answer (a developer's own Docker, a running `invoke local.up`) are
used as they are; the ones this session starts are stopped at its end.
"""

from __future__ import annotations


import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from invoke import Config

from modelship import host, local_cluster, local_services
from modelship.settings import PROJECT_ROOT, load_settings

SERVICES = ("dockerd", "registry", "azurite")
# No test may reach an instance-metadata address: boto3 probes one when it finds no
# credentials, so that source is off for every test.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def project_config() -> Config:
    config = Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    return config


def pytest_collection_finish(session):
    """Build the control plane (unless cached) before any test starts: the cold build takes
    about half an hour on two cores, which would count against the first cluster test's
    timeout if the session fixture did it."""
    import shutil

    wants_cluster = any(item.get_closest_marker("cluster") for item in session.items)
    if not wants_cluster or shutil.which("go") is None or session.config.option.collectonly:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    local_cluster.ensure_binaries(reporter.write_line if reporter else print)


@pytest.fixture(scope="session")
def local_settings():
    return load_settings(project_config(), "local")


@pytest.fixture(scope="session")
def local_stack(local_settings):
    before = {name: host.started_pid(name) for name in SERVICES}
    local_services.up(local_settings.local_services, print)
    started_here = [
        name for name in SERVICES
        if host.started_pid(name) and not before[name]
    ]
    yield local_settings
    if "dockerd" in started_here:
        from modelship import local_runtime
        from modelship.engine import docker_client

        local_runtime.remove(docker_client(), local_settings)
    for name in ("azurite", "registry", "dockerd"):
        if name == "registry" and name in started_here:
            local_services.stop_registry(local_settings.local_services.registry_port)
        elif name in started_here:
            host.stop_started(name)


@pytest.fixture(scope="session")
def cluster_settings():
    return load_settings(project_config(), "cluster")


@pytest.fixture(scope="session")
def local_control_plane(cluster_settings):
    """The `cluster` environment's control plane: built unless cached, started unless it
    answers, and at the end only what this session started is stopped. Without Go it cannot
    be built: the one reason these tests may be skipped."""
    import shutil

    if shutil.which("go") is None:
        pytest.skip("Go is not installed: the local control plane cannot be built")
    before = {binary: host.started_pid(f"cluster-{binary}") for binary in local_cluster.PORTS}
    for line in local_cluster.up(cluster_settings.kubernetes.context,
                                 cluster_settings.kubernetes.namespace, print):
        print(line)
    started_here = [binary for binary in local_cluster.PORTS
                    if host.started_pid(f"cluster-{binary}") and not before[binary]]
    yield cluster_settings
    for binary in reversed(started_here):
        host.stop_started(f"cluster-{binary}")


@pytest.fixture(scope="session")
def docker_client(local_stack):
    from modelship.engine import docker_client as connect

    return connect()


@dataclass
class InvokeResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.strip().splitlines() if line.strip()]


@pytest.fixture
def run_invoke():
    """Run `invoke ARGS` from the project root as a user would, in a separate process."""
    def run(*args: str, env: dict | None = None, config: Path | None = None,
            timeout: float = 900) -> InvokeResult:
        argv = [sys.executable, "-m", "invoke"]
        if config is not None:
            argv += ["-f", str(config)]
        full_env = dict(os.environ)
        for key in ("REGISTRY_USERNAME", "REGISTRY_PASSWORD", "AZURE_STORAGE_CONNECTION_STRING"):
            full_env.pop(key, None)
        full_env.update(env or {})
        completed = subprocess.run(
            argv + list(args), cwd=PROJECT_ROOT, env=full_env, capture_output=True, text=True,
            timeout=timeout,
        )
        return InvokeResult(completed.returncode, completed.stdout, completed.stderr)
    return run


@pytest.fixture(scope="session")
def published_model(local_stack):
    """Publish the sample model to Azurite once per session; returns its version."""
    completed = subprocess.run(
        [sys.executable, "-m", "invoke", "model.publish"], cwd=PROJECT_ROOT,
        capture_output=True, text=True,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.split()[2]
