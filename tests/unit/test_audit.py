"""`image.audit`: pip-audit audits the image lock; `build` refuses what it finds.

The advisory is a local OSV fixture (advisories/), and the fact that it is one is the point:
no advisory service is reachable from this project's machines or CI, so pip-audit is fed
through its library API by a vulnerability service that reads the file (audit.local_service).
It is the real Flask advisory GHSA-m2qf-hxjv-5gpq (CVE-2023-30861, High, fixed in 2.2.5 and
2.3.2), with the fields pip-audit and the gate read. pip-audit's own OSV service is run too,
against an OSV query API on loopback that answers from the same file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from modelship import audit
from modelship.settings import PROJECT_ROOT

FLASK_ADVISORY = Path(__file__).parent / "advisories" / "flask-GHSA-m2qf-hxjv-5gpq.osv.json"
FLASK_IDS = "CVE-2023-30861 / GHSA-m2qf-hxjv-5gpq"
IMAGE_LOCK = PROJECT_ROOT / "requirements" / "image.lock"
FAKE_HASH = f"--hash=sha256:{'0' * 64}"


def lock_pinning(folder: Path, *pins: str) -> Path:
    lock = folder / "image.lock"
    lock.write_text("".join(f"{pin} \\\n    {FAKE_HASH}\n" for pin in pins))
    return lock


def audited(lock: Path, records: list[dict]) -> list[audit.Finding]:
    return audit.findings(lock, audit.local_service(records), audit.severities(records))


@pytest.mark.parametrize("version, affected", [
    ("2.2.4", True), ("0.12", True), ("2.2.5", False), ("2.3.0", True), ("2.3.1", True),
    ("2.3.2", False), ("3.1.3", False),
])
def test_pip_audit_finds_a_pinned_version_only_inside_the_advisory_ranges(tmp_path, version,
                                                                          affected):
    lock = lock_pinning(tmp_path, f"Flask=={version}", "click==8.1.0")
    found = audited(lock, audit.load_advisories(FLASK_ADVISORY))
    expected = [audit.Finding("flask", version, FLASK_IDS, "high")]
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
        return [(f.severity, f.rank) for f in audited(lock, advisories)]

    critical = audit.SEVERITIES.index("critical")
    assert severity_of("1.4") == [(audit.UNRATED, critical)]
    assert severity_of("0.9") == [(audit.UNRATED, critical)]
    assert severity_of("1.5") == []
    assert severity_of("0.8") == []


def test_pip_audit_reads_every_pin_of_the_committed_image_lock():
    from pip_audit._dependency_source import RequirementSource

    source = RequirementSource([IMAGE_LOCK], require_hashes=True, disable_pip=True,
                               no_deps=True)
    pins = {dependency.canonical_name: str(dependency.version) for dependency in
            source.collect()}
    assert pins["flask"] and pins["werkzeug"] and len(pins) > 10


# --- through the CLI -------------------------------------------------------------------------


def project_copy(tmp_path: Path, flask: str | None = None) -> Path:
    """The project's tasks, settings and package in a folder of its own, its image lock
    pinning Flask `flask` (`invoke` there runs that copy: Python finds its modelship first)."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("tasks.py", "invoke.yaml", "setup.cfg"):
        shutil.copy2(PROJECT_ROOT / name, root / name)
    for folder in ("modelship", "requirements"):
        shutil.copytree(PROJECT_ROOT / folder, root / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    if flask:
        lock = root / "requirements" / "image.lock"
        text = lock.read_text()
        pinned = audit_pins(lock)["flask"]
        lock.write_text(text.replace(f"flask=={pinned} ", f"flask=={flask} "))
    return root


def audit_pins(lock: Path) -> dict[str, str]:
    from pip_audit._dependency_source import RequirementSource

    return {d.canonical_name: str(d.version) for d in RequirementSource(
        [lock], require_hashes=True, disable_pip=True, no_deps=True).collect()}


def invoke(root: Path, *args):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("INVOKE_")}
    return subprocess.run([str(Path(sys.executable).with_name("invoke")), *args], cwd=root,
                          env=dict(environ, PYTHONPATH=str(root)), capture_output=True,
                          text=True, timeout=120)


