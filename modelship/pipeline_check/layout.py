"""Where the pipeline files are: ci/ at the project root, every *.yml / *.yaml under it."""

from __future__ import annotations

from pathlib import Path

from ..settings import PROJECT_ROOT

CI_DIR = PROJECT_ROOT / "ci"


def pipeline_files(ci_dir: Path | None = None) -> list[Path]:
    ci_dir = ci_dir or CI_DIR
    return sorted(p for p in ci_dir.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
