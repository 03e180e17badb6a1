#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine with Python 3.11: the system packages the
# local environment runs (Docker Engine, docker-registry, HAProxy for the local edge,
# debootstrap, Node.js for Azurite)
# and a virtualenv in .venv with the toolkit and its test dependencies, installed from the
# hash-pinned locks in requirements/. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The local control plane's certificates (modelship/local_cluster.py).
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

python=python3
command -v python3.11 >/dev/null 2>&1 && python=python3.11
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python 3.11 or newer is needed; found $("$python" --version)" >&2
  exit 1
fi
# Every package comes from a hash-pinned lock (`invoke lock` remakes them), pip itself and the
# build backend included, so the project is then installed with nothing left to resolve.
pip_install=(-m pip install --quiet --disable-pip-version-check --require-hashes)
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python "${pip_install[@]}" -r requirements/host.lock
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
  --no-build-isolation -e .
# checkov pins older versions of packages the toolkit uses, so it gets a virtualenv of its own;
# it is installed again whenever its lock changes.
checkov=.local/tools/checkov
if [ ! -x "$checkov/bin/checkov" ] || ! cmp -s requirements/checkov.lock "$checkov/installed.lock"; then
  [ -x "$checkov/bin/python" ] || "$python" -m venv "$checkov"
  "$checkov/bin/python" "${pip_install[@]}" -r requirements/checkov.lock
  cp requirements/checkov.lock "$checkov/installed.lock"
fi
# kserve (whose REST client the v2 API tests drive the server with) pins protobuf below what
# onnx needs, so it too gets a virtualenv of its own, installed again whenever its lock changes.
kserve=.local/tools/kserve
if [ ! -x "$kserve/bin/python" ] || ! cmp -s requirements/kserve.lock "$kserve/installed.lock"; then
  [ -x "$kserve/bin/python" ] || "$python" -m venv "$kserve"
  "$kserve/bin/python" "${pip_install[@]}" -r requirements/kserve.lock
  cp requirements/kserve.lock "$kserve/installed.lock"
fi
echo "setup: done (.venv ready)"
