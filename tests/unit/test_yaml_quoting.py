"""Settings inserted into the manifests stay strings: YAML never reads a host as null/true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import invoke
import pytest
import yaml

from modelship import manifests
from modelship.errors import PipelineError
from modelship.manifests import Release
from modelship.settings import PROJECT_ROOT, load_settings

INVOKE = str(Path(sys.executable).with_name("invoke"))


def dev_with_hosts(hosts):
    config = invoke.Config(project_location=str(PROJECT_ROOT))
    config.load_project()
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
