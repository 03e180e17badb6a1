"""Where the files the toolkit ships with itself lie: package data, never the user's project.

A project that `pip install`s the toolkit has no copy of its checkout, so every file the
toolkit needs at run time (the checkov settings, the Go modules of the local control plane,
what `modelship init` writes) comes from the installed package, found with importlib.resources.
In the toolkit's own checkout `modelship/data/` links to the repository's folders, so the
sample project and the package hold one copy of each file. Nothing here may read
`stage_files.PROJECT_ROOT`: that is the user's repository.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def data_path(relative: str) -> Path:
    """A file or folder of the package's data (`modelship/data/<relative>`) on disk.

    The toolkit is installed as plain files (a wheel or an editable checkout), never zipped,
    so the resource is a real path that tools such as checkov and go can be given.
    """
    return Path(str(files("modelship") / "data" / relative)).resolve()


CHECKOV_CONFIG = data_path("checkov.yaml")
GO_TOOLS_ROOT = data_path("tools")
# Azurite's npm package.json and package-lock.json (`local.up`).
AZURITE_LOCK_DIR = data_path("azurite")
K8S_TEMPLATES = data_path("templates/k8s")
PIPELINE_DIR = data_path("ci")
# What `modelship init` writes into a project besides the manifests and pipeline templates.
PROJECT_SCAFFOLD = data_path("project")
