"""The `modelship` command (the package's console script): what is not an Invoke task.

`modelship init` runs before a project has a tasks.py, so it cannot be one of the project's
tasks; everything after it is `invoke …` in the project. This module parses flags and
prints; the work is in project_init. It must never ask a question (it runs in automation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import project_init
from .errors import PipelineError

_ANSWER_FLAGS = {
    "--app": ("wsgi", "the WSGI callable, module:attribute or module:factory() "
                      "(default: found in app.py, wsgi.py, main.py, app/__init__.py, ...)"),
    "--app-name": ("app_name", "the Kubernetes and image name (default: the folder's name)"),
    "--model-name": ("model_name", "the model's name in the model store (default: model)"),
    "--requirements": ("requirements", "your requirements file, relative to the project "
                                       "(default: requirements.txt, else pyproject.toml's)"),
    "--score-path": ("score_path", "the route that scores (default: /score)"),
    "--health-path": ("health_path", "your app's liveness route (default: none, the image's "
                                     "server answers /healthz)"),
    "--readiness-path": ("readiness_path", "your app's readiness route (default: none, the "
                                           "server's /readyz replays the golden samples)"),
    "--request-key": ("request_key", "the request's key holding the rows (default: instances)"),
    "--predictions-key": ("predictions_key", "the answer's key holding the predictions "
                                             "(default: predictions)"),
    "--store-uri": ("store_uri", "the model store (default: az://models/<app-name>)"),
    "--image-repository": ("image_repository", "the image's repository (default: app-name)"),
}
_PORT_FLAGS = {
    "--port": ("port", "the local deployment's port (default: 18080)"),
    "--registry-port": ("registry_port", "the local registry's port (default: 15000)"),
    "--azurite-port": ("azurite_port", "the local Azurite's port (default: 10000)"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelship", description=(
        "Ship a Flask app with an ONNX model. Run `modelship init` in your repository, then "
        "the `invoke` tasks there (invoke --list)."))
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="write tasks.py, invoke.yaml, the Dockerfile, the "
                                            "manifests' templates and the pipeline YAML here")
    for flag, (name, text) in _ANSWER_FLAGS.items():
        init.add_argument(flag, dest=name, help=text)
    for flag, (name, text) in _PORT_FLAGS.items():
        init.add_argument(flag, dest=name, type=int, help=text)
    init.add_argument("--root", type=Path, default=Path.cwd(),
                      help="the repository (default: the working directory)")
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    modes = init.add_mutually_exclusive_group()
    modes.add_argument("--dry-run", action="store_true", help="list what it would write")
    modes.add_argument("--check", action="store_true",
                       help="list the generated files that differ from what this version "
                            "writes; exit 1 when any does")
    return parser


def _init(arguments: argparse.Namespace) -> int:
    root = arguments.root.resolve()
    names = [name for name, _ in (*_ANSWER_FLAGS.values(), *_PORT_FLAGS.values())]
    answers = project_init.answers_for(root, **{name: getattr(arguments, name) for name in names})
    if arguments.check:
        problems = project_init.drift(root, answers)
        for line in problems:
            print(line)
        print(f"{len(problems)} generated file(s) differ" if problems
              else "no drift: every generated file is what this version writes")
        return 1 if problems else 0
    lines = project_init.write_project(root, answers, force=arguments.force,
                                       dry_run=arguments.dry_run)
    for line in lines:
        print(line)
    if arguments.dry_run:
        print("dry run: nothing written")
    elif all(line.startswith(("unchanged", "kept")) for line in lines):
        print("nothing changed: every file exists (--force overwrites)")
    else:
        print(f"app {answers.wsgi}; next: invoke lock, invoke model.publish --model FILE.onnx "
              "--samples FILE.json, invoke deploy")
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        return _init(arguments)
    except PipelineError as error:
        print(f"modelship {arguments.command} failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
