"""Template expansion: a pipeline as Azure Pipelines compiles it, templates spliced in with
their parameters, `${{ parameters.x }}` / `${{ variables.x }}` filled in, `${{ each }}`
unrolled, and its agent jobs listed in stage order. Every string keeps the file and line it
was written on, so the checks built on it report where to look. Only reads files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .layout import pipeline_files
from .problems import Problem, display

TEMPLATE_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}", re.DOTALL)
MACRO = re.compile(r"\$\(([A-Za-z_][\w.-]*)\)")
EACH = re.compile(r"^each\s+([A-Za-z_]\w*)\s+in\s+(.+)$", re.DOTALL)
REFERENCE = re.compile(r"[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\s*'[^']*'\s*\])*")
REFERENCE_PART = re.compile(r"[A-Za-z_][\w-]*|'[^']*'")
# Each lifecycle hook of a deployment job is an agent job of its own.
DEPLOYMENT_HOOKS = ("preDeploy", "deploy", "routeTraffic", "postRouteTraffic")
OUTCOME_HOOKS = ("failure", "success")
PIPELINE_SHAPES = ("stages", "jobs", "steps", "extends")
# Azure Pipelines stops at 100 nested templates; a template that includes itself gets here first.
MAX_TEMPLATE_DEPTH = 50
UNRESOLVED = object()


class Located(str):
    """A string from a pipeline file that still knows its file and line after expansion."""

    path: Path | None = None
    line: int | None = None


def _located(text: str, like) -> str:
    if isinstance(like, Located) and not isinstance(text, Located):
        text = Located(text)
        text.path, text.line = like.path, like.line
    return text


class _LocatingLoader(yaml.SafeLoader):
    source: Path


def _construct_located(loader: _LocatingLoader, node: yaml.ScalarNode) -> Located:
    text = Located(loader.construct_scalar(node))
    text.path = loader.source
    # A block scalar's text starts on the line after its `|` or `>` indicator.
    text.line = node.start_mark.line + 1 + (1 if node.style in ("|", ">") else 0)
    return text


_LocatingLoader.add_constructor("tag:yaml.org,2002:str", _construct_located)


def load_located(path: Path):
    loader = _LocatingLoader(path.read_text())
    loader.source = path
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def where(node, fallback: Path) -> tuple[Path, int | None]:
    """File and line of a mapping: those of its first key."""
    for key in node if isinstance(node, dict) else ():
        if isinstance(key, Located) and key.path is not None:
            return key.path, key.line
    return fallback, None


@dataclass(frozen=True)
class ExpandedJob:
    """One agent job after template expansion: what runs on one fresh agent, in order."""

    stage: str  # "" for a pipeline without stages
    label: str  # `Stage/Job`, with the lifecycle hook when it is not a deployment's `deploy`
    path: Path  # the file the job is written in
    steps: tuple[dict, ...]
    # The stage's and the job's `condition:`, where written: the job runs only if both hold.
    conditions: tuple[str, ...] = ()
    # Variables the stage and the job set to a literal value (never a secret).
    variables: frozenset[str] = frozenset()


def _resolve(expression: str, scope: dict):
    """The value of a plain reference (`parameters.env`, `variables['x']`, a loop variable)."""
    if not REFERENCE.fullmatch(expression):
        return UNRESOLVED  # a function call or operator: Azure Pipelines' business, not ours
    value = scope
    for part in REFERENCE_PART.findall(expression):
        part = part.strip("'")
        if not isinstance(value, dict) or part not in value:
            return UNRESOLVED
        value = value[part]
    return value


def _as_text(value) -> str | None:
    if isinstance(value, bool):
        return "True" if value else "False"  # how Azure Pipelines prints a boolean
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def _is_macro(value) -> bool:
    """A value Azure Pipelines fills in at run time, from a variable that may be secret."""
    return isinstance(value, str) and ("$(" in value or "$[" in value)


def _conditional_body(key, body):
    """The body of a `${{ if }}` / `${{ elseif }}` / `${{ else }}` key, else None."""
    match = TEMPLATE_EXPRESSION.fullmatch(key.strip()) if isinstance(key, str) else None
    return body if match and not EACH.match(match.group(1)) else None


def plain_variables(variables) -> dict:
    """Pipeline variables with a literal value, those under every branch of a `${{ if }}`
    included (as the other checks keep every branch); groups and templates are unknown at
    check time."""
    plain = {}
    if isinstance(variables, dict):
        for name, value in variables.items():
            body = _conditional_body(name, value)
            if body is not None:
                plain.update(plain_variables(body))
            elif _as_text(value) is not None:
                plain[name] = value
        return plain
    for item in variables or ():
        if isinstance(item, dict) and "name" in item and _as_text(item.get("value")) is not None:
            plain[item["name"]] = item["value"]
        elif isinstance(item, dict) and len(item) == 1:
            key, body = next(iter(item.items()))
            if _conditional_body(key, body) is not None:
                plain.update(plain_variables(body))
    return plain


class PipelineExpander:
    """Expands the pipelines of one ci/ folder; what it cannot expand lands in `problems`."""

    def __init__(self, ci_dir: Path, problems: list[Problem] | None = None):
        self.ci_dir = ci_dir
        self.repository_root = ci_dir.parent
        self.problems: list[Problem] = [] if problems is None else problems

    def expand(self, node, scope: dict):
        """`node` with references filled in and `${{ each }}` / `${{ if }}` blocks unnested."""
        if isinstance(node, str):
            return self._expand_text(node, scope)
        if isinstance(node, list):
            expanded = []
            for item in node:
                directive = self._directive(item)
                if directive is None:
                    expanded.append(self.expand(item, scope))
                    continue
                for body_scope, body in self._directive_bodies(*directive, scope):
                    body = self.expand(body, body_scope)
                    expanded.extend(body if isinstance(body, list) else [body])
            return expanded
        if isinstance(node, dict):
            expanded = {}
            for key, value in node.items():
                directive = self._directive({key: value})
                if directive is None:
                    expanded[self.expand(key, scope)] = self.expand(value, scope)
                    continue
                for body_scope, body in self._directive_bodies(*directive, scope):
                    body = self.expand(body, body_scope)
                    if isinstance(body, dict):
                        expanded.update(body)
            return expanded
        return node

    def _expand_text(self, text: str, scope: dict):
        whole = TEMPLATE_EXPRESSION.fullmatch(text.strip())
        if whole:
            value = _resolve(whole.group(1), scope)
            if value is not UNRESOLVED:
                # A whole-value reference keeps its type: a list parameter stays a list.
                return _located(value, text) if isinstance(value, str) else value

        def fill(match: re.Match) -> str:
            value = _resolve(match.group(1), scope)
            return match.group(0) if value is UNRESOLVED else (_as_text(value) or match.group(0))

        def fill_macro(match: re.Match) -> str:
            value = scope.get("variables", {}).get(match.group(1))
            return match.group(0) if value is None else (_as_text(value) or match.group(0))

        return _located(MACRO.sub(fill_macro, TEMPLATE_EXPRESSION.sub(fill, text)), text)

    @staticmethod
    def _directive(item):
        if isinstance(item, dict) and len(item) == 1:
            key, body = next(iter(item.items()))
            match = TEMPLATE_EXPRESSION.fullmatch(key.strip()) if isinstance(key, str) else None
            if match:
                return key, match.group(1), body
        return None

    def _directive_bodies(self, key, expression: str, body, scope: dict):
        each = EACH.match(expression)
        if not each:
            # `${{ if }}`, `${{ elseif }}`, `${{ else }}`: every branch is kept, as check-jsonschema
            # does: the check sees what any branch might run.
            return [(scope, body)]
        name, collection = each.groups()
        values = _resolve(collection.strip(), scope)
        if isinstance(values, dict):
            values = [{"key": item_key, "value": item} for item_key, item in values.items()]
        if not isinstance(values, list):
            path = key.path if isinstance(key, Located) else self.ci_dir
            self.problems.append(Problem(
                path, getattr(key, "line", None),
                f"`{key}`: {collection.strip()} is not a list ci.check can expand"))
            return []
        return [({**scope, name: value}, body) for value in values]

    def load_template(self, reference, including: Path, passed, variables: dict,
                      depth: int) -> tuple[Path, dict] | None:
        where, line = (reference.path, reference.line) if isinstance(reference, Located) \
            else (including, None)
        reference = str(reference)
        if "@" in reference:
            return None  # another repository's template: not in this checkout
        if depth > MAX_TEMPLATE_DEPTH:
            self.problems.append(Problem(
                where, line, f"template {reference}: templates nest deeper than "
                f"{MAX_TEMPLATE_DEPTH}; does one include itself?"))
            return None
        path = (self.repository_root / reference.lstrip("/") if reference.startswith("/")
                else including.parent / reference)
        if not path.is_file():
            self.problems.append(Problem(where, line, f"template {reference} not found at "
                                                      f"{display(path)}"))
            return None
        try:
            document = load_located(path)
        except yaml.YAMLError:
            return None  # the schema check reports it
        if not isinstance(document, dict):
            return None
        parameters, required = self._parameter_defaults(document.get("parameters"))
        passed = passed if isinstance(passed, dict) else {}
        for name in sorted(required - set(passed)):
            self.problems.append(Problem(where, line, f"template {reference}: parameter "
                                                      f"'{name}' has no default and is not passed"))
        parameters.update(passed)
        body = {key: value for key, value in document.items() if key != "parameters"}
        return path, self.expand(body, {"parameters": parameters, "variables": variables})

    @staticmethod
    def _parameter_defaults(declared) -> tuple[dict, set[str]]:
        if isinstance(declared, dict):  # the older `name: default` form
            return dict(declared), set()
        defaults, required = {}, set()
        for parameter in declared or ():
            if isinstance(parameter, dict) and "name" in parameter:
                if "default" in parameter:
                    defaults[parameter["name"]] = parameter["default"]
                else:
                    required.add(parameter["name"])
        return defaults, required

    def _included(self, items, key: str, including: Path, variables: dict, depth: int):
        """(item, file it is written in) for a stages/jobs/steps list, templates spliced in."""
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and "template" in item:
                loaded = self.load_template(item["template"], including, item.get("parameters"),
                                            variables, depth + 1)
                if loaded:
                    path, document = loaded
                    yield from self._included(document.get(key), key, path, variables, depth + 1)
            elif isinstance(item, dict):
                yield item, including

    def pipeline_jobs(self, path: Path) -> tuple[list[ExpandedJob], dict[str, list[str]]]:
        """A pipeline's jobs in stage order and each stage's direct dependencies."""
        document = load_located(path)
        if not isinstance(document, dict):
            return [], {}
        variables = plain_variables(document.get("variables"))
        parameters, _ = self._parameter_defaults(document.get("parameters"))
        body = {key: value for key, value in document.items() if key != "parameters"}
        document = self.expand(body, {"parameters": parameters, "variables": variables})
        extends = document.get("extends")
        if isinstance(extends, dict) and "template" in extends:
            loaded = self.load_template(extends["template"], path, extends.get("parameters"),
                                        variables, 1)
            if not loaded:
                return [], {}
            path, document = loaded
        if "stages" in document:
            stages = list(self._included(document["stages"], "stages", path, variables, 0))
        elif "jobs" in document:
            stages = [({"stage": "", "jobs": document["jobs"]}, path)]
        else:
            stages = [({"stage": "", "jobs": [{"job": "Job", "steps": document.get("steps")}]},
                       path)]
        jobs, depends_on, previous = [], {}, None
        for stage, stage_path in stages:
            name = str(stage.get("stage", ""))
            if "dependsOn" in stage:
                wanted = stage["dependsOn"]
                depends_on[name] = [str(wanted)] if isinstance(wanted, str) \
                    else [str(item) for item in wanted or ()]
            else:
                depends_on[name] = [previous] if previous is not None else []
            previous = name
            for job, job_path in self._included(stage.get("jobs"), "jobs", stage_path,
                                                variables, 0):
                jobs.extend(self._agent_jobs(name, job, job_path, variables, stage))
        return jobs, depends_on

    def _agent_jobs(self, stage: str, job: dict, path: Path, variables: dict,
                    stage_body: dict) -> list[ExpandedJob]:
        name = str(job.get("job") or job.get("deployment") or "Job")
        label = f"{stage}/{name}" if stage else name
        conditions = tuple(str(item["condition"]) for item in (stage_body, job)
                           if item.get("condition") is not None)
        local = frozenset(name for item in (stage_body, job)
                          for name, value in plain_variables(item.get("variables")).items()
                          if not _is_macro(value))
        context = {"conditions": conditions, "variables": local}

        def steps(items):
            return [step for step, _ in self._included(items, "steps", path, variables, 0)]

        if "deployment" not in job:
            return [ExpandedJob(stage, label, path, tuple(steps(job.get("steps"))), **context)]
        agent_jobs = []
        for strategy in (job.get("strategy") or {}).values():
            if not isinstance(strategy, dict):
                continue
            hooks = [(hook, strategy.get(hook)) for hook in DEPLOYMENT_HOOKS]
            outcomes = strategy.get("on") if isinstance(strategy.get("on"), dict) else {}
            hooks += [(f"on.{hook}", outcomes.get(hook)) for hook in OUTCOME_HOOKS]
            for hook, body in hooks:
                if isinstance(body, dict):
                    hook_label = label if hook == "deploy" else f"{label} ({hook})"
                    agent_jobs.append(ExpandedJob(stage, hook_label, path,
                                                  tuple(steps(body.get("steps"))), **context))
        return agent_jobs


def expanded_jobs(pipeline: Path, ci_dir: Path | None = None) -> list[ExpandedJob]:
    """The pipeline's agent jobs in stage order, templates and `${{ each }}` expanded."""
    return PipelineExpander(ci_dir or pipeline.parent).pipeline_jobs(pipeline)[0]


def pipeline_roots(ci_dir: Path) -> list[Path]:
    """Pipelines (not templates): files directly in ci/ that could run on their own."""
    roots = []
    for path in pipeline_files(ci_dir):
        if path.parent != ci_dir:
            continue
        try:
            document = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            continue
        if not isinstance(document, dict) or not set(PIPELINE_SHAPES) & set(document):
            continue
        _, required = PipelineExpander._parameter_defaults(document.get("parameters"))
        if not required:  # a parameter without a default makes it a template
            roots.append(path)
    return roots
