"""`image.audit`: refuse to build an image whose lock pins a known-vulnerable version.

The advisories are an OSV file named by `image.audit.advisories` (a JSON list of OSV records,
or an object with a `vulns` list, as OSV's own exports and `osv-scanner` write them). No live
advisory service is reachable from this project's machines or CI, so the gate reads only that
file; keeping it fresh (e.g. a pipeline step that exports the PyPI advisories) is the
operator's. Severity is the advisory's `database_specific.severity` (GitHub's LOW, MODERATE,
HIGH, CRITICAL); an advisory without one counts as critical, so none passes unseen.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError
from .stage_files import PROJECT_ROOT, shown

SEVERITIES = ("low", "medium", "high", "critical")
ALIASES = {"moderate": "medium"}


@dataclass(frozen=True)
class Finding:
    package: str
    version: str
    advisory: str
    severity: str

    def __str__(self) -> str:
        return f"{self.package}=={self.version} ({self.advisory}, {self.severity})"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(lock: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a pip lock."""
    return {_normalized(name): version for name, version in
            re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", lock.read_text(),
                       re.MULTILINE)}


def _severity(advisory: dict) -> str:
    found = str((advisory.get("database_specific") or {}).get("severity", "")).lower()
    found = ALIASES.get(found, found)
    return found if found in SEVERITIES else "critical"


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


def findings(lock: Path, advisories: list[dict]) -> list[Finding]:
    pins = locked_pins(lock)
    found = []
    for advisory in advisories:
        for affected in advisory.get("affected", []):
            package = affected.get("package", {})
            name = _normalized(package.get("name", ""))
            if package.get("ecosystem") == "PyPI" and name in pins \
                    and _affects(affected, pins[name]):
                found.append(Finding(name, pins[name], advisory.get("id", "?"),
                                     _severity(advisory)))
    return found


def load_advisories(path: Path) -> list[dict]:
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


def gate(settings, lock: Path) -> str:
    """Raise naming every locked package with an advisory at or above `fail_on`; else say
    what was audited."""
    section = settings.image.audit
    path = Path(section.advisories).expanduser()
    path = path if path.is_absolute() else PROJECT_ROOT / path
    found = findings(lock, load_advisories(path))
    threshold = SEVERITIES.index(section.fail_on)
    failing = [f for f in found if SEVERITIES.index(f.severity) >= threshold]
    if failing:
        raise PipelineError(
            f"image.audit: {len(failing)} known vulnerabilit"
            f"{'y' if len(failing) == 1 else 'ies'} at or above {section.fail_on} in "
            f"{shown(lock)}: {', '.join(map(str, failing))}.",
            "Raise the pinned versions past the fixed ones (`invoke lock`), or, knowingly, "
            "image.audit.fail_on.")
    below = f"; below {section.fail_on}: {', '.join(map(str, found))}" if found else ""
    return f"audited {shown(lock)} against {shown(path)}: nothing at or above " \
           f"{section.fail_on}{below}"
