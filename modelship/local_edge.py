"""The local environment's edge: HAProxy on 127.0.0.1, in front of two container slots.

On Kubernetes a Service and its load balancer stand between clients and pods, so a rolling
update can start a new pod, wait for it to be ready, take the old one out of the endpoints,
let it finish and stop it, and no client notices. Locally HAProxy (from the distribution's
packages) plays that part: it listens on `deployment.port`, and the deployment containers
listen on one of two slot ports behind it. A release starts the new container on the free
slot, routes to it once it is ready, drains the old slot (no new requests, in-flight ones
finish) and only then stops the old container. Client connections stay with HAProxy the
whole time, so none of them is refused or reset by a release.

Routing is changed live through HAProxy's runtime API (a Unix socket in the edge's own
folder under the temporary directory, shared by every checkout on the machine) and written
into its configuration file as well, so a restarted HAProxy routes to the same slot. It must
never listen beyond 127.0.0.1, and never route to anything but the two slot ports on
127.0.0.1.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import host
from .errors import PipelineError
from .names import Echo
from .settings import Settings

BACKEND = "slots"
SLOT_NAMES = ("blue", "green")
# Where the slots are when local_services.slot_ports is not set: above the edge's own port.
SLOT_OFFSETS = (11, 12)


@dataclass(frozen=True)
class Edge:
    """One environment's edge: where it listens, its slots and its files."""
    env: str
    port: int
    slot_ports: tuple[int, int]

    @classmethod
    def of(cls, settings: Settings) -> Edge:
        port = int(settings.deployment.port)
        slots = settings.local_services.slot_ports or (port + SLOT_OFFSETS[0],
                                                       port + SLOT_OFFSETS[1])
        return cls(env=settings.env, port=port, slot_ports=tuple(slots))

    @property
    def service_name(self) -> str:
        """The name its PID file and log go under."""
        return f"edge-{self.env}"

    @property
    def run_dir(self) -> Path:
        """Its configuration, socket, PID file and log. Per machine and port, not per
        checkout: like the containers behind it, the edge belongs to the machine, and a
        second checkout (a deploy agent given only the artifacts) must find it."""
        return Path(tempfile.gettempdir()) / f"modelship-edge-{self.port}"

    @property
    def config_path(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "runtime-api.sock"

    def slot_of(self, port: int) -> str:
        return SLOT_NAMES[self.slot_ports.index(port)]

    def port_of(self, slot: str) -> int:
        return self.slot_ports[SLOT_NAMES.index(slot)]

    def free_port(self, active_port: int | None) -> int:
        """The slot port a new container listens on: whichever the active one does not use."""
        return next(port for port in self.slot_ports if port != active_port)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def config_text(edge: Edge, active_port: int | None, weights: dict | None = None) -> str:
    """HAProxy's configuration with `active_port`'s slot routed to (none: every slot off), or,
    during a canary, both slots with `weights` ({port: percent})."""
    servers = []
    for name, port in zip(SLOT_NAMES, edge.slot_ports):
        if weights:
            state = f" weight {weights[port]}"
        else:
            state = "" if port == active_port else " disabled"
        servers.append(f"    server {name} 127.0.0.1:{port}{state}")
    return "\n".join([
        "# Written by modelship (modelship/local_edge.py); routing changes are made live",
        "# through the runtime API and written here too.",
        "global",
        f"    stats socket {edge.socket_path} mode 600 level admin",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 10s",
        "    timeout http-keep-alive 10s",
        # A request whose connection to a slot fails or dies unanswered is sent again, to
        # the other slot if that one is up: a release never shows a client such an error.
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
        "frontend app",
        f"    bind 127.0.0.1:{edge.port}",
        f"    default_backend {BACKEND}",
        f"backend {BACKEND}",
        *servers,
        "",
    ])


def write_config(edge: Edge, active_port: int | None, weights: dict | None = None) -> None:
    edge.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    staged = edge.config_path.with_suffix(".cfg.new")
    staged.write_text(config_text(edge, active_port, weights))
    staged.replace(edge.config_path)


# --- the runtime API ---------------------------------------------------------------------


def runtime_api(edge: Edge, command: str, timeout: float = 5) -> str:
    """Send one command to HAProxy's runtime API and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        try:
            connection.connect(str(edge.socket_path))
        except OSError as error:
            raise PipelineError(
                f"The local edge (HAProxy) for '{edge.env}' does not answer on "
                f"{edge.socket_path}: {error.strerror or error}.",
                f"Run `invoke deploy --env={edge.env}` again; it restarts the edge.",
            ) from None
        connection.sendall(command.encode() + b"\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer.decode()


def _set_state(edge: Edge, slot: str, state: str) -> None:
    answer = runtime_api(edge, f"set server {BACKEND}/{slot} state {state}").strip()
    if answer:  # HAProxy answers nothing when the command worked
        raise PipelineError(f"The local edge refused to set {slot} to {state}: {answer}",
                            f"See HAProxy's log in {edge.run_dir}.")


def slot_stats(edge: Edge) -> dict[str, dict[str, str]]:
    """`show stat` for the slots: per slot name, HAProxy's CSV fields (status, scur, ...)."""
    lines = runtime_api(edge, "show stat").splitlines()
    if not lines or not lines[0].startswith("# "):
        raise PipelineError(f"The local edge answered `show stat` with {lines[:1]!r}.",
                            f"See HAProxy's log in {edge.run_dir}.")
    fields = lines[0][2:].split(",")
    stats = {}
    for line in lines[1:]:
        row = dict(zip(fields, line.split(",")))
        if row.get("pxname") == BACKEND and row.get("svname") in SLOT_NAMES:
            stats[row["svname"]] = row
    return stats


def routed_slot(edge: Edge) -> str | None:
    """The slot the edge sends new requests to, if any."""
    for slot, row in slot_stats(edge).items():
        if not row.get("status", "").startswith(("MAINT", "DRAIN")):
            return slot
    return None


def _set_weight(edge: Edge, slot: str, weight: int) -> None:
    answer = runtime_api(edge, f"set server {BACKEND}/{slot} weight {weight}").strip()
    if answer:
        raise PipelineError(f"The local edge refused weight {weight} for {slot}: {answer}",
                            f"See HAProxy's log in {edge.run_dir}.")


def split(edge: Edge, canary_port: int, percent: int) -> None:
    """Both slots serve: `percent` of new requests to `canary_port`'s, the rest to the other's
    (HAProxy's round robin by server weight, exact to 1% over every 100 requests)."""
    canary = edge.slot_of(canary_port)
    stable = SLOT_NAMES[1 - SLOT_NAMES.index(canary)]
    stable_port = edge.port_of(stable)
    # The stable slot's weight first, so no moment sends the canary more than asked.
    _set_weight(edge, stable, 100 - percent)
    _set_weight(edge, canary, percent)
    _set_state(edge, canary, "ready")
    _set_state(edge, stable, "ready")
    write_config(edge, None, {canary_port: percent, stable_port: 100 - percent})


def shares(edge: Edge) -> dict[str, int]:
    """Per slot that takes new requests, its share of them in percent (by weight)."""
    serving = {slot: int(row.get("weight") or 0) for slot, row in slot_stats(edge).items()
               if not row.get("status", "").startswith(("MAINT", "DRAIN"))}
    total = sum(serving.values())
    return {slot: round(100 * weight / total) if total else 0
            for slot, weight in serving.items()}


def route_to(edge: Edge, port: int, echo: Echo, drain_seconds: float = 30) -> None:
    """Send new requests to `port`'s slot; let the other finish what it has, then shut it."""
    new = edge.slot_of(port)
    old = SLOT_NAMES[1 - SLOT_NAMES.index(new)]
    _set_weight(edge, new, 100)  # a canary may have left it a small share
    _set_state(edge, new, "ready")
    _set_state(edge, old, "drain")
    write_config(edge, port)
    deadline = time.monotonic() + drain_seconds
    while time.monotonic() < deadline:
        in_flight = int(slot_stats(edge).get(old, {}).get("scur") or 0)
        if in_flight == 0:
            break
        time.sleep(0.05)
    else:
        echo(f"  the old slot still had requests in flight after {drain_seconds:.0f} s")
    _set_state(edge, old, "maint")


# --- starting it ---------------------------------------------------------------------------


def edge_answers(edge: Edge) -> bool:
    try:
        return "Name: HAProxy" in runtime_api(edge, "show info", timeout=2)
    except PipelineError:
        return False


def ensure_edge(edge: Edge, active_port: int | None, echo: Echo) -> str:
    """HAProxy for `edge`, routing to `active_port`'s slot, started unless it answers."""
    if host.started_pid(edge.service_name, edge.run_dir) and edge_answers(edge):
        return f"edge: already answering on 127.0.0.1:{edge.port}"
    # A PID file without a working edge behind it.
    host.stop_started(edge.service_name, run_dir=edge.run_dir)
    if host.port_taken(edge.port):
        raise PipelineError(
            f"Something else listens on 127.0.0.1:{edge.port}, where the local edge (HAProxy) "
            f"of '{edge.env}' must listen.",
            f"Stop it, or set deployment.port for '{edge.env}' to a free port.",
        )
    binary = host.ensure_command("haproxy", "haproxy", echo)
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
    pid = host.spawn(edge.service_name, [binary, "-db", "-f", str(edge.config_path)],
                     run_dir=edge.run_dir)
    host.wait_until(lambda: edge_answers(edge), edge.service_name, pid, 30,
                    log=edge.run_dir / f"{edge.service_name}.log")
    return f"edge: HAProxy started on 127.0.0.1:{edge.port} (pid {pid})"
