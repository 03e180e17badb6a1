"""The local registry's generated login: where `local.up` leaves it and where a push finds it.

`invoke local.up` starts the registry with a login it generates once per checkout
(`.local/registry/credentials.json`) and, while the registry runs, leaves a copy for every
checkout of this user on this machine (the registry is one per port, whichever checkout
started it). `registry` reads it when no REGISTRY_* variables are set for a loopback
registry. The files are readable by this user only. This module must never print a
password, and never import a module above it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .stage_files import LOCAL_STATE_DIR

REGISTRY_DIR = LOCAL_STATE_DIR / "registry"
REGISTRY_CREDENTIALS = REGISTRY_DIR / "credentials.json"


@dataclass(frozen=True)
class RegistryLogin:
    username: str
    password: str


def shared_registry_login_file(port: int) -> Path:
    """Where the login of the registry on 127.0.0.1:`port` is left for every checkout of
    this user on this machine: the registry is one per port, whichever checkout started it.
    """
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "modelship" / f"registry-{port}.json"


def read_registry_login(port: int | None = None) -> RegistryLogin | None:
    """The local registry's generated login: the one the checkout that started the registry
    on `port` left for this machine, else this checkout's own (if `local.up` created one)."""
    candidates = [shared_registry_login_file(port)] if port is not None else []
    for path in candidates + [REGISTRY_CREDENTIALS]:
        if path.exists():
            data = json.loads(path.read_text())
            return RegistryLogin(data["username"], data["password"])
    return None


def own_registry_login() -> RegistryLogin:
    """This checkout's login, generated the first time."""
    login = read_registry_login()
    if login is None:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        login = RegistryLogin("modelship", secrets.token_urlsafe(24))
        REGISTRY_CREDENTIALS.write_text(json.dumps(login.__dict__))
        REGISTRY_CREDENTIALS.chmod(0o600)
    return login


def share_registry_login(port: int, login: RegistryLogin) -> None:
    shared = shared_registry_login_file(port)
    shared.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Written whole under another name, readable by this user only, then moved into place:
    # another checkout never reads half a file or a login that is not yet private.
    partial = shared.with_suffix(f".{os.getpid()}.partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # a leftover of a crashed run may have had other modes
    with os.fdopen(descriptor, "w") as stream:
        stream.write(json.dumps(login.__dict__))
    partial.replace(shared)


def take_back_shared_login(port: int) -> None:
    shared_registry_login_file(port).unlink(missing_ok=True)
