"""The toolkit as a user gets it: a wheel built from this checkout, installed into a fresh
virtualenv outside it. The wheel's dependencies are read from the test run's own
site-packages (one path in a .pth file), so nothing is downloaded and the package itself
can only come from the wheel."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.support.checkouts import fresh_clone


def run(*command, cwd: Path, env: dict | None = None, timeout: float = 900) -> str:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True,
                            text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def build_wheel(workdir: Path) -> Path:
    """The wheel of the code under test. Built in a clone: setuptools leaves build/ and
    *.egg-info where it builds, and build/ is the pipeline's folder here."""
    clone = fresh_clone(workdir / "modelship")
    out = workdir / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
        "--wheel-dir", out, clone, cwd=clone)
    return next(out.glob("modelship-*.whl"))


def venv_with(wheel: Path, folder: Path) -> Path:
    """A fresh virtualenv at `folder` holding the wheel; returns the folder."""
    run(sys.executable, "-m", "venv", folder, cwd=folder.parent)
    run(folder / "bin/python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
        wheel, cwd=folder.parent)
    site = Path(run(folder / "bin/python", "-c", "import sysconfig; print(sysconfig."
                    "get_paths()['purelib'])", cwd=folder.parent).strip())
    (site / "zz-host-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder
