"""The local control plane's pins, build cache and credentials (no process started here)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from modelship import local_cluster
from modelship.stage_files import cluster_kubectl


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSHIP_CLUSTER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_every_staging_module_is_replaced_by_its_published_version():
    go_mod = (local_cluster.TOOLS_DIR / "kubernetes" / "go.mod").read_text()
    version = local_cluster.kubernetes_version()
    assert re.fullmatch(r"v1\.(3[4-9]|[4-9]\d)\.\d+", version)
    staging = re.findall(r"^\s+(k8s\.io/[\w-]+) => (k8s\.io/[\w-]+) (v\S+)$", go_mod, re.M)
    assert len(staging) >= 30
    for module, replacement, published in staging:
        assert module == replacement
        assert published == "v0." + version.removeprefix("v1."), module
    # Every module the build reads is hash-pinned.
    for build in local_cluster.BUILDS:
        assert (build.module_dir / "go.sum").stat().st_size > 0, build.folder


def test_the_version_is_linked_into_the_kubernetes_binaries():
    flags = local_cluster.BUILDS[0].ldflags()
    version = local_cluster.kubernetes_version()
    assert f"k8s.io/component-base/version.gitVersion={version}" in flags
    assert f"k8s.io/client-go/pkg/version.gitVersion={version}" in flags


def test_a_cached_build_is_reused_without_running_go(cache, monkeypatch):
    monkeypatch.setattr(local_cluster, "_go", lambda: "/usr/bin/go")
    monkeypatch.setattr(local_cluster, "_go_version", lambda go: "go1.26.8")

    def no_build(*args, **kwargs):
        raise AssertionError("built although the cache has every binary")

    monkeypatch.setattr(local_cluster, "_build", no_build)
    target = local_cluster.build_dir("go1.26.8")
    target.mkdir(parents=True)
    for name in local_cluster.BINARIES:
        (target / name).write_text("")
    assert local_cluster.ensure_binaries(print) == target
    assert cluster_kubectl().resolve() == (target / "kubectl").resolve()
    assert target.is_relative_to(cache)


def test_a_missing_binary_makes_it_build(cache, monkeypatch):
    monkeypatch.setattr(local_cluster, "_go", lambda: "/usr/bin/go")
    monkeypatch.setattr(local_cluster, "_go_version", lambda go: "go1.26.8")
    built = []

    def build(go, target, echo):
        built.append(target)
        target.mkdir(parents=True, exist_ok=True)
        for name in local_cluster.BINARIES:
            (target / name).write_text("")

    monkeypatch.setattr(local_cluster, "_build", build)
    target = local_cluster.build_dir("go1.26.8")
    target.mkdir(parents=True)
    (target / "kubectl").write_text("")
    local_cluster.ensure_binaries(print)
    assert built == [target]


def test_the_build_is_named_by_the_pins_and_the_toolchain(tmp_path, monkeypatch):
    copy = tmp_path / "cluster"
    shutil.copytree(local_cluster.TOOLS_DIR, copy)
    monkeypatch.setattr(local_cluster, "TOOLS_DIR", copy)
    first = local_cluster.build_id("go1.26.8")
    assert first.startswith(local_cluster.kubernetes_version() + "-")
    assert local_cluster.build_id("go1.26.9") != first
    with open(copy / "etcd" / "go.sum", "a") as go_sum:
        go_sum.write("example.com/other v1.0.0 h1:x=\n")
    assert local_cluster.build_id("go1.26.8") != first


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_credentials_are_made_once_and_signed_by_the_machine_ca(cache):
    local_cluster.ensure_pki()
    pki = cache / "state" / "pki"
    first = (pki / "admin.crt").read_bytes()
    local_cluster.ensure_pki()
    assert (pki / "admin.crt").read_bytes() == first
    for name in ("apiserver", *local_cluster.IDENTITIES):
        verified = subprocess.run(["openssl", "verify", "-CAfile", str(pki / "ca.crt"),
                                   str(pki / f"{name}.crt")], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stderr
    served = subprocess.run(["openssl", "x509", "-in", str(pki / "apiserver.crt"), "-noout",
                             "-ext", "subjectAltName"], capture_output=True, text=True).stdout
    assert "IP Address:127.0.0.1" in served
    assert all(oct(path.stat().st_mode)[-3:] == "600" for path in pki.iterdir())
    config = yaml.safe_load(local_cluster.write_kubeconfig("admin", "modelship-cluster")
                            .read_text())
    assert config["current-context"] == "modelship-cluster"
    assert config["clusters"][0]["cluster"]["server"] == \
        f"https://127.0.0.1:{local_cluster.API_PORT}"
