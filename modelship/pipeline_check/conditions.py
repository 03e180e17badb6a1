"""Whether an Azure Pipelines `condition:` can be true in a pull-request build.

A small reader of the Azure Pipelines expression language, hand-written because no Python
library parses it. It evaluates a condition knowing only what every pull-request build has:
`Build.Reason` is `PullRequest` and `Build.SourceBranch` starts with `refs/pull/`; every other
value (a stage's result, another variable, `succeeded()`) is unknown. A condition excludes
pull requests only when it comes out false whatever the unknown values are. Anything it cannot
read counts as "may run": a check built on it errs on the side of refusing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PULL_REQUEST_BRANCHES = "refs/pull/"
TOKEN = re.compile(r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<number>-?\d+(?:\.\d+)?)"
                   r"|(?P<name>[A-Za-z_][\w-]*)|(?P<punct>[(),\[\].]))")


class Unknown:
    """A value the check cannot know (at run time it may be anything)."""

    def __repr__(self) -> str:
        return "Unknown"


UNKNOWN = Unknown()


@dataclass(frozen=True)
class StartsWith:
    """A text known only by how it starts: a pull request's `Build.SourceBranch`."""

    prefix: str


# What a pull-request build is known to hold, by lower-cased variable name.
PULL_REQUEST_VARIABLES = {
    "build.reason": "PullRequest",
    "build.sourcebranch": StartsWith(PULL_REQUEST_BRANCHES),
}


class _Unreadable(Exception):
    pass


def may_run_for_pull_requests(condition: str) -> bool:
    """False only when `condition` is false in every pull-request build."""
    try:
        tokens = _tokens(str(condition))
        value, rest = _expression(tokens)
        if rest:
            raise _Unreadable
    except (_Unreadable, IndexError):
        return True
    return _truth(value) is not False


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    text = text.strip()
    while position < len(text):
        match = TOKEN.match(text, position)
        if not match or match.end() == position:
            raise _Unreadable
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
    return tokens


def _expression(tokens):
    kind, text = tokens[0]
    rest = tokens[1:]
    if kind == "string":
        return text[1:-1].replace("''", "'"), rest
    if kind == "number":
        return float(text), rest
    if kind != "name":
        raise _Unreadable
    if rest and rest[0] == ("punct", "("):
        arguments, rest = _arguments(rest[1:])
        return _call(text.lower(), arguments), rest
    if text.lower() in ("true", "false"):
        return text.lower() == "true", rest
    if text.lower() == "null":
        return None, rest
    return _reference(text, rest)


def _arguments(tokens):
    arguments = []
    if tokens[0] == ("punct", ")"):
        return arguments, tokens[1:]
    while True:
        value, tokens = _expression(tokens)
        arguments.append(value)
        if tokens[0] == ("punct", ","):
            tokens = tokens[1:]
        elif tokens[0] == ("punct", ")"):
            return arguments, tokens[1:]
        else:
            raise _Unreadable


def _reference(root: str, tokens):
    """`variables['Build.Reason']`, `variables.name`, `dependencies.A.outputs['x.y']`."""
    parts = []
    while tokens and tokens[0] in (("punct", "."), ("punct", "[")):
        if tokens[0] == ("punct", "."):
            if tokens[1][0] != "name":
                raise _Unreadable
            parts.append(tokens[1][1])
            tokens = tokens[2:]
        else:
            index, tokens = _expression(tokens[1:])
            if tokens[0] != ("punct", "]"):
                raise _Unreadable
            parts.append(index if isinstance(index, str) else UNKNOWN)
            tokens = tokens[1:]
    if root.lower() == "variables" and parts and all(isinstance(part, str) for part in parts):
        return PULL_REQUEST_VARIABLES.get(".".join(parts).lower(), UNKNOWN), tokens
    return UNKNOWN, tokens


def _truth(value):
    """True, False or None (unknown), the way Azure Pipelines casts to a boolean."""
    if isinstance(value, (Unknown, StartsWith)):
        return None if isinstance(value, Unknown) else True  # "refs/pull/…" is not empty
    if isinstance(value, str):
        return value != ""
    if value is None:
        return False
    return bool(value)


def _equal(left, right):
    """True, False or None (unknown); text compares ignoring case, as Azure Pipelines does."""
    if isinstance(left, StartsWith):
        left, right = right, left
    if isinstance(right, StartsWith):
        if isinstance(left, str):
            return None if left.lower().startswith(right.prefix.lower()) else False
        return None
    if isinstance(left, Unknown) or isinstance(right, Unknown):
        return None
    if isinstance(left, str) and isinstance(right, str):
        return left.lower() == right.lower()
    return left == right


def _not(value):
    return None if value is None else not value


def _any(values):
    values = list(values)
    return True if True in values else (False if all(v is False for v in values) else None)


def _all(values):
    values = list(values)
    return False if False in values else (True if all(v is True for v in values) else None)


def _starts_with(text, prefix):
    if isinstance(text, StartsWith) and isinstance(prefix, str):
        if text.prefix.lower().startswith(prefix.lower()):
            return True
        return None if prefix.lower().startswith(text.prefix.lower()) else False
    if isinstance(text, str) and isinstance(prefix, str):
        return text.lower().startswith(prefix.lower())
    return None


def _call(name: str, arguments: list):
    truths = [_truth(argument) for argument in arguments]
    if name == "and":
        result = _all(truths)
    elif name == "or":
        result = _any(truths)
    elif name == "not" and len(arguments) == 1:
        result = _not(truths[0])
    elif name in ("eq", "ne") and len(arguments) == 2:
        result = _equal(*arguments)
        result = result if name == "eq" else _not(result)
    elif name in ("in", "notin") and arguments:
        result = _any(_equal(arguments[0], item) for item in arguments[1:])
        result = result if name == "in" else _not(result)
    elif name == "startswith" and len(arguments) == 2:
        result = _starts_with(*arguments)
    else:
        return UNKNOWN  # succeeded(), failed(), contains(), …: not known at check time
    return UNKNOWN if result is None else result
