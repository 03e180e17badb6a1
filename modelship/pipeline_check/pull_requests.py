"""No secret reaches a step that pull-request builds run.

A pull request's build runs the pull request's own code (scripts/setup.sh, tasks.py, the
tests), so whatever one of its steps holds, the author of the pull request holds. On the
expanded pipeline (expansion.py), each step that pull-request builds run is refused, one line
per secret, when it gets:

- a variable that may be secret: `$(name)`, `$[ variables['name'] ]` or `${{ variables.name }}`
  in its `env:`, its task inputs or its script, where `name` is neither set to a literal value
  in the pipeline files (a YAML variable is never secret) nor a predefined variable. Variable
  groups and variables set in the web UI may hold secrets; `System.AccessToken` is one;
- a task input naming a service connection (`azureSubscription`, `containerRegistry`, …), unless
  it is the pull-only one: the connection the root pipeline's variable
  `pullOnlyServiceConnection` names, which docs/azure-pipelines.md says to grant reading the
  model store and pulling images only;
- `checkout` with `persistCredentials: true` (the job's access token stays in .git/config).

A step runs in pull-request builds unless the pipeline says `pr: none`, or the stage's, the
job's or the step's condition is false whenever `Build.Reason` is `PullRequest`
(conditions.py). Every branch of a `${{ if }}` counts, as in the other checks. Only reads.
"""

from __future__ import annotations

import re
from pathlib import Path

from .conditions import may_run_for_pull_requests
from .expansion import ExpandedJob, Located, PipelineExpander, load_located, pipeline_roots
from .expansion import plain_variables, where
from .problems import Problem

PULL_ONLY_VARIABLE = "pullOnlyServiceConnection"
NOT_FOR_PULL_REQUESTS = "ne(variables['Build.Reason'], 'PullRequest')"
# Predefined variables (docs: "Use predefined variables"); System.AccessToken is a secret.
PREDEFINED_PREFIXES = ("agent.", "build.", "common.", "environment.", "pipeline.", "resources.",
                       "strategy.", "system.", "checks.", "tf_build")
SECRET_PREDEFINED = {"system.accesstoken"}
# `$(name)`, and `variables['name']` / `variables.name` inside `$[ ]` or `${{ }}`.
MACRO = re.compile(r"\$\(([A-Za-z_][\w.-]*)\)")
RUNTIME_OR_TEMPLATE = re.compile(r"\$\[(.*?)\]|\$\{\{(.*?)\}\}", re.DOTALL)
VARIABLE_REFERENCE = re.compile(r"variables\s*(?:\[\s*'([^']+)'\s*\]|\.([A-Za-z_][\w.-]*))")
SCRIPT_STEP_KEYS = ("script", "bash", "pwsh", "powershell")
# Task input names that hold a service connection, compared lower-cased.
SERVICE_CONNECTION_INPUTS = {
    "azuresubscription", "connectedservicename", "connectedservicenamearm",
    "azureresourcemanagerconnection", "containerregistry", "dockerregistryserviceconnection",
    "kubernetesserviceconnection", "kubernetesserviceendpoint", "azuresubscriptionendpoint",
    "serviceconnection", "externalfeedcredentials", "azurecontainerregistry",
}
SERVICE_CONNECTION_SUFFIXES = ("serviceconnection", "serviceendpoint", "subscriptionendpoint")


def pull_request_secret_problems(ci_dir: Path) -> list[Problem]:
    """Each secret that a step of a pull-request build gets, for every pipeline in ci_dir."""
    problems: list[Problem] = []
    for path in pipeline_roots(ci_dir):
        try:
            root = load_located(path)
        except Exception:  # noqa: BLE001 - unparsable YAML: the schema check reports it
            continue
        if not isinstance(root, dict) or _no_pull_request_trigger(root):
            continue
        # Expansion problems (a missing template, say) are the hand-off check's to report.
        jobs, _ = PipelineExpander(ci_dir).pipeline_jobs(path)
        variables = plain_variables(root.get("variables"))
        pull_only = variables.get(PULL_ONLY_VARIABLE)
        for job in jobs:
            if all(may_run_for_pull_requests(condition) for condition in job.conditions):
                problems.extend(_job_problems(job, set(variables) | job.variables, pull_only))
    return problems


