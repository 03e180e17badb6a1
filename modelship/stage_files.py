"""The project's folders, and what each Invoke task reads from and writes to build/.

Every path a task generates is declared here once, as typed on the command line, and found
on disk with `on_disk()`; no other module spells out the build/ layout.

Stages run on agents that share nothing but pipeline artifacts, so a task can only run where
its inputs were produced earlier in the same job or downloaded from an earlier stage.
`invoke ci.check` proves that for every job in ci/ from the declarations here, which name the
files as typed on the command line (`<env>` stands for the call's `--env`; a folder ends with
"/"). Every task in tasks.py has an entry, even an empty one, so a new task is declared on
purpose; a unit test holds the two lists together. This module only declares and finds (the
project root, whether it is the toolkit's checkout): it must never write a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT_VARIABLE = "MODELSHIP_PROJECT_ROOT"


def find_project_root(start: Path | None = None, environ=os.environ) -> Path:
    """The repository being shipped: where its tasks.py and invoke.yaml are.

    The toolkit is an installed package, so its own location says nothing about the project:
    like `invoke`, look for tasks.py from the working directory up (MODELSHIP_PROJECT_ROOT
    overrides). Outside any project (e.g. before `modelship init`), the working directory.
    """
    if environ.get(PROJECT_ROOT_VARIABLE):
        return Path(environ[PROJECT_ROOT_VARIABLE]).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "tasks.py").is_file():
            return folder
    return here


PROJECT_ROOT = find_project_root()


def in_toolkit_checkout(root: Path | None = None) -> bool:
    """Whether the project is the toolkit's own checkout (its setup.cfg names modelship):
    only there are the host's locks made, and the sample app (app/) is what the image
    serves. A project that installed the toolkit ships its own code."""
    import configparser

    config = configparser.ConfigParser()
    config.read((root or PROJECT_ROOT) / "setup.cfg")
    return config.get("metadata", "name", fallback="") == "modelship"
# This checkout's own services and tools (`invoke local.up`, checkov, the unit-test cache).
LOCAL_STATE_DIR = PROJECT_ROOT / ".local"
# Where BUILD_DIR lies on disk. `on_disk` reads it at call time, so a test that points it at
# a temporary folder moves every generated path at once.
BUILD_ROOT = PROJECT_ROOT / "build"


def cluster_cache_root() -> Path:
    """The local control plane's binaries and state (`invoke local.cluster.up`): outside every
    clone, so one build per machine and version serves all its checkouts."""
    if os.environ.get("MODELSHIP_CLUSTER_CACHE"):
        return Path(os.environ["MODELSHIP_CLUSTER_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "modelship" / "cluster"


def cluster_kubectl() -> Path:
    """The kubectl built with the local control plane (links to the current build)."""
    return cluster_cache_root() / "bin" / "kubectl"


def cluster_kubeconfig() -> Path:
    """The local control plane's admin kubeconfig, written by `local.cluster.up`."""
    return cluster_cache_root() / "state" / "kubeconfig"

ENV_PLACEHOLDER = "<env>"
# Everything a task generates lives here; anything else in the project comes with the checkout.
BUILD_DIR = "build/"
MODEL_DIR = "build/model/"
RECORD_FILE = "build/record.json"
# The image's CycloneDX SBOM, beside the record.
SBOM_FILE = "build/sbom.cdx.json"
RENDER_DIR = f"build/k8s/{ENV_PLACEHOLDER}/"
# Working folders of one task, never handed to another.
WHEELHOUSE_DIR = "build/wheelhouse/"
CONTEXT_DIR = "build/context/"
PUBLISH_DIR = "build/publish/"


def shown(path: Path) -> str:
    """A path relative to the project when it is inside it (shorter in messages)."""
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def on_disk(declared: str, env: str | None = None) -> Path:
    """Where a path declared here (`build/...`, `<env>` filled in) lies in this checkout."""
    relative = declared.removeprefix(BUILD_DIR).rstrip("/")
    if env is not None:
        relative = relative.replace(ENV_PLACEHOLDER, env)
    return BUILD_ROOT / relative if relative else BUILD_ROOT


@dataclass(frozen=True)
class TaskFiles:
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


NOTHING = TaskFiles()

TASK_FILES: dict[str, TaskFiles] = {
    "fetch-model": TaskFiles(writes=(MODEL_DIR,)),
    "build": TaskFiles(reads=(MODEL_DIR,), writes=(RECORD_FILE, SBOM_FILE)),
    # The record carries the model's golden samples, so test needs no build/model/.
    "test": TaskFiles(reads=(RECORD_FILE,), writes=(RECORD_FILE,)),
    # push also stores build/sbom.cdx.json next to the image when the same job's build left
    # one for this image; without it the push goes on, so it is not a declared input.
    "push": TaskFiles(reads=(RECORD_FILE,), writes=(RECORD_FILE,)),
    "render": TaskFiles(reads=(RECORD_FILE,), writes=(RENDER_DIR,)),
    # A canary's decisions are written into the record (canary.<env>).
    "apply": TaskFiles(reads=(RECORD_FILE, RENDER_DIR), writes=(RECORD_FILE,)),
    "diff": TaskFiles(reads=(RENDER_DIR,)),
    # deploy runs fetch-model through render itself, so it needs nothing handed over.
    "deploy": TaskFiles(writes=(MODEL_DIR, RECORD_FILE, SBOM_FILE, RENDER_DIR)),
    # rollback goes back through the cluster's or the engine's own history, not build/.
    "rollback": NOTHING,
    "base-image": NOTHING,
    "lock": NOTHING,
    "status": NOTHING,
    "aks.credentials": NOTHING,
    "local.up": NOTHING,
    "local.down": NOTHING,
    "local.status": NOTHING,
    "local.cluster.up": NOTHING,
    "local.cluster.down": NOTHING,
    "model.publish": NOTHING,
    "model.check": NOTHING,
    "model.list": NOTHING,
    "model.promote": NOTHING,
    "ci.check": NOTHING,
    "provenance.keygen": NOTHING,
}


def files_for(task_name: str, env: str) -> TaskFiles:
    """The task's declared files for one environment; KeyError for an undeclared task."""
    declared = TASK_FILES[task_name]
    return TaskFiles(
        reads=tuple(path.replace(ENV_PLACEHOLDER, env) for path in declared.reads),
        writes=tuple(path.replace(ENV_PLACEHOLDER, env) for path in declared.writes),
    )
