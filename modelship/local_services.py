"""The `local` environment's real services: Docker Engine, an authenticated registry, Azurite.

Each service is started only when nothing answers on its address, bound to 127.0.0.1, and
recorded with a PID file under `.local/run/` so `down()` stops exactly what this module
started and nothing else. It must never open a port beyond loopback, create a docker bridge
network, or stop a service somebody else started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import requests

from .errors import PipelineError
from .model_store import AZURITE_ACCOUNT
from .settings import LOCAL_STATE_DIR, PROJECT_ROOT, LocalServiceSettings

RUN_DIR = LOCAL_STATE_DIR / "run"
LOG_DIR = LOCAL_STATE_DIR / "logs"
REGISTRY_DIR = LOCAL_STATE_DIR / "registry"
REGISTRY_CREDENTIALS = REGISTRY_DIR / "credentials.json"
AZURITE_DIR = LOCAL_STATE_DIR / "azurite"
TOOLS_DIR = LOCAL_STATE_DIR / "tools"


Echo = Callable[[str], None]


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
    on `port` left for this machine, else this checkout's own (if `up()` created one)."""
    candidates = [shared_registry_login_file(port)] if port is not None else []
    for path in candidates + [REGISTRY_CREDENTIALS]:
        if path.exists():
            data = json.loads(path.read_text())
            return RegistryLogin(data["username"], data["password"])
    return None


def _share_registry_login(port: int, login: RegistryLogin) -> None:
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


# --- probes -------------------------------------------------------------------------------


def engine_answers() -> bool:
    import docker

    try:
        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
        return True
    except Exception:  # any failure to reach the daemon means "not answering"
        return False


def _http_status(url: str) -> int | None:
    try:
        return requests.get(url, timeout=2).status_code
    except requests.RequestException:
        return None


def registry_answers(port: int) -> bool:
    # An authenticated registry answers /v2/ with 401 until you log in.
    return _http_status(f"http://127.0.0.1:{port}/v2/") in (200, 401)


def azurite_answers(port: int) -> bool:
    # Any HTTP answer from the blob endpoint means the emulator is up.
    return _http_status(f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}?comp=list") is not None


# --- process bookkeeping -----------------------------------------------------------------


def _pid_file(name: str, run_dir: Path | None = None) -> Path:
    return (run_dir or RUN_DIR) / f"{name}.pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def started_pid(name: str, run_dir: Path | None = None) -> int | None:
    """PID of a service this module started and that still runs, else None."""
    path = _pid_file(name, run_dir)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
    except ValueError:
        return None
    return pid if _pid_alive(pid) else None


def _spawn(name: str, argv: list[str], cwd: Path | None = None,
           run_dir: Path | None = None) -> int:
    run_dir = run_dir or RUN_DIR
    log_dir = run_dir if run_dir != RUN_DIR else LOG_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"{name}.log", "ab")
    # A new session keeps the service alive after the invoke process exits.
    process = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=cwd, start_new_session=True,
    )
    log.close()
    _pid_file(name, run_dir).write_text(f"{process.pid}\n")
    return process.pid


