"""An offline-built base image: a minimal Debian with python3, made by debootstrap.

Used when the configured base image (e.g. `python:3.11-slim`) cannot be pulled. The root
filesystem comes from the Debian mirror that apt on this host already uses, is trimmed of
docs and package caches, and is `docker import`ed under the configured name. It must never
run anything inside the new root beyond what debootstrap itself does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .errors import PipelineError
from .host import ensure_command
from .stage_files import BUILD_ROOT

# Debian release whose python3 matches the image's Python version.
DEBIAN_SUITE_FOR_PYTHON = {"3.11": "bookworm", "3.13": "trixie"}
PACKAGES = ["python3", "python3-venv", "ca-certificates"]
TRIMMED = [
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
    "var/cache/apt", "var/lib/apt/lists", "var/log",
]
SOURCE_FILES = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
IMPORT_CHANGES = [
    "ENV LANG=C.UTF-8",
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["python3"]',
]


def cache_dir() -> Path:
    """Root filesystems kept across engine resets, so a wiped engine needs no debootstrap."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelship" / "base-images"


def _cached_tarball(name: str) -> Path:
    return cache_dir() / (re.sub(r"[^A-Za-z0-9._-]", "_", name) + ".tar")


def _import(client, tarball: Path, name: str) -> None:
    repository, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "")
    client.api.import_image_from_file(
        str(tarball), repository=repository, tag=tag or "latest", changes=IMPORT_CHANGES
    )


def debian_mirror(suite: str, sources: list[Path] = SOURCE_FILES) -> str:
    """The mirror apt uses for `suite`, read from the host's apt sources."""
    override = os.environ.get("MODELSHIP_DEBIAN_MIRROR")
    if override:
        return override
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        # deb822 stanzas (`URIs:` / `Suites:`) and one-line `deb URI suite ...` entries.
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and suite in suites.group(1).split():
                return uris.group(1)
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "deb" and suite in fields[2:3]:
                return [f for f in fields[1:] if not f.startswith("[")][0]
    raise PipelineError(
        f"No Debian mirror for '{suite}' is configured in apt's sources.",
        "Set MODELSHIP_DEBIAN_MIRROR to a Debian mirror URL, or use a base image you can pull.",
    )


def base_image_present(client, name: str) -> bool:
    import docker

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_base_image(client, name: str, python_version: str, echo) -> str:
    if base_image_present(client, name):
        return f"base image {name}: cached"
    cached = _cached_tarball(name)
    if cached.exists():
        _import(client, cached, name)
        return f"base image {name}: imported from {cached}"
    suite = DEBIAN_SUITE_FOR_PYTHON.get(python_version)
    if suite is None:
        raise PipelineError(
            f"No offline base image recipe for Python {python_version}.",
            f"Use one of {sorted(DEBIAN_SUITE_FOR_PYTHON)} or set image.base to a pullable image.",
        )
    if os.geteuid() != 0:
        raise PipelineError(
            "Building the offline base image needs root (debootstrap).",
            "Run `sudo invoke base-image`, or set image.base to an image you can pull.",
        )
    debootstrap = ensure_command("debootstrap", "debootstrap", echo)
    mirror = debian_mirror(suite)
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="base-image-", dir=BUILD_ROOT))
    rootfs = workdir / "rootfs"
    try:
        echo(f"debootstrap {suite} (minbase + {', '.join(PACKAGES)}) for {name}")
        result = subprocess.run(
            [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}",
             suite, str(rootfs), mirror],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            log = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise PipelineError(
                f"debootstrap failed: {' | '.join(log)}",
                "Check that apt can reach its mirror (`apt-get update`), then try again.",
            )
        for relative in TRIMMED:
            target = rootfs / relative
            if target.exists():
                shutil.rmtree(target)
                target.mkdir(parents=True)
        tarball = workdir / "rootfs.tar"
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], check=True
        )
        _import(client, tarball, name)
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        shutil.move(str(tarball), partial)
        os.replace(partial, cached)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return f"base image {name}: built offline from {suite}"
