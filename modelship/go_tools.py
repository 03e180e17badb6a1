"""Commands built from Go modules the project pins under tools/, cached outside the clone.

A tool module (tools/<name>/go.mod + go.sum, a tools.go naming the command) is built once per
machine and pinned version into `~/.cache/modelship/<name>/<version>/` (or
$XDG_CACHE_HOME, or $MODELSHIP_TOOLS_CACHE) and reused by every checkout and CI run on that
machine. The build is reused only while it was made from the very go.sum committed now: a
re-pin at the same version (a replaced indirect dependency) builds again. Like host.py, this
is about the machine, not about modelship's stages.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import PipelineError
from .names import Echo
from .stage_files import shown
from .toolkit_data import GO_TOOLS_ROOT as TOOLS_ROOT


def tools_cache_root() -> Path:
    if os.environ.get("MODELSHIP_TOOLS_CACHE"):
        return Path(os.environ["MODELSHIP_TOOLS_CACHE"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "modelship"


@dataclass(frozen=True)
class GoTool:
    """One command built from a module of ours under tools/<name>/."""
    name: str
    pinned_module: str  # whose version in go.mod names the build
    package: str  # the main package built

    @property
    def module_dir(self) -> Path:
        return TOOLS_ROOT / self.name

    def pinned_version(self) -> str:
        go_mod = (self.module_dir / "go.mod").read_text()
        found = re.search(rf"^\s*(?:require\s+)?{re.escape(self.pinned_module)} (v\S+)",
                          go_mod, re.MULTILINE)
        if not found:
            raise PipelineError(f"{shown(self.module_dir / 'go.mod')} does not require "
                                f"{self.pinned_module}.", "Restore the committed go.mod.")
        return found.group(1)

    def pins_digest(self) -> str:
        digest = hashlib.sha256()
        for file_name in ("go.mod", "go.sum"):
            digest.update((self.module_dir / file_name).read_bytes())
        return digest.hexdigest()

    def build_dir(self) -> Path:
        return tools_cache_root() / self.name / self.pinned_version()


COSIGN = GoTool("cosign", "github.com/sigstore/cosign/v3",
                "github.com/sigstore/cosign/v3/cmd/cosign")


def go_command() -> str | None:
    """`go` on PATH, else where the official tarball installs it (a PATH without it)."""
    official = Path("/usr/local/go/bin/go")
    return shutil.which("go") or (str(official) if official.is_file() else None)


def ensure_go_tool(tool: GoTool, echo: Echo) -> Path:
    """The path of `tool`'s command at its pinned version: built now unless cached."""
    target = tool.build_dir()
    binary, stamp = target / tool.name, target / "pins.sha256"
    wanted = tool.pins_digest()

    def cached() -> bool:
        return binary.is_file() and stamp.is_file() and stamp.read_text().strip() == wanted

    if cached():
        return binary
    go = go_command()
    if go is None:
        raise PipelineError(f"Go is not installed; {tool.name} is built from its pinned module.",
                            "Install Go 1.26 or later (`go version`), then run again.")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two checkouts asking at once: the second waits for the first build and reuses it.
    with open(target.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cached():
            _build(go, tool, target, wanted, echo)
    return binary


def go_build(go: str, module_dir: Path, arguments: list[str], staging: Path) -> None:
    """`go build ARGUMENTS` in a pinned module: static, reproducible paths, go.sum as
    committed; on failure `staging` is removed and the error says where to look."""
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-trimpath -mod=readonly")
    result = subprocess.run(["nice", "-n", "10", go, "build", *arguments],
                            cwd=module_dir, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise PipelineError(
            f"go build in {shown(module_dir)} failed: {result.stderr.strip()[-600:]}",
            "Check that the Go module proxy answers (`go env GOPROXY`) and the go.sum there "
            "is the committed one.")


def _build(go: str, tool: GoTool, target: Path, pins: str, echo: Echo) -> None:
    echo(f"building {tool.name} {tool.pinned_version()} from {shown(tool.module_dir)} into "
         f"{target}; the first build on a machine takes a few minutes")
    staging = Path(tempfile.mkdtemp(prefix=".build.", dir=target.parent))
    started = time.monotonic()
    go_build(go, tool.module_dir, ["-o", str(staging / tool.name), tool.package], staging)
    (staging / "pins.sha256").write_text(pins + "\n")
    staging.chmod(0o755)  # mkdtemp made it private; the build serves every user's checkout
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    echo(f"built {tool.name} in {time.monotonic() - started:.0f} s")
