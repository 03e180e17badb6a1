"""Schema validation: every pipeline file (templates included) against the Azure Pipelines
schema check-jsonschema vendors, through its CLI, its stable interface. Only reads files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import yaml

from ..errors import PipelineError
from .problems import Problem

SCHEMA = "vendor.azure-pipelines"
SCHEMA_ARGS = (
    "--builtin-schema", SCHEMA,
    # Unnests `${{ if }}` / `${{ each }}` keys the way Azure Pipelines expands them.
    "--data-transform", "azure-pipelines",
    # Some of the vendored schema's patterns do not compile as unicode-mode ECMAScript.
    "--regex-variant", "nonunicode",
)
VARIABLES_TEMPLATE_KEYS = {"parameters", "variables"}


def is_variables_template(data) -> bool:
    """A template holding only `variables` (and its `parameters`): valid Azure Pipelines YAML."""
    return isinstance(data, dict) and "variables" in data and set(data) <= VARIABLES_TEMPLATE_KEYS


def _schema_inputs(files: list[Path], scratch: Path) -> dict[str, Path]:
    """Files to hand to check-jsonschema, mapped back to the pipeline file each stands for.

    The vendored schema knows no variables templates: it requires stages, jobs, steps or
    extends at the top. Such a template is checked as the smallest pipeline that holds it
    (its variables and parameters plus one no-op step), so its contents still meet the
    schema's definitions of `variables` and `parameters`.
    """
    inputs = {}
    for index, path in enumerate(files):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            data = None  # check-jsonschema reports it, naming the file
        if is_variables_template(data):
            stand_in = scratch / f"{index}-{path.name}"
            stand_in.write_text(yaml.safe_dump({**data, "steps": [{"script": "exit 0"}]}))
            inputs[str(stand_in)] = path
        else:
            inputs[str(path)] = path
    return inputs


def schema_problems(files: Iterable[Path]) -> list[Problem]:
    """Validate with check-jsonschema's CLI, its stable interface, in one process for all files."""
    files = list(files)
    if not files:
        return []
    with tempfile.TemporaryDirectory(prefix="ci-check-") as scratch:
        by_name = _schema_inputs(files, Path(scratch))
        return _run_check_jsonschema(by_name)


def _run_check_jsonschema(by_name: dict[str, Path]) -> list[Problem]:
    command = [sys.executable, "-m", "check_jsonschema", *SCHEMA_ARGS, "--output-format", "json",
               *by_name]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise PipelineError("check-jsonschema did not finish within 120 s.",
                            "Run it by hand to see why.") from None
    try:
        report = json.loads(result.stdout)
    except ValueError:
        if "No module named check_jsonschema" in result.stderr:
            raise PipelineError(
                "check-jsonschema is not installed.",
                "Install the test extra: `.venv/bin/pip install -e '.[test]'`.",
            ) from None
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"check-jsonschema failed: {last_line}",
                            "Run it by hand to see the whole message.") from None
    problems = []
    for error in report.get("parse_errors", []):
        problems.append(Problem(by_name.get(error["filename"], Path(error["filename"])), None,
                                f"not valid YAML: {error['message']}"))
    for error in report.get("errors", []):
        path = by_name.get(error["filename"], Path(error["filename"]))
        # The deepest match names the offending key; the top-level one only says "no branch".
        match = error.get("best_deep_match") or error
        message = f"{SCHEMA}: {match['path']}: {match['message']}"
        if re.search(r"^(True|False|-?\d[\d.]*) is not of type 'string'", match["message"]):
            message += " (the Azure Pipelines schema types every scalar as a string: quote it)"
        problems.append(Problem(path, None, message))
    return problems
