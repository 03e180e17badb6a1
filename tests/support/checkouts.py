"""Fresh checkouts of this repository for tests that need a project of their own: another
pipeline agent, or a project whose invoke.yaml a test may edit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from modelship.stage_files import PROJECT_ROOT


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def fresh_clone(destination: Path) -> Path:
    """A clone of this repository carrying the working tree's changes (the code under test)."""
    git("clone", "--quiet", "--no-hardlinks", str(PROJECT_ROOT), str(destination),
        cwd=PROJECT_ROOT)
    changed = git("diff", "--name-only", "HEAD", cwd=PROJECT_ROOT).split()
    untracked = git("ls-files", "--others", "--exclude-standard", cwd=PROJECT_ROOT).split()
    for name in changed + untracked:
        source, target = PROJECT_ROOT / name, destination / name
        if source.is_symlink() or source.exists():
            # A link stays a link (modelship/data/ links to the repository's folders).
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
        else:
            target.unlink(missing_ok=True)
    return destination
