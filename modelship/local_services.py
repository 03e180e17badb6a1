"""The `local` environment's real services: Docker Engine, an authenticated registry, Azurite.

Each service is started only when nothing answers on its address, bound to 127.0.0.1, and
recorded with a PID file under `.local/run/` (`host`) so `down()` stops exactly what this
module started and nothing else. The deployment's own edge and containers belong to the
docker runtime (`local_runtime`, `local_edge`); `release_targets` puts the two together for
`local.up`, `local.status` and `local.down`. It must never open a port beyond loopback,
create a docker bridge network, or stop a service somebody else started.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import azurite, host
from .engine import engine_answers
from .errors import PipelineError
from .host import RUN_DIR, started_pid, stop_started
from .local_edge import edge_answers
from .names import Echo
from .registry_login import (REGISTRY_DIR, RegistryLogin, own_registry_login,
                             share_registry_login, take_back_shared_login)
from .settings_schema import LocalServicesSection
from .stage_files import LOCAL_STATE_DIR

AZURITE_DIR = LOCAL_STATE_DIR / "azurite"


# --- probes -------------------------------------------------------------------------------


def registry_answers(port: int) -> bool:
    # An authenticated registry answers /v2/ with 401 until you log in.
    return host.http_status(f"http://127.0.0.1:{port}/v2/") in (200, 401)


# --- the services ------------------------------------------------------------------------


def ensure_engine(echo: Echo) -> str:
    if engine_answers():
        return "Docker Engine: already answering"
    dockerd = host.ensure_command("dockerd", "docker.io", echo)
    if os.geteuid() != 0:
        raise PipelineError(
            "No Docker Engine answers and starting one needs root.",
            "Start Docker (or run this task as root), then run it again.",
        )
    # No default bridge and no iptables rules: containers use host networking only.
    pid = host.spawn("dockerd", [
        dockerd, "--bridge=none", "--iptables=false", "--ip-masq=false",
        "--host=unix:///var/run/docker.sock", f"--pidfile={RUN_DIR / 'dockerd.daemon.pid'}",
    ])
    host.wait_until(engine_answers, "dockerd", pid, 60)
    return f"Docker Engine: started (pid {pid})"


def _write_registry_config(port: int, login: RegistryLogin) -> Path:
    import bcrypt

    REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    htpasswd = REGISTRY_DIR / "htpasswd"
    hashed = bcrypt.hashpw(login.password.encode(), bcrypt.gensalt(rounds=10)).decode()
    htpasswd.write_text(f"{login.username}:{hashed}\n")
    config = REGISTRY_DIR / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {REGISTRY_DIR / 'data'}\n"
        "  delete:\n    enabled: true\n"
        "http:\n"
        f"  addr: 127.0.0.1:{port}\n"
        "auth:\n"
        f"  htpasswd:\n    realm: modelship-local\n    path: {htpasswd}\n"
    )
    return config


def ensure_registry(port: int, echo: Echo) -> str:
    if registry_answers(port):
        return f"registry: already answering on 127.0.0.1:{port}"
    binary = host.ensure_command("docker-registry", "docker-registry", echo)
    login = own_registry_login()
    config = _write_registry_config(port, login)
    pid = host.spawn("registry", [binary, "serve", str(config)])
    host.wait_until(lambda: registry_answers(port), "registry", pid, 30)
    share_registry_login(port, login)
    return f"registry: started on 127.0.0.1:{port} with htpasswd auth (pid {pid})"


def ensure_azurite(port: int, echo: Echo) -> str:
    if azurite.answers(port):
        return f"Azurite: already answering on 127.0.0.1:{port}"
    pid = azurite.start(port, AZURITE_DIR, echo)
    return f"Azurite: started on 127.0.0.1:{port} (pid {pid})"


def all_answer(ports: LocalServicesSection) -> bool:
    return (
        engine_answers()
        and registry_answers(ports.registry_port)
        and azurite.answers(ports.azurite_port)
    )


def up(ports: LocalServicesSection, echo: Echo) -> list[str]:
    return [
        ensure_engine(echo),
        ensure_registry(ports.registry_port, echo),
        ensure_azurite(ports.azurite_port, echo),
    ]


def stop_registry(port: int) -> bool:
    """Stop the registry `up()` started, and take back the login it left for the machine."""
    if not stop_started("registry"):
        return False
    take_back_shared_login(port)
    return True


def down(ports: LocalServicesSection) -> list[str]:
    """Stop what `up()` started, newest first; the engine last so containers stop cleanly."""
    stops = {
        "azurite": lambda: stop_started("azurite"),
        "registry": lambda: stop_registry(ports.registry_port),
        "dockerd": lambda: stop_started("dockerd"),
    }
    return [name for name, stop in stops.items() if stop()]


def describe(ports: LocalServicesSection, edge=None) -> list[str]:
    """One line per service: whether it answers, and whether `up()` started it."""
    probes = {
        "dockerd": engine_answers(),
        "registry": registry_answers(ports.registry_port),
        "azurite": azurite.answers(ports.azurite_port),
    }
    started_in = {}
    if edge is not None:
        probes[edge.service_name] = edge_answers(edge)
        started_in[edge.service_name] = edge.run_dir
    lines = []
    for name, answers in probes.items():
        pid = started_pid(name, started_in.get(name))
        starter = "deploy" if name in started_in else "local.up"
        owner = f"started by {starter}, pid {pid}" if pid else f"not started by {starter}"
        lines.append(f"{name:10} {'up' if answers else 'down':5} ({owner})")
    return lines
