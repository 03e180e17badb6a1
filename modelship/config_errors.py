"""One line, not a traceback, for the configuration mistakes Invoke itself trips over.

Invoke loads a `-f` runtime file and the INVOKE_* environment variables after it has loaded
tasks.py and before any task runs, so those mistakes never reach a task's error handling: a
malformed YAML file raises the YAML parser's error, a section written as a plain value
(`model_store: az://...`) raises AmbiguousMergeError, and a variable that cannot take the
type the files give its setting raises ValueError, each with a traceback through Invoke.
The hook installed here recognises exactly those, prints what is wrong and what to do on
one line, and leaves any other exception (a bug) to Python's own handler. It must never
swallow an exception it does not recognise.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Callable

HINT_FILES = "invoke.yaml or the -f file"


def _raised_in(trace, module_path_part: str) -> bool:
    return any(module_path_part in frame.filename for frame in traceback.extract_tb(trace))


def describe(error: BaseException, trace, environ=os.environ) -> str | None:
    """The one line for a configuration mistake Invoke raised, or None if it is not one."""
    from invoke.config import AmbiguousMergeError

    try:
        from invoke.vendor.yaml import YAMLError as VendoredYAMLError
    except ImportError:  # a newer Invoke without its vendored yaml
        VendoredYAMLError = ()
    import yaml

    if isinstance(error, (yaml.YAMLError,) + ((VendoredYAMLError,) if VendoredYAMLError
                                                else ())):
        mark = getattr(error, "problem_mark", None)
        where = (f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}"
                 if mark is not None else "a configuration file")
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        return (f"configuration error: {where} is not valid YAML ({problem}). Fix the file "
                "(check indentation, brackets and quotes) and run the task again.")
    if isinstance(error, AmbiguousMergeError):
        match = re.search(r"merge (<class '\w+'>) \((.*)\) with (<class '\w+'>) \((.*)\)$",
                          str(error))
        shown = f": {match.group(4)} where a section was expected" if match else ""
        return (f"configuration error: a setting is given as a single value where invoke.yaml "
                f"has a section of settings{shown}. Write it as a section (for example "
                "`model_store: {uri: az://models/digits}`) in "
                f"{HINT_FILES}, or in the INVOKE_* variable.")
    if isinstance(error, ValueError) and _raised_in(trace, os.path.join("invoke", "env.py")):
        literal = re.search(r"'(.*)'", str(error))
        culprits = sorted(name for name, value in environ.items()
                          if name.startswith("INVOKE_") and literal
                          and value == literal.group(1))
        named = ", ".join(culprits) if culprits else "an INVOKE_* environment variable"
        return (f"configuration error: {named} cannot be read as the type the setting has in "
                f"invoke.yaml ({error}). Give it a value of that type (a whole number for a "
                "count, true/false for a switch), or unset it.")
    return None


def install_config_error_hook(
        print_line: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> None:
    previous = sys.excepthook

    def hook(kind, error, trace):
        line = describe(error, trace)
        if line is None:
            previous(kind, error, trace)
            return
        print_line(line)

    sys.excepthook = hook
