"""`image.audit`: pip-audit audits the image lock; `build` refuses what it finds above a severity.

pip-audit does the auditing: its `RequirementSource` reads requirements/image.lock as the
lock is (every pin with its hashes, nothing installed, no resolver run) and its `Auditor`
asks a vulnerability service about every pin and merges an advisory's aliases. The service
is pip-audit's own OSV or PyPI one (`image.audit.service`, for agents that reach it;
`osv_url` for an OSV-compatible mirror), or, offline, `LocalOsvService` here: a pip-audit
`VulnerabilityService` that answers from an OSV file (`image.audit.advisories`, a mirrored
export or a fixture), since this project's machines and CI reach no advisory service.

pip-audit reports no severity, so the threshold is graded here, from the OSV records'
`database_specific.severity` (GitHub's LOW, MODERATE, HIGH, CRITICAL) in the advisories file,
matched by id or alias. A finding no record grades (a live service without the file, or a
record without a severity) counts as critical, so none passes unseen.

The pip-audit calls used (`pip_audit._service` and `._dependency_source`'s public names,
`_audit.Auditor`) are its library API; the version is pinned in requirements/host.lock and
tests/unit/test_audit.py runs every one of them. This module never installs anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError
from .stage_files import PROJECT_ROOT, shown

SEVERITIES = ("low", "medium", "high", "critical")
ALIASES = {"moderate": "medium"}
UNRATED = "unrated"
SERVICE_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    advisory: str  # pip-audit's id for it, then its aliases
    severity: str  # one of SEVERITIES, or UNRATED (graded as critical)

    @property
    def rank(self) -> int:
        return SEVERITIES.index("critical" if self.severity == UNRATED else self.severity)

    def __str__(self) -> str:
        shown_severity = ("no severity known, counted as critical" if self.severity == UNRATED
                          else self.severity)
        return f"{self.package}=={self.version} ({self.advisory}, {shown_severity})"


# --- the OSV file ----------------------------------------------------------------------------


def load_advisories(path: Path) -> list[dict]:
    """The OSV records of a file: a JSON list, or `{"vulns": [...]}` as OSV exports write."""
    if not path.is_file():
        raise PipelineError(f"image.audit.advisories names {shown(path)}, which does not exist.",
                            "Point it at an OSV advisories file (docs/image.md: auditing).")
    try:
        data = json.loads(path.read_text())
    except ValueError as error:
        raise PipelineError(f"{shown(path)} is not JSON ({error}).",
                            "Point image.audit.advisories at an OSV advisories file.") from None
    records = data.get("vulns", []) if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise PipelineError(f"{shown(path)} holds no list of OSV advisories.",
                            "Point image.audit.advisories at an OSV advisories file.")
    return records


def _severity(record: dict) -> str:
    found = str((record.get("database_specific") or {}).get("severity", "")).lower()
    found = ALIASES.get(found, found)
    return found if found in SEVERITIES else UNRATED


def severities(records: list[dict]) -> dict[str, str]:
    """Every id and alias of the records -> the record's severity."""
    graded = {}
    for record in records:
        for name in [record.get("id", ""), *record.get("aliases", [])]:
            graded[name] = _severity(record)
    return graded


def _affects(affected: dict, version: str) -> bool:
    from packaging.version import InvalidVersion, Version

    if version in affected.get("versions", []):
        return True
    try:
        pinned = Version(version)
    except InvalidVersion:
        return False
    for span in affected.get("ranges", []):
        if span.get("type") != "ECOSYSTEM":
            continue
        # OSV's evaluation: in version order, the events at or below the pin decide. An
        # introduced opens a span, a fixed (exclusive) or last_affected (inclusive) closes it.
        events = []
        for event in span.get("events", []):
            for kind, value in event.items():
                if kind in ("introduced", "fixed", "last_affected"):
                    try:
                        events.append((Version(value), kind))
                    except InvalidVersion:  # not a PyPI version: this event says nothing
                        continue
        inside = False
        for at, kind in sorted(events):
            if kind == "introduced" and pinned >= at:
                inside = True
            elif kind == "fixed" and pinned >= at:
                inside = False
            elif kind == "last_affected" and pinned > at:
                inside = False
        if inside:
            return True
    return False


