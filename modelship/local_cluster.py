"""The `cluster` environment's Kubernetes control plane on this machine (`invoke local.cluster.up`).

Real components, built from the Go modules pinned under tools/cluster/ (go.mod and go.sum in
the repository): etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl,
with kwok playing the nodes and the pods' kubelet from tools/cluster/kwok-stages.yaml. No
container runs: a pod is scheduled, gets a status from kwok, and serves nothing.

The binaries are built once per machine and pin set into the cache outside the clone
(`stage_files.cluster_cache_root()`), then reused by every checkout. The certificates,
service-account keys and kubeconfigs are made per machine with openssl beside them, RBAC
authorises every request, and every port is bound to 127.0.0.1. A control plane that
already answers with this machine's credentials is used as it is; `down()` stops only what
this checkout started (PID files under .local/run, like the other local services).
"""

from __future__ import annotations

import base64
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

import requests
import yaml

from . import host
from .errors import PipelineError
from .go_tools import go_build
from .names import Echo
from .stage_files import cluster_cache_root, cluster_kubeconfig, cluster_kubectl, shown
from .toolkit_data import GO_TOOLS_ROOT

TOOLS_DIR = GO_TOOLS_ROOT / "cluster"
KWOK_STAGES = TOOLS_DIR / "kwok-stages.yaml"

ETCD_CLIENT_PORT = 12379
ETCD_PEER_PORT = 12380
API_PORT = 16443
CONTROLLER_MANAGER_PORT = 10357
SCHEDULER_PORT = 10359
KWOK_PORT = 10347
# Loopback ranges: the ClusterIPs and kwok's pod IPs are never routed here, and if anything
# ever did connect to one it would stay on this machine.
SERVICE_RANGE = "127.96.0.0/24"
POD_RANGE = "127.244.0.0/16"
NODE_NAME = "kwok-node-0"
# Marks the pods kwok leaves Running but never Ready (see tools/cluster/kwok-stages.yaml).
NEVER_READY_MARKER = "never-ready"


@dataclass(frozen=True)
class GoBuild:
    """One Go module of ours under tools/cluster/ and the commands built from it."""
    folder: str
    pinned_module: str
    packages: tuple[str, ...]

    @property
    def module_dir(self) -> Path:
        return TOOLS_DIR / self.folder

    def pinned_version(self) -> str:
        go_mod = (self.module_dir / "go.mod").read_text()
        found = re.search(rf"^\s*(?:require\s+)?{re.escape(self.pinned_module)} (v\S+)", go_mod,
                          re.MULTILINE)
        if not found:
            raise PipelineError(f"{shown(self.module_dir / 'go.mod')} does not require "
                                f"{self.pinned_module}.", "Restore the file from git.")
        return found.group(1)

    def ldflags(self) -> str:
        flags = ["-s", "-w"]
        if self.folder == "kubernetes":
            # What `kubectl version` and the API server's /version report; the
            # Makefile of k8s.io/kubernetes sets the same variables from git.
            version = self.pinned_version()
            major, minor = version.lstrip("v").split(".")[:2]
            for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
                flags += [f"-X={package}.gitVersion={version}", f"-X={package}.gitMajor={major}",
                          f"-X={package}.gitMinor={minor}",
                          f"-X={package}.gitTreeState=clean"]
        return " ".join(flags)


BUILDS = (
    GoBuild("kubernetes", "k8s.io/kubernetes", (
        "k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-scheduler", "k8s.io/kubernetes/cmd/kubectl")),
    GoBuild("etcd", "go.etcd.io/etcd/server/v3", (".",)),
    GoBuild("kwok", "sigs.k8s.io/kwok", ("sigs.k8s.io/kwok/cmd/kwok",)),
)
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
            "kwok")


def kubernetes_version() -> str:
    return BUILDS[0].pinned_version()


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise PipelineError("Go is not installed; the local control plane is built from source.",
                            "Install Go 1.26 or later (`go version`), then run the task again.")
    return go


def build_id(go_version: str) -> str:
    """Names one build: the Kubernetes version and a hash of every pin and the toolchain."""
    digest = hashlib.sha256(go_version.encode())
    for build in BUILDS:
        for path in sorted(build.module_dir.iterdir()):
            if path.is_file():
                digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{kubernetes_version()}-{digest.hexdigest()[:12]}"


