"""Settings inserted into the manifests stay strings: YAML never reads a host as null/true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import invoke
import pytest
import yaml
from hypothesis import given, strategies as st

from modelship import manifests
from modelship.errors import PipelineError
from modelship.manifests import Release
from modelship.settings import PROJECT_ROOT, load_settings
from tests.support.checkouts import fresh_clone

INVOKE = str(Path(sys.executable).with_name("invoke"))


def project_config() -> invoke.Config:
    config = invoke.Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    return config


def dev_with_hosts(hosts):
    config = project_config()
    deployment = config.modelship["environments"]["dev"]["deployment"]
    deployment["ingress"] = {"hosts": hosts}
    deployment["service"] = {"dns_label": ""}  # an Ingress takes the place of the DNS label
    return load_settings(config, "dev")


def test_a_null_host_in_a_settings_file_is_refused_by_render_in_one_line(tmp_path):
    settings_file = tmp_path / "hosts.yaml"
    settings_file.write_text(yaml.safe_dump({"modelship": {"environments": {"dev": {
        "deployment": {"ingress": {"hosts": ["null"]}}}}}}))
    result = subprocess.run([INVOKE, "-f", str(settings_file), "render", "--env", "dev",
                             "--image", "digits-api:x"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "hosts[0] is 'null'" in lines[0], lines


@pytest.mark.parametrize("host", ["null", "true", "yes", "no", "on", "off", "1", "0x1f",
                                  "1.10"])
def test_hosts_yaml_reads_as_other_types_are_refused(host):
    with pytest.raises(PipelineError, match="YAML reads as text"):
        dev_with_hosts([host])


@pytest.mark.parametrize("host", ["digits.example.com", "on.example.com", "null.example.com",
                                  "*.true.example.com", "1-10.example.com"])
def test_every_accepted_host_renders_as_the_same_string(host, tmp_path, monkeypatch):
    monkeypatch.setattr("modelship.stage_files.BUILD_ROOT", tmp_path / "build")
    settings = dev_with_hosts([host])
    manifests.render(settings, Release.for_review("digits-api@sha256:" + "ab" * 32, "0" * 40, False))
    ingress = yaml.safe_load((settings.render_dir / "ingress.yaml").read_text())
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == [host]


# Strings YAML 1.1 would read as something else, one in each string setting a template
# inserts; the settings file is the one a user writes, read through the real CLI.
YAML_LOOKALIKES = {
    ("kubernetes", "namespace"): "null",
    ("deployment", "ingress", "class_name"): "on",
    ("deployment", "ingress", "tls_secret"): "yes",
    ("deployment", "ingress", "controller_namespace"): "true",
    ("deployment", "api_key", "secret_name"): "off",
    ("deployment", "api_key", "key"): "no",
    ("deployment", "cpu_request"): "1",
    ("deployment", "memory_limit"): "1000",
}


def rendered_value(objects: dict, setting: tuple) -> list:
    """Where each setting lands in the rendered objects (every place it is used)."""
    deployment = objects["deployment.yaml"]["spec"]["template"]["spec"]
    container = deployment["containers"][0]
    api_key_volume = next(v for v in deployment["volumes"] if "secret" in v)["secret"]
    ingress = objects["ingress.yaml"]["spec"]
    places = {
        "namespace": [o["metadata"]["namespace"] for o in objects.values()],
        "class_name": [ingress["ingressClassName"]],
        "tls_secret": [ingress["tls"][0]["secretName"]],
        "controller_namespace": [
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for rule in objects["networkpolicy.yaml"]["spec"]["ingress"]
            for peer in rule.get("from", []) if "namespaceSelector" in peer],
        "secret_name": [api_key_volume["secretName"]],
        "key": [api_key_volume["items"][0]["key"], api_key_volume["items"][0]["path"]],
        "cpu_request": [container["resources"]["requests"]["cpu"]],
        "memory_limit": [container["resources"]["limits"]["memory"]],
    }
    return places[setting[-1]]


def test_every_string_setting_stays_a_string_through_render(tmp_path):
    environment: dict = {"deployment": {"ingress": {"hosts": ["digits.example.com"]},
                                        "service": {"dns_label": ""}}}
    for path, value in YAML_LOOKALIKES.items():
        section = environment
        for key in path[:-1]:
            section = section.setdefault(key, {})
        section[path[-1]] = value
    settings_file = tmp_path / "lookalikes.yaml"
    settings_file.write_text(yaml.safe_dump({"modelship": {"environments": {"dev": environment}}}))
    image = "crmodelshipdev.azurecr.io/digits-api@sha256:" + "ab" * 32
    # In a checkout of its own: render writes build/k8s/dev, which the project's own
    # build/ must not get from a test (`invoke test` runs this inside deploy).
    checkout = fresh_clone(tmp_path / "project")
    result = subprocess.run([INVOKE, "-f", str(settings_file), "render", "--env", "dev",
                             "--image", image], cwd=checkout, capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(checkout)})
    assert result.returncode == 0, result.stdout + result.stderr
    render_dir = checkout / "build" / "k8s" / "dev"
    objects = {path.name: yaml.safe_load(path.read_text()) for path in render_dir.glob("*.yaml")}
    for setting, value in YAML_LOOKALIKES.items():
        landed = rendered_value(objects, setting)
        assert landed and all(v == value for v in landed), (setting, landed)


@given(st.text())
def test_any_text_a_template_inserts_reads_back_as_that_text(text):
    assert yaml.safe_load(f"value: {manifests.yaml_value(text)}\n") == {"value": text}


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(), children, max_size=3), max_leaves=8))
def test_any_mapping_or_list_a_template_inserts_reads_back_the_same(value):
    assert yaml.safe_load(f"value: {manifests.yaml_value(value)}\n") == {"value": value}


def test_a_custom_template_that_still_quotes_a_placeholder_is_told_to_drop_the_quotes(
        tmp_path, monkeypatch):
    monkeypatch.setattr("modelship.stage_files.BUILD_ROOT", tmp_path / "build")
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "service.yaml.j2").write_text(
        'apiVersion: v1\nkind: Service\nmetadata:\n  name: "{{ app_name }}"\n')
    settings = load_settings(project_config(), "dev")
    with pytest.raises(PipelineError, match="Remove the quotes around"):
        manifests.render_objects(settings, Release.for_review(
            "digits-api@sha256:" + "ab" * 32, "0" * 40, False), template_dir=templates)
