"""What the working tree is: commit, dirtiness, and a credential-free source URL.

Used for image tags, OCI labels and manifest annotations. It must never return a URL that
still carries a user name or token.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .stage_files import PROJECT_ROOT


@dataclass(frozen=True)
class SourceState:
    revision: str
    dirty: bool
    source_url: str

    @property
    def short(self) -> str:
        return self.revision[:12]


def _git(*args: str, cwd: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def strip_credentials(url: str) -> str:
    return re.sub(r"^(\w+://)[^/@]*@", r"\1", url)


def source_state(root: Path = PROJECT_ROOT) -> SourceState:
    revision = _git("rev-parse", "HEAD", cwd=root) or "unknown"
    # Build output and local state are ignored files, so they never make the tree dirty.
    status = _git("status", "--porcelain", "--untracked-files=normal", cwd=root)
    remote = _git("config", "--get", "remote.origin.url", cwd=root) or ""
    return SourceState(
        revision=revision,
        dirty=bool(status) if status is not None else False,
        source_url=strip_credentials(remote),
    )