def build_dir(go_version: str) -> Path:
    return cluster_cache_root() / build_id(go_version) / "bin"


def _go_version(go: str) -> str:
    return subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True,
                          check=True).stdout.strip()


def ensure_binaries(echo: Echo) -> Path:
    """The folder with every binary of the pinned versions: built now unless the cache has it."""
    go = _go()
    target = build_dir(_go_version(go))
    if all((target / name).is_file() for name in BINARIES):
        _link_current(target)
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    # Two checkouts asking at once: the second waits for the first build and reuses it.
    with open(target.parent.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((target / name).is_file() for name in BINARIES):
            _build(go, target, echo)
    _link_current(target)
    return target


def _build(go: str, target: Path, echo: Echo) -> None:
    staging = Path(tempfile.mkdtemp(prefix="bin.", dir=target.parent.parent))
    started = time.monotonic()
    for build in BUILDS:
        commands = ", ".join(build.folder if package == "." else Path(package).name
                             for package in build.packages)
        echo(f"building {commands} ({build.pinned_module} {build.pinned_version()}) into "
             f"{target}; the first build on a machine takes a while")
        go_build(go, build.module_dir,
                 [f"-ldflags={build.ldflags()}", "-o", f"{staging}/", *build.packages], staging)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    echo(f"built the control plane in {time.monotonic() - started:.0f} s")


def _link_current(target: Path) -> None:
    """bin/ beside the builds names the one last used: the `cluster` environment's kubectl."""
    current = cluster_kubectl().parent
    current.mkdir(parents=True, exist_ok=True)
    for name in BINARIES:
        link = current / name
        if link.is_symlink() and Path(os.readlink(link)) == target / name:
            continue
        temporary = current / f".{name}.new"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target / name)
        temporary.replace(link)


# --- certificates and kubeconfigs ----------------------------------------------------------

def state_dir() -> Path:
    return cluster_kubeconfig().parent


def _pki() -> Path:
    return state_dir() / "pki"


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"openssl {args[0]} failed: {result.stderr.strip()[-300:]}",
                            "Check that openssl 3 is installed (`openssl version`).")


# Who each client certificate names; the API server's RBAC decides what each may do.
IDENTITIES = {
    "admin": "/O=system:masters/CN=modelship-admin",
    "controller-manager": "/CN=system:kube-controller-manager",
    "scheduler": "/CN=system:kube-scheduler",
    # kwok writes node and pod status for every node it plays, as a kubelet would for one.
    "kwok": "/O=system:masters/CN=kwok-controller",
}


def ensure_pki() -> None:
    """The CA, the API server's serving certificate, one client certificate per identity and
    the service-account signing keys: made once per machine, kept with mode 0600."""
    pki = _pki()
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    if not (pki / "ca.crt").exists():
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                 "-subj", "/CN=modelship-local-cluster-ca", "-keyout", str(pki / "ca.key"),
                 "-out", str(pki / "ca.crt"))
    sans = ("IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,"
            f"IP:{SERVICE_RANGE.rsplit('.', 1)[0]}.1")
    _leaf("apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}\n"
          "extendedKeyUsage=serverAuth\n")
    for name, subject in IDENTITIES.items():
        _leaf(name, subject, "extendedKeyUsage=clientAuth\n")
    if not (pki / "sa.key").exists():
        _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
        _openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    for path in pki.iterdir():
        os.chmod(path, 0o600)


def _leaf(name: str, subject: str, extensions: str) -> None:
    pki = _pki()
    if (pki / f"{name}.crt").exists():
        return
    with tempfile.TemporaryDirectory() as scratch:
        csr, ext = Path(scratch) / "csr", Path(scratch) / "ext"
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                       + extensions)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
                 "-keyout", str(pki / f"{name}.key"), "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"),
                 "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "825",
                 "-extfile", str(ext), "-out", str(pki / f"{name}.crt"))


def _kubeconfig_path(identity: str) -> Path:
    return cluster_kubeconfig() if identity == "admin" else state_dir() / f"{identity}.kubeconfig"


