"""The image's Python dependencies as wheels, downloaded on the host for the image's platform.

The image build has no network, so everything it installs must already be in the build
context. The wheelhouse is rebuilt only when the lock file or the target platform changes.
It must never hold a source distribution: the final image has no compiler.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import PipelineError

MANYLINUX = ["manylinux_2_28", "manylinux_2_17", "manylinux2014"]
ARCH_FOR_PLATFORM = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}


def _stamp(requirements: Path, python_version: str, platform: str) -> str:
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"{python_version}|{platform}".encode())
    return digest.hexdigest()


def prepare_wheelhouse(requirements: Path, wheelhouse: Path, python_version: str,
                       platform: str) -> str:
    arch = ARCH_FOR_PLATFORM.get(platform)
    if arch is None:
        raise PipelineError(
            f"Unsupported image platform '{platform}'.",
            f"Use one of {sorted(ARCH_FOR_PLATFORM)} in image.platform.",
        )
    stamp = _stamp(requirements, python_version, platform)
    stamp_file = wheelhouse / ".stamp"
    if stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        return f"wheelhouse: up to date ({len(list(wheelhouse.glob('*.whl')))} wheels)"
    staging = wheelhouse.with_name(wheelhouse.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--implementation", "cp",
        "--python-version", python_version, "--abi", f"cp{python_version.replace('.', '')}",
        "--abi", "abi3", "--abi", "none",
        *[arg for tag in MANYLINUX for arg in ("--platform", f"{tag}_{arch}")],
        "--dest", str(staging), "--requirement", str(requirements),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        error = [line for line in result.stderr.splitlines() if "ERROR" in line][-1:] or [""]
        raise PipelineError(
            f"Could not download the image's wheels for Python {python_version} "
            f"on {platform}: {error[0].strip()}",
            f"Check {requirements.name} and that pip can reach its package index.",
        )
    (staging / ".stamp").write_text(stamp + "\n")
    shutil.rmtree(wheelhouse, ignore_errors=True)
    staging.rename(wheelhouse)
    return f"wheelhouse: {len(list(wheelhouse.glob('*.whl')))} wheels for {platform}"
