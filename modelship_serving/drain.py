"""`python -m modelship_serving.drain`: the pod's preStop hook, run by the kubelet before any SIGTERM.

It marks the server as shutting down, so `/readyz` answers 503 at once while every request
is still served, then waits SHUTDOWN_DRAIN_SECONDS: long enough for kube-proxy, the load
balancer and the ingress controller to drop the pod from their endpoint lists. When it
returns, the kubelet sends SIGTERM and the server, finding the marker already set, skips
its own drain and finishes its in-flight requests. Only the standard library is imported
here (the hook starts a fresh interpreter on every pod stop), and it must never stop or
signal the server itself.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SHUTDOWN_MARKER_NAME = "shutting-down"
DEFAULT_DRAIN_SECONDS = 5


def drain_seconds(environ=os.environ) -> int:
    raw = environ.get("SHUTDOWN_DRAIN_SECONDS") or ""
    try:
        return max(int(raw), 0) if raw else DEFAULT_DRAIN_SECONDS
    except ValueError:
        return DEFAULT_DRAIN_SECONDS  # the server refuses to start with it; never block a stop


def marker_path(environ=os.environ) -> Path | None:
    run_directory = environ.get("METRICS_DIR")
    return Path(run_directory) / SHUTDOWN_MARKER_NAME if run_directory else None


def main(environ=os.environ, sleep=time.sleep) -> int:
    marker = marker_path(environ)
    if marker is None:
        print("drain: METRICS_DIR is not set, so the server cannot be told; waiting anyway",
              file=sys.stderr)
    else:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    sleep(drain_seconds(environ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