def write_kubeconfig(identity: str, context: str) -> Path:
    """A kubeconfig for `identity` with the certificates inline, its one context named so."""
    pki = _pki()

    def inline(file_name: str) -> str:
        return base64.b64encode((pki / file_name).read_bytes()).decode()

    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "modelship-local", "cluster": {
            "server": f"https://127.0.0.1:{API_PORT}",
            "certificate-authority-data": inline("ca.crt")}}],
        "users": [{"name": identity, "user": {
            "client-certificate-data": inline(f"{identity}.crt"),
            "client-key-data": inline(f"{identity}.key")}}],
        "contexts": [{"name": context, "context": {"cluster": "modelship-local",
                                                   "user": identity}}],
    }
    path = _kubeconfig_path(identity)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def client_kubeconfig(identity: str, user: str, context: str) -> Path:
    """A kubeconfig for one more user, its certificate signed by this machine's CA: what RBAC
    then allows it is only what a RoleBinding grants (the tests' deploy identity)."""
    ensure_pki()
    _leaf(identity, f"/CN={user}", "extendedKeyUsage=clientAuth\n")
    return write_kubeconfig(identity, context)


# --- the processes ---------------------------------------------------------------------------

def _process_name(binary: str) -> str:
    return f"cluster-{binary}"


def api_answers() -> bool:
    """Whether the API server on API_PORT is ready and accepts this machine's admin."""
    pki = _pki()
    if not (pki / "admin.crt").exists():
        return False
    try:
        answer = requests.get(f"https://127.0.0.1:{API_PORT}/readyz", timeout=3,
                              verify=str(pki / "ca.crt"),
                              cert=(str(pki / "admin.crt"), str(pki / "admin.key")))
    except (requests.RequestException, OSError):
        return False
    return answer.status_code == 200


def _etcd_answers() -> bool:
    try:
        answer = requests.get(f"http://127.0.0.1:{ETCD_CLIENT_PORT}/health", timeout=2)
        return answer.status_code == 200 and answer.json().get("health") == "true"
    except (requests.RequestException, ValueError):
        return False


def _argv(binaries: Path) -> dict[str, list[str]]:
    pki, state = _pki(), state_dir()
    kubeconfig = {name: str(_kubeconfig_path(name)) for name in IDENTITIES}
    etcd_url = f"http://127.0.0.1:{ETCD_CLIENT_PORT}"
    peer_url = f"http://127.0.0.1:{ETCD_PEER_PORT}"
    return {
        # etcd speaks plain HTTP on loopback only; the API server is its one client.
        "etcd": [str(binaries / "etcd"), "--name=modelship", f"--data-dir={state / 'etcd'}",
                 f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                 f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
                 f"--initial-cluster=modelship={peer_url}", "--unsafe-no-fsync",
                 "--log-level=warn"],
        "kube-apiserver": [
            str(binaries / "kube-apiserver"), f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            # Loopback may not be published as the kubernetes Service's endpoint; nothing
            # in this cluster dials it from a pod.
            "--endpoint-reconciler-type=none",
            f"--secure-port={API_PORT}", f"--cert-dir={state / 'apiserver'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC", "--anonymous-auth=true",
            f"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_RANGE}", "--allow-privileged=false",
            "--profiling=false", "--v=1"],
        "kube-controller-manager": [
            str(binaries / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig['controller-manager']}",
            f"--authentication-kubeconfig={kubeconfig['controller-manager']}",
            f"--authorization-kubeconfig={kubeconfig['controller-manager']}",
            "--bind-address=127.0.0.1", f"--secure-port={CONTROLLER_MANAGER_PORT}",
            f"--cert-dir={state / 'controller-manager'}", "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--profiling=false", "--v=1"],
        "kube-scheduler": [
            str(binaries / "kube-scheduler"), f"--kubeconfig={kubeconfig['scheduler']}",
            f"--authentication-kubeconfig={kubeconfig['scheduler']}",
            f"--authorization-kubeconfig={kubeconfig['scheduler']}",
            "--bind-address=127.0.0.1", f"--secure-port={SCHEDULER_PORT}",
            f"--cert-dir={state / 'scheduler'}", "--leader-elect=false", "--profiling=false",
            "--v=1"],
        "kwok": [
            str(binaries / "kwok"), f"--kubeconfig={kubeconfig['kwok']}",
            f"--config={KWOK_STAGES}", f"--manage-single-node={NODE_NAME}",
            f"--server-address=127.0.0.1:{KWOK_PORT}", "--node-ip=127.0.0.1",
            f"--cidr={POD_RANGE}"],
    }