def _no_pull_request_trigger(root: dict) -> bool:
    return str(root.get("pr", "")).strip().lower() == "none"


def _job_problems(job: ExpandedJob, literal: set[str], pull_only) -> list[Problem]:
    known = {name.lower() for name in literal}
    problems = []
    for step in job.steps:
        if step.get("condition") is not None and not may_run_for_pull_requests(step["condition"]):
            continue
        for value, secret in _secrets(step, known, pull_only):
            path, line = where(step, job.path)
            if isinstance(value, Located) and value.path == path and value.line:
                line = value.line  # the step's own line that holds it, not a template's caller
            problems.append(Problem(
                path, line, f"job {job.label}: step '{_step_name(step)}' runs in pull-request "
                f"builds and gets {secret}. Keep it out of the step, or give the step, its job "
                f"or its stage the condition {NOT_FOR_PULL_REQUESTS}"))
    return problems


def _secrets(step: dict, known: set[str], pull_only):
    """(the value it is written in, what the secret is) for each secret the step gets."""
    inputs = step.get("inputs") if isinstance(step.get("inputs"), dict) else {}
    for name, value in inputs.items():
        lowered = str(name).lower()
        if (lowered in SERVICE_CONNECTION_INPUTS or lowered.endswith(SERVICE_CONNECTION_SUFFIXES)) \
                and isinstance(value, str) and value.strip() and value != pull_only:
            allowed = (f"only '{pull_only}' ({PULL_ONLY_VARIABLE}) may"
                       if pull_only else f"no {PULL_ONLY_VARIABLE} is declared, so none may")
            yield value, (f"service connection '{value}' (input {name}; {allowed} reach "
                          "pull-request steps)")
    env = step.get("env") if isinstance(step.get("env"), dict) else {}
    places = [(f"env {name}", value) for name, value in env.items()]
    places += [(f"input {name}", value) for name, value in inputs.items()]
    places += [(key, step[key]) for key in SCRIPT_STEP_KEYS if key in step]
    for place, value in places:
        for variable in _variables_used(value):
            if _may_be_secret(variable, known):
                yield value, f"$({variable}) ({place}), {_why_secret(variable)}"
    if "checkout" in step and str(step.get("persistCredentials", "")).lower() == "true":
        yield step["checkout"], ("the job's access token (checkout with persistCredentials: true "
                                 "leaves it in .git/config)")


def _variables_used(value) -> list[str]:
    if not isinstance(value, str):
        return []
    names = MACRO.findall(value)
    for runtime, template in RUNTIME_OR_TEMPLATE.findall(value):
        for quoted, dotted in VARIABLE_REFERENCE.findall(runtime or template):
            names.append(quoted or dotted)
    return list(dict.fromkeys(names))


def _may_be_secret(name: str, known: set[str]) -> bool:
    lowered = name.lower()
    if lowered in SECRET_PREDEFINED:
        return True
    return lowered not in known and not lowered.startswith(PREDEFINED_PREFIXES)


def _why_secret(name: str) -> str:
    if name.lower() in SECRET_PREDEFINED:
        return "a secret predefined variable"
    return "which may be secret (not a literal variable of the pipeline files)"


def _step_name(step: dict) -> str:
    for key in ("displayName", "name", "task"):
        if step.get(key):
            return str(step[key])
    for key in SCRIPT_STEP_KEYS:
        if key in step:  # a script's last line is the one that does the work
            lines = str(step[key]).strip().splitlines() or [""]
            return f"{key}: {lines[-1].strip()}"
    for key in ("checkout", "download", "publish"):
        if key in step:
            return f"{key}: {step[key]}"
    return "step"
