"""Script lint: the bash scripts of a pipeline file's steps, the `invoke` calls in them, and
the rule that every script starts with `set -euo pipefail`. Only reads files."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

from .problems import Problem

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


def is_expression(text: str) -> bool:
    return bool(EXPRESSION.search(str(text)))


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
