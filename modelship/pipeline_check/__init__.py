"""`invoke ci.check`: the pipeline files in ci/ are valid, call only tasks that exist, and hand
every job the files its tasks read.

One module per check, each reporting `file:line: problem` lines (problems.py):
- schema.py: every YAML file validates against the Azure Pipelines schema vendored by
  check-jsonschema (templates included);
- scripts.py: every shell step starts with `set -euo pipefail`, and the `invoke …` calls in
  shell steps are found;
- invoke_calls.py: each call parses with Invoke's own parser against the task collection the
  caller passes in (tasks.py's, from its `ci.check` task), so a renamed task or flag is
  caught before a pipeline run is;
- expansion.py: the pipeline expanded as Azure Pipelines compiles it, which handoff.py walks
  to prove that each job (a fresh agent holding only the checkout) produces or downloads
  every file its tasks read, as declared in modelship/stage_files.py, and pull_requests.py
  to prove that no secret reaches a step that pull-request builds run (conditions.py reads
  the stage, job and step conditions).

The package only reads files: it must never run a task or change anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .expansion import ExpandedJob, expanded_jobs, pipeline_roots
from .handoff import handoff_problems
from .invoke_calls import default_environment, invoke_call_problems
from .layout import CI_DIR, pipeline_files
from .problems import Problem
from .pull_requests import pull_request_secret_problems
from .schema import schema_problems
from .scripts import InvokeCall, ShellScript, fail_fast_problems, invoke_calls, shell_scripts

__all__ = [
    "CI_DIR", "ExpandedJob", "InvokeCall", "Problem", "ShellScript", "check",
    "default_environment", "expanded_jobs", "fail_fast_problems", "handoff_problems",
    "invoke_call_problems", "invoke_calls", "pipeline_files", "pipeline_roots",
    "pull_request_secret_problems", "schema_problems", "shell_scripts",
]


def check(ci_dir: Path | None = None, namespace=None,
          environments: Iterable[str] = (), default_env: str | None = None) -> list[Problem]:
    """Every problem in the pipeline files under `ci_dir` (default ci/); empty means all is well.

    `namespace` is the task collection the `invoke` calls must name (tasks.py's `namespace`).
    """
    ci_dir = ci_dir or CI_DIR
    if namespace is None:
        raise TypeError("check() needs the task collection: pass tasks.py's namespace")
    files = pipeline_files(ci_dir)
    if not files:
        return [Problem(ci_dir, None, "no pipeline files (*.yml, *.yaml) found")]
    scripts = [script for path in files for script in shell_scripts(path)]
    calls = [call for script in scripts for call in invoke_calls(script)]
    return (schema_problems(files) + fail_fast_problems(scripts)
            + invoke_call_problems(calls, namespace, environments)
            + handoff_problems(ci_dir, namespace, default_env)
            + pull_request_secret_problems(ci_dir))
