"""Checks on a rendered manifest folder before anyone applies it.

Three independent checks: every object against the Kubernetes OpenAPI schemas of the
configured version (`kubernetes-validate`, strict, so a misspelt field is an error rather
than silently dropped by the API server); the AKS deployment safeguards and the restricted
Pod Security Standard (`safeguards`); and checkov's security policies on the folder and
the Dockerfile, with skips justified in `.checkov.yaml`. Checkov runs as a separate
executable because it pins libraries the pipeline itself needs newer. This module must
never contact a cluster or any service off this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import yaml

from .errors import PipelineError
from .stage_files import LOCAL_STATE_DIR, PROJECT_ROOT
from .toolkit_data import CHECKOV_CONFIG

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
# Where docs/operations.md installs checkov in its own virtualenv.
CHECKOV_TOOL_VENV = LOCAL_STATE_DIR / "tools" / "checkov"
CHECKOV_INSTALL_HINT = (
    "Install it in its own virtualenv: `python3 -m venv .local/tools/checkov && "
    ".local/tools/checkov/bin/pip install checkov` (or set MODELSHIP_CHECKOV to its path)."
)


def schema_problems(folder: Path, kubernetes_version: str) -> list[str]:
    """One line per object in `folder` that the version's strict schema rejects."""
    import kubernetes_validate

    problems = []
    for path in sorted(folder.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document:
                continue
            try:
                kubernetes_validate.validate(document, kubernetes_version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(part) for part in error.path) or "(top level)"
                problems.append(f"{path.name}: {where}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError:
                problems.append(
                    f"{path.name}: no schema for {document.get('apiVersion')}/"
                    f"{document.get('kind')} in Kubernetes {kubernetes_version}"
                )
            except kubernetes_validate.InvalidSchemaError as error:
                raise PipelineError(
                    f"kubernetes-validate has no usable schemas for Kubernetes "
                    f"{kubernetes_version}: {error}.",
                    "Set kubernetes.version in invoke.yaml to a supported minor "
                    "version, or upgrade kubernetes-validate.",
                ) from None
    return problems


def validate_schemas(folder: Path, kubernetes_version: str) -> int:
    problems = schema_problems(folder, kubernetes_version)
    if problems:
        raise PipelineError(
            f"{len(problems)} rendered object(s) fail the Kubernetes {kubernetes_version} "
            "schema: " + "; ".join(problems) + ".",
            "Fix the template or the value in invoke.yaml that produced the field.",
        )
    return len(list(folder.glob("*.yaml")))


def find_checkov() -> str | None:
    """checkov's executable: $MODELSHIP_CHECKOV, then PATH, then the project's tool venv."""
    candidates = [
        os.environ.get("MODELSHIP_CHECKOV"),
        shutil.which("checkov"),
        str(Path(sys.executable).with_name("checkov")),
        str(CHECKOV_TOOL_VENV / "bin" / "checkov"),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True)
class CheckovReport:
    passed: int
    skipped: int
    failed: list[str]


def _checkov_environment() -> dict:
    environment = dict(os.environ)
    # Nothing may leave this machine: no update check (checkov does one at import time),
    # no policy mapping download, no platform upload.
    environment.update({"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE",
                        "CKV_IGNORE_HIDDEN_DIRECTORIES": "true"})
    for key in ("BC_API_KEY", "PRISMA_API_URL"):
        environment.pop(key, None)
    return environment


def _checkov_scan(executable: str, config: Path, framework: str, target: list[str]) -> dict:
    # One scan per framework: given --directory and --file together, checkov scans only one.
    command = [executable, "--config-file", str(config), "--skip-download", "--quiet",
               "--compact", "--output", "json", "--framework", framework, *target]
    result = subprocess.run(command, capture_output=True, text=True,
                            env=_checkov_environment(), cwd=PROJECT_ROOT, timeout=600)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise PipelineError(
            f"checkov did not produce a report (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-400:]}",
            "Run the command by hand to see why: " + " ".join(command),
        ) from None
    # Several check types come back as a list; a scan that found nothing as a bare summary.
    reports = report if isinstance(report, list) else [report]
    return {
        "passed": sum(r.get("summary", r).get("passed", 0) for r in reports),
        "skipped": sum(r.get("summary", r).get("skipped", 0) for r in reports),
        "failed": [
            f"{finding['check_id']} {finding['check_name']} "
            f"({Path(finding['file_path']).name}: {finding['resource']})"
            for r in reports for finding in r.get("results", {}).get("failed_checks", [])
        ],
    }


def run_checkov(manifest_dir: Path, dockerfile: Path = DOCKERFILE,
                config: Path = CHECKOV_CONFIG, executable: str | None = None) -> CheckovReport:
    """checkov on the rendered folder (kubernetes) and the Dockerfile; raise on any failure."""
    executable = executable or find_checkov()
    if not executable:
        raise PipelineError("checkov is not installed.", CHECKOV_INSTALL_HINT)
    scans = [
        _checkov_scan(executable, config, "kubernetes", ["--directory", str(manifest_dir)]),
        _checkov_scan(executable, config, "dockerfile", ["--file", str(dockerfile)]),
    ]
    report = CheckovReport(
        passed=sum(scan["passed"] for scan in scans),
        skipped=sum(scan["skipped"] for scan in scans),
        failed=sorted({line for scan in scans for line in scan["failed"]}),
    )
    if report.failed:
        raise PipelineError(
            f"checkov failed {len(report.failed)} check(s): " + "; ".join(report.failed) + ".",
            "Fix the manifest or Dockerfile, or skip the check in .checkov.yaml with the reason.",
        )
    if report.passed == 0:
        raise PipelineError(
            f"checkov found nothing to check in {manifest_dir} and {dockerfile}.",
            "Render first (`invoke render`), and check the paths.",
        )
    return report


def checks_fingerprint(kubernetes_version: str, require_checkov: bool,
                       allowed_registries: Sequence[str]) -> str:
    """Everything that decides whether a rendering passes `check_rendered`, as one sha256:
    a folder that passed under the same fingerprint passes again."""
    import hashlib
    from importlib import metadata

    from . import safeguards

    digest = hashlib.sha256()
    checkov = find_checkov()
    checkov_state = f"{checkov}:{Path(checkov).stat().st_mtime_ns}" if checkov else "none"
    for part in (kubernetes_version, str(require_checkov), ",".join(sorted(allowed_registries)),
                 metadata.version("kubernetes-validate"), checkov_state):
        digest.update(part.encode() + b"\0")
    for path in (CHECKOV_CONFIG, DOCKERFILE, Path(safeguards.__file__), Path(__file__)):
        digest.update(path.read_bytes() if path.is_file() else b"missing")
    return digest.hexdigest()


def check_rendered(folder: Path, kubernetes_version: str,
                   require_checkov: bool = False,
                   allowed_registries: Sequence[str] = ()) -> list[str]:
    """Schema validation, the AKS safeguards, then checkov when it is installed; lines saying
    what passed."""
    from . import safeguards

    lines = [f"{validate_schemas(folder, kubernetes_version)} objects valid against the "
             f"Kubernetes {kubernetes_version} schemas (strict)",
             safeguards.check_folder(folder, allowed_registries=allowed_registries)]
    executable = find_checkov()
    if executable is None and not require_checkov:
        return lines + [f"checkov skipped: not installed. {CHECKOV_INSTALL_HINT}"]
    report = run_checkov(folder, executable=executable)
    return lines + [f"checkov: {report.passed} checks passed, none failed "
                    f"(skips justified in {CHECKOV_CONFIG.name})"]
