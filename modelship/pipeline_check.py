"""`invoke ci.check`: the pipeline files in ci/ are valid, call only tasks that exist, and hand
every job the files its tasks read.

Four checks, each reporting `file:line: problem` lines: every YAML file validates against the
Azure Pipelines schema vendored by check-jsonschema (templates included); every `invoke …`
call in a shell step parses with Invoke's own parser against the live task collection, so a
renamed task or flag is caught before a pipeline run is; every shell step starts with
`set -euo pipefail`; and, with the pipeline expanded as Azure Pipelines compiles it, each job
(a fresh agent holding only the checkout) produces or downloads every file its tasks read, as
declared in modelship/stage_files.py, from artifacts of stages it depends on. The task list is
read from tasks.py at check time, never copied here. This module only reads files: it must
never run a task or change anything.
"""

from __future__ import annotations

import importlib.util
import json
import posixpath
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from . import stage_files
from .errors import PipelineError
from .settings import PROJECT_ROOT

CI_DIR = PROJECT_ROOT / "ci"
TASKS_FILE = PROJECT_ROOT / "tasks.py"
SCHEMA = "vendor.azure-pipelines"
SCHEMA_ARGS = (
    "--builtin-schema", SCHEMA,
    # Unnests `${{ if }}` / `${{ each }}` keys the way Azure Pipelines expands them.
    "--data-transform", "azure-pipelines",
    # Some of the vendored schema's patterns do not compile as unicode-mode ECMAScript.
    "--regex-variant", "nonunicode",
)
VARIABLES_TEMPLATE_KEYS = {"parameters", "variables"}
# Step keys (and task inputs) whose value is a bash script.
SCRIPT_KEYS = ("script", "bash")
SCRIPT_INPUTS = ("inlineScript", "script")
INVOKE_PROGRAMS = ("invoke", "inv")
# Template expressions and macros are filled in by Azure Pipelines: shlex splits them apart,
# so they are swapped for stand-ins while splitting and put back afterwards.
EXPRESSION = re.compile(r"\$\{\{.*?\}\}|\$\[.*?\]|\$\([^()]*\)")
STAND_IN = "AZPEXPRESSION{}X"
COMMAND_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
FAIL_FAST = re.compile(r"^set\s+-(?=[a-z]*e)(?=[a-z]*u)[a-z]*o\s+pipefail\b")


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = _display(self.path) + (f":{self.line}" if self.line else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class ShellScript:
    path: Path
    line: int  # file line of the script's first line
    text: str


@dataclass(frozen=True)
class InvokeCall:
    path: Path
    line: int
    argv: tuple[str, ...]  # the arguments after `invoke`

    @property
    def command(self) -> str:
        return "invoke " + " ".join(self.argv)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def pipeline_files(ci_dir: Path | None = None) -> list[Path]:
    ci_dir = ci_dir or CI_DIR
    return sorted(p for p in ci_dir.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())


# --- schema ---------------------------------------------------------------------------------


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


# --- shell steps ----------------------------------------------------------------------------


def shell_scripts(path: Path) -> list[ShellScript]:
    """Every bash script in a pipeline file (step `script:`/`bash:` and task inputs)."""
    try:
        documents = list(yaml.compose_all(path.read_text()))
    except yaml.YAMLError:
        return []  # the schema check reports unparsable files
    found: list[ShellScript] = []
    for document in documents:
        if document is not None:
            _collect_scripts(path, document, found)
    return found


def _script(path: Path, node: yaml.Node) -> ShellScript | None:
    if not isinstance(node, yaml.ScalarNode):
        return None
    # A block scalar's text starts on the line after its `|` or `>` indicator.
    first_line = node.start_mark.line + 1 + (1 if node.style in ("|", ">") else 0)
    return ShellScript(path, first_line, node.value)


def _collect_scripts(path: Path, node: yaml.Node, found: list[ShellScript]) -> None:
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _collect_scripts(path, item, found)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else None
            script = None
            if name in SCRIPT_KEYS:
                script = _script(path, value)
            elif name == "inputs" and isinstance(value, yaml.MappingNode):
                for input_key, input_value in value.value:
                    if input_key.value in SCRIPT_INPUTS:
                        script = _script(path, input_value)
                        if script:
                            found.append(script)
                continue
            if script:
                found.append(script)
            else:
                _collect_scripts(path, value, found)


def _command_lines(text: str) -> list[tuple[int, str]]:
    """(offset, line) pairs with continuation lines joined and comments dropped."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, raw in enumerate(text.splitlines()):
        if not pending:
            start = offset
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line and not line.startswith("#"):
            lines.append((start, line))
    if pending.strip():
        lines.append((start, pending.strip()))
    return lines


def _words(line: str) -> list[str]:
    expressions = EXPRESSION.findall(line)
    numbers = iter(range(len(expressions)))
    masked = EXPRESSION.sub(lambda _: STAND_IN.format(next(numbers)), line)
    lexer = shlex.shlex(masked, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # an unbalanced quote: bash itself would refuse the script
        words = masked.split()
    for index, expression in enumerate(expressions):
        words = [word.replace(STAND_IN.format(index), expression) for word in words]
    return words


def _is_expression(text: str) -> bool:
    return bool(EXPRESSION.search(str(text)))


def invoke_calls(script: ShellScript) -> list[InvokeCall]:
    calls = []
    for offset, line in _command_lines(script.text):
        command: list[str] = []
        for word in [*_words(line), ";"]:
            if word not in COMMAND_SEPARATORS:
                command.append(word)
                continue
            while command and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", command[0]):
                command.pop(0)  # VAR=value prefixes
            if command and Path(command[0]).name in INVOKE_PROGRAMS:
                calls.append(InvokeCall(script.path, script.line + offset, tuple(command[1:])))
            elif command[:3] and Path(command[0]).name.startswith("python") \
                    and command[1:3] == ["-m", "invoke"]:
                calls.append(InvokeCall(script.path, script.line + offset, tuple(command[3:])))
            command = []
    return calls


def fail_fast_problems(scripts: Iterable[ShellScript]) -> list[Problem]:
    problems = []
    for script in scripts:
        lines = _command_lines(script.text)
        if not lines or not FAIL_FAST.match(lines[0][1]):
            problems.append(Problem(
                script.path, script.line,
                "shell step does not start with `set -euo pipefail`: a failing command "
                "in the middle would not stop it",
            ))
    return problems


# --- invoke calls ---------------------------------------------------------------------------


def load_namespace(tasks_file: Path = TASKS_FILE):
    """The task collection exactly as `invoke` sees it: tasks.py's `namespace`."""
    from invoke import Collection

    spec = importlib.util.spec_from_file_location("_tasks_under_check", tasks_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Collection.from_module(module)


def _parser(namespace):
    from invoke import Program
    from invoke.parser import Parser, ParserContext

    program = Program()
    initial = ParserContext(args=program.core_args() + program.task_args())
    return Parser(initial=initial, contexts=namespace.to_contexts())


def invoke_call_problems(calls: Iterable[InvokeCall], namespace,
                         environments: Iterable[str] = ()) -> list[Problem]:
    """Parse each call with Invoke's own parser: unknown tasks and flags fail as they would."""
    from invoke.parser import ParseError

    parser = _parser(namespace)
    known_envs = set(environments)
    problems = []
    for call in calls:
        try:
            parsed = parser.parse_argv(list(call.argv))
        except ParseError as error:
            message = f"`{call.command}`: {error}"
            if _is_expression(str(error)):
                message += " (task names must be literal: ci.check cannot follow an expression)"
            problems.append(Problem(call.path, call.line, message))
            continue
        tasks = [context for context in parsed if context.name]
        if not tasks:
            problems.append(Problem(call.path, call.line, f"`{call.command}` names no task"))
        for context in tasks:
            env = context.args.get("env")
            if (known_envs and env is not None and env.got_value
                    and not _is_expression(env.value) and env.value not in known_envs):
                problems.append(Problem(
                    call.path, call.line,
                    f"`{call.command}`: environment '{env.value}' is not in invoke.yaml "
                    f"(known: {', '.join(sorted(known_envs))})",
                ))
    return problems


# --- hand-off between stages ----------------------------------------------------------------
#
# Stages run on fresh agents that share only pipeline artifacts. The pipeline is expanded the
# way Azure Pipelines compiles it (templates with their parameters, `${{ }}` references,
# `${{ each }}`), then every job's steps are walked in order: an `invoke` call needs each file
# its tasks read (modelship/stage_files.py) to be produced earlier in the job or downloaded from
# an artifact that a stage this one depends on published.

SOURCES_DIRECTORIES = ("$(Build.SourcesDirectory)", "$(System.DefaultWorkingDirectory)",
                       "$(Build.Repository.LocalPath)", "$(Pipeline.Workspace)/s")
PIPELINE_WORKSPACE = "$(Pipeline.Workspace)"
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


def _load_located(path: Path):
    loader = _LocatingLoader(path.read_text())
    loader.source = path
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _where(node, fallback: Path) -> tuple[Path, int | None]:
    """File and line of a mapping: those of its first key."""
    for key in node if isinstance(node, dict) else ():
        if isinstance(key, Located) and key.path is not None:
            return key.path, key.line
    return fallback, None


@dataclass(frozen=True)
class Artifact:
    stage: str
    contents: frozenset[str]  # paths inside the artifact; "" is the artifact's whole root


@dataclass(frozen=True)
class ExpandedJob:
    """One agent job after template expansion: what runs on one fresh agent, in order."""

    stage: str  # "" for a pipeline without stages
    label: str  # `Stage/Job`, with the lifecycle hook when it is not a deployment's `deploy`
    path: Path  # the file the job is written in
    steps: tuple[dict, ...]


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


def _plain_variables(variables) -> dict:
    """Pipeline variables with a literal value; groups and templates are unknown at check time."""
    if isinstance(variables, dict):
        return {name: value for name, value in variables.items()
                if _as_text(value) is not None}
    plain = {}
    for item in variables or ():
        if isinstance(item, dict) and "name" in item and _as_text(item.get("value")) is not None:
            plain[item["name"]] = item["value"]
    return plain


def _path_pattern(path: str) -> re.Pattern:
    return re.compile(re.escape(path).replace(re.escape(stage_files.ENV_PLACEHOLDER), "[^/]+"))


DECLARED_FOLDERS = tuple(
    _path_pattern(path) for declared in stage_files.TASK_FILES.values()
    for path in (*declared.reads, *declared.writes) if path.endswith("/"))


def _covers(available: set[str], path: str) -> bool:
    """The file or folder is on the agent: itself, or a folder holding it, is available."""
    return path in available or any(
        entry.endswith("/") and path.startswith(entry) for entry in available)


def _join(folder: str, entry: str) -> str:
    return f"{folder}/{entry}" if folder else entry


def _project_path(raw) -> str | None:
    """A pipeline path as a path relative to the project root; None when it points elsewhere."""
    text = str(raw).strip()
    for directory in SOURCES_DIRECTORIES:
        if text == directory or text.startswith(directory + "/"):
            text = text[len(directory):].lstrip("/")
            break
    else:
        if text.startswith(("$(", "/", "~")) or EXPRESSION.search(text):
            return None
    normalized = posixpath.normpath(text) if text else "."
    if normalized == ".":
        return ""
    return None if normalized.startswith("..") else normalized


class _HandOffChecker:
    def __init__(self, ci_dir: Path, namespace=None, default_env: str = ""):
        self.ci_dir = ci_dir
        self.repository_root = ci_dir.parent
        self.parser = _parser(namespace) if namespace is not None else None
        self.default_env = default_env
        self.problems: list[Problem] = []

    # -- expansion --

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
                                                      f"{_display(path)}"))
            return None
        try:
            document = _load_located(path)
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
        document = _load_located(path)
        if not isinstance(document, dict):
            return [], {}
        variables = _plain_variables(document.get("variables"))
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
                jobs.extend(self._agent_jobs(name, job, job_path, variables))
        return jobs, depends_on

    def _agent_jobs(self, stage: str, job: dict, path: Path, variables: dict) -> list[ExpandedJob]:
        name = str(job.get("job") or job.get("deployment") or "Job")
        label = f"{stage}/{name}" if stage else name

        def steps(items):
            return [step for step, _ in self._included(items, "steps", path, variables, 0)]

        if "deployment" not in job:
            return [ExpandedJob(stage, label, path, tuple(steps(job.get("steps"))))]
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
                                                  tuple(steps(body.get("steps")))))
        return agent_jobs

    # -- the walk --

    def check_pipeline(self, path: Path) -> None:
        jobs, depends_on = self.pipeline_jobs(path)
        upstream = {stage: self._upstream(stage, depends_on) for stage in depends_on}
        published: dict[str, Artifact] = {}
        for stage in self._in_dependency_order(depends_on):
            for job in (job for job in jobs if job.stage == stage):
                self._walk(job, upstream[stage], published)

    @staticmethod
    def _upstream(stage: str, depends_on: dict[str, list[str]]) -> set[str]:
        seen: set[str] = set()
        pending = list(depends_on.get(stage, ()))
        while pending:
            name = pending.pop()
            if name not in seen:
                seen.add(name)
                pending.extend(depends_on.get(name, ()))
        return seen

    @staticmethod
    def _in_dependency_order(depends_on: dict[str, list[str]]) -> list[str]:
        ordered: list[str] = []
        remaining = list(depends_on)
        while remaining:
            ready = [stage for stage in remaining
                     if all(needed in ordered or needed not in depends_on
                            for needed in depends_on[stage])]
            ready = ready[:1] or remaining[:1]  # a dependency cycle: Azure rejects it anyway
            ordered.append(ready[0])
            remaining.remove(ready[0])
        return ordered

    def _walk(self, job: ExpandedJob, upstream: set[str], published: dict[str, Artifact]) -> None:
        available: set[str] = set()  # project files on the agent beyond the checkout
        for step in job.steps:
            where = _where(step, job.path)
            task_name = str(step.get("task", "")).split("@")[0]
            inputs = step.get("inputs") if isinstance(step.get("inputs"), dict) else {}
            if "publish" in step:
                self._publish(job, where, step["publish"], step.get("artifact"), available,
                              published)
            elif task_name == "PublishPipelineArtifact":
                self._publish(job, where, inputs.get("targetPath", inputs.get("path")),
                              inputs.get("artifact", inputs.get("artifactName")), available,
                              published)
            elif "download" in step:
                if str(step["download"]) == "current":
                    artifact = step.get("artifact")
                    default = _join(PIPELINE_WORKSPACE, str(artifact)) if artifact \
                        else PIPELINE_WORKSPACE
                    self._download(job, where, artifact, step.get("path", default), upstream,
                                   available, published)
            elif task_name == "DownloadPipelineArtifact":
                if str(inputs.get("buildType", inputs.get("source", "current"))) == "current":
                    artifact = inputs.get("artifactName", inputs.get("artifact"))
                    target = inputs.get("targetPath", inputs.get("path", inputs.get(
                        "downloadPath", PIPELINE_WORKSPACE)))
                    self._download(job, where, artifact, target, upstream, available, published)
            else:
                for script in self._step_scripts(step, where):
                    for call in invoke_calls(script):
                        self._run(job, call, available)

    @staticmethod
    def _step_scripts(step: dict, where: tuple[Path, int | None]) -> list[ShellScript]:
        inputs = step.get("inputs") if isinstance(step.get("inputs"), dict) else {}
        texts = [step.get(key) for key in SCRIPT_KEYS] + [inputs.get(key) for key in SCRIPT_INPUTS]
        return [ShellScript(getattr(text, "path", None) or where[0],
                            getattr(text, "line", None) or where[1] or 0, str(text))
                for text in texts if isinstance(text, str)]

    def _run(self, job: ExpandedJob, call: InvokeCall, available: set[str]) -> None:
        from invoke.parser import ParseError

        try:
            parsed = self.parser.parse_argv(list(call.argv))
        except ParseError:
            return  # invoke_call_problems reports it
        for context in (context for context in parsed if context.name):
            env_flag = context.args.get("env")
            given = env_flag is not None and env_flag.got_value
            env = str(env_flag.value) if given else self.default_env
            command = f"invoke {context.name}" + (f" --env={env}" if given else "")
            if context.name not in stage_files.TASK_FILES:
                self.problems.append(Problem(
                    call.path, call.line,
                    f"job {job.label}: `{command}`: the task declares no files in "
                    "modelship/stage_files.py TASK_FILES, so what it needs cannot be checked"))
                continue
            declared = stage_files.files_for(context.name, env)
            for needed in declared.reads:
                if not _covers(available, needed):
                    self.problems.append(Problem(
                        call.path, call.line,
                        f"job {job.label}: `{command}` reads {needed} but nothing earlier in this "
                        "job produces it and no artifact of an earlier stage is downloaded there"))
            available.update(declared.writes)

    def _publish(self, job: ExpandedJob, where, raw_path, artifact, available: set[str],
                 published: dict[str, Artifact]) -> None:
        if not artifact:
            return  # Azure Pipelines names it after the job; nothing downloads it by that name
        path = _project_path(raw_path) if raw_path is not None else ""
        contents: frozenset[str] = frozenset()
        if path is not None:
            folder = f"{path}/" if path else ""
            inside = {entry[len(folder):] for entry in available
                      if entry.startswith(folder) and entry != folder}
            if path and path in available:
                contents = frozenset({posixpath.basename(path)})
            elif folder in available:
                contents = frozenset({""})
            elif inside:
                contents = frozenset(inside)
            else:
                # Only a folder holding it is on the agent, or nothing is: file or folder is
                # then told by the declarations, or by the checkout for a source path.
                is_folder = (any(pattern.fullmatch(folder) for pattern in DECLARED_FOLDERS)
                             or (self.repository_root / path).is_dir())
                contents = frozenset({""} if is_folder else {posixpath.basename(path)})
                if folder.startswith(stage_files.BUILD_DIR) and not _covers(available, path):
                    self.problems.append(Problem(
                        *where, f"job {job.label}: publishes {path} as artifact '{artifact}' but "
                        "nothing earlier in this job produces it"))
        published[str(artifact)] = Artifact(job.stage, contents)

    def _download(self, job: ExpandedJob, where, artifact, raw_target, upstream: set[str],
                  available: set[str], published: dict[str, Artifact]) -> None:
        target = _project_path(raw_target)
        if not artifact:
            # Every artifact of the run, each into a folder named after it.
            for name, found in published.items():
                if found.stage in upstream and target is not None:
                    self._land(found, _join(target, name), available)
            return
        found = published.get(str(artifact))
        if found is None or found.stage not in upstream:
            reason = (f"no stage that {job.stage or 'this stage'} depends on publishes it"
                      if found is None else
                      f"it is published by stage {found.stage}, which stage {job.stage} does not "
                      "depend on (directly or through dependsOn)")
            self.problems.append(Problem(*where, f"job {job.label}: downloads artifact "
                                                 f"'{artifact}', but {reason}"))
            if found is None:
                return
            # Landing it anyway keeps the report to this one cause, not every read after it.
        if target is not None:
            self._land(found, target, available)

    @staticmethod
    def _land(artifact: Artifact, target: str, available: set[str]) -> None:
        for entry in artifact.contents:
            if entry:
                available.add(_join(target, entry))
            elif target:  # the whole folder; at the project root it would claim every file
                available.add(f"{target}/")


