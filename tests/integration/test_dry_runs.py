"""`invoke --dry` changes nothing: every task in `invoke --list`, against the real services.

A snapshot of build/, the model store (Azurite), the registry and the Docker Engine is taken
after a real local deploy; every task then runs under --dry (for the local environment, and
for dev where a task talks to Kubernetes or Azure, whose commands --dry only prints, and once
more per flag that changes what it does: `model.publish --promote`, `model.list --orphans`),
and the snapshot must be the same afterwards. No dry run may claim that something was done.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import pytest
import requests

from modelship.registry_login import read_registry_login
from modelship.stage_files import BUILD_ROOT, PROJECT_ROOT

pytestmark = pytest.mark.integration

# Tasks that take no --env; the rest run for local and, where listed, for dev as well.
NO_ENV = {"ci.check"}
ALSO_DEV = {"render", "apply", "rollback", "diff", "status", "aks.credentials", "deploy",
            "push", "fetch-model", "build", "test", "lock", "base-image"}
# Runs whose right answer is a one-line refusal: local has no AKS cluster and no local
# control plane, and nothing was rendered for dev in this checkout.
EXPECTED_REFUSALS = {("aks.credentials", "--env=local"), ("diff", "--env=dev"),
                     ("local.cluster.up", "--env=local"), ("local.cluster.down", "--env=local")}
# Tasks with a required argument get one that names something real.
REQUIRED_ARGUMENTS = {"model.promote": lambda published: ["--version", published]}
# Flags that change what a task does run once more each, on top of the plain run.
FLAG_RUNS = {"model.publish": [["--promote"], ["--version", "1", "--promote"]],
             "model.list": [["--orphans"]]}
CLAIMS_OF_WORK = re.compile(
    r"\bdone\b|\brolled out\b|\brolled back\b|^published |^pushed |^built |^rendered \d+|"
    r"^removed |^stopped: (?!nothing)|^locked \d+", re.M)


def listed_tasks() -> list[str]:
    listing = subprocess.run([sys.executable, "-m", "invoke", "--list", "--list-format=json"],
                             cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    tree = json.loads(listing.stdout)

    def names(collection, prefix=""):
        for entry in collection["tasks"]:
            yield prefix + entry["name"]
        for child in collection["collections"]:
            yield from names(child, prefix + child["name"] + ".")

    return sorted(names(tree))


def build_folder() -> dict[str, str]:
    return {
        str(path.relative_to(BUILD_ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(BUILD_ROOT.rglob("*"))
        if path.is_file() and "wheelhouse" not in path.parts
    }


def model_store(settings) -> list[tuple[str, str]]:
    from azure.storage.blob import BlobServiceClient

    from modelship.stores.azure_blob import AZURITE_ACCOUNT, AZURITE_KEY

    service = BlobServiceClient(settings.model_store.account_url,
                                credential={"account_name": AZURITE_ACCOUNT,
                                            "account_key": AZURITE_KEY})
    container = settings.model_store.uri.removeprefix("az://").split("/", 1)[0]
    return sorted((blob.name, blob.etag)
                  for blob in service.get_container_client(container).list_blobs())


def registry(settings) -> dict[str, list[str]]:
    # The login of whichever checkout started the registry on this port.
    login = read_registry_login(settings.local_services.registry_port)
    auth = (login.username, login.password)
    base = f"http://{settings.registry.host}/v2"
    catalog = requests.get(f"{base}/_catalog", auth=auth, timeout=10).json()
    tags = {}
    for repository in catalog.get("repositories", []):
        listing = requests.get(f"{base}/{repository}/tags/list", auth=auth, timeout=10).json()
        tags[repository] = sorted(listing.get("tags") or [])
    return tags


def engine(settings, client) -> list[tuple]:
    """This app's containers. Only its own: other projects may share a developer's engine."""
    return sorted((c.name, c.id, c.status, c.attrs["Config"]["Image"])
                  for c in client.containers.list(all=True)
                  if c.name.startswith(f"{settings.app_name}-"))


def snapshot(settings, client) -> dict:
    return {"build": build_folder(), "store": model_store(settings),
            "registry": registry(settings), "engine": engine(settings, client)}


@pytest.fixture(scope="module")
def deployed(published_model, local_stack):
    done = subprocess.run([sys.executable, "-m", "invoke", "deploy", "--env=local"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr + done.stdout
    return local_stack


def dry_runs(tasks: list[str], published_version: str) -> list[list[str]]:
    runs = []
    for name in tasks:
        if name in NO_ENV:
            runs.append([name])
            continue
        extra = REQUIRED_ARGUMENTS[name](published_version) if name in REQUIRED_ARGUMENTS else []
        runs.append([name, "--env=local", *extra])
        if name in ALSO_DEV:
            runs.append([name, "--env=dev", *extra])
        runs.extend([name, "--env=local", *extra, *flags] for flags in FLAG_RUNS.get(name, []))
    return runs


def test_every_task_under_dry_changes_nothing_and_claims_nothing(deployed, docker_client,
                                                                 published_model):
    tasks = listed_tasks()
    assert {"fetch-model", "build", "test", "push", "render", "apply", "deploy"} <= set(tasks)
    before = snapshot(deployed, docker_client)
    assert before["build"] and before["store"] and before["registry"] and before["engine"]

    ran = set()
    for argv in dry_runs(tasks, published_model):
        result = subprocess.run([sys.executable, "-m", "invoke", "--dry", *argv],
                                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
        output = result.stdout + result.stderr
        shown = f"`invoke --dry {' '.join(argv)}`:\n{output}"
        assert "Traceback" not in output, shown
        if tuple(argv) in EXPECTED_REFUSALS:
            assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, shown
        else:
            assert result.returncode == 0, shown
        claims = [match.group(0) for match in CLAIMS_OF_WORK.finditer(result.stdout)]
        assert claims == [], shown
        after = snapshot(deployed, docker_client)
        assert after == before, f"{shown}\nchanged: " + ", ".join(
            key for key in before if before[key] != after[key])
        ran.add(argv[0])
    assert ran == set(tasks)
