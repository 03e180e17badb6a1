"""The host side installs only what requirements/ pins, with hashes, like the image does."""

import json
import re

from packaging.requirements import Requirement

from modelship import host_locks
from modelship.settings import PROJECT_ROOT


def pins(lock):
    """{name: version} of a lock, after checking that every pin carries a sha256 hash."""
    entries = re.split(r"\n(?=\S)", lock.read_text().split("\n", 2)[2].strip())
    found = {}
    for entry in entries:
        name, version = entry.split(" ")[0].split("==")
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), entry
        found[name] = version
    return found


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_host_lock_pins_every_requirement_of_setup_cfg_with_a_hash():
    locked = {canonical(name): version for name, version in pins(host_locks.HOST_LOCK).items()}
    for line in host_locks.host_requirements():
        requirement = Requirement(line)
        assert canonical(requirement.name) in locked, \
            f"{requirement.name} is in setup.cfg but not in host.lock: run `invoke lock`"
        assert requirement.specifier.contains(locked[canonical(requirement.name)]), \
            f"host.lock's {requirement.name} does not meet setup.cfg's {requirement}"
    # What installs the lock and the project itself comes from the lock too.
    assert {"pip", "setuptools", "wheel"} <= set(locked)


def test_checkov_is_pinned_with_its_dependencies():
    locked = pins(host_locks.CHECKOV_LOCK)
    assert Requirement("checkov>=3.2,<4").specifier.contains(locked["checkov"])
    assert len(locked) > 20


def test_kserve_is_pinned_with_its_dependencies():
    locked = pins(host_locks.KSERVE_LOCK)
    assert Requirement("kserve>=0.14,<1").specifier.contains(locked["kserve"])
    # Its own virtualenv because of this pin: onnx in the host's needs protobuf 7.
    assert int(locked["protobuf"].split(".")[0]) < 7 <= int(
        pins(host_locks.HOST_LOCK)["protobuf"].split(".")[0])


def test_azurite_is_pinned_by_its_npm_lock_with_integrity_and_no_registry_address():
    package = json.loads((host_locks.AZURITE_DIR / "package.json").read_text())
    lock = json.loads((host_locks.AZURITE_DIR / "package-lock.json").read_text())
    wanted = package["dependencies"]["azurite"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", wanted)  # an exact version, not a range
    assert lock["packages"][""]["dependencies"] == package["dependencies"]
    assert lock["packages"]["node_modules/azurite"]["version"] == wanted
    installed = {path: entry for path, entry in lock["packages"].items() if path}
    assert all(entry.get("integrity", "").startswith("sha512-") for entry in installed.values())
    assert all("resolved" not in entry for entry in installed.values())


def test_setup_installs_only_from_the_locks():
    script = (PROJECT_ROOT / "scripts" / "setup.sh").read_text().replace("\\\n", " ")
    assert "--require-hashes" in script and "--upgrade" not in script
    assert '"${pip_install[@]}" -r requirements/host.lock' in script
    assert '"${pip_install[@]}" -r requirements/checkov.lock' in script
    assert '"${pip_install[@]}" -r requirements/kserve.lock' in script
    # The project itself: no dependency resolved, no build backend fetched.
    assert re.search(r"pip install [^\n]*--no-deps\s+--no-build-isolation -e \.", script)
    npm = [line for line in script.splitlines() if line.strip().startswith("npm ")]
    assert npm == []  # Azurite is installed by local.up, with `npm ci` from its lock