def expanded_jobs(pipeline: Path, ci_dir: Path | None = None) -> list[ExpandedJob]:
    """The pipeline's agent jobs in stage order, templates and `${{ each }}` expanded."""
    return _HandOffChecker(ci_dir or pipeline.parent).pipeline_jobs(pipeline)[0]


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
        _, required = _HandOffChecker._parameter_defaults(document.get("parameters"))
        if not required:  # a parameter without a default makes it a template
            roots.append(path)
    return roots


def default_environment() -> str:
    """The environment a call without --env uses: the project's invoke.yaml default."""
    from invoke import Config

    config = Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    return str(config.get("modelship", {}).get("default_env", "local"))


def handoff_problems(ci_dir: Path, namespace, default_env: str | None = None) -> list[Problem]:
    """Every job's `invoke` calls find the files they read on a fresh agent."""
    checker = _HandOffChecker(ci_dir, namespace, default_env or default_environment())
    for path in pipeline_roots(ci_dir):
        try:
            checker.check_pipeline(path)
        except yaml.YAMLError:
            continue  # the schema check reports it
    return checker.problems


def check(ci_dir: Path | None = None, namespace=None,
          environments: Iterable[str] = (), default_env: str | None = None) -> list[Problem]:
    """Every problem in the pipeline files under `ci_dir` (default ci/); empty means all is well."""
    ci_dir = ci_dir or CI_DIR
    files = pipeline_files(ci_dir)
    if not files:
        return [Problem(ci_dir, None, "no pipeline files (*.yml, *.yaml) found")]
    namespace = namespace if namespace is not None else load_namespace()
    scripts = [script for path in files for script in shell_scripts(path)]
    calls = [call for script in scripts for call in invoke_calls(script)]
    return (schema_problems(files) + fail_fast_problems(scripts)
            + invoke_call_problems(calls, namespace, environments)
            + handoff_problems(ci_dir, namespace, default_env))
