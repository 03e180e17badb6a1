"""The schema of a model's metadata.json, and the patterns its fields are held to.

Metadata travels from a data scientist's laptop into image labels, rendered manifests and
logs, so every field is checked against `schemas/model-metadata.schema.json` when a model is
published and again when it is fetched; nothing unchecked gets further. This module must
never accept a pattern anchored with ^/$ (Python's $ lets a trailing newline through): every
pattern here and in the schema uses \\A and \\Z.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from .errors import PipelineError

SCHEMA_PATH = Path(__file__).parent / "schemas" / "model-metadata.schema.json"
# The same expressions as the schema's, for values that arrive outside a metadata file
# (command-line versions, release records, rendering).
LABEL_SAFE = re.compile(r"\A[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?\Z")
SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")
LABEL_SAFE_RULE = ("1-63 letters, digits, '-', '_' or '.', starting and ending with a letter "
                   "or digit")


@functools.cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def problems(metadata) -> list[str]:
    """Every way `metadata` breaks the schema, as `where: what` lines; empty when valid."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema())
    found = []
    for error in sorted(validator.iter_errors(metadata), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        # jsonschema shows values with repr(): a newline shows as \\n instead of breaking
        # the line.
        what = error.message if len(error.message) <= 200 else error.message[:200] + "…"
        found.append(f"{where}: {what}")
    return found


def check(metadata, where: str, fix: str) -> dict:
    """`metadata` when it matches the schema; else a PipelineError naming the first problem."""
    found = problems(metadata)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise PipelineError(f"{where} is not valid model metadata: {found[0]}{more}.", fix)
    return metadata


def require_label_safe(value: str, what: str) -> str:
    if not isinstance(value, str) or not LABEL_SAFE.match(value):
        raise PipelineError(f"{what} {value!r} is not allowed.", f"Use {LABEL_SAFE_RULE}.")
    return value