def _wait_until(ready: Callable[[], bool], name: str, pid: int, seconds: float,
                log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        if not _pid_alive(pid):
            break
        time.sleep(0.25)
    log = log or LOG_DIR / f"{name}.log"
    tail = ""
    if log.exists():
        lines = log.read_text(errors="replace").strip().splitlines()[-3:]
        tail = " Last log lines: " + " | ".join(line.strip()[:200] for line in lines)
    raise PipelineError(
        f"{name} did not become ready within {seconds:.0f} s.{tail}",
        f"See {_shown(log)}; fix the cause, then run `invoke local.up` again.",
    )


def _shown(path: Path) -> Path:
    return path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path


def stop_started(name: str, seconds: float = 30, run_dir: Path | None = None) -> bool:
    """Stop a service this module started (SIGTERM, then SIGKILL). True if one was running."""
    pid = started_pid(name, run_dir)
    _pid_file(name, run_dir).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
        _reap(pid)
    # Whatever the service left in its session (dockerd's containerd, npm's node) goes too.
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --- installing from the distribution's packages ------------------------------------------


def _ensure_command(command: str, package: str, echo: Echo) -> str:
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() != 0:
        raise PipelineError(
            f"`{command}` is not installed.",
            f"Install it with `sudo apt-get install -y {package}`, then run the task again.",
        )
    echo(f"installing {package} from the distribution's packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    result = subprocess.run(
        ["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(
            ["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, text=True
        )
    found = shutil.which(command)
    if result.returncode != 0 or not found:
        raise PipelineError(
            f"Could not install {package}: {result.stderr.strip()[-300:]}",
            f"Install it by hand (`apt-get install {package}`) and run the task again.",
        )
    return found


# --- the services ------------------------------------------------------------------------


def ensure_engine(echo: Echo) -> str:
    if engine_answers():
        return "Docker Engine: already answering"
    dockerd = _ensure_command("dockerd", "docker.io", echo)
    if os.geteuid() != 0:
        raise PipelineError(
            "No Docker Engine answers and starting one needs root.",
            "Start Docker (or run this task as root), then run it again.",
        )
    # No default bridge and no iptables rules: containers use host networking only.
    pid = _spawn("dockerd", [
        dockerd, "--bridge=none", "--iptables=false", "--ip-masq=false",
        "--host=unix:///var/run/docker.sock", f"--pidfile={RUN_DIR / 'dockerd.daemon.pid'}",
    ])
    _wait_until(engine_answers, "dockerd", pid, 60)
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
    binary = _ensure_command("docker-registry", "docker-registry", echo)
    login = read_registry_login()
    if login is None:
        REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
        login = RegistryLogin("modelship", secrets.token_urlsafe(24))
        REGISTRY_CREDENTIALS.write_text(json.dumps(login.__dict__))
        REGISTRY_CREDENTIALS.chmod(0o600)
    config = _write_registry_config(port, login)
    pid = _spawn("registry", [binary, "serve", str(config)])
    _wait_until(lambda: registry_answers(port), "registry", pid, 30)
    _share_registry_login(port, login)
    return f"registry: started on 127.0.0.1:{port} with htpasswd auth (pid {pid})"


def azurite_command() -> Path:
    return TOOLS_DIR / "node_modules" / ".bin" / "azurite-blob"


def _ensure_azurite_installed(echo: Echo) -> Path:
    """Azurite exactly as requirements/azurite/package-lock.json pins it (`npm ci`)."""
    from .host_locks import AZURITE_DIR

    command = azurite_command()
    lock = AZURITE_DIR / "package-lock.json"
    installed_lock = TOOLS_DIR / "package-lock.json"
    if command.exists() and installed_lock.is_file() \
            and installed_lock.read_bytes() == lock.read_bytes():
        return command
    npm = shutil.which("npm") or _ensure_command("npm", "npm", echo)
    echo(f"installing Azurite with `npm ci` from {lock.relative_to(PROJECT_ROOT)} into "
         f"{TOOLS_DIR.relative_to(PROJECT_ROOT)}")
    TOOLS_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(AZURITE_DIR / name, TOOLS_DIR / name)
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(TOOLS_DIR)],
        capture_output=True, text=True,
    )
    if result.returncode != 0 or not command.exists():
        installed_lock.unlink(missing_ok=True)  # so the next run installs again
        raise PipelineError(
            f"Could not install Azurite with npm: {result.stderr.strip()[-300:]}",
            "Check that npm can reach its registry, then run `invoke local.up` again.",
        )
    return command


def ensure_azurite(port: int, echo: Echo) -> str:
    if azurite_answers(port):
        return f"Azurite: already answering on 127.0.0.1:{port}"
    command = _ensure_azurite_installed(echo)
    AZURITE_DIR.mkdir(parents=True, exist_ok=True)
    pid = _spawn("azurite", [
        str(command), "--blobHost", "127.0.0.1", "--blobPort", str(port),
        "--location", str(AZURITE_DIR), "--disableTelemetry", "--skipApiVersionCheck",
    ])
    _wait_until(lambda: azurite_answers(port), "azurite", pid, 60)
    return f"Azurite: started on 127.0.0.1:{port} (pid {pid})"


# --- the edge (HAProxy in front of the deployment's container slots) -----------------------


def edge_answers(edge) -> bool:
    from .local_edge import runtime_api

    try:
        return "Name: HAProxy" in runtime_api(edge, "show info", timeout=2)
    except PipelineError:
        return False


def port_taken(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def ensure_edge(edge, active_port: int | None, echo: Echo) -> str:
    """HAProxy for `edge`, routing to `active_port`'s slot, started unless it answers."""
    from .local_edge import write_config

    if started_pid(edge.service_name, edge.run_dir) and edge_answers(edge):
        return f"edge: already answering on 127.0.0.1:{edge.port}"
    # A PID file without a working edge behind it.
    stop_started(edge.service_name, run_dir=edge.run_dir)
    if port_taken(edge.port):
        raise PipelineError(
            f"Something else listens on 127.0.0.1:{edge.port}, where the local edge (HAProxy) "
            f"of '{edge.env}' must listen.",
            f"Stop it, or set deployment.port for '{edge.env}' to a free port.",
        )
    binary = _ensure_command("haproxy", "haproxy", echo)
    write_config(edge, active_port)
    checked = subprocess.run([binary, "-c", "-q", "-f", str(edge.config_path)],
                             capture_output=True, text=True)
    if checked.returncode != 0:
        raise PipelineError(
            f"HAProxy refuses the edge configuration {edge.config_path}: "
            f"{(checked.stderr or checked.stdout).strip()[-300:]}",
            "Check local_services.slot_ports and deployment.port for this environment.",
        )
    edge.socket_path.unlink(missing_ok=True)
    pid = _spawn(edge.service_name, [binary, "-db", "-f", str(edge.config_path)],
                 run_dir=edge.run_dir)
    _wait_until(lambda: edge_answers(edge), edge.service_name, pid, 30,
                log=edge.run_dir / f"{edge.service_name}.log")
    return f"edge: HAProxy started on 127.0.0.1:{edge.port} (pid {pid})"


def all_answer(ports: LocalServiceSettings) -> bool:
    return (
        engine_answers()
        and registry_answers(ports.registry_port)
        and azurite_answers(ports.azurite_port)
    )


def up(ports: LocalServiceSettings, echo: Echo) -> list[str]:
    return [
        ensure_engine(echo),
        ensure_registry(ports.registry_port, echo),
        ensure_azurite(ports.azurite_port, echo),
    ]


def stop_registry(port: int) -> bool:
    """Stop the registry `up()` started, and take back the login it left for the machine."""
    if not stop_started("registry"):
        return False
    shared_registry_login_file(port).unlink(missing_ok=True)
    return True


def down(ports: LocalServiceSettings) -> list[str]:
    """Stop what `up()` started, newest first; the engine last so containers stop cleanly."""
    stops = {
        "azurite": lambda: stop_started("azurite"),
        "registry": lambda: stop_registry(ports.registry_port),
        "dockerd": lambda: stop_started("dockerd"),
    }
    return [name for name, stop in stops.items() if stop()]


def down_with_deployment(settings) -> list[str]:
    """`local.down`: the local deployment's container first, then what `up()` started."""
    from .local_edge import Edge

    lines = []
    if engine_answers():
        from .image import docker_client
        from .local_runtime import remove

        if remove(docker_client(), settings):
            lines.append("removed the local deployment container")
    edge = Edge.of(settings)
    stopped = [edge.service_name] if stop_started(edge.service_name,
                                                 run_dir=edge.run_dir) else []
    stopped += down(settings.local_services)
    lines.append("stopped: " + (", ".join(stopped) if stopped else
                                "nothing (local.up started nothing)"))
    return lines


def describe(ports: LocalServiceSettings, edge=None) -> list[str]:
    """One line per service: whether it answers, and whether `up()` started it."""
    probes = {
        "dockerd": engine_answers(),
        "registry": registry_answers(ports.registry_port),
        "azurite": azurite_answers(ports.azurite_port),
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
