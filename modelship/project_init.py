"""`modelship init`: the files that make an existing repository a project the tasks can ship.

It writes a thin tasks.py, invoke.yaml, the Dockerfile and .dockerignore, the Kubernetes
templates, the Azure Pipelines YAML and the image's requirements, all from the package's
data (toolkit_data), and adds the build folders to .gitignore. The answers (which WSGI
callable, which requirements, names and ports) come from flags, else from what the
repository holds; nothing asks a question, so it runs in automation. It never overwrites a
file unless told to (`force`), and `check` compares what is there with what this version of
the toolkit would write, so an upgrade shows what changed. It must never touch a file outside
the project's folder, nor any file but those it lists.
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from jinja2 import Environment, StrictUndefined

from . import __version__
from .errors import PipelineError
from .toolkit_data import K8S_TEMPLATES, PIPELINE_DIR, PROJECT_SCAFFOLD

# Where a Flask project usually keeps its WSGI callable: (file, module), in the order tried.
USUAL_APP_MODULES = (("app.py", "app"), ("wsgi.py", "wsgi"), ("main.py", "main"),
                     ("application.py", "application"), ("app/__init__.py", "app"),
                     ("src/app.py", "app"))
USUAL_APP_NAMES = ("app", "application")
USUAL_FACTORIES = ("create_app", "make_app")
GITIGNORE = ".gitignore"
# The Azure Pipelines YAML releases to these environments after `local`.
CLOUD_ENVIRONMENTS = ("dev", "staging", "prod")


@dataclass(frozen=True)
class Answers:
    """Every answer `init` needs; each has a flag (cli.py), and `detect` fills the rest."""

    wsgi: str
    app_name: str
    model_name: str = "model"
    requirements: tuple[str, ...] = ()
    score_path: str = "/score"
    health_path: str = ""
    readiness_path: str = ""
    request_key: str = "instances"
    predictions_key: str = "predictions"
    port: int = 18080
    registry_port: int = 15000
    azurite_port: int = 10000
    store_uri: str = ""
    image_repository: str = ""


def _module_names(path: Path) -> tuple[set[str], set[str]]:
    """The module-level names a file assigns and the functions it defines."""
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return set(), set()
    assigned = {target.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                if isinstance(target, ast.Name)}
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    return assigned, functions


def detect_wsgi(root: Path) -> str | None:
    """`module:attr` (or `module:factory()`) of the app in one of the usual places, or None."""
    for file_name, module in USUAL_APP_MODULES:
        path = root / file_name
        if not path.is_file():
            continue
        assigned, functions = _module_names(path)
        for name in USUAL_APP_NAMES:
            if name in assigned:
                return f"{module}:{name}"
        for name in USUAL_FACTORIES:
            if name in functions:
                return f"{module}:{name}()"
    return None


def detect_requirements(root: Path) -> tuple[str, ...]:
    """The image.in lines for the project's own dependencies: its requirements.txt (by
    reference, so an edit there reaches the next `invoke lock`), else pyproject's list."""
    if (root / "requirements.txt").is_file():
        return ("-r ../requirements.txt",)
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        try:
            project = tomllib.loads(pyproject.read_text()).get("project", {})
        except tomllib.TOMLDecodeError as error:
            raise PipelineError(f"pyproject.toml is not valid TOML ({error}).",
                                "Fix it, or name the requirements with --requirements.")
        return tuple(project.get("dependencies", ()))
    return ()


def default_app_name(root: Path) -> str:
    """The folder's name as a DNS-1035 label (what app_name must be)."""
    name = re.sub(r"[^a-z0-9-]+", "-", root.resolve().name.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:63].rstrip("-")
    return name or "app"


def answers_for(root: Path, **given) -> Answers:
    """The answers from the flags given (None: not given), the rest detected or defaulted."""
    given = {key: value for key, value in given.items() if value is not None}
    if "wsgi" not in given:
        detected = detect_wsgi(root)
        if detected is None:
            raise PipelineError(
                "Found no WSGI app in the usual places ("
                + ", ".join(file_name for file_name, _ in USUAL_APP_MODULES) + ").",
                "Name it: modelship init --app module:attribute (e.g. --app web.main:app).")
        given["wsgi"] = detected
    if "requirements" in given:
        given["requirements"] = (f"-r ../{given['requirements']}",)
    else:
        given["requirements"] = detect_requirements(root)
    answers = Answers(app_name=given.pop("app_name", None) or default_app_name(root), **given)
    return replace(answers,
                   store_uri=answers.store_uri or f"az://models/{answers.app_name}",
                   image_repository=answers.image_repository or answers.app_name)


