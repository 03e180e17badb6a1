"""Invoke-call checks: each `invoke …` call of a pipeline parses with Invoke's own parser
against the task collection it is given (tasks.py's, passed in by `ci.check`), so a renamed
task or flag is caught before a pipeline run is, and a literal `--env` names an environment
of invoke.yaml. Only reads: it never runs a task."""

from __future__ import annotations

from typing import Iterable

from ..settings import PROJECT_ROOT
from .problems import Problem
from .scripts import InvokeCall, is_expression


def parser(namespace):
    """Invoke's own command-line parser for `namespace`, with the core flags."""
    from invoke import Program
    from invoke.parser import Parser, ParserContext

    program = Program()
    initial = ParserContext(args=program.core_args() + program.task_args())
    return Parser(initial=initial, contexts=namespace.to_contexts())


def invoke_call_problems(calls: Iterable[InvokeCall], namespace,
                         environments: Iterable[str] = ()) -> list[Problem]:
    """Parse each call with Invoke's own parser: unknown tasks and flags fail as they would."""
    from invoke.parser import ParseError

    calls_parser = parser(namespace)
    known_envs = set(environments)
    problems = []
    for call in calls:
        try:
            parsed = calls_parser.parse_argv(list(call.argv))
        except ParseError as error:
            message = f"`{call.command}`: {error}"
            if is_expression(str(error)):
                message += " (task names must be literal: ci.check cannot follow an expression)"
            problems.append(Problem(call.path, call.line, message))
            continue
        tasks = [context for context in parsed if context.name]
        if not tasks:
            problems.append(Problem(call.path, call.line, f"`{call.command}` names no task"))
        for context in tasks:
            env = context.args.get("env")
            if (known_envs and env is not None and env.got_value
                    and not is_expression(env.value) and env.value not in known_envs):
                problems.append(Problem(
                    call.path, call.line,
                    f"`{call.command}`: environment '{env.value}' is not in invoke.yaml "
                    f"(known: {', '.join(sorted(known_envs))})",
                ))
    return problems


def default_environment() -> str:
    """The environment a call without --env uses: the project's invoke.yaml default."""
    from invoke import Config

    config = Config(project_location=str(PROJECT_ROOT))
    config.load_project()
    return str(config.get("modelship", {}).get("default_env", "local"))