def local_service(records: list[dict]):
    """A pip-audit vulnerability service answering from OSV records instead of a server."""
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
    from pip_audit._service import VulnerabilityResult, VulnerabilityService

    class LocalOsvService(VulnerabilityService):
        def query(self, spec):
            if spec.is_skipped():
                return spec, []
            results = []
            for record in records:
                if record.get("withdrawn"):
                    continue
                for affected in record.get("affected", []):
                    package = affected.get("package", {})
                    if package.get("ecosystem") != "PyPI" or \
                            canonicalize_name(package.get("name", "")) != spec.canonical_name:
                        continue
                    if not _affects(affected, str(spec.version)):
                        continue
                    fixed = []
                    for span in affected.get("ranges", []):
                        for event in span.get("events", []):
                            try:
                                fixed += [Version(event["fixed"])] if "fixed" in event else []
                            except InvalidVersion:
                                continue
                    results.append(VulnerabilityResult.create(
                        ids=[record.get("id", "?"), *record.get("aliases", [])],
                        description=(record.get("summary") or "").replace("\n", " "),
                        fix_versions=sorted(fixed), published=None))
                    break
            return spec, results

    return LocalOsvService()


# --- pip-audit -------------------------------------------------------------------------------


def _service(section, records: list[dict] | None):
    from pip_audit._service import OsvService, PyPIService

    if section.service == "osv":
        if section.osv_url:
            return OsvService(timeout=SERVICE_TIMEOUT_SECONDS, osv_url=section.osv_url)
        return OsvService(timeout=SERVICE_TIMEOUT_SECONDS)
    if section.service == "pypi":
        return PyPIService(timeout=SERVICE_TIMEOUT_SECONDS)
    return local_service(records or [])


def findings(lock: Path, service, graded: dict[str, str]) -> list[Finding]:
    """pip-audit's findings for every pin of `lock`, each graded by `graded` (id or alias)."""
    from pip_audit._audit import Auditor
    from pip_audit._dependency_source import DependencySourceError, RequirementSource

    source = RequirementSource([lock], require_hashes=True, disable_pip=True, no_deps=True)
    found = []
    try:
        for dependency, vulnerabilities in Auditor(service).audit(source):
            for vulnerability in vulnerabilities:
                names = [vulnerability.id, *sorted(vulnerability.aliases)]
                severity = next((graded[name] for name in names if name in graded), UNRATED)
                found.append(Finding(dependency.canonical_name, str(dependency.version),
                                     " / ".join(names), severity))
    except DependencySourceError as error:
        raise PipelineError(f"pip-audit could not read {shown(lock)}: {error}.",
                            "Re-lock it with `invoke lock`.") from None
    return found


def _audit(section, lock: Path, records: list[dict] | None) -> list[Finding]:
    import requests
    from pip_audit._service import ServiceError

    try:
        return findings(lock, _service(section, records), severities(records or []))
    except (ServiceError, requests.RequestException) as error:
        where = section.osv_url or f"pip-audit's {section.service} service"
        raise PipelineError(
            f"image.audit could not reach {where} ({type(error).__name__}: "
            f"{str(error)[:120] or 'no answer'}).",
            "On an agent without it, audit offline: set image.audit.advisories to an OSV "
            "advisories file and remove image.audit.service (docs/image.md: auditing).") \
            from None


def gate(settings, lock: Path) -> str:
    """Raise naming every locked package with an advisory at or above `fail_on`; else say
    what was audited."""
    section = settings.image.audit
    records, path = None, None
    if section.advisories:
        path = Path(section.advisories).expanduser()
        path = path if path.is_absolute() else PROJECT_ROOT / path
        records = load_advisories(path)
    found = _audit(section, lock, records)
    threshold = SEVERITIES.index(section.fail_on)
    failing = [f for f in found if f.rank >= threshold]
    if failing:
        raise PipelineError(
            f"image.audit: {len(failing)} known vulnerabilit"
            f"{'y' if len(failing) == 1 else 'ies'} at or above {section.fail_on} in "
            f"{shown(lock)}: {', '.join(map(str, failing))}.",
            "Raise the pinned versions past the fixed ones (`invoke lock`), or, knowingly, "
            "image.audit.fail_on.")
    against = (section.osv_url or f"pip-audit's {section.service} service") \
        if section.service else shown(path)
    below = f"; below {section.fail_on}: {', '.join(map(str, found))}" if found else ""
    return (f"pip-audit checked {shown(lock)} against {against}: nothing at or above "
            f"{section.fail_on}{below}")