def _render(template: Path, answers: Answers) -> str:
    environment = Environment(undefined=StrictUndefined, keep_trailing_newline=True,
                              autoescape=False)
    values = {name: getattr(answers, name) for name in Answers.__dataclass_fields__}
    values["app_requirements"] = "\n".join(answers.requirements) or "# (none found)"
    values["cloud_environments"] = CLOUD_ENVIRONMENTS
    values["toolkit_version"] = __version__
    return environment.from_string(template.read_text()).render(values)


def planned_files(answers: Answers) -> dict[str, str]:
    """Every file init writes, by its path in the project, with the content it writes."""
    planned = {
        "tasks.py": (PROJECT_SCAFFOLD / "tasks.py").read_text(),
        "invoke.yaml": _render(PROJECT_SCAFFOLD / "invoke.yaml.j2", answers),
        "Dockerfile": (PROJECT_SCAFFOLD / "Dockerfile").read_text(),
        ".dockerignore": (PROJECT_SCAFFOLD / "dockerignore").read_text(),
        "requirements/image.in": _render(PROJECT_SCAFFOLD / "image.in.j2", answers),
    }
    for folder, target in ((K8S_TEMPLATES, "templates/k8s"), (PIPELINE_DIR, "ci")):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                planned[f"{target}/{path.relative_to(folder).as_posix()}"] = path.read_text()
    # The toolkit's own pipeline runs its scripts/setup.sh; a project installs the toolkit.
    planned["ci/templates/setup-steps.yml"] = _render(PROJECT_SCAFFOLD / "setup-steps.yml.j2",
                                                      answers)
    return planned


def gitignore_lines() -> list[str]:
    return (PROJECT_SCAFFOLD / "gitignore").read_text().splitlines()


def _missing_ignores(root: Path) -> list[str]:
    path = root / GITIGNORE
    present = set(path.read_text().splitlines()) if path.is_file() else set()
    return [line for line in gitignore_lines() if line not in present]


# Yours once written: init fills in names and ports, then you set the registry, the cluster
# and the store per environment; every run validates it, so `check` only wants it there.
USER_OWNED = ("invoke.yaml",)


def drift(root: Path, answers: Answers) -> list[str]:
    """The generated files that differ from what this version would write (or are missing)."""
    problems = []
    for name, content in planned_files(answers).items():
        path = root / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif name not in USER_OWNED and path.read_text() != content:
            problems.append(f"{name}: differs from what this version writes")
    problems += [f"{GITIGNORE}: lacks {line}" for line in _missing_ignores(root)]
    return problems


def write_project(root: Path, answers: Answers, *, force: bool = False,
                  dry_run: bool = False) -> list[str]:
    """Write the planned files that are missing (every one with `force`); one line each.

    Existing files are left alone and named, so running it twice changes nothing."""
    lines = []
    for name, content in planned_files(answers).items():
        path = root / name
        exists = path.exists()
        if exists and path.is_file() and path.read_text() == content:
            lines.append(f"unchanged  {name}")
            continue
        if exists and not force:
            lines.append(f"kept       {name} (it exists; --force overwrites it)")
            continue
        if dry_run:
            lines.append(f"would {'overwrite' if exists else 'write':<9} {name}")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        lines.append(f"{'overwrote' if exists else 'wrote':<10} {name}")
    missing = _missing_ignores(root)
    if missing and dry_run:
        lines.append(f"would add  {', '.join(missing)} to {GITIGNORE}")
    elif missing:
        path = root / GITIGNORE
        text = path.read_text() if path.is_file() else ""
        path.write_text(text + ("" if not text or text.endswith("\n") else "\n")
                        + "\n".join(missing) + "\n")
        lines.append(f"added      {', '.join(missing)} to {GITIGNORE}")
    return lines
