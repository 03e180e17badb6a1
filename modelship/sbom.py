"""The image's software bill of materials: a CycloneDX 1.5 JSON document.

The inventory is read inside the built image by its own interpreter (`importlib.metadata` of
the serving virtualenv) and from its dpkg status file, in a container with networking off;
the document is written on the host into `build/sbom.cdx.json` beside the release record,
and `push` signs it as an in-toto attestation of the digest beside the provenance
(`provenance`, predicate type https://cyclonedx.org/bom) and stores it plain next to the
image too (`sha256-<hex>.sbom`, cosign's attach-sbom tag).

Nothing is installed into the image for this: the image is built offline from a
hash-pinned wheelhouse, and a generator inside it (cyclonedx-py) would have to be locked
into the image, where it does not belong. The host side writes the few CycloneDX fields by
hand rather than through cyclonedx-python-lib, which is not in the host lock. It must never
run the image with a network or with anything but this read-only script.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from . import oci_artifacts
from .errors import PipelineError
from .stage_files import SBOM_FILE, on_disk

MEDIA_TYPE = "application/vnd.cyclonedx+json"
# Which image (engine id or registry reference) the document describes.
IMAGE_PROPERTY = "modelship:image"

# Runs in the image: its Python distributions and its installed Debian packages, as JSON.
INVENTORY_SCRIPT = r"""
import importlib.metadata, json, sys
python = sorted({(d.metadata["Name"], d.version) for d in importlib.metadata.distributions()})
debian, entry = [], {}
status = open("/var/lib/dpkg/status", encoding="utf-8", errors="replace").read()
for line in status.split("\n") + [""]:
    if not line.strip():
        if entry.get("Status", "").endswith(" installed"):
            debian.append([entry["Package"], entry["Version"], entry.get("Architecture", "")])
        entry = {}
    elif not line.startswith(" ") and ":" in line:
        key, _, value = line.partition(":")
        entry[key] = value.strip()
json.dump({"python": python, "debian": debian, "python_version": sys.version.split()[0]},
          sys.stdout)
"""


def sbom_path() -> Path:
    return on_disk(SBOM_FILE)


def inventory(client, image: str) -> dict:
    import docker

    output = b""
    container = None
    try:
        container = client.containers.create(image, ["python3", "-c", INVENTORY_SCRIPT],
                                             network_mode="none")
        # Attached before it starts: a container this short-lived can exit before its log
        # holds what it printed, so reading its logs afterwards may find nothing.
        stream = container.attach(stdout=True, stderr=False, stream=True, logs=True)
        container.start()
        output = b"".join(stream)
        status = container.wait().get("StatusCode")
        if status != 0:
            raise ValueError(f"exit status {status}")
        return json.loads(output)
    except (docker.errors.APIError, ValueError) as error:
        shown = output[:120].decode(errors="replace") if output else "no output"
        raise PipelineError(f"Could not list the packages in {image} for its SBOM "
                            f"({type(error).__name__}: {shown!r}).",
                            "Check that the image runs python3 (`invoke test`).") from None
    finally:
        if container is not None:
            try:
                container.remove(force=True)
            except docker.errors.APIError:
                pass  # already gone


def _component(kind: str, name: str, version: str, arch: str = "") -> dict:
    if kind == "pypi":
        purl = f"pkg:pypi/{quote(name.lower().replace('_', '-'))}@{quote(version)}"
    else:
        purl = f"pkg:deb/debian/{quote(name)}@{quote(version)}" + (f"?arch={arch}" if arch else "")
    return {"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl}


def document(found: dict, image: str, image_name: str, labels: dict) -> dict:
    components = [_component("pypi", name, version) for name, version in found["python"]]
    components += [_component("deb", name, version, arch)
                   for name, version, arch in found["debian"]]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tools": {"components": [{"type": "application", "name": "modelship"}]},
            "component": {"type": "container", "bom-ref": image_name, "name": image_name,
                          "version": labels.get("org.opencontainers.image.revision", "")},
            "properties": [{"name": IMAGE_PROPERTY, "value": image},
                           {"name": "modelship:python-version",
                            "value": found.get("python_version", "")}],
        },
        "components": components,
    }


def described_image(path: Path | None = None) -> str | None:
    """The image build/sbom.cdx.json describes, or None when there is none (or unreadable)."""
    path = path or sbom_path()
    try:
        properties = json.loads(path.read_text())["metadata"]["properties"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return next((p["value"] for p in properties if p.get("name") == IMAGE_PROPERTY), None)


def write_sbom(client, image: str, image_name: str, labels: dict) -> str:
    """Write build/sbom.cdx.json for `image` (unless it already describes it); a line to show."""
    path = sbom_path()
    if described_image(path) == image:
        return f"SBOM: {SBOM_FILE} already describes {image_name}"
    found = inventory(client, image)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document(found, image, image_name, labels), indent=1) + "\n")
    partial.replace(path)
    return (f"SBOM: {len(found['python'])} Python and {len(found['debian'])} Debian packages "
            f"in {SBOM_FILE}")


def sbom_tag(digest: str) -> str:
    return oci_artifacts.signature_tag(digest).removesuffix(".sig") + ".sbom"


def built_sbom(record) -> dict | None:
    """The SBOM `build` wrote for the record's image (what `push` attests), or None."""
    path = sbom_path()
    if described_image(path) not in (record.image.id, record.image.name):
        return None
    return json.loads(path.read_text())


def push_sbom(settings, record, pushed, auth: dict | None = None) -> str | None:
    """Store this build's SBOM next to the pushed image; None when build wrote none for it."""
    path = sbom_path()
    if built_sbom(record) is None:
        return None
    oci_artifacts.client_for(settings, auth).put_layers(
        sbom_tag(pushed.digest),
        [oci_artifacts.Layer(MEDIA_TYPE, path.read_bytes(), {})])
    return f"SBOM stored as {pushed.repository}:{sbom_tag(pushed.digest)}"
