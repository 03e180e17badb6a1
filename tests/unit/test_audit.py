"""`image.audit`: `build` refuses a lock pinning a version an advisory names.

The advisory is a local OSV fixture (advisories/): no advisory service is reachable from
this project's machines or CI. It is the real Flask advisory GHSA-m2qf-hxjv-5gpq (High,
fixed in 2.2.5 and 2.3.2), with the fields the gate reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelship import audit
from modelship.settings import PROJECT_ROOT

FLASK_ADVISORY = Path(__file__).parent / "advisories" / "flask-GHSA-m2qf-hxjv-5gpq.osv.json"
IMAGE_LOCK = PROJECT_ROOT / "requirements" / "image.lock"


def lock_pinning(tmp_path, *pins: str) -> Path:
    lock = tmp_path / "image.lock"
    lock.write_text("".join(f"{pin} \\\n    --hash=sha256:{'0' * 64}\n" for pin in pins))
    return lock


@pytest.mark.parametrize("version, affected", [
    ("2.2.4", True), ("0.12", True), ("2.2.5", False), ("2.3.0", True), ("2.3.1", True),
    ("2.3.2", False), ("3.1.3", False),
])
def test_a_pinned_version_is_affected_only_inside_the_advisory_ranges(tmp_path, version,
                                                                       affected):
    lock = lock_pinning(tmp_path, f"Flask=={version}", "click==8.1.0")
    found = audit.findings(lock, audit.load_advisories(FLASK_ADVISORY))
    expected = [audit.Finding("flask", version, "GHSA-m2qf-hxjv-5gpq", "high")]
    assert found == (expected if affected else [])


def test_last_affected_is_inclusive_listed_versions_count_and_no_severity_is_critical(
        tmp_path):
    advisories = [{"id": "X-1", "affected": [{
        "package": {"ecosystem": "PyPI", "name": "Some_Package"},
        "ranges": [{"type": "ECOSYSTEM",
                    "events": [{"introduced": "1.0"}, {"last_affected": "1.4"}]}],
        "versions": ["0.9"]}]}]

    def severity_of(version):
        lock = lock_pinning(tmp_path, f"some-package=={version}")
        return [f.severity for f in audit.findings(lock, advisories)]

    assert severity_of("1.4") == ["critical"]
    assert severity_of("0.9") == ["critical"]
    assert severity_of("1.5") == []
    assert severity_of("0.8") == []


def test_the_committed_image_lock_has_every_package_the_gate_reads():
    pins = audit.locked_pins(IMAGE_LOCK)
    assert pins["flask"] and pins["werkzeug"] and len(pins) > 10


def invoke(*args):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT,
                          env=environ, capture_output=True, text=True, timeout=120)


def audit_settings(tmp_path, advisories: Path, fail_on: str) -> Path:
    settings = tmp_path / "audit.yaml"
    settings.write_text(json.dumps({"modelship": {"environments": {"local": {"image": {
        "audit": {"enabled": True, "fail_on": fail_on, "advisories": str(advisories)}}}}}}))
    return settings


@pytest.mark.subprocess_project_code
def test_build_refuses_the_lock_naming_each_vulnerability_at_or_above_the_threshold(tmp_path):
    """Through the CLI: an advisory naming the Flask the image lock pins (a copy of the real
    advisory moved onto that version, since the lock pins a fixed Flask) stops `build`."""
    pinned = audit.locked_pins(IMAGE_LOCK)["flask"]
    record = json.loads(FLASK_ADVISORY.read_text())[0]
    record["affected"][0]["ranges"] = []
    record["affected"][0]["versions"] = [pinned]
    advisories = tmp_path / "advisories.json"
    advisories.write_text(json.dumps({"vulns": [record]}))

    refused = invoke("-f", str(audit_settings(tmp_path, advisories, "high")), "--dry", "build",
                     "--env=local")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert f"flask=={pinned} (GHSA-m2qf-hxjv-5gpq, high)" in lines[0]
    assert "at or above high" in lines[0]
    # Without --dry too, before anything is built (no engine is needed to get this far).
    really = invoke("-f", str(audit_settings(tmp_path, advisories, "high")), "build",
                    "--env=local")
    assert really.returncode == 1 and f"flask=={pinned} (GHSA" in really.stderr, really.stderr

    passed = invoke("-f", str(audit_settings(tmp_path, advisories, "critical")), "--dry",
                    "build", "--env=local")
    assert passed.returncode == 0, passed.stderr
    assert "nothing at or above critical; below critical: flask==" in passed.stdout


@pytest.mark.subprocess_project_code
def test_the_real_advisory_passes_the_committed_lock_and_a_missing_file_is_one_line(tmp_path):
    passed = invoke("-f", str(audit_settings(tmp_path, FLASK_ADVISORY, "low")), "--dry",
                    "build", "--env=local")
    assert passed.returncode == 0, passed.stderr
    assert "nothing at or above low" in passed.stdout and "below" not in passed.stdout
    missing = invoke("-f", str(audit_settings(tmp_path, tmp_path / "none.json", "low")),
                     "--dry", "build", "--env=local")
    assert missing.returncode == 1
    assert "image.audit.advisories names" in missing.stderr and "Traceback" not in \
        missing.stderr


def test_audit_enabled_without_advisories_is_a_settings_error():
    from pydantic import ValidationError

    from modelship.settings_schema import AuditSection

    with pytest.raises(ValidationError, match="without advisories"):
        AuditSection(enabled=True)
