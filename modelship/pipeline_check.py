"""`invoke ci.check`: the pipeline files in ci/ are valid and call only tasks that exist.

Three checks, each reporting `file:line: problem` lines: every YAML file validates against the
Azure Pipelines schema vendored by check-jsonschema (templates included); every `invoke …`
call in a shell step parses with Invoke's own parser against the live task collection, so a
renamed task or flag is caught before a pipeline run is; every shell step starts with
`set -euo pipefail`. The task list is read from tasks.py at check time, never copied here.
This module only reads files: it must never run a task or change anything.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

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


def check(ci_dir: Path | None = None, namespace=None,
          environments: Iterable[str] = ()) -> list[Problem]:
    """Every problem in the pipeline files under `ci_dir` (default ci/); empty means all is well."""
    ci_dir = ci_dir or CI_DIR
    files = pipeline_files(ci_dir)
    if not files:
        return [Problem(ci_dir, None, "no pipeline files (*.yml, *.yaml) found")]
    namespace = namespace if namespace is not None else load_namespace()
    scripts = [script for path in files for script in shell_scripts(path)]
    calls = [call for script in scripts for call in invoke_calls(script)]
    return (schema_problems(files) + fail_fast_problems(scripts)
            + invoke_call_problems(calls, namespace, environments))