def audit_settings(tmp_path: Path, fail_on: str, **section) -> Path:
    settings = tmp_path / "audit.yaml"
    settings.write_text(json.dumps({"modelship": {"environments": {"local": {"image": {
        "audit": {"enabled": True, "fail_on": fail_on, **section}}}}}}))
    return settings


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.subprocess_project_code
def test_build_refuses_a_lock_pinning_a_vulnerable_flask_and_names_the_finding(tmp_path):
    """A lock pinned to Flask 2.2.4, known vulnerable: `build` stops (with and without --dry)
    naming package, version, advisory ids and severity; below the threshold it passes."""
    root = project_copy(tmp_path, flask="2.2.4")
    advisories = {"advisories": str(FLASK_ADVISORY)}

    for dry in (["--dry"], []):
        refused = invoke(root, "-f", str(audit_settings(tmp_path, "high", **advisories)), *dry,
                         "build", "--env=local")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        line = one_error_line(refused)
        assert f"flask==2.2.4 ({FLASK_IDS}, high)" in line and "at or above high" in line

    passed = invoke(root, "-f", str(audit_settings(tmp_path, "critical", **advisories)),
                    "--dry", "build", "--env=local")
    assert passed.returncode == 0, passed.stderr
    assert f"nothing at or above critical; below critical: flask==2.2.4 ({FLASK_IDS}, high)" \
        in passed.stdout


@pytest.mark.subprocess_project_code
def test_the_committed_lock_passes_and_a_missing_file_is_one_line(tmp_path):
    passed = invoke(PROJECT_ROOT, "-f", str(audit_settings(tmp_path, "low",
                                                            advisories=str(FLASK_ADVISORY))),
                    "--dry", "build", "--env=local")
    assert passed.returncode == 0, passed.stderr
    assert "pip-audit checked requirements/image.lock" in passed.stdout
    assert "nothing at or above low" in passed.stdout and "below" not in passed.stdout
    missing = invoke(PROJECT_ROOT, "-f", str(audit_settings(
        tmp_path, "low", advisories=str(tmp_path / "none.json"))), "--dry", "build",
        "--env=local")
    assert missing.returncode == 1
    assert "image.audit.advisories names" in one_error_line(missing)


class OsvQueryApi(BaseHTTPRequestHandler):
    """OSV's /v1/query on loopback, answering from the fixture as the real one would."""

    records: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name, version = query["package"]["name"], query["version"]
        vulns = [r for r in self.records for a in r["affected"]
                 if a["package"]["name"] == name and audit._affects(a, version)]
        body = json.dumps({"vulns": vulns} if vulns else {}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def osv_api():
    OsvQueryApi.records = audit.load_advisories(FLASK_ADVISORY)
    server = ThreadingHTTPServer(("127.0.0.1", 0), OsvQueryApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/query"
    server.shutdown()
    server.server_close()


@pytest.mark.subprocess_project_code
def test_pip_audits_own_osv_service_grades_with_the_file_and_an_unreachable_one_is_one_line(
        tmp_path, osv_api):
    root = project_copy(tmp_path, flask="2.2.4")
    graded = invoke(root, "-f", str(audit_settings(
        tmp_path, "high", service="osv", osv_url=osv_api, advisories=str(FLASK_ADVISORY))),
        "--dry", "build", "--env=local")
    assert f"flask==2.2.4 ({FLASK_IDS}, high)" in one_error_line(graded)
    # Without the file, pip-audit's finding has no severity: it counts as critical.
    ungraded = invoke(root, "-f", str(audit_settings(tmp_path, "critical", service="osv",
                                                     osv_url=osv_api)),
                      "--dry", "build", "--env=local")
    assert "no severity known, counted as critical" in one_error_line(ungraded)

    closed = osv_api.rsplit(":", 1)[0] + ":9/v1/query"  # the discard port: nothing listens
    unreachable = invoke(root, "-f", str(audit_settings(tmp_path, "high", service="osv",
                                                        osv_url=closed)),
                         "--dry", "build", "--env=local")
    assert unreachable.returncode == 1
    line = one_error_line(unreachable)
    assert "could not reach" in line and "set image.audit.advisories" in line


def test_audit_enabled_without_a_source_and_osv_url_without_osv_are_settings_errors():
    from pydantic import ValidationError

    from modelship.settings_schema import AuditSection

    with pytest.raises(ValidationError, match="without advisories or a service"):
        AuditSection(enabled=True)
    with pytest.raises(ValidationError, match="without service: osv"):
        AuditSection(enabled=True, service="pypi", osv_url="http://127.0.0.1:1/v1/query")
    assert AuditSection(enabled=True, service="pypi").service == "pypi"