PORTS = {"etcd": ETCD_CLIENT_PORT, "kube-apiserver": API_PORT,
         "kube-controller-manager": CONTROLLER_MANAGER_PORT, "kube-scheduler": SCHEDULER_PORT,
         "kwok": KWOK_PORT}


def _kubectl(*args: str, stdin: str | None = None, check: bool = True
             ) -> subprocess.CompletedProcess:
    result = subprocess.run([str(cluster_kubectl()), f"--kubeconfig={cluster_kubeconfig()}",
                             *args], input=stdin, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise PipelineError(f"kubectl {' '.join(args[:2])} against the local control plane "
                            f"failed: {result.stderr.strip()[-300:]}",
                            "See the logs under .local/logs/cluster-*.log.")
    return result


def _node_manifest() -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME, "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "type": "kwok",
                                "topology.kubernetes.io/zone": "local-a"}},
        "spec": {},
    })


def _namespace_manifest(namespace: str) -> str:
    # The Pod Security Standard AKS clusters are asked to enforce: the real admission chain
    # refuses a manifest that drifts from it.
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": namespace, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/warn": "restricted"}},
    })


def _wait(ready, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise PipelineError(f"The local control plane started, but {what} within {seconds:.0f} s.",
                        "See the logs under .local/logs/cluster-*.log.")


def _node_ready() -> bool:
    result = _kubectl("get", "node", NODE_NAME, "--ignore-not-found",
                      "--output=jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                      check=False)
    return result.stdout.strip() == "True"


def _default_service_account() -> bool:
    # The controller manager's service-account controller made it: the controllers run.
    return _kubectl("get", "serviceaccount", "default", "--namespace=default",
                    "--ignore-not-found", "--output=name", check=False).stdout.strip() != ""


def up(context: str, namespace: str, echo: Echo) -> list[str]:
    """Build (or reuse) the binaries, make the credentials, start what does not run, create
    the fake node and the environment's namespace; one line per component."""
    binaries = ensure_binaries(echo)
    ensure_pki()
    for identity in IDENTITIES:
        write_kubeconfig(identity, context)
    lines = []
    argv = _argv(binaries)
    answering = {"etcd": _etcd_answers, "kube-apiserver": api_answers}
    for binary, command in argv.items():
        name = _process_name(binary)
        pid = host.started_pid(name)
        if pid is not None:
            lines.append(f"{binary}: running (pid {pid})")
            continue
        if answering.get(binary, lambda: host.port_taken(PORTS[binary]))():
            lines.append(f"{binary}: already answering on 127.0.0.1:{PORTS[binary]}")
            continue
        if host.port_taken(PORTS[binary]):
            raise PipelineError(f"Port {PORTS[binary]} on 127.0.0.1 is taken by something that "
                                f"is not this machine's {binary}.",
                                "Stop it, then run `invoke local.cluster.up` again.")
        pid = host.spawn(name, command, cwd=state_dir())
        if binary in answering:
            host.wait_until(answering[binary], name, pid, 90, host.log_file(name))
        lines.append(f"{binary}: started on 127.0.0.1:{PORTS[binary]} (pid {pid})")
        if binary == "kube-apiserver":
            _kubectl("apply", "--filename=-", stdin=_node_manifest())
    _wait(_node_ready, f"kwok did not report node {NODE_NAME} Ready", 60)
    _wait(_default_service_account, "the controller manager made no service account", 90)
    _kubectl("apply", "--filename=-", stdin=_namespace_manifest(namespace))
    lines.append(f"control plane {kubernetes_version()} ready: context '{context}' in "
                 f"{cluster_kubeconfig()}, namespace '{namespace}' (Pod Security restricted)")
    return lines


def down() -> list[str]:
    """Stop the components this checkout started, newest first; the state stays for the next
    `up` (and for other checkouts' control planes, which are left alone)."""
    stopped = []
    for binary in reversed(list(PORTS)):
        if host.stop_started(_process_name(binary)):
            stopped.append(binary)
    return stopped


def describe() -> list[str]:
    lines = []
    for binary, port in PORTS.items():
        pid = host.started_pid(_process_name(binary))
        if pid is not None:
            lines.append(f"{binary}: running, started here (pid {pid})")
        elif host.port_taken(port):
            lines.append(f"{binary}: answering on 127.0.0.1:{port}, started elsewhere")
        else:
            lines.append(f"{binary}: not running")
    return lines
